"""The HTML report (and its PDF twin) of a results directory, built from the ledgers alone.

``write_html_report`` is the entry point: one self-contained HTML file (figures as SVG data URIs,
no script, no network) and, on request, the same HTML rendered to PDF by WeasyPrint.
``build_report`` returns the numbers and figures behind it, for tests and notebooks.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from hpobench_elbo.errors import UserError
from hpobench_elbo.report import profiles, stats
from hpobench_elbo.report.claims import claims_table
from hpobench_elbo.report.data import ReportData, read_report_data
from hpobench_elbo.report.families import families
from hpobench_elbo.report.figures import (Figure, anytime_figure, cd_figure, group_key, method_styles, rank_figure,
                                          trajectory_figures)
from hpobench_elbo.report.pdf import write_pdf
from hpobench_elbo.report.plots import display_unit
from hpobench_elbo.report.summary import interval_text, speedup_text, summary_rows
from hpobench_elbo.report.views import family_figures, profile_figure, regret_figure

TEMPLATES = Path(__file__).with_name("templates")
RULE_HEADING = "The budget rule, written once:"
HEADLINE_TASKS = 3  # per-task comparisons with grid search named in one headline sentence
TRIAL_TABLES = ("trials.csv", "trials.parquet")  # the trial table, written beside report.html


@dataclass(frozen=True)
class Report:
    """Everything a report shows: text, tables (frames of raw numbers) and figures.

    ``friedman`` has one (group, result) pair per group of tasks that ran the same methods
    (``stats.method_groups`` order: most blocks first); the CD diagram of the i-th (0-based) is
    ``figures[group_key("cd", i)]``: ``cd``, ``cd-2`` ... ``figures["ranks"]`` has one panel per group.
    ``figures["page1"]`` is the performance profile of the page-1 target (``page1_target``: time to
    match the grid where a task has grid search, else time to target), ``figures["profile"]`` that
    of time to target and ``figures["regret"]`` the ECDF of normalised regret (``profiles``);
    ``families`` the anytime small multiples, one figure per task. ``tables["claims"]`` is the seed
    papers' claims (``claims.claims_table``).
    """

    data: ReportData
    question: str
    headline: list[str]
    notes: list[str]
    figures: dict[str, Figure]
    trajectories: list[Figure]
    tables: dict[str, pd.DataFrame]
    friedman: list[tuple[stats.MethodGroup, stats.FriedmanResult]]
    reference: str | None
    provenance: dict[str, Any]
    families: tuple[Figure, ...] = ()
    page1_target: str = "best"
    report_seed: int = stats.REPORT_SEED


def write_trial_tables(data: ReportData, out: Path) -> list[Path]:
    """The trial table (``data.rows``: the columns of ``load_results``) as ``trials.csv`` and
    ``trials.parquet`` in ``out``; parquet needs pyarrow (a one-line ``UserError`` without it)."""
    csv, parquet = (out / name for name in TRIAL_TABLES)
    data.rows.to_csv(csv, index=False)
    try:
        data.rows.to_parquet(parquet, index=False)
    except ImportError as exc:
        raise UserError(f"{parquet}: the Parquet trial table needs pyarrow: pip install pyarrow ({exc})") from None
    return [csv, parquet]


def write_html_report(results_dir: str | Path, out_dir: str | Path | None = None, html: bool = True,
                      pdf: bool = False, log_time: bool = False) -> list[Path]:
    """Write ``report.html`` and/or ``report.pdf`` for ``results_dir`` into ``out_dir`` (default
    ``<dir>/report``), with the trial table beside them (``write_trial_tables``; the HTML links it).

    Raises ``UserError`` when no ledger is readable; damaged parts are listed in the report.
    Returns the paths written.
    """
    report = build_report(results_dir, log_time=log_time)
    out = Path(out_dir) if out_dir else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = write_trial_tables(report.data, out)
    text = render_html(report)
    if html:
        path = out / "report.html"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if pdf:
        written.append(write_pdf(text, out / "report.pdf"))
    return written


def build_report(results_dir: str | Path, log_time: bool = False, report_seed: int = stats.REPORT_SEED) -> Report:
    """Read the ledgers and compute every table and figure of the report (``report_seed`` seeds the
    bootstrap intervals)."""
    data = read_report_data(results_dir)
    metrics = stats.task_metrics(data)
    traces = stats.all_traces(data)
    finals = stats.final_values(data, traces)
    references = stats.grid_references(data.cells)
    reference = stats.reference_label(references)
    styles = method_styles(sorted(data.cells["method"].unique()),
                           {m: set(g["task"]) for m, g in data.cells.groupby("method")})
    groups = stats.method_groups(finals)
    friedman = stats.grouped_friedman(finals, groups)
    rank_curves = stats.grouped_rank_curves(finals, traces, groups)
    tables = stats.report_tables(data, finals, traces, references, report_seed)
    tables["summary"] = summary_rows(data, tables, references)
    tables["claims"] = claims_table(data, finals, traces, references)
    page1 = "grid" if references else "best"
    figures = {
        "anytime": anytime_figure(traces, data.cells, metrics, styles, log_time=log_time),
        "ranks": rank_figure(rank_curves, styles),
        **{group_key("cd", i): cd_figure(result, styles, group_key("cd", i), group.tasks if len(groups) > 1 else ())
           for i, (group, result) in enumerate(friedman)},
        "oracle": anytime_figure(traces, data.cells, metrics, styles, value="oracle", log_time=log_time),
        "page1": profile_figure(group_profiles(finals, traces, groups, page1, references), styles,
                                stats.TARGETS[page1], "page1"),
        "profile": profile_figure(group_profiles(finals, traces, groups, "best", references), styles,
                                  stats.TARGET_BEST),
        "regret": regret_figure([(g, profiles.regret_ecdf(g.select(finals), traces)) for g in groups], styles,
                                profiles.REGRET_TARGETS),
    }
    labels = dict(zip(data.cells["method"], data.cells["method_name"]))
    return Report(data, question_text(data.cells), headline(rank_curves, tables["paired"], finals, references),
                  [*data.problems, *coverage_notes(data, finals)], figures,
                  trajectory_figures(data.trajectories, data.cells, styles), tables, friedman, reference,
                  provenance(data),
                  tuple(family_figures(traces, data.cells, metrics, styles, families(labels), log_time)), page1,
                  report_seed)


def group_profiles(finals: pd.DataFrame, traces: pd.DataFrame, groups: list[stats.MethodGroup], target: str,
                   references: dict[str, str]) -> list[tuple[stats.MethodGroup, pd.DataFrame]]:
    """``profiles.performance_profile`` of ``target``'s times, within each group of tasks, over the task x
    seed problems where the target is defined (none where no grid ran, for the grid target: an empty
    profile, which ``profile_figure`` names instead of drawing)."""
    times = stats.cell_times_to_target(finals, traces, target, references)
    defined = times[np.isfinite(times["target"].to_numpy(float))]
    return [(g, profiles.performance_profile(g.select(defined))) for g in groups]


# --- text -------------------------------------------------------------------------------------------

def question_text(cells: pd.DataFrame) -> str:
    """The question the report answers, in the unit of its ledgers."""
    shown = sorted({display_unit(u)[1] for u in cells["unit"]})
    if len(shown) == 1 and shown[0].endswith(("hours", "hours (CPU)")):
        return f"For the same {shown[0]}, which method gives the best model?"
    return f"For the same charged cost ({', '.join(shown)}), which method gives the best model?"


def headline(rank_curves: list[tuple[stats.MethodGroup, pd.DataFrame]], paired: pd.DataFrame,
             finals: pd.DataFrame, references: dict[str, str]) -> list[str]:
    """A sentence or two per group of tasks that ran the same methods (``rank_curves`` from
    ``stats.grouped_rank_curves``, most blocks first): who ranks first at the full budget, and how
    it fares against the task's grid search, seed by seed (at most ``HEADLINE_TASKS`` tasks named).
    Groups with no model are left out.
    """
    if not np.isfinite(finals["final"].to_numpy(float)).any():
        return ["No method completed a trial yet: there is no model to compare."]
    lines = []
    for group, curves in rank_curves:
        mine = group.select(finals)
        if not np.isfinite(mine["final"].to_numpy(float)).any():
            continue
        at_end = curves[curves["fraction"] == curves["fraction"].max()].dropna(subset=["mean_rank"])
        best = at_end.sort_values("mean_rank").iloc[0]
        n_tasks, n_seeds = mine["task"].nunique(), mine["seed"].nunique()
        where = f"Over {n_tasks} task(s) x {n_seeds} seed(s)"
        if len(rank_curves) > 1:
            where = f"On {group.label} ({n_tasks} task(s) x {n_seeds} seed(s), {len(group.methods)} methods)"
        line = (f"{where}, {best['method']} has the best mean rank at the full budget "
                f"({best['mean_rank']:.2f}; 1 = best of {len(at_end)})")
        if best["method"] in references.values():
            line += ": grid search itself ranks first."
        else:
            mine_paired = paired[(paired["method"] == best["method"]) & paired["task"].isin(group.tasks)]
            against = [f"its final test {row['metric']} is better than {row['reference']}'s on {row['wins']} of "
                       f"{row['pairs']} seeds of {row['task']} (median difference "
                       f"{fmt_signed(row['median_difference'])})" for _, row in mine_paired.iterrows()]
            if len(against) > HEADLINE_TASKS:  # a sentence, not a table: the rest is in section 3
                against = against[:HEADLINE_TASKS] + [f"{len(against) - HEADLINE_TASKS} more task(s) in section 3"]
            line += "; " + "; ".join(against) + "." if against else "."
        lines.append(line)
    return lines


def coverage_notes(data: ReportData, finals: pd.DataFrame) -> list[str]:
    """A line per task where no trial finished and per task x method with no model at the budget."""
    notes = []
    for task, group in finals.groupby("task", sort=True):
        if not np.isfinite(group["final"].to_numpy(float)).any():
            notes.append(f"{task}: no trial finished ok in any cell; the tables count its rows by status")
            continue
        for method, cells in group.groupby("method", sort=True):
            if not np.isfinite(cells["final"].to_numpy(float)).any():
                notes.append(f"{task} / {method}: no completed trial, so no recommended model (see the status counts)")
    unfinished = data.cells[data.cells["end_reason"] == "not finished"]
    if len(unfinished):
        notes.append(f"{len(unfinished)} cell(s) have no end record (still running or interrupted): "
                     + ", ".join(unfinished["cell_id"].head(5)) + (" ..." if len(unfinished) > 5 else ""))
    return notes


def provenance(data: ReportData) -> dict[str, Any]:
    """Suite, hashes, code version, packages, device, clock, recipe and budget rule, from the headers."""
    headers = list(data.headers.values())

    def values(key: str) -> str:
        return ", ".join(sorted({str(h.get(key)) for h in headers if h.get(key) is not None})) or "not recorded"

    versions: dict[str, set[str]] = {}
    for h in headers:
        for package, version in (h.get("versions") or {}).items():
            versions.setdefault(package, set()).add(str(version))
    recipes = {h["cell"]["task"]: h["recipe"] for h in headers if h.get("recipe")}
    created = sorted(str(h["created"]) for h in headers if h.get("created"))
    return {
        "title": data.suite_name or values("suite"), "suite": values("suite"), "suite_hash": values("suite_hash"), "git_sha": values("git_sha"),
        "device": values("device"), "clock": values("clock"), "unit": values("unit"), "threads": values("threads"),
        "versions": {p: ", ".join(sorted(v)) for p, v in sorted(versions.items())},
        "recipes": {task: recipe_text(r) for task, r in sorted(recipes.items())},
        "runs": f"{created[0]} to {created[-1]}" if created else "not recorded",
        "report_date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cells": len(data.cells), "rows": len(data.rows), "source": str(data.source),
        "budget_rule": budget_rule(headers), "load": load_text(data.cells),
    }


def load_text(cells: pd.DataFrame) -> str:
    """The machine's load while the cells ran, in words (ledger schema 4 records it)."""
    recorded = cells[cells["load_max"].notna()]
    if recorded.empty:
        return "not recorded in these ledgers (written before ledger schema 4)"
    cpus = sorted({int(c) for c in recorded["cpus"].dropna()})
    text = (f"1-minute load average: median over cells {recorded['load_median'].median():.2f}, highest "
            f"{recorded['load_max'].max():.2f}" + (f", on {' / '.join(map(str, cpus))} logical CPUs" if cpus else ""))
    missing = len(cells) - len(recorded)
    return text + (f"; not recorded in {missing} older ledger(s)" if missing else "")


