"""The report's community views as SVG figures: performance profiles, the ECDF of normalised
regret over the budget (both computed in ``profiles``) and anytime curves as small multiples,
one panel per method family (``families``) with grid and random search drawn in each.

Builders return ``figures.Figure`` like the others (SVG, caption, the data drawn); lines carry
the SVG id ``<panel>--<method>`` and every method keeps its colour from ``figures.method_styles``.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hpobench_elbo.report.families import REFERENCE_METHODS  # noqa: E402
from hpobench_elbo.report.figures import (CURVE_POINTS, STYLE, Figure, Series, change_points,  # noqa: E402
                                          group_title, panel_grid, series, shared_legend, slug, to_svg)
from hpobench_elbo.report.plots import x_axis  # noqa: E402
from hpobench_elbo.report.stats import MethodGroup, Target  # noqa: E402
from hpobench_elbo.report.traces import aggregate  # noqa: E402

REFERENCE_WIDTH = 1.0  # line width of the grid/random references in a family panel (methods: 1.6)


def profile_figure(profiles: list[tuple[MethodGroup, pd.DataFrame]], styles: dict[str, dict[str, Any]],
                   target: Target, key: str = "profile") -> Figure:
    """Dolan-Moré performance profiles, one panel per group of tasks (``profiles.performance_profile``
    of each group's ``stats.cell_times_to_target`` for ``target``). A group with no curve (the target
    is undefined on its tasks: no grid ran there, for the grid target) gets no panel; the caption
    names it. ``data``: ``profile`` (first panel), ``profile-2`` ... -> method -> (tau, rho)."""
    data: dict[str, dict[str, Series]] = {}
    undefined = [group.label for group, curves in profiles if curves.empty]
    profiles = [(group, curves) for group, curves in profiles if not curves.empty]
    several = len(profiles) > 1
    with plt.rc_context(STYLE):
        # three panels a row from five groups on, so that the page-1 profile stays short enough for page 1
        ncols = 3 if len(profiles) > 4 else 2
        fig, axes = panel_grid(max(len(profiles), 1), ncols=ncols, row_height=2.3)
        for i, (ax, (group, curves)) in enumerate(zip(axes, profiles)):
            panel = data.setdefault(key if i == 0 else f"{key}-{i + 1}", {})
            for method, part in curves.groupby("method", sort=True):
                line, = ax.plot(part["tau"], part["rho"], drawstyle="steps-post", lw=1.6, **styles[method])
                line.set_gid(f"{key}--{i + 1}--{slug(method)}" if several else f"{key}--{slug(method)}")
                panel[method] = series(part["tau"], part["rho"])
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(group_title(group, several, 30 if ncols == 3 else 45))
            ax.set_xlabel("tau = time / fastest time (log)")
            ax.set_ylabel("fraction of problems")
        shared_legend(fig, styles if not profiles else
                      {m: styles[m] for m in sorted({m for _, c in profiles for m in c["method"]})})
        svg = to_svg(fig)
    caption = (f"Performance profiles (Dolan and Moré 2002) of the {target.label}: each task and seed is a problem; "
               "a method's ratio on it is its time to the target over the fastest method's, and its curve is the "
               "fraction of the problems it ran on with a ratio of at most tau. At tau = 1 the curve says how "
               "often the method was the fastest; where it levels off, how often it reached the target at all "
               "(a method that never did stays at 0). One panel per group of tasks that ran the same methods; "
               "higher is better.")
    if undefined:
        why = "no grid ran there" if target.key == "grid" else "no method has a finite value there"
        caption += f" No panel for {'; '.join(undefined)}: the target is undefined ({why})."
    return Figure(key, f"Performance profiles ({target.label})", svg, caption, data)


def regret_figure(curves: list[tuple[MethodGroup, pd.DataFrame]], styles: dict[str, dict[str, Any]],
                  targets: tuple[float, ...]) -> Figure:
    """ECDF of normalised regret over the fraction of budget, one panel per group of tasks
    (``profiles.regret_ecdf``). ``data``: ``regret`` (first group), ``regret-2`` ... -> method ->
    (fraction, ecdf)."""
    data: dict[str, dict[str, Series]] = {}
    several = len(curves) > 1
    with plt.rc_context(STYLE):
        fig, axes = panel_grid(max(len(curves), 1), row_height=2.3)
        for i, (ax, (group, ecdf)) in enumerate(zip(axes, curves)):
            panel = data.setdefault("regret" if i == 0 else f"regret-{i + 1}", {})
            for method, part in ecdf.groupby("method", sort=True):
                line, = ax.plot(part["fraction"], part["ecdf"], drawstyle="steps-post", lw=1.6, **styles[method])
                line.set_gid(f"regret--{i + 1}--{slug(method)}" if several else f"regret--{slug(method)}")
                panel[method] = series(part["fraction"], part["ecdf"])
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(group_title(group, several))
            ax.set_xlabel("fraction of the budget used")
            ax.set_ylabel("fraction of (run, target) pairs hit")
        shared_legend(fig, {m: styles[m] for m in sorted({m for _, c in curves for m in c["method"]})})
        svg = to_svg(fig)
    shown = ", ".join(f"{t:g}" for t in targets)
    caption = ("Empirical distribution of normalised regret over the budget, as COCO and IOHprofiler draw it: on "
               "each task and seed the regret of a recommended model is scaled to [0, 1] by the best and the worst "
               "value any method's recommendation took there; every cell and every target of normalised regret "
               f"({shown}) is a pair, hit from the first fraction of the budget at which the recommendation came "
               "within it. A curve is the fraction of a method's pairs hit so far: higher and further left is "
               "better, and the value at 1.0 sums up how close to the best its runs got. One panel per group of "
               "tasks that ran the same methods.")
    return Figure("regret", "ECDF of normalised regret over the budget", svg, caption, data)


def family_figures(traces: pd.DataFrame, cells: pd.DataFrame, metrics: dict[str, tuple[str, str]],
                   styles: dict[str, dict[str, Any]], families: dict[str, str], log_time: bool = False) -> list[Figure]:
    """Per task, anytime curves as small multiples: one panel per method family that ran on it
    (``families``: label -> family), the family's methods drawn with their median over seeds and
    inter-quartile band, and the task's grid and random search (``REFERENCE_METHODS``, by registry
    name) drawn thinner, without a band, in every panel. A task where only the references ran has
    one panel. ``data``: family -> method -> (x, median). Keys ``families-<task>``."""
    agg = aggregate(traces, points=CURVE_POINTS, log=log_time) if len(traces) else \
        pd.DataFrame(columns=["task", "method", "cost", "median", "q25", "q75", "n_seeds"])
    out = []
    for task in sorted(metrics):
        here = cells[cells["task"] == task]
        labels = sorted(here["method"].unique())
        names = dict(zip(here["method"], here["method_name"]))
        references = [m for m in labels if names[m] in REFERENCE_METHODS]
        panels: dict[str, list[str]] = {}
        for label in labels:
            if label not in references:
                panels.setdefault(families.get(label, "unknown"), []).append(label)
        if not panels:
            panels = {"references": []}
        unit = here["unit"].iloc[0]
        scale, xlabel = x_axis(unit)
        data: dict[str, dict[str, Series]] = {}
        with plt.rc_context(STYLE):
            fig, axes = panel_grid(len(panels), ncols=3 if len(panels) > 4 else 2, row_height=2.2)
            for ax, (family, members) in zip(axes, sorted(panels.items())):
                data[family] = {}
                for method in [*members, *references]:
                    reference = method in references
                    curve = change_points(agg[(agg["task"] == task) & (agg["method"] == method)])
                    x = curve["cost"].to_numpy(float) * scale
                    line, = ax.plot(x, curve["median"].to_numpy(float), drawstyle="steps-post",
                                    lw=REFERENCE_WIDTH if reference else 1.6, alpha=0.8 if reference else 1.0,
                                    **styles[method])
                    line.set_gid(f"{slug(family)}--{slug(method)}")
                    if not reference:
                        ax.fill_between(x, curve["q25"].to_numpy(float), curve["q75"].to_numpy(float), step="post",
                                        alpha=0.18, lw=0, color=styles[method]["color"])
                    data[family][method] = series(x, curve["median"].to_numpy(float))
                ax.set_title(f"{family} ({len(members)} method{'s' if len(members) != 1 else ''})")
                ax.set_xlabel(xlabel + (" (log scale)" if log_time else ""))
                ax.set_ylabel(f"test {metrics[task][0]}")
                if log_time:
                    ax.set_xscale("log")
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            shared_legend(fig, {m: styles[m] for m in labels})
            svg = to_svg(fig)
        caption = (f"Anytime curves on {task} as small multiples, one panel per method family: each line is the "
                   "test metric of the model the method would deploy at that charged cost, median over seeds, with "
                   "the inter-quartile band; "
                   + (f"{' and '.join(references)} (thin lines, no band) appear in every panel as references, so "
                      "each family reads against the same baselines. " if references else
                      "no grid or random search ran on this task, so the panels have no references. ")
                   + "Panel titles count the family's own methods.")
        out.append(Figure(f"families-{slug(task)}", f"Anytime curves by family: {task}", svg, caption, data))
    return out
