"""The report's figures as SVG: anytime curves, ranks over the budget, the CD diagram, trajectories.

Each builder returns a ``Figure``: the SVG text, a caption that says what it shows and how to read
it, and the data drawn (panel -> method -> x, y), so tests check the data, not only the picture.
Every method keeps one colour (Okabe-Ito, colour-blind safe) in every figure; its lines carry the
SVG id ``<panel>--<method>``.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from matplotlib.ticker import MaxNLocator
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hpobench_elbo.report.plots import display_unit, x_axis  # noqa: E402
from hpobench_elbo.report.stats import FriedmanResult, MethodGroup  # noqa: E402
from hpobench_elbo.report.traces import aggregate  # noqa: E402

# Okabe & Ito (2008), reordered so that the weakest colour on white (yellow) comes last.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", ":", "-.")
CURVE_POINTS = 150  # grid points of an aggregated anytime curve
WIDTH_IN = 7.4  # fits an A4 page with margins at 100%
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "hpobench-elbo", "font.size": 8, "axes.titlesize": 9,
         "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3}

Series = dict[str, list[float]]
PATH_DATA = re.compile(r'\bd="([^"]*)"')  # SVG path data: coordinates in points, kept to 0.01 pt
DECIMALS = re.compile(r"(\d\.\d\d)\d+")


@dataclass(frozen=True)
class Figure:
    """One figure of the report: an id, a title, the SVG, a caption and the data drawn."""

    key: str
    title: str
    svg: str
    caption: str
    data: dict[str, dict[str, Series]] = field(default_factory=dict)


def method_styles(methods: list[str], tasks: dict[str, set[str]] | None = None) -> dict[str, dict[str, Any]]:
    """One colour and line style per method, the same in every figure; no two methods share both
    while there are pairs left (8 colours x 4 line styles; past 32 methods the pairs repeat).

    ``tasks`` (method -> the tasks it ran on; without it, every method counts as sharing one panel)
    lets methods that share a panel take different colours: greedily, each method (those run on
    most tasks first, then by name) takes the free (line style, colour) pair whose colour is
    already used in the fewest of its tasks, avoiding the faint yellow where it can. A task with
    more methods than colours repeats some, told apart by line style; being greedy, the choice can
    occasionally repeat a colour in a task that would not need to.
    """
    tasks = tasks or {m: {""} for m in methods}
    pairs = [(style, colour) for style in LINESTYLES for colour in OKABE_ITO]
    taken: dict[str, tuple[str, str]] = {}

    def clashes(colour: str, method: str) -> int:
        """How many of ``method``'s tasks already have a method drawn in ``colour``."""
        return sum(any(taken[m][1] == colour and task in tasks.get(m, set()) for m in taken)
                   for task in tasks.get(method, set()))

    for i, method in enumerate(sorted(methods, key=lambda m: (-len(tasks.get(m, ())), m))):  # widest-run first
        free = [p for p in pairs if p not in taken.values()]
        if not free:
            taken[method] = pairs[i % len(pairs)]
            continue
        # fewest clashes, then not the faint yellow, then the first in order (min keeps the first of equals)
        taken[method] = min(free, key=lambda p: (clashes(p[1], method), p[1] == OKABE_ITO[-1]))
    return {m: {"color": taken[m][1], "linestyle": taken[m][0]} for m in sorted(methods)}


def slug(text: str) -> str:
    """An SVG-id-safe form of a task or method name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def to_svg(fig: plt.Figure) -> str:
    """The figure as SVG text (the XML prologue stripped), then closed."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return PATH_DATA.sub(lambda m: 'd="' + DECIMALS.sub(r"\1", m.group(1)) + '"', text[text.index("<svg"):])


def group_title(group: MethodGroup, several: bool, width: int = 45) -> str:
    """A panel's title: the group's tasks, wrapped at ``width`` characters (60 for a lone panel)."""
    return "\n".join(textwrap.wrap(group.label, width if several else 60))


def panel_grid(n: int, ncols: int = 2, row_height: float = 2.7) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of ``n`` panels in rows of ``ncols``, sized for the page; spare axes removed."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_IN, row_height * nrows + 0.6), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def shared_legend(fig: plt.Figure, styles: dict[str, dict[str, Any]], notes: dict[str, str] | None = None) -> None:
    """One legend below the panels, one entry per method (with a note such as 'no completed trial')."""
    notes = notes or {}
    handles = [plt.Line2D([], [], lw=2, **style) for style in styles.values()]
    labels = [f"{m} ({notes[m]})" if m in notes else m for m in styles]
    ncol = len(labels) if len(labels) <= 6 else 4
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


