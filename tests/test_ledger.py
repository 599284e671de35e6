"""The ledger: header, fsynced lines, torn and damaged files, pandas/parquet, suite changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from hpobench_elbo import api, cli, export_parquet, load_results
from hpobench_elbo.engine.ledger import SCHEMA_VERSION, documented_fields, read_ledger
from hpobench_elbo.engine.seeds import SEED_NAMES

from conftest import SMALL_SUITE, ledgers, read_jsonl, write_suite



def stable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without the fields that describe when and where they were written (timestamps, the
    machine's load ...: ``ledger.UNDOCUMENTED_FIELDS``), the only ones allowed to differ between runs."""
    return [documented_fields(r) for r in records]


def copy_results(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_header_fields(small_run: tuple[Path, Path]) -> None:
    _, out = small_run
    cells = ledgers(out)
    assert len(cells) == 4
    for cell_id, records in cells.items():
        header = records[0]
        assert header["type"] == "header"
        for key in ("schema", "suite", "suite_hash", "cell_id", "cell", "seeds", "versions", "git_sha", "device",
                    "clock", "unit", "threads", "determinism", "created"):
            assert key in header, key
        assert header["schema"] == SCHEMA_VERSION
        assert header["cell_id"] == cell_id
        assert header["suite_hash"] == json.loads((out / "suite-hash.json").read_text())["suite_hash"]
        assert {"task", "scale", "method", "method_options", "seed", "budget", "clock"} <= set(header["cell"])
        assert set(header["seeds"]) == {"cell_seed", *SEED_NAMES}
        assert header["seeds"]["cell_seed"] == header["cell"]["seed"]
        assert {"python", "torch", "numpy"} <= set(header["versions"])
        assert header["device"] == "cpu" and header["unit"] == "cost units" and header["threads"] == 1
        assert header["git_sha"] is None or len(header["git_sha"]) == 40
        assert records[-1]["type"] == "end"
    # same seed -> same named child seeds, whatever the method
    by_seed: dict[int, set[str]] = {}
    for records in cells.values():
        by_seed.setdefault(records[0]["cell"]["seed"], set()).add(json.dumps(records[0]["seeds"], sort_keys=True))
    assert all(len(v) == 1 for v in by_seed.values()) and len(by_seed) == 2


def test_one_fsynced_line_per_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:  # a spy, not a mock: the real fsync still runs
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    suite = write_suite(tmp_path / "one.yaml", {**SMALL_SUITE, "name": "one", "seeds": [0], "methods": ["random"],
                                                "budget": 4.0})
    api.run(suite, out=tmp_path / "out", device="cpu", progress=False)
    (path,) = (tmp_path / "out").glob("*.jsonl")
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    kinds = [r["type"] for r in records]
    assert kinds[0] == "header" and kinds[-1] == "end" and set(kinds[1:-1]) == {"trial"}
    assert len(kinds) >= 4  # at least two trials
    # each trial is one line, and each line was fsynced once before the next was written
    # the header is written whole to a temporary file and renamed into place; each row is fsynced
    assert synced.count(str(path.resolve()) + ".tmp") + synced.count(str(path.resolve())) == len(lines)
    assert [r["trial_id"] for r in records[1:-1]] == list(range(len(lines) - 2))


def test_torn_last_line_is_moved_aside_and_the_run_continues(small_run: tuple[Path, Path], tmp_path: Path) -> None:
    out = copy_results(small_run[1], tmp_path / "results")
    original = ledgers(out)
    cell_id = sorted(original)[0]
    path = out / f"{cell_id}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) >= 5
    half = lines[3][: len(lines[3]) // 2]  # a crash in the middle of writing trial 2
    path.write_text("".join(lines[:3]) + half)
    with pytest.warns(UserWarning, match="torn"):
        summaries = api.resume(out, device="cpu", progress=False)
    torn = path.with_name(path.name + ".torn")
    assert torn.read_text() == half + "\n"
    # the cell resumed from trial 2 and ended exactly as the uninterrupted run did
    assert stable(read_jsonl(path)) == stable(original[cell_id])
    assert {s.cell_id: s.n_trials for s in summaries}[cell_id] == len(original[cell_id]) - 2
    for other in sorted(original)[1:]:
        assert read_jsonl(out / f"{other}.jsonl") == original[other]  # finished cells are untouched


@pytest.mark.parametrize("line", [2, 3])
def test_damage_before_the_last_line_stops_with_exit_2(small_run: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], line: int) -> None:
    out = copy_results(small_run[1], tmp_path / "results")
    path = sorted(out.glob("*.jsonl"))[1]
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1][:40] + "\n"  # a damaged line, with complete lines after it
    path.write_text("".join(lines))
    before = path.read_text()
    code = cli.main(["resume", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}:{line}" in err
    assert path.read_text() == before  # nothing was changed or moved
    assert not path.with_name(path.name + ".torn").exists()


DOCUMENTED_COLUMNS = {
    "suite", "cell_id", "task", "scale", "method", "method_name", "seed", "budget", "unit", "device", "trial_id",
    "kind", "status", "data", "tuner", "steps", "n_train", "score", "score_name", "spent", "cost", "overshoot",
    "recommendation", "cache_hits", "cost_saved", "error", "config",
    "cost_train", "cost_validate", "cost_method", "cost_test",
    "config_lr", "config_weight_decay", "config_momentum", "metric_train_loss", "test_accuracy", "test_loss",
}


def test_load_results_and_parquet(small_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = small_run
    frame = load_results(out)
    assert isinstance(frame, pd.DataFrame)
    assert DOCUMENTED_COLUMNS <= set(frame.columns), DOCUMENTED_COLUMNS - set(frame.columns)
    cells = ledgers(out)
    trials = [r for records in cells.values() for r in records if r["type"] == "trial"]
    assert len(frame) == len(trials)
    assert set(frame["cell_id"]) == set(cells)
    assert set(frame["method"]) == {"random", "grid"} and set(frame["seed"]) == {0, 1}
    assert set(frame["kind"]) == {"trial", "refit"}
    ok = frame["status"] == "ok"
    assert frame.loc[ok, "test_accuracy"].between(0, 1).all()
    assert frame.loc[~ok, "test_accuracy"].isna().all()
    # the charged cost column excludes the recorded test time
    for _, row in frame.iterrows():
        parts = [row.get(f"cost_{p}") for p in ("train", "validate", "hyper", "method", "cache")]
        assert row["cost"] == pytest.approx(sum(0.0 if pd.isna(x) else x for x in parts))
    # one ledger file works too
    one = sorted(out.glob("*.jsonl"))[0]
    assert len(load_results(one)) == sum(r["type"] == "trial" for r in read_jsonl(one))

    target = export_parquet(out, tmp_path / "results.parquet")
    back = pd.read_parquet(target)
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), frame.reset_index(drop=True), check_dtype=False)


