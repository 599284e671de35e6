"""The numbers of a report, from the ledgers alone: finals, time-to-target, ranks, tests, counts.

Everything here is plain pandas/numpy/scipy on a ``ReportData``; figures and HTML only format
these frames. Values are compared in their *oriented* form (higher is better: a loss is negated).

Time-to-target is defined once, here (``TARGETS``, ``cell_targets``, ``target_value`` and
``time_to_target``): the charged cost at which a method's recommendation first reaches a target
of its task and seed. Two targets: ``best``, within one accuracy point (0.01 absolute, for a metric
to maximise) or 1% relative (for a metric to minimise, a loss) of the best final value any method
reached on that task and seed; and ``grid``, the final value of the task's grid search on that
seed itself ("time to match the grid", the question the seed papers answer).

Intervals over seeds are defined once too (``seed_interval``): with at least
``BOOTSTRAP_MIN_SEEDS`` seeds, the percentile bootstrap interval of the mean (``BOOTSTRAP_RESAMPLES``
resamples of the seeds, the generator derived from the report's seed with ``Seeds.derive``),
clipped to the metric's range (``metric_range``); with fewer, the minimum, median and maximum.
Paired comparisons with the grid add a sign test and Holm's step-down correction across the
methods of a task (``holm``).

Ranks are compared only among methods that ran on the same tasks: ``method_groups`` groups the
tasks by their exact set of methods, and the rank curves and the Friedman/Nemenyi tests are
computed per group (``grouped_rank_curves``, ``grouped_friedman``). When every task ran the same
methods there is one group and the numbers are those of ``mean_rank_curves`` and
``friedman_nemenyi`` on all finals.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.report.data import ReportData
from hpobench_elbo.report.plots import display_unit
from hpobench_elbo.report.traces import STATUSES, TRACE_COLUMNS, cell_traces, held_forward

TARGET_ABSOLUTE = 0.01  # within one accuracy point, for a metric to maximise
TARGET_RELATIVE = 0.01  # within 1% relative, for a metric to minimise (a loss)
ALPHA = 0.05  # significance level of the Friedman and Nemenyi tests
RANK_FRACTIONS = np.linspace(0.005, 1.0, 200)  # fractions of the budget at which ranks are read
GRID_METHOD = "grid"  # the registry name of grid search, the reference of paired comparisons
BOOTSTRAP_RESAMPLES = 2000  # resamples of the seeds in a bootstrap interval
BOOTSTRAP_MIN_SEEDS = 5  # below this many seeds an interval is min-median-max, not a bootstrap
INTERVAL_LEVEL = 0.95  # coverage of a bootstrap interval
REPORT_SEED = 0  # the report's seed: every bootstrap generator derives from it
METRIC_RANGES: dict[str, tuple[float, float]] = {  # the values a test metric can take (others: unbounded)
    "accuracy": (0.0, 1.0), "error": (0.0, 1.0), "auroc": (0.0, 1.0), "mse": (0.0, np.inf),
    "rmse": (0.0, np.inf), "mae": (0.0, np.inf),
}


@dataclass(frozen=True)
class Target:
    """A time-to-target definition: ``key`` (``best`` or ``grid``), a short ``label`` for table
    headers and the ``definition`` every report and README prints under its tables."""

    key: str
    label: str
    definition: str


TARGET_BEST = Target("best", "time to target (1 point of the best)",
                     "the charged cost at which a method's recommended model first comes within "
                     f"{TARGET_ABSOLUTE:g} absolute (one accuracy point) of the best final value any method reached "
                     "on that task and seed, for a metric to maximise, or within "
                     f"{TARGET_RELATIVE:.0%} relative of it for a metric to minimise (a loss)")
TARGET_GRID = Target("grid", "time to match the grid",
                     "the charged cost at which a method's recommended model first reaches the final value of the "
                     "task's grid search on the same seed (grid search's own time is when its recommendation first "
                     "reached its final value); none on a task without grid search")
TARGETS: dict[str, Target] = {t.key: t for t in (TARGET_BEST, TARGET_GRID)}


# --- the one definition of time-to-target ---------------------------------------------------

def target_value(best_final: float, direction: str) -> float:
    """The value a recommendation must reach: 0.01 below the best (max metric) or 1% above it (min)."""
    if direction == "max":
        return best_final - TARGET_ABSOLUTE
    return best_final + TARGET_RELATIVE * abs(best_final)


def time_to_target(cost: np.ndarray, values: np.ndarray, target: float, direction: str) -> float:
    """Charged cost of the first trace point whose recommended value reaches ``target`` (NaN: never)."""
    with np.errstate(invalid="ignore"):
        hit = values >= target if direction == "max" else values <= target
    hits = np.flatnonzero(hit)
    return float(cost[hits[0]]) if hits.size else np.nan


# --- traces and finals ------------------------------------------------------------------------

def task_metrics(data: ReportData) -> dict[str, tuple[str, str]]:
    """Task -> (test metric, direction), from the ledger headers."""
    first = data.cells.sort_values("cell_id").groupby("task").first()
    return {task: (row["metric"], row["direction"]) for task, row in first.iterrows()}


def all_traces(data: ReportData) -> pd.DataFrame:
    """The inference and oracle traces of every cell, each task on its own test metric."""
    parts = []
    for task, (metric, _) in task_metrics(data).items():
        rows = data.rows[data.rows["task"] == task] if not data.rows.empty else data.rows
        if rows.empty:
            continue
        traces = cell_traces(rows, metric)
        if not traces.empty:
            parts.append(traces)
    if not parts:
        return pd.DataFrame(columns=TRACE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def oriented(values: np.ndarray | pd.Series, direction: str) -> np.ndarray:
    """Higher is better: a metric to minimise is negated."""
    array = np.asarray(values, dtype=float)
    return array if direction == "max" else -array


def with_oriented(frame: pd.DataFrame, column: str = "final") -> pd.DataFrame:
    """``frame`` (with a ``direction`` column) plus an ``oriented`` column: ``column``, negated where
    lower is better."""
    sign = np.where(frame["direction"].to_numpy() == "max", 1.0, -1.0)
    return frame.assign(oriented=frame[column].to_numpy(float) * sign)


def final_values(data: ReportData, traces: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the test metric of the model recommended at the end (NaN when no trial completed)."""
    last = traces.sort_values(["cell_id", "cost"]).groupby("cell_id")["recommended"].last() \
        if not traces.empty else pd.Series(dtype=float)
    out = data.cells[["cell_id", "task", "method", "method_name", "seed", "budget", "spent", "unit", "metric",
                      "direction"]].copy()
    out["final"] = out["cell_id"].map(last).astype(float)
    return out.sort_values(["task", "method", "seed"], ignore_index=True)


