"""The community's aggregate views of a benchmark, from the report's finals and traces.

* **Performance profiles** (Dolan and Moré, "Benchmarking optimization software with performance
  profiles", Math. Programming 91, 2002): a problem p is one task x seed; the measure t(p, s) of
  method s is its time to target (``stats.cell_times_to_target``, either target), infinite where it
  never reached it; the performance ratio is r(p, s) = t(p, s) / min over methods of t(p, ·), and
  the profile rho_s(tau) is the fraction of the problems s ran on with r(p, s) <= tau (so
  rho_s(1) is how often s was the fastest, and rho_s at large tau how often it got there at all).
* **ECDF of normalised regret over the fraction of budget**, after COCO (Hansen et al., "COCO: a
  platform for comparing continuous optimizers in a black-box setting", Optim. Methods Softw.
  36, 2021) and IOHprofiler (Doerr et al., arXiv 1810.05281): on each task x seed, the regret of a
  recommendation is normalised to [0, 1] by the best and worst oriented values any method's
  recommendation took there, (best - value) / (best - worst) (0 when they coincide; 1 before a
  first recommendation); each cell and each target of ``REGRET_TARGETS`` is a (run, target) pair,
  hit from the first fraction of the budget at which the recommendation's normalised regret is
  at most the target; the curve of a method is the fraction of its pairs hit by each fraction.

Both are computed within one group of tasks that ran the same methods (``stats.method_groups``),
as the ranks are: pass the finals of one group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hpobench_elbo.report.stats import RANK_FRACTIONS, values_at_fractions

REGRET_TARGETS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0)  # normalised-regret targets of the ECDF
PROFILE_POINTS = 200  # tau values of a performance profile


def performance_ratios(cell_times: pd.DataFrame) -> pd.DataFrame:
    """Per cell (task, seed, method): the Dolan-Moré ratio of its time to target to the fastest
    method's on the same task and seed (``inf``: never reached, or no method reached it; a time of
    0 counts as the smallest positive time of the problem so ratios stay defined)."""
    out = cell_times[["task", "seed", "method", "time_to_target"]].copy()
    times = out["time_to_target"].to_numpy(float)
    ratio = np.full(len(out), np.inf)
    for _, index in out.groupby(["task", "seed"], sort=True).indices.items():
        t = times[index]
        reached = np.isfinite(t)
        if not reached.any():
            continue
        positive = t[reached & (t > 0)]
        floor = positive.min() if positive.size else 1.0
        t = np.where(reached, np.maximum(t, floor), np.inf)
        ratio[index] = t / t[reached].min()
    out["ratio"] = ratio
    return out


def profile_taus(ratios: np.ndarray, points: int = PROFILE_POINTS) -> np.ndarray:
    """The tau axis of a profile: geometric from 1 to a little past the largest finite ratio (at least 10)."""
    finite = ratios[np.isfinite(ratios)]
    top = max(10.0, float(finite.max()) * 1.1 if finite.size else 10.0)
    return np.geomspace(1.0, top, points)


def performance_profile(cell_times: pd.DataFrame, taus: np.ndarray | None = None) -> pd.DataFrame:
    """rho_s(tau) for every method of ``cell_times`` (one group's ``stats.cell_times_to_target``):
    columns ``method``, ``tau``, ``rho`` and ``problems`` (the task x seed problems it ran on)."""
    ratios = performance_ratios(cell_times)
    taus = profile_taus(ratios["ratio"].to_numpy(float)) if taus is None else np.asarray(taus, dtype=float)
    parts = []
    for method, group in ratios.groupby("method", sort=True):
        r = group["ratio"].to_numpy(float)
        rho = (r[None, :] <= taus[:, None]).mean(axis=1)
        parts.append(pd.DataFrame({"method": method, "tau": taus, "rho": rho, "problems": len(r)}))
    if not parts:
        return pd.DataFrame(columns=["method", "tau", "rho", "problems"])
    return pd.concat(parts, ignore_index=True)


def normalised_regret(finals: pd.DataFrame, traces: pd.DataFrame,
                      fractions: np.ndarray = RANK_FRACTIONS) -> np.ndarray:
    """Normalised regret of every cell of ``finals`` at each fraction of its budget (cells x
    fractions): (best - value) / (best - worst) with best and worst over every cell's
    recommendations on its task and seed at these fractions; 1 before the first recommendation."""
    values = values_at_fractions(finals, traces, fractions)
    regret = np.ones_like(values)
    for _, index in finals.groupby(["task", "seed"], sort=True).indices.items():
        block = values[index]
        if not np.isfinite(block).any():
            continue
        best, worst = np.nanmax(block), np.nanmin(block)
        span = best - worst
        scaled = np.zeros_like(block) if span <= 0 else (best - block) / span
        regret[index] = np.where(np.isfinite(block), scaled, 1.0)
    return regret


def regret_ecdf(finals: pd.DataFrame, traces: pd.DataFrame, fractions: np.ndarray = RANK_FRACTIONS,
                targets: tuple[float, ...] = REGRET_TARGETS) -> pd.DataFrame:
    """Per method and fraction of the budget: the fraction of its (cell, target) pairs whose target
    was hit by then (first hit, so the curve never falls). Columns ``method``, ``fraction``,
    ``ecdf`` and ``pairs`` (cells x targets)."""
    regret = normalised_regret(finals, traces, fractions)
    best_so_far = np.minimum.accumulate(regret, axis=1)
    hit = best_so_far[:, :, None] <= np.asarray(targets, dtype=float)[None, None, :] + 1e-12
    parts = []
    methods = finals["method"].to_numpy()
    for method in sorted(set(methods)):
        mine = hit[methods == method]
        parts.append(pd.DataFrame({"method": method, "fraction": fractions,
                                   "ecdf": mine.mean(axis=(0, 2)), "pairs": mine.shape[0] * len(targets)}))
    if not parts:
        return pd.DataFrame(columns=["method", "fraction", "ecdf", "pairs"])
    return pd.concat(parts, ignore_index=True)
