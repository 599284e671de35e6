"""The command line: list, run --dry-run, status, report, and the smoke suite's coverage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from hpobench_elbo import api, cli
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.engine.lock import ResultsLock
from hpobench_elbo.registry import METHODS, TASKS
from hpobench_elbo.suite import load_suite

from conftest import REPO, SMALL_SUITE, write_suite


def blocks(text: str) -> dict[str, str]:
    """``list`` output: each two-space-indented entry name -> its lines (the entry and its details)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            current = line.strip().split(":")[0].split(" ")[0]
            out[current] = [line]
        elif current is not None and line.startswith("    "):
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_list_shows_tasks_with_scales_and_spaces_and_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert text.index("tasks:") < text.index("methods:")
    entries = blocks(text)
    for task in ("digits-mlp", "mnist-mlp"):
        block = entries[task]
        for scale in TASKS.get(task).SCALES:
            assert f"scale {scale}:" in block, (task, scale)
        assert "space: lr: float[0.0001, 1] log" in block
        assert "weight_decay: float[1e-07, 0.01] log or 0" in block and "momentum:" in block
    assert "N=all, 1500 steps, batch 50" in entries["mnist-mlp"]  # the scale's real numbers
    assert "data: mnist-5k: pool 4,000, test 1,000, 10 classes" in entries["mnist-mlp"]  # loaded, not declared
    for task in TASKS.names():  # every registered task is listed with its data and space
        assert "data: " in entries[task] and "space: " in entries[task], task
    methods = text[text.index("methods:"):]
    for method in ("random", "grid"):
        assert f"  {method} (validation: selection)" in methods
    assert set(METHODS.names()) | set(TASKS.names()) <= set(entries)