def test_a_changed_suite_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {**SMALL_SUITE, "name": "change", "seeds": [0], "methods": ["random"], "budget": 3.0}
    suite = write_suite(tmp_path / "change.yaml", body)
    out = tmp_path / "out"
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    (first,) = out.glob("*.jsonl")
    text = first.read_text()
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet"]) == 0  # unchanged: finished cells kept
    assert first.read_text() == text
    capsys.readouterr()

    write_suite(suite, {**body, "budget": 3.5})  # the suite file changed
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "--force" in err and "Traceback" not in err
    assert list(out.glob("*.jsonl")) == [first]  # nothing ran
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet", "--force"]) == 0
    assert "moved to" in capsys.readouterr().err
    (second,) = out.glob("*.jsonl")  # the new cell (new budget, new id) ran; the old one is kept aside
    assert second != first and [p.read_text() for p in out.glob("aside-*/*.jsonl")] == [text]

    # resume reads the stored suite copy: editing it is the same change
    stored = out / "suite.yaml"
    raw = yaml.safe_load(stored.read_text())
    stored.write_text(yaml.safe_dump({**raw, "budget": 4.0}, sort_keys=False))
    capsys.readouterr()
    assert cli.main(["resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "Traceback" not in err
    assert list(out.glob("*.jsonl")) == [second]
    assert cli.main(["resume", str(out), "--quiet", "--force"]) == 0
    assert len(list(out.glob("*.jsonl"))) == 1 and len(list(out.glob("aside-*/*.jsonl"))) == 2
    for path in out.glob("*.jsonl"):
        assert read_ledger(path).end is not None


HEADER = {"cell": {"x": 1}, "suite_hash": "h", "suite": "s", "cell_id": "c", "seeds": {"cell_seed": 0},
          "clock": "counting", "unit": "cost units"}


def test_non_finite_trajectory_values_are_written_as_null(tmp_path: Path) -> None:
    """A diverged tuner records NaN in its trajectory; the row must still be written (null)."""
    from hpobench_elbo.contracts import TrialResult, TrialSpec
    from hpobench_elbo.engine.ledger import Ledger

    ledger = Ledger.open(tmp_path / "c.jsonl", HEADER)
    result = TrialResult(spec=TrialSpec({"lr": 0.1}, trial_id=0), status="diverged", cost={"train": 1.0},
                         trajectory=({"step": 1, "nll": float("nan"), "kl": float("inf")},))
    ledger.append({**result.to_json(), "recommendation": None, "spent": 1.0, "meter": {"train": 1.0}})
    row = read_ledger(tmp_path / "c.jsonl").rows[0]
    assert row["trajectory"] == [{"step": 1, "nll": None, "kl": None}] and row["status"] == "diverged"


def test_a_torn_header_line_is_moved_aside_and_the_ledger_starts_again(tmp_path: Path) -> None:
    from hpobench_elbo.engine.ledger import Ledger

    path = tmp_path / "c.jsonl"
    path.write_text('{"type": "header", "sche')  # the crash came while the first line was written
    with pytest.warns(UserWarning, match="torn"):
        ledger = Ledger.open(path, HEADER)
    assert ledger.rows == [] and read_ledger(path).header["cell"] == {"x": 1}
    assert (tmp_path / "c.jsonl.torn").read_text().startswith('{"type": "header", "sche')