def recipe_text(recipe: Any) -> str:
    if isinstance(recipe, dict):
        return "; ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(recipe.items()))
    return str(recipe)


def budget_rule(headers: list[dict[str, Any]]) -> list[str]:
    """The budget rule: a header's ``budget_rule`` if recorded, else the one text in ``engine/budget.py``."""
    for h in headers:
        if h.get("budget_rule"):
            rule = h["budget_rule"]
            return list(rule) if isinstance(rule, list) else [str(rule)]
    try:
        doc = inspect.getdoc(importlib.import_module("hpobench_elbo.engine.budget")) or ""
    except ImportError:
        doc = ""
    if RULE_HEADING not in doc:
        return ["See hpobench_elbo/engine/budget.py (the rule was not found in this installation)."]
    return rule_items(doc.split(RULE_HEADING, 1)[1])


def rule_items(text: str) -> list[str]:
    """Bullets (``* ...``) and paragraphs of an RST docstring section as plain sentences."""
    items: list[str] = []
    fresh = True
    for line in text.replace("``", "").splitlines():
        stripped = line.strip()
        if not stripped:
            fresh = True
        elif stripped.startswith("* ") or fresh:
            items.append(stripped.removeprefix("* "))
            fresh = False
        else:
            items[-1] += " " + stripped
    return items


