"""Results as data: ledgers -> a pandas frame, and the anytime traces a report plots.

The trace of a cell has one point per completed trial: x = cumulative charged cost, y = the test
metric of the trial the method recommends at that point (the *inference* trace). The best test
value seen so far (the *oracle* trace) is kept too, labelled as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpobench_elbo.engine.ledger import LedgerContents, read_ledger
from hpobench_elbo.errors import UserError

STATUSES = ("ok", "cut", "pruned", "diverged", "failed")  # a trial row's status, in report order


def ledger_paths(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such results file or directory")
    return sorted(path.glob("*.jsonl"))


def load_results(path: str | Path) -> pd.DataFrame:
    """One row per recorded trial of every ledger under ``path`` (a results dir or one ``.jsonl``).

    Columns: ``suite``, ``cell_id``, ``task`` (the task's label: its registry name, with its
    task options and a stage-cache condition other than ``all`` appended, see ``task_label``), ``task_name`` (the
    registry name), ``cache_access`` (``all`` or ``memoization-aware``), ``scale``, ``method`` (the suite label),
    ``method_name`` (the registry name), ``seed``, ``budget``, ``unit`` (the clock's unit),
    ``device``, ``metric`` and ``direction`` (the task's test metric), ``trial_id``, ``kind``
    (trial/refit), ``status`` (ok/cut/pruned/diverged/failed), ``data`` (split/all), ``tuner``,
    ``steps``, ``n_train``, ``score`` and ``score_name`` (what the method selects on, lower is
    better), ``spent`` (cumulative charged cost after the trial), ``cost`` (the trial's charged cost,
    ask and tell included), ``overshoot``, ``recommendation`` (the trial the method would deploy
    after this one), ``cache_hits``, ``cost_saved``, ``error``, ``config`` (JSON), ``refit_status``
    (a refit's guard verdict: accepted / rejected / unchecked; None for trials and for refits of
    ledger schema < 5) and ``refit_reason``; and one column
    per entry: ``cost_<phase>`` (``test`` is recorded, not charged), ``config_<param>``,
    ``metric_<name>`` (training/validation metrics) and ``test_<name>`` (test metrics).
    """
    records: list[dict[str, Any]] = []
    for ledger in ledger_paths(path):
        if ledger.stat().st_size == 0:
            continue  # an empty ledger: the cell has not started
        records.extend(ledger_records(read_ledger(ledger)))
    return pd.DataFrame.from_records(records)


def cache_access(header: dict[str, Any]) -> str:
    """The cell's stage-cache condition (``stage_cache.access`` of the header; ``all`` when absent)."""
    return str((header.get("stage_cache") or {}).get("access", "all"))


def task_label(header: dict[str, Any]) -> str:
    """How reports name a cell's task: its registry name, followed by what sets this task entry apart
    from another entry of the same task in one suite, each task option the suite gave it and its
    stage-cache condition when not the default, in brackets (``uci-regression [dataset=concrete]``,
    ``image-pipeline [cache: memoization-aware]``), so that cells of different entries are compared
    within their entry, never pooled as if they were more seeds of one task."""
    cell = header["cell"]
    parts = [f"{key}={value}" for key, value in sorted((cell.get("task_options") or {}).items())]
    access = cache_access(header)
    if access != "all":
        parts.append(f"cache: {access}")
    return f"{cell['task']} [{'; '.join(parts)}]" if parts else str(cell["task"])


def ledger_records(contents: LedgerContents) -> list[dict[str, Any]]:
    """The flat records of one ledger's trial rows (the columns of ``load_results``)."""
    h = contents.header
    cell = h["cell"]
    common = {
        "suite": h["suite"], "cell_id": h["cell_id"], "task": task_label(h), "task_name": cell["task"],
        "cache_access": cache_access(h), "scale": cell["scale"],
        "method": cell.get("label") or cell["method"], "method_name": cell["method"], "seed": cell["seed"],
        "budget": cell["budget"], "unit": h["unit"], "device": h["device"],
        "metric": h.get("metric"), "direction": h.get("direction", "max"),
    }
    records = []
    for row in contents.rows:
        record = {
            **common,
            "trial_id": row["trial_id"], "kind": row["kind"], "status": row["status"], "data": row["data"],
            "tuner": row["tuner"]["name"], "steps": row["steps"], "n_train": row["n_train"],
            "score": row["score"], "score_name": row["score_name"], "spent": row["spent"],
            "cost": sum(v for k, v in row["cost"].items() if k != "test"),
            "overshoot": row["overshoot"], "recommendation": row["recommendation"],
            "cache_hits": row["cache_hits"], "cost_saved": row["cost_saved"], "error": row["error"],
            "config": json.dumps(row["config"], sort_keys=True),
            "refit_status": row.get("refit_status"), "refit_reason": row.get("refit_reason"),
        }
        record.update({f"cost_{k}": v for k, v in row["cost"].items()})
        record.update({f"config_{k}": v for k, v in row["config"].items()})
        record.update({f"metric_{k}": v for k, v in row["metrics"].items()})
        record.update({f"test_{k}": v for k, v in (row["test"] or {}).items()})
        records.append(record)
    return records


def export_parquet(path: str | Path, out: str | Path) -> Path:
    """Write ``load_results(path)`` as parquet (pyarrow) for analysis elsewhere."""
    out = Path(out)
    load_results(path).to_parquet(out, index=False)
    return out


TRACE_COLUMNS = ["cell_id", "task", "scale", "method", "seed", "unit", "cost", "recommended", "oracle", "trial_id"]


def cell_traces(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell, one point per completed trial: cost so far, recommended test metric, oracle best.

    ``recommended`` is the test value of the trial the method recommends after that trial (NaN
    when none); ``oracle`` the best test value among the cell's completed trials so far.
    """
    if frame.empty:
        return pd.DataFrame(columns=TRACE_COLUMNS)
    rows = frame.sort_values(["cell_id", "trial_id"], ignore_index=True)
    column = f"test_{metric}"
    values = rows[column].to_numpy(dtype=float) if column in rows else np.full(len(rows), np.nan)
    cell = rows["cell_id"].astype(str)
    by_trial = pd.Series(values, index=cell + "#" + rows["trial_id"].astype(str))
    recommendation = pd.to_numeric(rows["recommendation"], errors="coerce").astype("Int64").astype(str)
    recommended = by_trial.reindex(cell + "#" + recommendation).to_numpy(dtype=float)
    ok = (rows["status"] == "ok").to_numpy()
    higher = ((rows["metric"] == metric) & (rows["direction"] == "max")).to_numpy() \
        if "direction" in rows else np.full(len(rows), metric == "accuracy")
    sign = np.where(higher, 1.0, -1.0)
    scored = pd.Series(np.where(ok & np.isfinite(values), values * sign, -np.inf))
    best = scored.groupby(cell.to_numpy()).cummax().to_numpy() * sign
    out = rows.loc[ok, ["cell_id", "task", "scale", "method", "seed", "unit", "spent", "trial_id"]]
    out = out.rename(columns={"spent": "cost"}).assign(recommended=recommended[ok],
                                                       oracle=np.where(np.isfinite(best), best, np.nan)[ok])
    return out[TRACE_COLUMNS].reset_index(drop=True)


def held_forward(cost: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A step function read on ``grid``: the value of the last point at or before each grid cost (NaN before)."""
    idx = np.searchsorted(cost, grid, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)


def cost_grid(xmax: float, points: int, log: bool = False, xmin: float | None = None) -> np.ndarray:
    """The common cost grid of a curve: linear from 0, or geometric from ``xmin`` (> 0) when ``log``."""
    if log and xmin is not None and 0 < xmin < xmax:
        return np.geomspace(xmin, xmax, points)
    return np.linspace(0.0, xmax, points)


def aggregate(traces: pd.DataFrame, value: str = "recommended", points: int = 200, log: bool = False) -> pd.DataFrame:
    """Median and inter-quartile band over seeds on a common cost grid (step functions, held forward).

    With ``log`` the grid is geometric from the first point's cost, for a log-scaled time axis.
    """
    parts = []
    for (task, method), group in traces.groupby(["task", "method"], sort=True):
        costs = group["cost"].to_numpy(dtype=float)
        positive = costs[costs > 0]
        grid = cost_grid(costs.max(), points, log, positive.min() if positive.size else None)
        stack = np.vstack([held_forward(cell["cost"].to_numpy(dtype=float), cell[value].to_numpy(dtype=float), grid)
                           for _, cell in group.sort_values("cost").groupby("cell_id")])
        present = np.isfinite(stack).sum(axis=0)
        keep = present > 0
        if not keep.any():
            continue
        q25, q50, q75 = np.nanpercentile(stack[:, keep], [25, 50, 75], axis=0)
        parts.append(pd.DataFrame({"task": task, "method": method, "cost": grid[keep], "median": q50, "q25": q25,
                                   "q75": q75, "n_seeds": present[keep]}))
    if not parts:
        return pd.DataFrame(columns=["task", "method", "cost", "median", "q25", "q75", "n_seeds"])
    return pd.concat(parts, ignore_index=True)


def final_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per task and method: final recommended test metric (median, IQR over seeds), cost, trial counts."""
    traces = cell_traces(frame, metric)
    rows = []
    for (task, method), group in frame.groupby(["task", "method"], sort=True):
        finals, costs = [], []
        for cell_id, cell in group.groupby("cell_id"):
            t = traces[traces["cell_id"] == cell_id] if len(traces) else traces
            finals.append(t["recommended"].iloc[-1] if len(t) else np.nan)
            costs.append(cell["spent"].max())
        statuses = group["status"].value_counts()
        finals_arr = np.array(finals, dtype=float)
        with np.errstate(all="ignore"):
            rows.append({
                "task": task, "method": method, "seeds": group["seed"].nunique(),
                f"test_{metric}_median": float(np.nanmedian(finals_arr)) if np.isfinite(finals_arr).any() else np.nan,
                f"test_{metric}_q25": float(np.nanpercentile(finals_arr, 25)) if np.isfinite(finals_arr).any() else np.nan,
                f"test_{metric}_q75": float(np.nanpercentile(finals_arr, 75)) if np.isfinite(finals_arr).any() else np.nan,
                "cost_median": float(np.median(costs)), "unit": group["unit"].iloc[0],
                "trials": int(len(group)), **{f"n_{s}": int(statuses.get(s, 0)) for s in STATUSES},
            })
    return pd.DataFrame.from_records(rows)