def metric_range(metric: str) -> tuple[float, float]:
    """The values test metric ``metric`` can take (``METRIC_RANGES``; unbounded when unknown)."""
    return METRIC_RANGES.get(metric, (-np.inf, np.inf))


@dataclass(frozen=True)
class SeedInterval:
    """An interval over seeds: ``kind`` is ``bootstrap`` (the percentile bootstrap interval of the
    mean, ``BOOTSTRAP_RESAMPLES`` resamples, ``INTERVAL_LEVEL`` coverage), ``range`` (fewer than
    ``BOOTSTRAP_MIN_SEEDS`` seeds: ``low`` the minimum, ``high`` the maximum) or ``none`` (no finite
    value); ``mean`` and ``median`` of the finite values; ``n`` how many there were."""

    kind: str
    mean: float
    median: float
    low: float
    high: float
    n: int


def interval_seed(report_seed: int, *names: str) -> int:
    """The seed of one bootstrap generator: ``Seeds.derive`` of the report's seed and a stable
    checksum of ``names`` (a task and method), so each interval repeats whatever else is reported."""
    return Seeds.derive(report_seed, zlib.crc32("\x1f".join(names).encode("utf-8")))


def bootstrap_interval(values: np.ndarray, seed: int, bounds: tuple[float, float] = (-np.inf, np.inf),
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (finite, at least one): ``resamples``
    resamples with replacement drawn by ``numpy.random.default_rng(seed)`` as one ``resamples x n``
    index matrix, the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (linear interpolation)
    of their means, clipped to ``bounds``."""
    values = np.asarray(values, dtype=float)
    index = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[index].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(np.clip(low, *bounds)), float(np.clip(high, *bounds))


def seed_interval(values: np.ndarray, metric: str, seed: int) -> SeedInterval:
    """The interval a report shows for ``values`` over seeds (NaN values, seeds with no model, are
    left out): a bootstrap interval from ``BOOTSTRAP_MIN_SEEDS`` finite values on, else min-median-max."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return SeedInterval("none", np.nan, np.nan, np.nan, np.nan, 0)
    mean, median = float(finite.mean()), float(np.median(finite))
    if finite.size < BOOTSTRAP_MIN_SEEDS:
        return SeedInterval("range", mean, median, float(finite.min()), float(finite.max()), int(finite.size))
    low, high = bootstrap_interval(finite, seed, metric_range(metric))
    return SeedInterval("bootstrap", mean, median, low, high, int(finite.size))


def final_table(finals: pd.DataFrame, report_seed: int = REPORT_SEED) -> pd.DataFrame:
    """Per task and method: final test metric at the budget, mean, median and interval over seeds.

    ``ci_low``/``ci_high`` are the bounds of ``seed_interval`` and ``interval`` its kind
    (``bootstrap``, ``range`` for min-median-max below ``BOOTSTRAP_MIN_SEEDS`` seeds, ``none``);
    each task and method draws its own generator (``interval_seed(report_seed, task, method)``).
    ``best`` marks, per task, the methods whose mean is the best (highest, or lowest for a metric
    to minimise; every tied method; none where no method has a model).
    """
    rows = []
    for (task, method), group in finals.groupby(["task", "method"], sort=True):
        values = group["final"].to_numpy(dtype=float)
        metric = group["metric"].iloc[0]
        interval = seed_interval(values, metric, interval_seed(report_seed, str(task), str(method)))
        rows.append({"task": task, "method": method, "metric": metric,
                     "direction": group["direction"].iloc[0], "seeds": len(group),
                     "with_model": int(np.isfinite(values).sum()), "mean": interval.mean, "median": interval.median,
                     "ci_low": interval.low, "ci_high": interval.high, "interval": interval.kind})
    table = pd.DataFrame.from_records(rows, columns=["task", "method", "metric", "direction", "seeds", "with_model",
                                                     "mean", "median", "ci_low", "ci_high", "interval"])
    oriented = with_oriented(table, "mean")["oriented"]
    table["best"] = np.isfinite(oriented) & (oriented == oriented.groupby(table["task"]).transform("max"))
    return table


# --- time-to-target -----------------------------------------------------------------------------

def grid_references(cells: pd.DataFrame) -> dict[str, str]:
    """Task -> the label of the grid-search method the others are compared with on that task (the
    first, sorted, of the task's grid cells: a tied grid on one task, a plain one on another)."""
    grids = cells[cells["method_name"] == GRID_METHOD]
    return {task: sorted(group["method"].unique())[0] for task, group in grids.groupby("task")}


def reference_label(references: dict[str, str]) -> str | None:
    """The grid labels in one string for text (None when no task has a grid)."""
    return " / ".join(sorted(set(references.values()))) or None


def _is_reference(table: pd.DataFrame, references: dict[str, str]) -> np.ndarray:
    """Which rows of ``table`` are their task's grid cell."""
    return np.array([references.get(t) == m for t, m in zip(table["task"], table["method"])], dtype=bool)


def _reference_values(table: pd.DataFrame, references: dict[str, str], column: str) -> pd.Series:
    """(task, seed) -> ``column`` of the task's grid cell."""
    return table[_is_reference(table, references)].set_index(["task", "seed"])[column]


def cell_targets(finals: pd.DataFrame, target: str = "best", references: dict[str, str] | None = None) -> np.ndarray:
    """The value each cell of ``finals`` must reach, in the metric's own units, for target ``target``
    (a key of ``TARGETS``): ``best``, ``target_value`` of the best final on its (task, seed);
    ``grid``, the final value of its task's grid cell on that seed (``references`` from
    ``grid_references``; NaN where the task has no grid or the grid has no model)."""
    out = with_oriented(finals)
    if target == "best":
        best = out.groupby(["task", "seed"])["oriented"].transform("max")
        return np.array([target_value(b if d == "max" else -b, d) for b, d in zip(best, out["direction"])], float)
    if target == "grid":
        grid = _reference_values(out, references or {}, "final") if len(out) else pd.Series(dtype=float)
        return np.array([grid.get((t, s), np.nan) for t, s in zip(out["task"], out["seed"])], dtype=float)
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")


def cell_times_to_target(finals: pd.DataFrame, traces: pd.DataFrame, target: str = "best",
                         references: dict[str, str] | None = None) -> pd.DataFrame:
    """Per cell: the target of its (task, seed) (``cell_targets``) and the charged cost at which it
    was first reached (``time_to_target``; NaN: never, or no target)."""
    out = with_oriented(finals)
    out["target"] = cell_targets(finals, target, references)
    by_cell = {cid: group.sort_values("cost") for cid, group in traces.groupby("cell_id")} if len(traces) else {}
    times = []
    for cell_id, target, direction in zip(out["cell_id"], out["target"], out["direction"]):
        trace = by_cell.get(cell_id)
        reached = np.isfinite(target) and trace is not None
        times.append(time_to_target(trace["cost"].to_numpy(float), trace["recommended"].to_numpy(float),
                                    target, direction) if reached else np.nan)
    out["time_to_target"] = times
    return out


def time_to_target_table(cell_times: pd.DataFrame, references: dict[str, str]) -> pd.DataFrame:
    """Per task and method: median time-to-target over seeds that reached it, and speedup against grid.

    ``speedup`` is the geometric mean over seeds, where both reached the target, of
    ``time(grid) / time(method)``, the grid being the task's (``grid_references``): above 1 the
    method got there faster than grid search. Where grid search never reached the target, its
    time is only known to exceed all it was charged: ``speedup_at_least`` is the geometric mean
    over every seed the method reached, taking that charged total for the grid's time there, a
    lower bound (equal to ``speedup`` when ``censored``, the number of such seeds, is 0).
    """
    ref_times = _reference_values(cell_times, references, "time_to_target") \
        if len(cell_times) else pd.Series(dtype=float)
    ref_spent = _reference_values(cell_times, references, "spent") if len(cell_times) else pd.Series(dtype=float)
    rows = []
    for (task, method), group in cell_times.groupby(["task", "method"], sort=True):
        times = group["time_to_target"].to_numpy(float)
        scale, _ = display_unit(group["unit"].iloc[0])
        exact, bounds = [], []
        for seed, t in zip(group["seed"], times):
            grid_time, grid_spent = ref_times.get((task, seed), np.nan), ref_spent.get((task, seed), np.nan)
            if not (np.isfinite(t) and t > 0):
                continue
            if np.isfinite(grid_time) and grid_time > 0:
                exact.append(grid_time / t)
            elif not np.isfinite(grid_time) and np.isfinite(grid_spent) and grid_spent > 0:
                bounds.append(grid_spent / t)  # a grid cell that charged nothing bounds nothing
        rows.append({"task": task, "method": method, "seeds": len(group),
                     "reached": int(np.isfinite(times).sum()),
                     "median_time": float(np.nanmedian(times)) * scale if np.isfinite(times).any() else np.nan,
                     "speedup": geometric_mean(exact), "speedup_pairs": len(exact),
                     "speedup_at_least": geometric_mean(exact + bounds), "censored": len(bounds)})
    return pd.DataFrame.from_records(rows)


def geometric_mean(ratios: list[float]) -> float:
    """The geometric mean of positive ratios; NaN for none."""
    return float(np.exp(np.log(ratios).mean())) if ratios else np.nan


# --- counts, cache, data use ------------------------------------------------------------------

def derived_data_use(rows: pd.DataFrame) -> str:
    """What data a method used, from its trial rows (``data`` split/all and ``kind`` refit)."""
    if rows.empty:
        return "unknown (no trial recorded)"
    split = bool((rows["data"] == "split").any())
    refit = bool((rows["kind"] == "refit").any())
    if split:
        return "validation split + refit" if refit else "validation split"
    return "none (all N)"


def status_table(data: ReportData) -> pd.DataFrame:
    """Per task and method: trials by status, refits (and how many the refit guard rejected: the
    selected trial's model stayed deployed), cache hits, cost saved, overshoot, data use, whether the
    stage cache was open to the method (``stage_cache``: open / closed, from the ledger header) and
    the highest 1-minute machine load recorded while its cells ran (NaN where none was)."""
    out = []
    for (task, method), cells in data.cells.groupby(["task", "method"], sort=True):
        rows = data.rows[data.rows["cell_id"].isin(cells["cell_id"])] if not data.rows.empty else data.rows
        scale, _ = display_unit(cells["unit"].iloc[0])
        header_use = sorted({u for u in cells["data_use"] if isinstance(u, str) and u})
        statuses = rows["status"].value_counts() if not rows.empty else pd.Series(dtype=int)
        out.append({
            "task": task, "method": method, "seeds": len(cells),
            "trials": int((rows["kind"] == "trial").sum()) if not rows.empty else 0,
            "refits": int((rows["kind"] == "refit").sum()) if not rows.empty else 0,
            "rejected_refits": int(((rows["kind"] == "refit") & (rows["refit_status"] == "rejected")).sum())
            if not rows.empty and "refit_status" in rows else 0,
            **{status: int(statuses.get(status, 0)) for status in STATUSES},
            "cache_hits": int(rows["cache_hits"].sum()) if not rows.empty else 0,
            "cost_saved": float(rows["cost_saved"].sum()) * scale if not rows.empty else 0.0,
            "overshoot": float(rows["overshoot"].max()) * scale if not rows.empty else 0.0,
            "charged": float(cells["spent"].sum()) * scale,
            "data_use": "; ".join(header_use) if header_use else derived_data_use(rows),
            "data_use_source": "ledger header" if header_use else "trial rows",
            "stage_cache": ", ".join(sorted(set(cells["stage_cache"]))),
            "end": ", ".join(sorted(set(cells["end_reason"]))),
            "load_max": float(cells["load_max"].max()) if cells["load_max"].notna().any() else np.nan,
        })
    return pd.DataFrame.from_records(out)


def report_tables(data: ReportData, finals: pd.DataFrame, traces: pd.DataFrame,
                  references: dict[str, str], report_seed: int = REPORT_SEED) -> dict[str, pd.DataFrame]:
    """The report's tables of raw numbers: ``final``, ``time_to_target`` (target ``best``),
    ``time_to_grid`` (target ``grid``), ``status`` and ``paired`` (``finals`` from ``final_values``,
    ``traces`` from ``all_traces``, ``references`` from ``grid_references``, ``report_seed`` seeds
    the bootstrap intervals); the HTML report and the README summary both read them from here."""
    return {
        "final": final_table(finals, report_seed),
        "time_to_target": time_to_target_table(cell_times_to_target(finals, traces), references),
        "time_to_grid": time_to_target_table(cell_times_to_target(finals, traces, "grid", references), references),
        "status": status_table(data),
        "paired": paired_against_grid(finals, references),
    }


# --- ranks over the budget, Friedman + Nemenyi, paired tests -----------------------------------------

@dataclass(frozen=True)
class MethodGroup:
    """Tasks that ran exactly the same methods (labels): the unit within which methods are ranked.

    ``n_blocks`` is the number of task x seed blocks with at least one cell in these tasks.
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    n_blocks: int = 0

    @property
    def label(self) -> str:
        """The group's tasks in one string, for titles and text."""
        return ", ".join(self.tasks)

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` (finals, or any frame with a ``task`` column) on this group's tasks."""
        return frame[frame["task"].isin(self.tasks)]


def method_groups(finals: pd.DataFrame) -> list[MethodGroup]:
    """Tasks grouped by their exact set of methods (the labels with a cell on the task).

    Ordered by the number of task x seed blocks (most first), then by the first task's name; tasks
    and methods are sorted within a group. One group when every task ran the same methods.
    """
    by_set: dict[tuple[str, ...], list[str]] = {}
    for task, group in finals.groupby("task", sort=True):
        by_set.setdefault(tuple(sorted(group["method"].unique())), []).append(task)
    groups = [MethodGroup(tuple(tasks), methods,
                          int(finals[finals["task"].isin(tasks)].groupby(["task", "seed"]).ngroups))
              for methods, tasks in by_set.items()]
    return sorted(groups, key=lambda g: (-g.n_blocks, g.tasks[0]))


def _group_traces(traces: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The trace points of the cells in ``finals``."""
    return traces[traces["cell_id"].isin(finals["cell_id"])] if len(traces) else traces


def grouped_rank_curves(finals: pd.DataFrame, traces: pd.DataFrame, groups: list[MethodGroup] | None = None,
                        fractions: np.ndarray = RANK_FRACTIONS) -> list[tuple[MethodGroup, pd.DataFrame]]:
    """``mean_rank_curves`` within each group of ``method_groups`` (or of ``groups``), in that order."""
    groups = method_groups(finals) if groups is None else groups
    out = []
    for group in groups:
        part = group.select(finals)
        out.append((group, mean_rank_curves(part, _group_traces(traces, part), fractions)))
    return out


def grouped_friedman(finals: pd.DataFrame, groups: list[MethodGroup] | None = None
                     ) -> list[tuple[MethodGroup, FriedmanResult]]:
    """``friedman_nemenyi`` within each group of ``method_groups`` (or of ``groups``), in that order."""
    groups = method_groups(finals) if groups is None else groups
    return [(group, friedman_nemenyi(group.select(finals))) for group in groups]


def values_at_fractions(finals: pd.DataFrame, traces: pd.DataFrame, fractions: np.ndarray) -> np.ndarray:
    """Oriented recommended value of every cell at each fraction of its budget: cells x fractions.

    The last fraction (1.0) includes a recorded overshoot. NaN: no recommendation yet.
    """
    by_cell = {cid: group.sort_values("cost") for cid, group in traces.groupby("cell_id")} if len(traces) else {}
    out = np.full((len(finals), len(fractions)), np.nan)
    for i, (cell_id, budget, direction) in enumerate(zip(finals["cell_id"], finals["budget"], finals["direction"])):
        trace = by_cell.get(cell_id)
        if trace is None:
            continue
        grid = fractions * budget
        grid[fractions >= 1.0] = np.inf
        out[i] = held_forward(trace["cost"].to_numpy(float), oriented(trace["recommended"], direction), grid)
    return out


def rank_blocks(finals: pd.DataFrame, values: np.ndarray, methods: list[str]) -> np.ndarray:
    """Ranks (1 = best) per block (task, seed) x method x fraction; NaN where a method has no cell.

    A method without a recommendation yet ranks last (ties share the average rank).
    """
    blocks = finals.groupby(["task", "seed"], sort=True).indices
    column = {m: j for j, m in enumerate(methods)}
    cube = np.full((len(blocks), len(methods), values.shape[1]), np.nan)
    present = np.zeros((len(blocks), len(methods)), dtype=bool)
    for b, index in enumerate(blocks.values()):
        for i in index:
            j = column[finals["method"].iloc[i]]
            cube[b, j] = np.where(np.isnan(values[i]), -np.inf, values[i])
            present[b, j] = True
    ranks = sps.rankdata(-np.where(present[:, :, None], cube, np.nan), axis=1, nan_policy="omit")
    return ranks


def mean_rank_curves(finals: pd.DataFrame, traces: pd.DataFrame,
                     fractions: np.ndarray = RANK_FRACTIONS) -> pd.DataFrame:
    """Mean rank of each method over tasks x seeds at each fraction of the budget.

    Every method of ``finals`` is ranked in every block where it has a cell, so pass the finals
    of one group of ``method_groups`` (``grouped_rank_curves`` does): on finals mixing tasks with
    different method sets, ranks out of different numbers of methods would be averaged together.
    """
    methods = sorted(finals["method"].unique())
    ranks = rank_blocks(finals, values_at_fractions(finals, traces, fractions), methods)
    with np.errstate(all="ignore"):
        mean = np.nanmean(ranks, axis=0)
    return pd.DataFrame({"method": np.repeat(methods, len(fractions)), "fraction": np.tile(fractions, len(methods)),
                         "mean_rank": mean.ravel()})


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over complete blocks (task x seed) and the Nemenyi critical difference.

    ``n_blocks`` counts the complete blocks used; ``groups`` are the cliques of the CD diagram
    (not to be confused with the ``MethodGroup`` of tasks the test was run on).
    """

    methods: list[str]
    mean_ranks: dict[str, float]
    n_blocks: int
    statistic: float = np.nan
    p_value: float = np.nan
    critical_difference: float = np.nan
    note: str = ""
    groups: list[list[str]] = field(default_factory=list)  # maximal sets of methods not significantly apart


def friedman_nemenyi(finals: pd.DataFrame) -> FriedmanResult:
    """Friedman on the final values of complete blocks, then Nemenyi's critical difference (alpha 0.05).

    A block is complete when it has a cell of every method in ``finals``; pass the finals of one
    group of ``method_groups`` (``grouped_friedman`` does), where every block is complete unless a
    cell is missing.
    """
    methods = sorted(finals["method"].unique())
    blocks = [group.groupby("method")["oriented"].first().reindex(methods).to_numpy(float)
              for _, group in with_oriented(finals).groupby(["task", "seed"], sort=True)
              if set(group["method"]) >= set(methods)]  # complete blocks only
    matrix = np.vstack(blocks) if blocks else np.empty((0, len(methods)))
    k, n = len(methods), int(matrix.shape[0])
    matrix = np.where(np.isnan(matrix), -np.inf, matrix)  # no model at the budget ranks last
    ranks = sps.rankdata(-matrix, axis=1) if n else np.empty((0, k))
    mean_ranks = dict(zip(methods, ranks.mean(axis=0))) if n else {m: np.nan for m in methods}
    if k < 3 or n < 2:
        return FriedmanResult(methods, mean_ranks, n, note=f"not computed: needs at least 3 methods and 2 complete "
                                                           f"task x seed blocks (have {k} methods, {n} blocks)")
    statistic, p_value = friedman_statistic(ranks)
    cd = float(sps.studentized_range.ppf(1 - ALPHA, k, np.inf) / np.sqrt(2) * np.sqrt(k * (k + 1) / (6.0 * n)))
    return FriedmanResult(methods, mean_ranks, n, statistic, p_value, cd, groups=cliques(mean_ranks, cd))


def friedman_statistic(ranks: np.ndarray) -> tuple[float, float]:
    """Friedman chi-square with the tie correction, from a blocks x methods rank matrix."""
    n, k = ranks.shape
    sums = ranks.sum(axis=0)
    ties = sum(float(np.sum(c ** 3 - c)) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
    denominator = 1.0 - ties / (n * k * (k * k - 1))
    if denominator <= 0:
        return np.nan, np.nan  # every block tied throughout
    statistic = (12.0 / (n * k * (k + 1)) * float(np.sum(sums ** 2)) - 3.0 * n * (k + 1)) / denominator
    return float(statistic), float(sps.chi2.sf(statistic, k - 1))


def cliques(mean_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal runs of methods (by mean rank) whose ranks differ by less than the critical difference."""
    ordered = sorted(mean_ranks, key=mean_ranks.get)
    groups: list[list[str]] = []
    for i, first in enumerate(ordered):
        run = [m for m in ordered[i:] if mean_ranks[m] - mean_ranks[first] < cd]
        if len(run) > 1 and not any(set(run) <= set(g) for g in groups):
            groups.append(run)
    return groups


ALL_TASKS = "all tasks"  # the ``task`` of a paired-comparison row that pools a method's tasks


def paired_against_grid(finals: pd.DataFrame, references: dict[str, str]) -> pd.DataFrame:
    """Each method against the task's grid search on the same (task, seed): Wilcoxon signed-rank on
    final values (``references``: task -> grid label, from ``grid_references``).

    Differences are oriented (positive: the method's model is better) in the task's metric units;
    pairs where either side has no model at the budget are left out. One row per task and method,
    then, for a method run on several tasks with one metric, a row with ``task`` = ``ALL_TASKS``
    that pools their pairs (the usual across-data-sets test; its differences mix the tasks' scales).
    """
    columns = ["task", "method", "reference", "metric", "pairs", "wins", "ties", "losses", "median_difference",
               "p_value", "sign_p", "p_holm"]
    if not references:
        return pd.DataFrame(columns=columns)
    table = with_oriented(finals)
    ref = _reference_values(table, references, "oriented")
    methods = table[~_is_reference(table, references) & table["task"].isin(list(references))]

    def row(task: str, method: str, metric: str, group: pd.DataFrame) -> dict[str, Any]:
        pairs = [(o, ref.get((t, s), np.nan)) for t, s, o in zip(group["task"], group["seed"], group["oriented"])]
        diffs = np.array([a - b for a, b in pairs if np.isfinite(a) and np.isfinite(b)])
        return {"task": task, "method": method, "reference": " / ".join(sorted({references[t] for t in group["task"]})),
                "metric": metric, "pairs": int(diffs.size), "wins": int((diffs > 0).sum()),
                "ties": int((diffs == 0).sum()), "losses": int((diffs < 0).sum()),
                "median_difference": float(np.median(diffs)) if diffs.size else np.nan, "p_value": wilcoxon_p(diffs),
                "sign_p": sign_test_p(int((diffs > 0).sum()), int((diffs < 0).sum()))}

    rows = [row(task, method, metric, group)
            for (task, method, metric), group in methods.groupby(["task", "method", "metric"], sort=True)]
    rows += [row(ALL_TASKS, method, metric, group)
             for (method, metric), group in methods.groupby(["method", "metric"], sort=True)
             if group["task"].nunique() > 1]
    table = pd.DataFrame.from_records(rows, columns=columns)
    # Holm across the methods of each task (the pooled rows form one family of their own)
    table["p_holm"] = table.groupby("task", sort=False)["p_value"].transform(lambda p: holm(p.to_numpy(float)))
    return table


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control) of one family of tests; NaN
    entries (undefined tests) are left NaN and do not count in the family's size.

    With the m defined p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    max over j <= i of min(1, (m - j + 1) p_(j)); a test is rejected at level alpha when its
    adjusted value is below alpha.
    """
    p_values = np.asarray(p_values, dtype=float)
    out = np.full(p_values.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(p_values))
    m = defined.size
    if m == 0:
        return out
    order = defined[np.argsort(p_values[defined], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p_values[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (ties left out); NaN with neither."""
    if wins + losses == 0:
        return np.nan
    return float(sps.binomtest(wins, wins + losses, 0.5).pvalue)


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (zero differences split); NaN when it is undefined."""
    if diffs.size == 0 or not np.any(diffs != 0):
        return np.nan
    return float(sps.wilcoxon(diffs, zero_method="zsplit").pvalue)
