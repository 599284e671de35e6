"""The kill test: SIGKILL (or SIGTERM) a run mid-suite, resume it, and get exactly the uninterrupted results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from golden_ledgers import UNDOCUMENTED

from hpobench_elbo.engine.loop import EXEC_LOG_ENV

from conftest import REPO, ledgers, run_cli, write_suite

N_CELLS = 4
VOLATILE = tuple(UNDOCUMENTED)  # timestamps, versions, git SHA, where and on what the cell ran


def kill_suite(steps: int) -> dict[str, Any]:
    """digits-mlp smoke, random and grid, 2 seeds, CountingClock; 6-9 trials per cell whatever ``steps``."""
    per_step = 32 * 0.001 + 0.001
    return {
        "name": "killme", "clock": "counting", "clock_options": {"per_example": 0.001, "per_event": 0.001},
        "budget": round(9.5 * steps * per_step, 3), "refit": True, "threads": 1, "seeds": [0, 1],
        "tasks": [{"name": "digits-mlp", "scale": "smoke", "options": {"steps": steps}}],
        "methods": ["random", "grid"],
    }


def snapshot(out: Path) -> tuple[int, int]:
    """(trial rows written, cells finished) in a results directory that is being written."""
    rows = finished = 0
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                kind = json.loads(line).get("type")
            except ValueError:  # a line being written right now
                continue
            rows += kind == "trial"
            finished += kind == "end"
    return rows, finished


def exec_counts(log: Path, strict: bool = True) -> Counter[tuple[str, int]]:
    """(cell, trial) -> executions, from the ``HPOBENCH_ELBO_EXEC_LOG`` file (``strict``: every line valid)."""
    counts: Counter[tuple[str, int]] = Counter()
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[(parts[0], int(parts[1]))] += 1
        else:
            assert not strict, f"bad exec log line {line!r}"
    return counts


def stable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def start_and_kill(suite: Path, out: Path, log: Path, stop: signal.Signals = signal.SIGKILL
                   ) -> tuple[int, int, int, str] | None:
    """Start the run; send it ``stop`` once trial rows exist, a cell is unfinished and a trial is running.

    Returns (rows, finished cells, exit status, stderr) after it stopped, or None if the run ended first.
    """
    env = {**os.environ, EXEC_LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "hpobench_elbo.cli", "run", str(suite), "--out", str(out),
                             "--quiet"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            rows, finished = snapshot(out) if out.exists() else (0, 0)
            started = sum(exec_counts(log, strict=False).values()) if log.exists() else 0
            if rows >= 3 and finished < N_CELLS and started > rows:  # aim for a trial in flight
                proc.send_signal(stop)
                _, stderr = proc.communicate(timeout=60)
                return (*snapshot(out), proc.returncode, stderr)
            time.sleep(0.005)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_kill_then_resume_equals_the_uninterrupted_run(tmp_path: Path, stop: signal.Signals) -> None:
    for attempt, steps in enumerate((40, 160, 640)):  # slower trials if the run outpaced the kill
        root = tmp_path / f"attempt{attempt}"
        suite = write_suite(root / "killme.yaml", kill_suite(steps))
        killed_out, killed_log = root / "killed", root / "killed-exec.log"
        at_kill = start_and_kill(suite, killed_out, killed_log, stop)
        if at_kill is not None:
            break
    else:
        raise AssertionError("the run always finished before it could be killed")
    rows_at_kill, finished_at_kill, status, stderr = at_kill
    assert rows_at_kill >= 1 and finished_at_kill < N_CELLS
    if stop == signal.SIGTERM:  # stopped as Ctrl-C stops it: exit 130 and one line saying how to go on
        assert status == 130, stderr
        assert stderr.strip().splitlines()[-1].startswith("hpobench-elbo: interrupted; every finished trial")
        assert f"hpobench-elbo resume {killed_out}" in stderr
    else:
        assert status == -signal.SIGKILL

    resumed = run_cli(["resume", str(killed_out), "--quiet"], env={EXEC_LOG_ENV: str(killed_log)})
    assert resumed.returncode == 0, resumed.stderr

    ref_out, ref_log = root / "reference", root / "reference-exec.log"
    ref = run_cli(["run", str(suite), "--out", str(ref_out), "--quiet"], env={EXEC_LOG_ENV: str(ref_log)})
    assert ref.returncode == 0, ref.stderr

    # 1. the same ledgers, field for field, except the undocumented ones (timestamps, versions, SHA)
    ref_ledgers, killed_ledgers = ledgers(ref_out), ledgers(killed_out)
    assert sorted(ref_ledgers) == sorted(killed_ledgers) and len(ref_ledgers) == N_CELLS
    for cell_id, records in ref_ledgers.items():
        assert records[-1]["type"] == "end"
        trials = [r for r in records if r["type"] == "trial"]
        assert 6 <= len(trials) <= 10, (cell_id, len(trials))
        assert stable(killed_ledgers[cell_id]) == stable(records), cell_id

    # 2. the same recommendations, as the CLI reports them
    assert sorted(resumed.stdout.splitlines()) == sorted(ref.stdout.splitlines())
    assert all("recommended trial" in line for line in ref.stdout.splitlines())

    # 3. no completed trial ran twice: executions = completed trials, plus at most one interrupted
    ref_exec, killed_exec = exec_counts(ref_log), exec_counts(killed_log)
    in_flight = []
    for cell_id, records in ref_ledgers.items():
        ids = [r["trial_id"] for r in records if r["type"] == "trial"]
        assert {t: ref_exec[(cell_id, t)] for t in ids} == {t: 1 for t in ids}
        runs = {t: killed_exec[(cell_id, t)] for t in ids}
        assert sum(runs.values()) == sum(n for (c, _), n in killed_exec.items() if c == cell_id)  # nothing else ran
        assert all(n in (1, 2) for n in runs.values()), runs
        in_flight += [(cell_id, t) for t, n in runs.items() if n == 2]
    assert len(in_flight) <= 1, in_flight
    assert sum(ref_exec.values()) == sum(len(r) - 2 for r in ref_ledgers.values())
    assert sum(killed_exec.values()) == sum(ref_exec.values()) + len(in_flight)
