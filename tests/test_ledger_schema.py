"""A ledger line that is valid JSON but not a valid record is damage, in every command alike:
first record, a middle one, the last one (torn: a writer moves it aside), duplicate trial ids, and
a 0-byte ledger (not started)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from hpobench_elbo.report.html import build_report


def damaged_copy(small_run: tuple[Path, Path], tmp_path: Path, line: int, change: dict) -> tuple[Path, Path]:
    """A copy of the small run whose first ledger has record ``line`` (0 = header) changed."""
    out = Path(shutil.copytree(small_run[1], tmp_path / "results"))
    ledger = sorted(out.glob("*.jsonl"))[0]
    records = [json.loads(x) for x in ledger.read_text().splitlines()]
    if line == -1:
        records = [r for r in records if r["type"] != "end"]  # the damaged row is then the last line
    records[line] = {**records[line], **change}
    ledger.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, ledger


@pytest.mark.parametrize(("line", "change", "why"), [
    (0, {"cell": "no mapping"}, "header record: cell"),
    (2, {"status": "exploded"}, "trial record: status"),
    (3, {"trial_id": 1}, "trial 1 recorded twice"),
    (2, {"type": "note"}, "not a ledger record"),
    # issue 21 item 5: values that used to be accepted without a word
    (2, {"score": float("nan")}, "NaN is not a valid ledger value"),
    (2, {"spent": -5}, "trial record: spent"),
    (2, {"cost": {"train": -1.0}}, "trial record: cost.train"),
    (2, {"trial_id": 5}, "trial 5 out of order (expected trial 1"),
    (2, {"recommendation": 99}, "recommendation 99 is not an ok trial"),
    (3, {"spent": 0.0}, "spent 0 is below"),
], ids=["header", "middle", "duplicate-id", "unknown-type", "score-nan", "spent-negative", "cost-negative",
        "ids-out-of-order", "recommends-a-missing-trial", "spent-decreasing"])
def test_damage_before_the_last_line(small_run: tuple[Path, Path], tmp_path: Path, line: int, change: dict,
                                     why: str) -> None:
    out, ledger = damaged_copy(small_run, tmp_path, line, change)
    text = ledger.read_text()
    resumed = run_cli(["resume", str(out), "--quiet"])
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1
    assert f"{ledger}:{line + 1}" in resumed.stderr and why in resumed.stderr
    status = run_cli(["status", str(out)])
    assert status.returncode == 0
    assert any(row.startswith("damaged") and ledger.stem in row and why in row for row in status.stdout.splitlines())
    report = build_report(out)
    assert any(ledger.name in note and "not readable" in note for note in report.notes)
    assert len(report.tables["status"]) >= 1  # the readable cells are still reported
    assert ledger.read_text() == text  # readers changed nothing


def test_a_wrong_last_record_is_torn_for_the_writer_and_reported_by_readers(small_run: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    out, ledger = damaged_copy(small_run, tmp_path, -1, {"trial_id": "seven"})
    text = ledger.read_text()
    status = run_cli(["status", str(out)])
    assert status.returncode == 0 and "damaged" not in status.stdout
    report = build_report(out)
    assert any(ledger.name in note and "torn" in note for note in report.notes)
    assert ledger.read_text() == text and not ledger.with_name(ledger.name + ".torn").exists()
    resumed = run_cli(["resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert '"seven"' in ledger.with_name(ledger.name + ".torn").read_text()  # the writer moved it aside
    records = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert records[-1]["type"] == "end"


def test_an_empty_ledger_means_not_started_to_every_command(small_run: tuple[Path, Path], tmp_path: Path) -> None:
    out = Path(shutil.copytree(small_run[1], tmp_path / "results"))
    ledger = sorted(out.glob("*.jsonl"))[0]
    ledger.write_text("")
    status = run_cli(["status", str(out)])
    assert status.returncode == 0
    assert any(row.startswith("remaining") and ledger.stem in row for row in status.stdout.splitlines())
    report = build_report(out)
    assert any(ledger.name in note for note in report.notes)
    assert run_cli(["resume", str(out), "--quiet"]).returncode == 0
    assert json.loads(ledger.read_text().splitlines()[-1])["type"] == "end"


def test_an_end_record_recommending_a_missing_trial_is_not_taken(small_run: tuple[Path, Path], tmp_path: Path) -> None:
    """The end record is the last line: like any wrong last record it is torn to a reader and moved
    aside by the writer, and resume ends the cell again with the real recommendation."""
    out = Path(shutil.copytree(small_run[1], tmp_path / "results"))
    ledger = sorted(out.glob("*.jsonl"))[0]
    records = [json.loads(x) for x in ledger.read_text().splitlines()]
    right = records[-1]["recommendation"]
    records[-1] = {**records[-1], "recommendation": 99}
    ledger.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = build_report(out)
    assert any(ledger.name in note and "torn" in note for note in report.notes)
    status = run_cli(["status", str(out)])
    assert any(row.startswith("interrupted") and ledger.stem in row for row in status.stdout.splitlines())
    resumed = run_cli(["resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert "recommendation 99" not in ledger.read_text() and '"recommendation": 99' in \
        ledger.with_name(ledger.name + ".torn").read_text()
    assert json.loads(ledger.read_text().splitlines()[-1])["recommendation"] == right


def test_a_ledger_under_another_cells_name_is_refused_by_every_reader(small_run: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """Issue 21 item 4: a seed-1 ledger copied over the seed-0 file. The report used to crash with a
    pandas traceback and status said done; now every reader says the ledger belongs to another cell."""
    import hpobench_elbo as hb
    from hpobench_elbo.errors import LedgerError

    out = Path(shutil.copytree(small_run[1], tmp_path / "results"))
    seed0 = next(p for p in sorted(out.glob("*.jsonl")) if "--random--s0--" in p.name)
    seed1 = next(p for p in sorted(out.glob("*.jsonl")) if "--random--s1--" in p.name)
    shutil.copyfile(seed1, seed0)
    text = seed0.read_text()
    why = "ledger belongs to another cell"
    report = run_cli(["report", str(out), "--out", str(tmp_path / "report")])
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    notes = build_report(out).notes
    assert any(seed0.name in note and why in note for note in notes)
    status = run_cli(["status", str(out)])
    assert status.returncode == 0
    assert any(row.startswith("damaged") and seed0.stem in row and why in row for row in status.stdout.splitlines())
    resumed = run_cli(["resume", str(out), "--quiet"])
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1 and why in resumed.stderr
    with pytest.raises(LedgerError, match=why):
        hb.load_results(out)
    with pytest.raises(LedgerError, match=why):
        hb.read_ledger(seed0)
    assert seed0.read_text() == text  # no reader changed it
