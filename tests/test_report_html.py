"""The HTML/PDF report: its numbers against the ledgers, its figures' data, and the rendered files.

One small real run (digits-mlp smoke, CountingClock, random + grid + de-elbo, two seeds) is shared
by the tests. Rendering checks use headless Chromium and poppler (``pdftoppm``, ``pdftotext``):
they skip when those are missing, and fail instead under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SMALL_SUITE, write_suite
from hpobench_elbo.errors import UserError
from hpobench_elbo.report import stats
from hpobench_elbo.report.figures import OKABE_ITO, cd_figure, method_styles, rank_figure
from hpobench_elbo.report.html import Report, build_report, fmt, write_html_report
from hpobench_elbo.report.traces import load_results

REPORT_SUITE = {**SMALL_SUITE, "name": "report-small", "budget": 8.0, "methods": ["random", "grid", "de-elbo"]}
METHODS = ["de-elbo", "grid", "random"]


def require_tool(name: str) -> str:
    """The path of a command-line tool; skip without it, or fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (Debian: apt-get install -y chromium poppler-utils)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of ``REPORT_SUITE`` (read-only; copy it before changing anything)."""
    from hpobench_elbo import api

    root = tmp_path_factory.mktemp("report_run")
    api.run(write_suite(root / "suite.yaml", REPORT_SUITE), out=root / "results", device="cpu", progress=False)
    return root / "results"


@pytest.fixture(scope="session")
def report(report_run: Path) -> Report:
    return build_report(report_run)


@pytest.fixture(scope="session")
def written(report_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("report_out")
    paths = write_html_report(report_run, out, html=True, pdf=True)
    return {p.suffix: p for p in paths}


def copy_run(report_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "results"
    shutil.copytree(report_run, target)
    return target


# --- numbers against load_results ------------------------------------------------------------------

def expected_finals(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from load_results alone: the test accuracy of the trial recommended after the last ok row."""
    out = []
    for cell_id, rows in frame.groupby("cell_id"):
        ok = rows[rows["status"] == "ok"].sort_values("trial_id")
        tests = dict(zip(rows["trial_id"], rows["test_accuracy"]))
        final = tests[int(ok["recommendation"].iloc[-1])] if len(ok) else np.nan
        out.append({"cell_id": cell_id, "method": rows["method"].iloc[0], "seed": rows["seed"].iloc[0],
                    "final": final})
    return pd.DataFrame(out)


def test_final_table_equals_load_results(report_run: Path, report: Report) -> None:
    finals = expected_finals(load_results(report_run))
    table = report.tables["final"].set_index("method")
    assert sorted(table.index) == METHODS
    for method, group in finals.groupby("method"):
        values = group["final"].to_numpy(float)
        assert table.loc[method, "mean"] == pytest.approx(values.mean())
        # two seeds (below stats.BOOTSTRAP_MIN_SEEDS): min-median-max, not a bootstrap interval
        assert table.loc[method, "interval"] == "range"
        assert table.loc[method, "ci_low"] == pytest.approx(values.min())
        assert table.loc[method, "ci_high"] == pytest.approx(values.max())
        assert table.loc[method, "median"] == pytest.approx(np.median(values))


def test_status_and_cache_tables_equal_load_results(report_run: Path, report: Report) -> None:
    frame = load_results(report_run)
    table = report.tables["status"].set_index("method")
    for method, rows in frame.groupby("method"):
        counts = rows["status"].value_counts()
        for status in ("ok", "cut", "pruned", "diverged", "failed"):
            assert table.loc[method, status] == counts.get(status, 0)
        assert table.loc[method, "trials"] == (rows["kind"] == "trial").sum()
        assert table.loc[method, "refits"] == (rows["kind"] == "refit").sum()
        assert table.loc[method, "cache_hits"] == rows["cache_hits"].sum()
        assert table.loc[method, "cost_saved"] == pytest.approx(rows["cost_saved"].sum())
    assert table.loc["grid", "data_use"] == "validation split + refit"
    assert table.loc["de-elbo", "data_use"] == "none (all N)"


