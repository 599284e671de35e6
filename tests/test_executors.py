"""``--jobs N`` (``executors.parallel.run_parallel``): real worker processes, the counting clock.

The driver alone writes the ledgers; they equal the sequential executor's on documented fields. A
worker killed mid-trial is replaced and its cell resubmitted: the new attempt replays the ledger,
so only the trial in flight runs again. Ctrl-C leaves consistent ledgers that resume completes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.engine.loop import EXEC_LOG_ENV, RunContext
from hpobench_elbo.errors import LedgerError, UserError
from hpobench_elbo.executors.parallel import ParallelRun, check_oversubscription, run_parallel
from hpobench_elbo.executors.worker import WORKER_FAULT_ENV
from hpobench_elbo.suite import suite_from_mapping

from conftest import SMALL_SUITE, assert_only_in_flight_reran
from golden_ledgers import differences, normalised_ledgers


def small_cells(**changes):
    suite = suite_from_mapping({**SMALL_SUITE, **changes})
    return suite, suite.cells()


def context(out: Path, suite) -> RunContext:
    return RunContext(out_dir=out, device="cpu", suite_hash=suite.suite_hash)


def same_as_sequential(reference: Path, out: Path, cells=None, ignore: tuple[str, ...] = ()) -> None:
    def strip(ledgers):
        return {k: [{f: v for f, v in r.items() if f not in ignore} for r in recs] for k, recs in ledgers.items()}

    expected = strip(normalised_ledgers(reference))
    if cells is not None:
        expected = {k: v for k, v in expected.items() if k in {c.cell_id for c in cells}}
    actual = strip(normalised_ledgers(out))
    assert sorted(actual) == sorted(expected)
    assert differences(expected, actual) == []


def headers(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text().splitlines()[0]) for p in sorted(out.glob("*.jsonl"))}


def test_jobs_2_gives_the_sequential_ledgers(small_run, tmp_path: Path) -> None:
    _, reference = small_run
    suite, cells = small_cells()
    out = tmp_path / "par"
    summaries = run_parallel(cells, context(out, suite), jobs=2, progress=False)
    assert [s.cell_id for s in summaries] == [c.cell_id for c in cells]
    assert all(not s.reason.startswith("attempts exhausted") for s in summaries)
    same_as_sequential(reference, out)
    wheres = [h["where"] for h in headers(out).values()]
    assert {w["executor"] for w in wheres} == {"local-jobs"}
    assert len({w["pid"] for w in wheres}) == 2 and os.getpid() not in {w["pid"] for w in wheres}


def test_a_killed_worker_loses_only_the_trial_in_flight(small_run, tmp_path: Path, monkeypatch) -> None:
    _, reference = small_run
    suite, cells = small_cells()
    cells = [c for c in cells if c.method == "random"]  # two cells of the reference suite
    out, log, marker = tmp_path / "par", tmp_path / "exec.log", tmp_path / "fired"
    victim = next(c for c in cells if c.seed == 0)
    monkeypatch.setenv(EXEC_LOG_ENV, str(log))
    monkeypatch.setenv(WORKER_FAULT_ENV, json.dumps({"at": 2, "action": "kill", "once": str(marker),
                                                     "cell": victim.cell_id}))
    run = ParallelRun(cells, context(out, suite), jobs=2, progress=False)
    summaries = run.run()
    fired = json.loads(marker.read_text())
    assert fired["cell"] == victim.cell_id and fired["trial"] == 1
    attempts = run.driver.attempts[victim.cell_id]
    assert [a.outcome.split(":")[0] for a in attempts] == ["died", "done"]
    assert "signal 9" in attempts[0].outcome and attempts[0].rows == 1
    assert all(len(run.driver.attempts[c.cell_id]) == 1 for c in cells if c is not victim)
    assert all(not s.reason.startswith("attempts exhausted") for s in summaries)
    same_as_sequential(reference, out, cells)
    assert_only_in_flight_reran(out, log, (victim.cell_id, 1))


def test_a_cell_that_keeps_killing_its_worker_runs_out_of_attempts(tmp_path: Path, monkeypatch) -> None:
    suite, cells = small_cells()
    victim = cells[0]
    monkeypatch.setenv(WORKER_FAULT_ENV, json.dumps({"at": 1, "action": "kill", "cell": victim.cell_id}))
    run = ParallelRun([victim], context(tmp_path / "par", suite), jobs=1, progress=False, max_attempts=2)
    (summary,) = run.run()
    assert summary.reason.startswith("attempts exhausted") and summary.n_trials == 0
    assert [a.outcome.split(":")[0] for a in run.driver.attempts[victim.cell_id]] == ["died", "died"]
    contents = read_ledger(tmp_path / "par" / f"{victim.cell_id}.jsonl")  # opened, consistent, unfinished
    assert contents.rows == [] and contents.end is None and contents.torn is None


def test_ctrl_c_stops_cleanly_and_resume_completes(small_run, tmp_path: Path, monkeypatch) -> None:
    _, reference = small_run
    suite, cells = small_cells(methods=["random"])
    out, marker = tmp_path / "par", tmp_path / "stalled"
    monkeypatch.setenv(WORKER_FAULT_ENV, json.dumps({"at": 3, "action": "stall", "seconds": 120, "once": str(marker)}))
    run = ParallelRun(cells, context(out, suite), jobs=2, progress=False)
    workers: list[int] = []

    def ctrl_c() -> None:  # what Ctrl-C in a terminal does: SIGINT to the driver and its workers
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        workers.extend(w.pid for w in list(run.workers))
        for pid in workers:
            os.kill(pid, signal.SIGINT)  # ignored: the driver decides
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=ctrl_c, daemon=True)
    watcher.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run.run()
    watcher.join()
    assert time.monotonic() - started < 60 and marker.exists()
    stalled = json.loads(marker.read_text())
    assert stalled["pid"] in workers
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # every worker was stopped (and reaped) by its driver
    for path in out.glob("*.jsonl"):
        assert read_ledger(path).torn is None  # every ledger parses: no torn or damaged line
    assert read_ledger(out / f"{stalled['cell']}.jsonl").end is None  # interrupted mid-cell
    monkeypatch.delenv(WORKER_FAULT_ENV)

    resumed = ParallelRun(cells, context(out, suite), jobs=1, progress=False)
    summaries = resumed.run()
    assert all(s.reason == "refit reserve" for s in summaries)
    same_as_sequential(reference, out, cells, ignore=("suite_hash",))  # the reference suite has more methods
    assert resumed.driver.attempts[stalled["cell"]]  # resumed in a worker
    finished = [c for c in cells if not resumed.driver.attempts[c.cell_id]]
    assert all(c.cell_id != stalled["cell"] for c in finished)  # cells that had ended needed no worker

    again = ParallelRun(cells, context(out, suite), jobs=2, progress=False)
    assert [s.reason for s in again.run()] == [s.reason for s in summaries]
    assert all(not a for a in again.driver.attempts.values())  # nothing left to run: no worker started


def test_oversubscription_is_refused_under_the_device_clock(monkeypatch) -> None:
    _, cells = small_cells(clock="device", threads=1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert check_oversubscription(cells, 2, oversubscribe=False) is None
    with pytest.raises(UserError, match="--oversubscribe"):
        check_oversubscription(cells, 3, oversubscribe=False)
    assert check_oversubscription(cells, 3, oversubscribe=True) == {"jobs": 3, "threads": 1, "cpus": 2}
    _, counting = small_cells()
    assert check_oversubscription(counting, 4, oversubscribe=False) is None  # counted costs do not depend on load
    _, threaded = small_cells(clock="device", threads=2)
    with pytest.raises(UserError):
        run_parallel(threaded, RunContext(Path("unused"), "cpu", "x"), jobs=2)
    with pytest.raises(UserError, match="--jobs 0"):
        run_parallel(cells, RunContext(Path("unused"), "cpu", "x"), jobs=0)


def test_a_ledger_of_another_cell_stops_the_run_with_one_line(small_run, tmp_path: Path) -> None:
    _, reference = small_run
    suite, cells = small_cells(methods=["random"])
    out = tmp_path / "par"
    out.mkdir()
    header = (reference / f"{cells[0].cell_id}.jsonl").read_text().splitlines()[0]
    (out / f"{cells[1].cell_id}.jsonl").write_text(header + "\n")  # cell 0's header at cell 1's place
    run = ParallelRun(cells, context(out, suite), jobs=2, progress=False)
    with pytest.raises(LedgerError, match="another cell"):
        run.run()
    assert run.workers == []


def test_bad_input_found_in_a_worker_stops_the_run_with_its_own_error(small_run, tmp_path: Path) -> None:
    _, reference = small_run
    suite, cells = small_cells()
    cells = cells[:1]
    out = tmp_path / "par"
    out.mkdir()
    header, first = (reference / f"{cells[0].cell_id}.jsonl").read_text().splitlines()[:2]
    row = json.loads(first)
    row["config"] = {k: (v * 2 if isinstance(v, float) else v) for k, v in row["config"].items()}
    (out / f"{cells[0].cell_id}.jsonl").write_text(header + "\n" + json.dumps(row) + "\n")
    run = ParallelRun(cells, context(out, suite), jobs=1, progress=False)
    with pytest.raises(LedgerError, match="does not replay"):  # raised by the worker's replay, re-raised here
        run.run()
    assert run.workers == []


def test_a_paid_stage_missing_from_a_new_nodes_cache_is_charged_as_a_read(tmp_path: Path) -> None:
    """A cell resubmitted to a node without its cache entries (or resumed after the cache was
    deleted) must be charged as if the entries were there: the ledger equals the uninterrupted one
    but for ``cache_recomputed``, which records the recomputations apart."""
    from hpobench_elbo.executors.local import run_local

    suite = suite_from_mapping({"name": "pipe", "clock": "counting", "budget": 40, "seeds": [0], "refit": True,
                                "tasks": [{"name": "synthetic-pipeline", "scale": "smoke"}], "methods": ["grid"]})
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_local(suite.cells(), context(whole, suite), progress=False)
    (path,) = whole.glob("*.jsonl")
    lines = path.read_text().splitlines()
    assert sum(json.loads(line).get("cache_hits") or 0 for line in lines[1:5]) == 1  # trial 3 reads a paid stage
    resumed.mkdir()
    (resumed / path.name).write_text("\n".join(lines[:4]) + "\n")  # 3 trials recorded, no cache entries here
    run_local(suite.cells(), context(resumed, suite), progress=False)
    found = differences(normalised_ledgers(whole), normalised_ledgers(resumed))
    # the same charges and results; only the recomputations are recorded apart
    assert found and all(d.endswith("cache_recomputed: unexpected") for d in found), found