def test_dry_run_lists_cells_and_runs_nothing(small_run: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    suite, _ = small_run
    out = tmp_path / "never"
    assert cli.main(["run", str(suite), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = api.plan(suite, out).cells
    assert len(cells) == 4
    for cell in cells:
        assert any(line.startswith(cell.cell_id) and "budget 6 cost units" in line for line in lines)
    assert lines[-1].startswith(f"4 cells -> {out}")
    assert not out.exists()  # nothing was written, nothing ran
    # --only narrows the plan
    assert cli.main(["run", str(suite), "--out", str(out), "--dry-run", "--only", "method=grid,seed=1"]) == 0
    only = capsys.readouterr().out.splitlines()
    assert len(only) == 2 and "--grid--s1--" in only[0] and only[1].startswith("1 cells")
    # ';' separates alternative selections; cells start seed by seed
    assert cli.main(["run", str(suite), "--out", str(out), "--dry-run", "--only", "method=grid;method=random,seed=0"]) == 0
    alternatives = capsys.readouterr().out.splitlines()
    chosen = [c for c in cells if c.method == "grid" or (c.method == "random" and c.seed == 0)]
    assert [line.split()[0] for line in alternatives[:-1]] == [c.cell_id for c in chosen] and len(chosen) == 3
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)
    assert cli.main(["run", str(suite), "--out", str(out), "--dry-run", "--only", "method=grid;colour=red"]) == 2


def test_status_reports_done_running_remaining(small_run: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = Path(shutil.copytree(small_run[1], tmp_path / "results"))
    paths = sorted(out.glob("*.jsonl"))
    running, remaining = paths[0], paths[1]
    lines = running.read_text().splitlines(keepends=True)
    running.write_text("".join(lines[:3]))  # header + two trials, no end: a cell in progress
    remaining.unlink()
    assert cli.main(["status", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[-1] == "2 done, 1 interrupted, 1 remaining"  # no writer holds the directory
    with ResultsLock(out):  # a run in progress holds the writer lock
        assert cli.main(["status", str(out)]) == 0
        text = capsys.readouterr().out.splitlines()
    assert text[-1] == "2 done, 1 running, 1 remaining"
    by_cell = {line.split()[1]: line for line in text[:-1]}
    assert by_cell[running.stem].startswith("running") and "2 trials" in by_cell[running.stem]
    assert by_cell[remaining.stem].startswith("remaining") and "0 trials" in by_cell[remaining.stem]
    for path in paths[2:]:
        assert by_cell[path.stem].startswith("done")
    assert cli.main(["status", str(tmp_path)]) == 2  # not a results directory
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err


def test_report_writes_png_and_csv(small_run: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    assert cli.main(["report", str(small_run[1]), "--png", "--out", str(report)]) == 0
    printed = [Path(p) for p in capsys.readouterr().out.split()]
    assert not [p for p in printed if p.suffix == ".html"]  # --png alone writes no HTML
    pngs = [p for p in printed if p.suffix == ".png"]
    csvs = [p for p in printed if p.suffix == ".csv"]
    assert pngs and csvs and all(p.parent == report for p in printed)
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    table = pd.read_csv(report / "table-accuracy.csv")
    assert set(table["method"]) == {"random", "grid"}
    assert table["test_accuracy_median"].between(0, 1).all()
    assert (table["seeds"] == 2).all()
    assert (table["n_ok"] > 0).all()


def test_smoke_suite_covers_every_registered_method(capsys: pytest.CaptureFixture[str]) -> None:
    smoke = REPO / "suites" / "smoke.yaml"
    suite = load_suite(smoke)
    assert suite.clock == "counting" and {t.scale for t in suite.tasks} == {"smoke"}
    in_suite = {m.name for _, _, _, m in suite.pairs()}
    missing = set(METHODS.names()) - in_suite
    assert not missing, f"suites/smoke.yaml lacks registered methods: {sorted(missing)}"
    assert cli.main(["run", str(smoke), "--dry-run"]) == 0
    assert f"{len(suite.cells())} cells" in capsys.readouterr().out


def test_report_writes_html_by_default_and_pdf_on_request(small_run: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(small_run[1]), "--out", str(tmp_path / "a")]) == 0
    # the trial table is written beside the HTML (CSV and Parquet, linked from it)
    assert sorted(Path(p).name for p in capsys.readouterr().out.split()) == ["report.html", "trials.csv",
                                                                             "trials.parquet"]
    assert cli.main(["report", str(small_run[1]), "--html", "--pdf", "--out", str(tmp_path / "b")]) == 0
    written = [Path(p) for p in capsys.readouterr().out.split()]
    assert sorted(p.name for p in written) == ["report.html", "report.pdf", "trials.csv", "trials.parquet"]
    assert next(p for p in written if p.suffix == ".pdf").read_bytes()[:5] == b"%PDF-"


def test_reuse_takes_finished_cells_of_another_directory_and_reruns_the_rest(
        small_run: tuple[Path, Path], tmp_path: Path) -> None:
    first_suite, source = small_run
    other = Path(shutil.copytree(source, tmp_path / "other"))
    # another suite (another name, hence another suite hash) holding the same cells
    suite = write_suite(tmp_path / "renamed.yaml", {**SMALL_SUITE, "name": "renamed"})
    assert load_suite(suite).suite_hash != load_suite(first_suite).suite_hash
    cells = api.plan(suite, other).cells
    assert [c.cell_id for c in cells] == [c.cell_id for c in api.plan(first_suite, other).cells]
    unfinished = other / f"{cells[0].cell_id}.jsonl"
    lines = unfinished.read_text().splitlines(keepends=True)
    assert '"type": "end"' in lines[-1]
    unfinished.write_text("".join(lines[:-2]))  # no end record: that run is not taken
    out = tmp_path / "results"
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet", "--reuse", str(other)]) == 0
    for cell in cells[1:]:  # taken byte for byte
        assert (out / f"{cell.cell_id}.jsonl").read_text() == (source / f"{cell.cell_id}.jsonl").read_text()
    rerun, original = read_ledger(out / unfinished.name), read_ledger(source / unfinished.name)
    assert rerun.end is not None and rerun.header["created"] != original.header["created"]  # run here, not copied
    assert [(r["config"], r["score"]) for r in rerun.rows] == [(r["config"], r["score"]) for r in original.rows]
    assert unfinished.read_text() == "".join(lines[:-2])  # the source is not changed
    assert cli.main(["run", str(suite), "--out", str(tmp_path / "x"), "--reuse", str(tmp_path / "none")]) == 2


def test_reuse_searches_several_directories_in_order(small_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``--reuse A --reuse B``: each finished cell is taken from the first directory that holds it."""
    _, source = small_run
    suite = write_suite(tmp_path / "renamed.yaml", {**SMALL_SUITE, "name": "renamed"})
    cells = api.plan(suite, tmp_path / "results").cells
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    shutil.copytree(source, second)
    shutil.copyfile(source / f"{cells[0].cell_id}.jsonl", first / f"{cells[0].cell_id}.jsonl")
    out = tmp_path / "results"
    taken_before = {c.cell_id: (source / f"{c.cell_id}.jsonl").read_text() for c in cells}
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet", "--reuse", str(first),
                     "--reuse", str(second)]) == 0
    for cell in cells:  # every cell taken, none rerun
        assert (out / f"{cell.cell_id}.jsonl").read_text() == taken_before[cell.cell_id]