# --- rendering --------------------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: significant digits, '–' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def fmt_signed(value: Any) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.3g}"


def svg_uri(svg: str) -> str:
    """An SVG as a data URI for ``<img>`` (self-contained; WeasyPrint renders it as vectors)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, signed=fmt_signed, svg_uri=svg_uri)
    env.globals.update(speedup_text=speedup_text, interval_text=interval_text)
    tables = {name: frame.to_dict(orient="records") for name, frame in report.tables.items()}
    units = {task: display_unit(unit)[1] for task, unit in zip(report.data.cells["task"], report.data.cells["unit"])}
    groups = [(group, result, report.figures[group_key("cd", i)]) for i, (group, result) in enumerate(report.friedman)]
    return env.get_template("report.html.j2").render(
        r=report, tables=tables, units=units, groups=groups, alpha=stats.ALPHA,
        target_abs=stats.TARGET_ABSOLUTE, target_rel=stats.TARGET_RELATIVE, statuses=stats.STATUSES,
        all_tasks=stats.ALL_TASKS, targets=stats.TARGETS, trial_tables=TRIAL_TABLES,
        resamples=stats.BOOTSTRAP_RESAMPLES, min_seeds=stats.BOOTSTRAP_MIN_SEEDS, level=stats.INTERVAL_LEVEL,
        report_seed=report.report_seed)