def test_time_to_target_follows_its_definition(report_run: Path, report: Report) -> None:
    frame = load_results(report_run)
    finals = expected_finals(frame)
    times: dict[tuple[str, int], float] = {}
    for (method, seed), rows in frame.groupby(["method", "seed"]):
        target = finals.loc[finals["seed"] == seed, "final"].max() - 0.01  # one accuracy point
        tests = dict(zip(rows["trial_id"], rows["test_accuracy"]))
        ok = rows[rows["status"] == "ok"].sort_values("trial_id")
        hits = [spent for spent, rec in zip(ok["spent"], ok["recommendation"]) if tests[int(rec)] >= target]
        times[(method, seed)] = hits[0] if hits else np.nan
    table = report.tables["time_to_target"].set_index("method")
    for method in METHODS:
        mine = np.array([times[(method, s)] for s in (0, 1)])
        assert table.loc[method, "reached"] == np.isfinite(mine).sum()
        if np.isfinite(mine).any():
            assert table.loc[method, "median_time"] == pytest.approx(np.nanmedian(mine))
    if np.isfinite([times[("grid", s)] for s in (0, 1)]).any():
        assert table.loc["grid", "speedup"] == pytest.approx(1.0)


def test_speedup_is_a_lower_bound_where_grid_search_never_reached_the_target() -> None:
    nan = np.nan
    cell_times = pd.DataFrame({
        "task": ["t"] * 6, "method": ["grid", "grid", "m", "m", "n", "n"], "seed": [0, 1] * 3,
        "unit": ["cost units"] * 6, "time_to_target": [100.0, nan, 10.0, 20.0, nan, nan],
        "spent": [200.0, 400.0, 150.0, 150.0, 150.0, 150.0]})
    table = stats.time_to_target_table(cell_times, {"t": "grid"}).set_index("method")
    assert table.loc["m", "speedup"] == pytest.approx(10.0) and table.loc["m", "speedup_pairs"] == 1
    # seed 1: the grid never got there in the 400 it was charged, so its time there is > 400
    assert table.loc["m", "speedup_at_least"] == pytest.approx(np.sqrt(10.0 * 400.0 / 20.0))
    assert table.loc["m", "censored"] == 1
    assert np.isnan(table.loc["n", "speedup_at_least"]) and table.loc["n", "censored"] == 0
    assert table.loc["grid", "speedup"] == pytest.approx(1.0) and table.loc["grid", "censored"] == 0
    nothing = cell_times.assign(spent=[200.0, 0.0, 150.0, 150.0, 150.0, 150.0])  # grid seed 1 charged nothing
    table = stats.time_to_target_table(nothing, {"t": "grid"}).set_index("method")
    assert table.loc["m", "speedup_at_least"] == pytest.approx(10.0) and table.loc["m", "censored"] == 0


def test_best_final_per_task_follows_the_metric_direction_with_ties_and_no_model() -> None:
    finals = pd.DataFrame({
        "task": ["acc"] * 3 + ["loss"] * 3 + ["none"] * 2, "method": ["a", "b", "c", "a", "b", "c", "a", "b"],
        "seed": 0, "metric": ["accuracy"] * 3 + ["mse"] * 3 + ["accuracy"] * 2,
        "direction": ["max"] * 3 + ["min"] * 3 + ["max"] * 2,
        "final": [0.9, 0.9, 0.5, 12.0, 30.0, np.nan, np.nan, np.nan]})
    best = stats.final_table(finals).set_index(["task", "method"])["best"]
    assert best[("acc", "a")] and best[("acc", "b")] and not best[("acc", "c")]  # a tie: both best
    assert best[("loss", "a")] and not best[("loss", "b")] and not best[("loss", "c")]  # lowest loss wins
    assert not best[("none", "a")] and not best[("none", "b")]  # no model: nobody is best