def series(x: np.ndarray, y: np.ndarray) -> Series:
    return {"x": [float(v) for v in x], "y": [float(v) for v in y]}


# --- anytime curves ---------------------------------------------------------------------------------

def anytime_figure(traces: pd.DataFrame, cells: pd.DataFrame, metrics: dict[str, tuple[str, str]],
                   styles: dict[str, dict[str, Any]], value: str = "recommended", log_time: bool = False) -> Figure:
    """Per task: median over seeds of the test metric against charged cost, with the IQR band."""
    oracle = value == "oracle"
    tasks = sorted(metrics)
    agg = aggregate(traces, value=value, points=CURVE_POINTS, log=log_time)
    data: dict[str, dict[str, Series]] = {}
    missing: dict[str, str] = {}
    with plt.rc_context(STYLE):
        fig, axes = panel_grid(len(tasks))
        for ax, task in zip(axes, tasks):
            unit = cells.loc[cells["task"] == task, "unit"].iloc[0]
            scale, label = x_axis(unit)
            data[task] = {}
            for method in sorted(cells.loc[cells["task"] == task, "method"].unique()):
                group = change_points(agg[(agg["task"] == task) & (agg["method"] == method)])
                x, median, q25, q75 = (group[c].to_numpy(float) for c in ("cost", "median", "q25", "q75"))
                x = x * scale
                line, = ax.plot(x, median, drawstyle="steps-post", lw=1.6, **styles[method])
                line.set_gid(f"{slug(task)}--{slug(method)}")
                ax.fill_between(x, q25, q75, step="post", alpha=0.18, lw=0, color=styles[method]["color"])
                data[task][method] = series(x, median)
                if group.empty:
                    missing[method] = "no completed trial"
            metric = metrics[task][0]
            ax.set_title(task)
            ax.set_xlabel(label + (" (log scale)" if log_time else ""))
            ax.set_ylabel(f"test {metric}, " + ("best seen (oracle)" if oracle else "recommended model"))
            if log_time:
                ax.set_xscale("log")
            else:  # few ticks: small panels with long tick labels (device-hours) would overlap
                ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        shared_legend(fig, styles, missing)
        svg = to_svg(fig)
    return Figure("oracle" if oracle else "anytime",
                  "Oracle: best test value seen so far" if oracle else "Anytime performance of the recommended model",
                  svg, anytime_caption(oracle, log_time), data)


def change_points(curve: pd.DataFrame) -> pd.DataFrame:
    """The rows of a step curve where the median or the band changes, and its last row (same drawing)."""
    values = curve[["median", "q25", "q75"]].to_numpy(float)
    changed = np.ones(len(curve), dtype=bool)
    changed[1:] = np.any(values[1:] != values[:-1], axis=1)
    if len(curve):
        changed[-1] = True
    return curve[changed]


def anytime_caption(oracle: bool, log_time: bool) -> str:
    scale = " The time axis is logarithmic." if log_time else ""
    if oracle:
        return ("The best test value among all trials completed so far, median (line) and inter-quartile band "
                "over seeds. This is an oracle, not a method's result: no method may select on test data, so "
                "the gap between this curve and the anytime curve is the cost of selecting on validation "
                "(or on the training objective) instead." + scale)
    return ("Each line is the test metric of the model the method would deploy at that charged cost, median "
            "over seeds (line) and inter-quartile band (shade); a step is a completed trial that changed the "
            "recommendation. Read across for the best model at a given budget and along for how early a "
            "method gets there; a curve starts at the method's first completed trial. A method that "
            "deploys its latest run rather than the best so far (one with no selection data) can step down "
            "as well as up." + scale)


# --- ranks over the budget -------------------------------------------------------------------------------

def group_key(prefix: str, index: int) -> str:
    """The key of group ``index`` (0-based) of ``stats.method_groups``: ``prefix`` for the first,
    ``prefix-2``, ``prefix-3`` ... for the others (figure keys ``cd``, ``cd-2``; rank panels)."""
    return prefix if index == 0 else f"{prefix}-{index + 1}"