def test_paired_comparison_is_per_task_and_pooled_per_method() -> None:
    finals = pd.DataFrame({
        "task": ["a"] * 4 + ["b"] * 4, "method": ["grid", "grid", "m", "m"] * 2, "seed": [0, 1] * 4,
        "metric": ["accuracy"] * 8, "direction": ["max"] * 8,
        "final": [0.5, 0.6, 0.7, 0.5, 0.8, 0.8, 0.9, 0.9]})
    table = stats.paired_against_grid(finals, {"a": "grid", "b": "grid"}).set_index(["task", "method"])
    assert list(table.index) == [("a", "m"), ("b", "m"), (stats.ALL_TASKS, "m")]
    assert (table.loc[("a", "m"), ["pairs", "wins", "losses"]].tolist()) == [2, 1, 1]
    assert table.loc[("b", "m"), "median_difference"] == pytest.approx(0.1)
    assert table.loc[(stats.ALL_TASKS, "m"), "pairs"] == 4 and table.loc[(stats.ALL_TASKS, "m"), "wins"] == 3


def test_the_glance_table_holds_one_row_per_task_and_method_with_its_data_use(report: Report,
                                                                            written: dict[str, Path]) -> None:
    summary = report.tables["summary"].set_index("method")
    assert sorted(summary.index) == METHODS
    final = report.tables["final"].set_index("method")
    assert np.allclose(summary.loc[METHODS, "mean"].to_numpy(float), final.loc[METHODS, "mean"].to_numpy(float))
    assert summary.loc["de-elbo", "data_use"] == "none (all N)"
    assert summary["best"].sum() >= 1 and summary.loc[summary["best"], "mean"].max() == final["mean"].max()
    html = written[".html"].read_text()
    glance = html[html.index('id="table-glance"'):html.index("</table>", html.index('id="table-glance"'))]
    assert glance.count("<tr") == 1 + len(METHODS)  # the header and one row per method
    assert "none (all N)" in glance and "validation split + refit" in glance


def test_the_headline_names_the_best_ranked_method_and_its_record_against_grid(report: Report) -> None:
    (_, result), = report.friedman  # one task: one group
    best = min(result.mean_ranks, key=result.mean_ranks.get)
    line, = report.headline
    assert f"{best} has the best mean rank" in line
    if best != "grid":
        row = report.tables["paired"].set_index("method").loc[best]
        assert f"on {row['wins']} of {row['pairs']} seeds of digits-mlp" in line


def test_the_machine_load_is_recorded_by_the_ledger_and_shown_by_the_report(report_run: Path,
                                                                            report: Report) -> None:
    from hpobench_elbo.engine.ledger import SCHEMA_VERSION, read_ledger
    from hpobench_elbo.report.html import load_text

    contents = read_ledger(sorted(report_run.glob("*.jsonl"))[0])
    assert contents.header["schema"] == SCHEMA_VERSION >= 4
    machine = contents.header["machine"]
    assert machine["cpus"] == os.cpu_count() and len(machine["load"]) == 3  # Linux has load averages
    assert contents.rows and all(isinstance(r["machine"]["load"], float) for r in contents.rows)
    assert isinstance(contents.end["machine"]["load"], float)
    status = report.tables["status"]
    assert status["load_max"].notna().all() and (status["load_max"] >= 0).all()
    assert report.provenance["load"].startswith("1-minute load average: median over cells")
    older = pd.DataFrame({"load_median": [np.nan], "load_max": [np.nan], "cpus": [np.nan]})
    assert load_text(older).startswith("not recorded")  # ledgers written before schema 4


# --- figures: one line per method, data and SVG --------------------------------------------------------

def test_curve_figures_have_one_line_per_method(report: Report) -> None:
    for key in ("anytime", "oracle"):
        figure = report.figures[key]
        assert sorted(figure.data["digits-mlp"]) == METHODS
        ids = re.findall(r'<g id="digits-mlp--([^"]+)"', figure.svg)
        assert sorted(ids) == METHODS
    ranks = report.figures["ranks"]
    assert sorted(ranks.data["ranks"]) == METHODS
    assert sorted(re.findall(r'<g id="ranks--([^"]+)"', ranks.svg)) == METHODS
    assert sorted(report.figures["cd"].data["cd"]) == METHODS