def rank_figure(groups: list[tuple[MethodGroup, pd.DataFrame]], styles: dict[str, dict[str, Any]]) -> Figure:
    """Mean rank (1 = best) of each method over tasks x seeds against the fraction of budget used,
    one panel per group of tasks that ran the same methods (``stats.grouped_rank_curves``).

    ``data`` has one entry per panel, keyed ``group_key("ranks", i)`` (``ranks`` for the first
    group, ``ranks-2`` ... for the others), each method -> its curve. A line's SVG id is
    ``ranks--<method>`` with one group and ``ranks--<i>--<method>`` (i from 1) with several.
    """
    data: dict[str, dict[str, Series]] = {}
    several = len(groups) > 1
    with plt.rc_context(STYLE):
        fig, axes = panel_grid(max(len(groups), 1), row_height=2.8)
        for i, (ax, (group, curves)) in enumerate(zip(axes, groups)):
            panel = data.setdefault(group_key("ranks", i), {})
            for method, part in curves.groupby("method", sort=True):
                line, = ax.plot(part["fraction"], part["mean_rank"], drawstyle="steps-post", lw=1.6,
                                **styles[method])
                line.set_gid(f"ranks--{i + 1}--{slug(method)}" if several else f"ranks--{slug(method)}")
                ax.plot(part["fraction"].iloc[-1:], part["mean_rank"].iloc[-1:], "o", ms=4, clip_on=False,
                        color=styles[method]["color"])  # the rank at the full budget, as in the CD diagram
                panel[method] = series(part["fraction"], part["mean_rank"])
            k = max(len(group.methods), 1)
            ax.set_title(group_title(group, several))
            ax.set_ylim(k + 0.3, 0.7)
            ax.set_xlim(0, 1)
            ax.set_xlabel("fraction of the budget used (charged cost / budget)")
            ax.set_ylabel(f"mean rank (1 = best of {k})")
        shared_legend(fig, styles)
        svg = to_svg(fig)
    return Figure("ranks", "Mean rank against the fraction of budget", svg, rank_caption(groups), data)


def rank_caption(groups: list[tuple[MethodGroup, pd.DataFrame]]) -> str:
    common = ("lower is better. A method with no completed trial yet ranks last (ties share the average "
              "rank); the dots at 1.0 are the ranks at the full budget, any recorded overshoot included.")
    if len(groups) <= 1:
        n_blocks = groups[0][0].n_blocks if groups else 0
        return (f"At each fraction of the budget, the methods are ranked on every task and seed ({n_blocks} "
                "blocks) by the test metric of their recommended model, and the ranks are averaged; " + common)
    blocks = ", ".join(str(group.n_blocks) for group, _ in groups)
    return ("One panel per group of tasks that ran the same methods (its title names the tasks): at each "
            "fraction of the budget, the group's methods are ranked on every task and seed of the group "
            f"(blocks per panel, in order: {blocks}) by the test metric of their recommended model, and the "
            "ranks are averaged within the panel, never across panels; " + common)


# --- critical-difference diagram ----------------------------------------------------------------------------

def cd_figure(result: FriedmanResult, styles: dict[str, dict[str, Any]], key: str = "cd",
              tasks: tuple[str, ...] = ()) -> Figure:
    """Demšar's critical-difference diagram: mean ranks on one axis, bars join methods not apart.

    One diagram for one ``FriedmanResult`` (one group of tasks, ``stats.grouped_friedman``); the
    report keys them ``cd``, ``cd-2`` ... (``group_key``). ``tasks``, when given, are named in the
    title. ``data`` is ``{"cd": method -> mean rank}``.
    """
    ranks = {m: r for m, r in result.mean_ranks.items() if np.isfinite(r)}
    k = max(len(result.methods), 2)
    ordered = sorted(ranks, key=ranks.get)
    half = math.ceil(len(ordered) / 2)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.2 + 0.28 * max(half, 1) + 0.15 * len(result.groups)))
        ax.set_xlim(0.5, k + 0.5)
        depth = 1.0 + 0.7 * max(half, 1) + 0.18 * len(result.groups)
        ax.set_ylim(depth, -1.4)
        ax.axis("off")
        ax.hlines(0, 1, k, color="black", lw=1)
        for r in range(1, k + 1):
            ax.vlines(r, -0.12, 0, color="black", lw=1)
            ax.text(r, -0.22, str(r), ha="center", va="bottom")
        ax.text((1 + k) / 2, -1.0, "mean rank (1 = best)", ha="center", va="bottom")
        if np.isfinite(result.critical_difference):
            ax.hlines(-0.75, 1, 1 + result.critical_difference, color="black", lw=2)
            ax.text(1, -0.82, f"CD = {result.critical_difference:.2f}", ha="left", va="bottom")
        for i, method in enumerate(ordered):
            left = i < half
            level = 0.6 + 0.18 * len(result.groups) + 0.7 * (i if left else len(ordered) - 1 - i)
            end = 0.5 if left else k + 0.5
            points, = ax.plot([ranks[method], ranks[method], end], [0, level, level], lw=1.4,
                              color=styles[method]["color"])
            points.set_gid(f"cd--{slug(method)}")
            # the label in black (a light palette colour such as yellow is hard to read as text)
            ax.text(end + (0.02 if left else -0.02), level - 0.08, f"{method} ({ranks[method]:.2f})",
                    ha="left" if left else "right", va="bottom", color="black")
        for g, group in enumerate(result.groups):
            bar = 0.3 + 0.18 * g
            ax.hlines(bar, ranks[group[0]] - 0.03, ranks[group[-1]] + 0.03, color="#444444", lw=4)
        fig.tight_layout()
        svg = to_svg(fig)
    data = {"cd": {m: {"x": [ranks[m]], "y": [0.0]} for m in ordered}}
    title = "Critical-difference diagram" + (f": {', '.join(tasks)}" if tasks else "")
    return Figure(key, title, svg, cd_caption(result), data)