def test_anytime_curve_ends_at_the_final_value_of_a_single_seed_median(report: Report) -> None:
    finals = report.tables["final"].set_index("method")
    for method, points in report.figures["anytime"].data["digits-mlp"].items():
        assert len(points["x"]) > 0
        lo, hi = finals.loc[method, "ci_low"], finals.loc[method, "ci_high"]
        assert lo - 1e-9 <= points["y"][-1] <= hi + 1e-9  # the median of two seeds is their mean


def test_trajectories_only_for_methods_that_learn_hyperparameters(report: Report) -> None:
    (figure,) = report.trajectories
    assert {"sigma", "tau"} <= set(figure.data)
    for param, lines in figure.data.items():
        assert list(lines) == ["de-elbo"], param


def test_axes_name_the_unit_and_captions_exist(report: Report) -> None:
    assert "charged cost units" in report.figures["anytime"].svg
    assert report.question.startswith("For the same charged cost (cost units)")
    for figure in [*report.figures.values(), *report.trajectories]:
        assert len(figure.caption.split(". ")) >= 2, figure.key


def grouped_finals() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hand-made finals and traces: task a ran grid, random and solo (2 seeds); b (3 seeds) and c (1)
    ran only grid and random. Each cell has one trace point, at half its budget, at its final value."""
    finals = {("a", 0): {"grid": 0.5, "random": 0.6, "solo": 0.7},
              ("a", 1): {"grid": 0.5, "random": 0.7, "solo": 0.6},
              ("b", 0): {"grid": 0.9, "random": 0.8}, ("b", 1): {"grid": 0.7, "random": 0.8},
              ("b", 2): {"grid": 0.6, "random": 0.8}, ("c", 0): {"grid": 0.1, "random": 0.2}}
    rows = [{"cell_id": f"{task}--{method}--s{seed}", "task": task, "method": method, "method_name": method,
             "seed": seed, "budget": 2.0, "unit": "cost", "metric": "accuracy", "direction": "max", "final": value}
            for (task, seed), values in finals.items() for method, value in values.items()]
    frame = pd.DataFrame(rows).sort_values(["task", "method", "seed"], ignore_index=True)
    traces = frame[["cell_id", "task", "method", "seed", "unit"]].assign(
        scale="smoke", cost=1.0, recommended=frame["final"], oracle=frame["final"], trial_id=0)
    return frame, traces


def test_ranks_and_tests_are_computed_per_group_of_tasks_with_the_same_methods() -> None:
    finals, traces = grouped_finals()
    groups = stats.method_groups(finals)
    assert groups == [stats.MethodGroup(("b", "c"), ("grid", "random"), 4),  # most blocks first
                      stats.MethodGroup(("a",), ("grid", "random", "solo"), 2)]

    curves = stats.grouped_rank_curves(finals, traces, groups)
    assert [g for g, _ in curves] == groups
    at_end = [c[c["fraction"] == 1.0].set_index("method")["mean_rank"].to_dict() for _, c in curves]
    assert at_end[0] == pytest.approx({"grid": 1.75, "random": 1.25})  # ranks out of 2, over b and c only
    assert at_end[1] == pytest.approx({"grid": 3.0, "random": 1.5, "solo": 1.5})  # out of 3, on a only
    assert "solo" not in set(curves[0][1]["method"])  # a method ranks only in the group that ran it
    before = curves[1][1][curves[1][1]["fraction"] < 0.5]
    assert (before["mean_rank"] == 2.0).all()  # no recommendation yet: all tied

    friedman = stats.grouped_friedman(finals, groups)
    assert [g for g, _ in friedman] == groups
    (_, two), (_, three) = friedman
    assert two.n_blocks == 4 and two.mean_ranks == pytest.approx({"grid": 1.75, "random": 1.25})
    assert not np.isfinite(two.critical_difference) and "3 methods" in two.note  # two methods: no test
    assert three.n_blocks == 2 and three.methods == ["grid", "random", "solo"]
    assert three.mean_ranks == pytest.approx({"grid": 3.0, "random": 1.5, "solo": 1.5})
    assert np.isfinite(three.statistic) and np.isfinite(three.critical_difference)
    single = stats.grouped_friedman(groups[1].select(finals))  # one group: the plain test on the same finals
    assert single[0][1].mean_ranks == stats.friedman_nemenyi(groups[1].select(finals)).mean_ranks

    styles = method_styles(["grid", "random", "solo"])
    figure = rank_figure(curves, styles)
    assert sorted(figure.data) == ["ranks", "ranks-2"]  # one panel per group, the first keyed as with one group
    assert sorted(figure.data["ranks"]) == ["grid", "random"]
    assert sorted(figure.data["ranks-2"]) == ["grid", "random", "solo"]
    assert figure.data["ranks-2"]["solo"]["y"][-1] == pytest.approx(1.5)
    ids = re.findall(r'<g id="ranks--([^"]+)"', figure.svg)
    assert sorted(ids) == ["1--grid", "1--random", "2--grid", "2--random", "2--solo"]
    assert "best of 2" in figure.svg and "best of 3" in figure.svg
    cd = cd_figure(three, styles, "cd-2", groups[1].tasks)
    assert cd.key == "cd-2" and cd.title.endswith(": a") and sorted(cd.data["cd"]) == ["grid", "random", "solo"]


def test_methods_sharing_a_task_get_different_colours_while_the_palette_lasts() -> None:
    tasks = {f"m{i:02d}": {"wide"} | ({"a"} if i < 7 else {"b"}) for i in range(16)}
    tasks["everywhere"] = {"wide", "a", "b"}
    styles = method_styles(sorted(tasks), tasks)
    looks = {(s["color"], s["linestyle"]) for s in styles.values()}
    assert len(looks) == len(styles)  # no two methods share colour and line style
    task_a = [m for m, t in tasks.items() if "a" in t]  # 8 methods: each of the 8 colours once
    assert len(task_a) == 8 and len({styles[m]["color"] for m in task_a}) == 8
    task_b = [m for m, t in tasks.items() if "b" in t]  # 10 methods: all 8 colours used, 2 repeated
    assert len({styles[m]["color"] for m in task_b}) == 8
    assert styles["everywhere"]["color"] != OKABE_ITO[-1]  # the widest-run method is drawn first, not in yellow
    assert method_styles(["b", "a"]) == method_styles(["a", "b"])  # order of the input does not matter
    alone = method_styles([f"m{i}" for i in range(8)])  # no tasks given: all share one panel
    assert len({s["color"] for s in alone.values()}) == 8
    assert len(method_styles([f"m{i:02d}" for i in range(40)])) == 40  # past 32 pairs they repeat, no crash


# --- rendered files ----------------------------------------------------------------------------------------

def test_html_is_self_contained(written: dict[str, Path]) -> None:
    text = written[".html"].read_text()
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert text.count('src="data:image/svg+xml;base64,') >= 5
    assert "For the same charged cost" in text.split("</h1>", 1)[1][:300]


def test_the_trial_table_is_written_beside_the_html_as_csv_and_parquet_and_linked(report_run: Path,
                                                                                 written: dict[str, Path]) -> None:
    frame = load_results(report_run)
    csv, parquet = written[".csv"], written[".parquet"]
    assert csv.parent == parquet.parent == written[".html"].parent
    for table in (pd.read_csv(csv), pd.read_parquet(parquet)):
        assert len(table) == len(frame) and set(frame.columns) <= set(table.columns)
        assert sorted(table["test_accuracy"].dropna()) == pytest.approx(sorted(frame["test_accuracy"].dropna()))
    html = written[".html"].read_text()
    assert f'href="{csv.name}"' in html and f'href="{parquet.name}"' in html


def test_page_one_has_a_figure_and_the_glance_table_both_targets(report: Report, written: dict[str, Path]) -> None:
    html = written[".html"].read_text()
    first = html.index('id="fig-page1"')
    assert first < html.index('id="table-glance"')  # the figure comes before the long table, on page 1
    glance = html[html.index('id="table-glance"'):html.index("</table>", html.index('id="table-glance"'))]
    assert "time to target" in glance and "time to match the grid" in glance
    ttg = report.tables["time_to_grid"].set_index("method")
    summary = report.tables["summary"].set_index("method")
    for method in METHODS:
        assert summary.loc[method, "reached_grid"] == ttg.loc[method, "reached"]
    for key in ("page1", "profile", "regret"):
        assert sorted(report.figures[key].data[key]) == METHODS, key
    assert [f.key for f in report.families] == ["families-digits-mlp"]
    assert sorted(report.families[0].data) == ["elbo"]  # de-elbo's family, with grid and random drawn in it
    assert sorted(report.families[0].data["elbo"]) == METHODS
    assert 'id="table-claims"' in html and "min to max" in html and "Holm" in html


def test_html_renders_in_headless_chromium(written: dict[str, Path], tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,3000", written[".html"].as_uri()],
                   check=True, capture_output=True, timeout=60)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # not blank
    blue = np.abs(pixels - np.array([0x00, 0x72, 0xB2])).sum(axis=2) < 40  # the first method's colour
    assert blue.sum() > 50  # the SVG figures were drawn


def test_pdf_renders_and_holds_the_tables(written: dict[str, Path], report: Report, tmp_path: Path) -> None:
    pdftoppm, pdftotext = require_tool("pdftoppm"), require_tool("pdftotext")
    subprocess.run([pdftoppm, "-png", "-r", "40", "-f", "1", "-l", "2", str(written[".pdf"]), str(tmp_path / "p")],
                   check=True, timeout=60)
    assert len(list(tmp_path.glob("p-*.png"))) == 2
    text = subprocess.run([pdftotext, "-layout", str(written[".pdf"]), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    for row in report.tables["final"].itertuples():
        assert re.search(rf"{row.method}\s+accuracy\s+2\s+2\s+{re.escape(fmt(row.mean))}", text), row.method
    assert "Time to target" in text and "Provenance" in text and "Budget rule" in text


def test_the_report_benchmark_writes_ledgers_of_the_current_schema(tmp_path: Path) -> None:
    """benchmarks/report.py times the report on synthetic ledgers; they must stay readable as the schema moves."""
    import importlib.util

    from conftest import REPO
    from hpobench_elbo.report.data import read_report_data

    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.write_ledgers(tmp_path, total_rows=240) == 240
    data = read_report_data(tmp_path)
    assert data.problems == [] and len(data.cells) == 120 and len(data.rows) == 240


# --- bad input ---------------------------------------------------------------------------------------------

def test_empty_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ledgers"):
        write_html_report(tmp_path)


def test_nothing_readable_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"type": "trial"}\nnot json\n{"type": "trial"}\n')
    with pytest.raises(UserError, match="no readable ledger"):
        write_html_report(tmp_path)


def test_torn_and_damaged_ledgers_are_reported_not_fatal(report_run: Path, tmp_path: Path) -> None:
    results = copy_run(report_run, tmp_path)
    ledgers = sorted(results.glob("*.jsonl"))
    with open(ledgers[0], "a") as fh:
        fh.write('{"type": "trial", "trial_id": 9')  # a crash mid-write
    damaged = ledgers[1].read_text().splitlines()
    ledgers[1].write_text("\n".join([damaged[0], "garbage", *damaged[1:]]) + "\n")
    (html,) = [p for p in write_html_report(results, tmp_path / "out") if p.suffix == ".html"]
    text = html.read_text()
    assert f"{ledgers[0].name}: torn last line ignored" in text
    assert f"{ledgers[1].name}: skipped" in text
    assert ledgers[0].read_text().endswith('"trial_id": 9')  # a reader changes no file


def test_task_where_no_trial_finished_still_appears(report_run: Path, tmp_path: Path) -> None:
    results = copy_run(report_run, tmp_path)
    (results / "suite.yaml").unlink()  # without a stored suite every ledger in the directory counts
    source = next(results.glob("*grid--s0*.jsonl"))
    records = [json.loads(line) for line in source.read_text().splitlines()]
    header = {**records[0], "cell_id": "other.smoke--grid--s0--x", "data_use": "validation split"}
    header["cell"] = {**header["cell"], "task": "other"}
    failed = [{**r, "status": "failed", "test": None, "recommendation": None}
              for r in records[1:] if r["type"] == "trial"]
    (results / "other.smoke--grid--s0--x.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [header, *failed]))
    report = build_report(results)
    status = report.tables["status"].set_index(["task", "method"])
    assert status.loc[("other", "grid"), "failed"] == len(failed)
    assert status.loc[("other", "grid"), "data_use"] == "validation split"  # the header wins
    assert status.loc[("other", "grid"), "data_use_source"] == "ledger header"
    assert any(note.startswith("other: no trial finished") for note in report.notes)
    assert "other" in report.figures["anytime"].data and "grid" in report.figures["anytime"].data["other"]
    assert report.figures["anytime"].data["other"]["grid"]["x"] == []


def test_log_time_axis(report_run: Path) -> None:
    figure = build_report(report_run, log_time=True).figures["anytime"]
    assert "charged cost units (log scale)" in figure.svg
    assert all(min(points["x"]) > 0 for points in figure.data["digits-mlp"].values())


def test_ledgers_with_headers_only(report_run: Path, tmp_path: Path) -> None:
    for ledger in report_run.glob("*.jsonl"):
        (tmp_path / ledger.name).write_text(ledger.read_text().splitlines()[0] + "\n")  # crashed after the header
    report = build_report(tmp_path)
    assert report.headline == ["No method completed a trial yet: there is no model to compare."]
    assert sorted(report.tables["status"]["method"]) == METHODS
    assert (report.tables["status"]["trials"] == 0).all()


def test_ledgers_not_in_the_stored_suite_are_left_out_and_named(report_run: Path, tmp_path: Path) -> None:
    results = copy_run(report_run, tmp_path)
    source = next(results.glob("*grid--s0*.jsonl"))
    (results / "stale.smoke--grid--s0--x.jsonl").write_text(source.read_text())
    report = build_report(results)
    assert any("stale.smoke--grid--s0--x.jsonl: left out" in note for note in report.notes)
    assert len(report.tables["status"]) == len(build_report(report_run).tables["status"])


def test_pdf_keeps_every_word_on_the_page_with_long_task_labels(report_run: Path, tmp_path: Path) -> None:
    """A task entry with its own options gets a long label ("digits-mlp [batch_size=16; ...]"); the
    tables wrap it instead of running off the page, and the page-1 figure stays on page 1."""
    pdftotext = require_tool("pdftotext")
    results = copy_run(report_run, tmp_path)
    (results / "suite.yaml").unlink()  # the rewritten headers are no longer the stored suite's cells
    options = {"batch_size": 16, "max_tokens": 32, "n": 500, "subset": "first-half-of-the-training-data"}
    for path in results.glob("*.jsonl"):
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
        header["cell"]["task_options"] = options
        path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    pdf = next(p for p in write_html_report(results, tmp_path / "out", html=True, pdf=True) if p.suffix == ".pdf")
    boxes = subprocess.run([pdftotext, "-bbox", str(pdf), "-"], check=True, capture_output=True, text=True,
                           timeout=60).stdout
    pages = re.findall(r'<page width="([\d.]+)" height="[\d.]+">(.*?)</page>', boxes, flags=re.S)
    assert pages
    label_pages = 0
    for width, body in pages:
        words = re.findall(r'xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)" yMax="[\d.]+">([^<]*)</word>', body)
        overflowing = [w for x0, x1, w in words if float(x1) > float(width) - 20]  # 12 mm margins: 34 pt
        assert not overflowing, f"words beyond the right margin: {overflowing[:5]}"
        label_pages += "max_tokens=32;" in body
    assert label_pages > 1  # the long label is in the tables
    page1 = subprocess.run([pdftotext, "-f", "1", "-l", "1", str(pdf), "-"], check=True, capture_output=True,
                           text=True, timeout=60).stdout
    assert "Performance profiles" in page1  # the page-1 figure's caption