def cd_caption(result: FriedmanResult) -> str:
    if not np.isfinite(result.critical_difference):
        return (f"Mean rank of the final recommended model over {result.n_blocks} complete task x seed "
                f"block(s). The tests were {result.note}.")
    return ("Each method sits at its mean rank of the final recommended model over "
            f"{result.n_blocks} task x seed blocks (left = better). A thick bar joins methods whose mean ranks "
            "differ by less than the critical difference (CD, Nemenyi, alpha = 0.05): those are not "
            "significantly different.")


# --- learned hyperparameters ----------------------------------------------------------------------------------

def trajectory_figures(trajectories: pd.DataFrame, cells: pd.DataFrame,
                       styles: dict[str, dict[str, Any]]) -> list[Figure]:
    """Per task: each learned hyperparameter against cumulative charged cost, one line per method."""
    figures = []
    for task, rows in trajectories.groupby("task", sort=True):
        params = sorted(rows["param"].unique())
        unit = cells.loc[cells["task"] == task, "unit"].iloc[0]
        scale, label = x_axis(unit)
        data: dict[str, dict[str, Series]] = {}
        with plt.rc_context(STYLE):
            fig, axes = panel_grid(len(params), ncols=3, row_height=2.2)
            for ax, param in zip(axes, params):
                data[param] = {}
                for method, group in rows[rows["param"] == param].groupby("method", sort=True):
                    x, y = broken_line(group, scale)
                    line, = ax.plot(x, y, lw=0.9, alpha=0.85, **styles[method])
                    line.set_gid(f"{slug(task)}-{slug(param)}--{slug(method)}")
                    data[param][method] = series(x, y)
                ax.set_title(param)
                ax.set_xlabel(label)
                ax.set_ylabel(param)
                log_if_wide(ax, rows.loc[rows["param"] == param, "value"].to_numpy(float))
            shared_legend(fig, {m: styles[m] for m in sorted(rows["method"].unique())})
            svg = to_svg(fig)
        figures.append(Figure(f"trajectories-{slug(task)}", f"Learned hyperparameters on {task}", svg,
                              trajectory_caption(task, display_unit(unit)[1]), data))
    return figures


def broken_line(group: pd.DataFrame, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """All trials of a method as one line, broken (a NaN point) between consecutive trials (and
    between the members of a population within one trial)."""
    rows = group.sort_values(["cell_id", "trial_id", "member", "cost"], kind="stable")
    trial = (rows["cell_id"].astype(str) + "#" + rows["trial_id"].astype(str) + "#"
             + rows["member"].astype(str)).to_numpy()
    starts = np.flatnonzero(trial[1:] != trial[:-1]) + 1
    x = np.insert(rows["cost"].to_numpy(float) * scale, starts, np.nan)
    y = np.insert(rows["value"].to_numpy(float), starts, np.nan)
    return x, y


def log_if_wide(ax: plt.Axes, values: np.ndarray) -> None:
    """A log y-axis for a positive parameter spanning more than two decades."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
        ax.minorticks_off()  # unlabelled minor ticks cost drawing time and add nothing here


def trajectory_caption(task: str, unit: str) -> str:
    return (f"The hyperparameters that gradient-based methods learn during training on {task}, against the "
            f"cell's cumulative charged cost ({unit}); each segment is one trial (all seeds drawn). Steps are "
            "placed evenly within a trial's charged cost, since the ledger records cost per trial. Methods "
            "that only search have no trajectory and are absent here.")
