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

from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.errors import UserError


def ledger_paths(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such results file or directory")
    return sorted(path.glob("*.jsonl"))


def load_results(path: str | Path) -> pd.DataFrame:
    """One row per recorded trial of every ledger under ``path`` (a results dir or one ``.jsonl``).

    Columns: ``suite``, ``cell_id``, ``task``, ``scale``, ``method`` (the suite label),
    ``method_name`` (the registry name), ``seed``, ``budget``, ``unit`` (the clock's unit),
    ``device``, ``metric`` and ``direction`` (the task's test metric), ``trial_id``, ``kind``
    (trial/refit), ``status`` (ok/cut/diverged/failed), ``data`` (split/all), ``tuner``, ``steps``,
    ``n_train``, ``score`` and ``score_name`` (what the method selects on, lower is better),
    ``spent`` (cumulative charged cost after the trial), ``cost`` (the trial's charged cost, ask
    and tell included), ``overshoot``, ``recommendation`` (the trial the method would deploy after
    this one), ``cache_hits``, ``cost_saved``, ``error``, ``config`` (JSON); and one column per
    entry: ``cost_<phase>`` (``test`` is recorded, not charged), ``config_<param>``,
    ``metric_<name>`` (training/validation metrics) and ``test_<name>`` (test metrics).
    """
    records: list[dict[str, Any]] = []
    for ledger in ledger_paths(path):
        contents = read_ledger(ledger)
        h = contents.header
        cell = h["cell"]
        for row in contents.rows:
            record = {
                "suite": h["suite"], "cell_id": h["cell_id"], "task": cell["task"], "scale": cell["scale"],
                "method": cell.get("label") or cell["method"], "method_name": cell["method"], "seed": cell["seed"],
                "budget": cell["budget"], "unit": h["unit"], "device": h["device"],
                "metric": h.get("metric"), "direction": h.get("direction", "max"),
                "trial_id": row["trial_id"], "kind": row["kind"], "status": row["status"], "data": row["data"],
                "tuner": row["tuner"]["name"], "steps": row["steps"], "n_train": row["n_train"],
                "score": row["score"], "score_name": row["score_name"], "spent": row["spent"],
                "cost": sum(v for k, v in row["cost"].items() if k != "test"),
                "overshoot": row["overshoot"], "recommendation": row["recommendation"],
                "cache_hits": row["cache_hits"], "cost_saved": row["cost_saved"], "error": row["error"],
                "config": json.dumps(row["config"], sort_keys=True),
            }
            record.update({f"cost_{k}": v for k, v in row["cost"].items()})
            record.update({f"config_{k}": v for k, v in row["config"].items()})
            record.update({f"metric_{k}": v for k, v in row["metrics"].items()})
            record.update({f"test_{k}": v for k, v in (row["test"] or {}).items()})
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    return frame


def export_parquet(path: str | Path, out: str | Path) -> Path:
    """Write ``load_results(path)`` as parquet (pyarrow) for analysis elsewhere."""
    out = Path(out)
    load_results(path).to_parquet(out, index=False)
    return out


def cell_traces(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell, one point per completed trial: cost so far, recommended test metric, oracle best."""
    column = f"test_{metric}"
    rows = []
    for cell_id, group in frame.groupby("cell_id", sort=True):
        group = group.sort_values("trial_id")
        tests = dict(zip(group["trial_id"], group[column] if column in group else [np.nan] * len(group)))
        best = np.nan
        higher = metric == group["metric"].iloc[0] and group["direction"].iloc[0] == "max" \
            if "direction" in group else metric == "accuracy"
        for _, row in group.iterrows():
            if row["status"] != "ok":
                continue
            value = tests.get(row["trial_id"], np.nan)
            if np.isfinite(value):
                best = value if not np.isfinite(best) else (max(best, value) if higher else min(best, value))
            rec = row["recommendation"]
            rec_value = tests.get(int(rec), np.nan) if rec is not None and not pd.isna(rec) else np.nan
            rows.append({"cell_id": cell_id, "task": row["task"], "scale": row["scale"], "method": row["method"],
                         "seed": row["seed"], "unit": row["unit"], "cost": row["spent"],
                         "recommended": rec_value, "oracle": best, "trial_id": row["trial_id"]})
    return pd.DataFrame.from_records(rows)


def aggregate(traces: pd.DataFrame, value: str = "recommended", points: int = 200) -> pd.DataFrame:
    """Median and inter-quartile band over seeds on a common cost grid (step functions, held forward)."""
    out = []
    for (task, method), group in traces.groupby(["task", "method"], sort=True):
        xmax = group["cost"].max()
        grid = np.linspace(0.0, xmax, points)
        curves = []
        for _, cell in group.groupby("cell_id"):
            cell = cell.sort_values("cost")
            idx = np.searchsorted(cell["cost"].to_numpy(), grid, side="right") - 1
            vals = np.where(idx >= 0, cell[value].to_numpy()[np.clip(idx, 0, None)], np.nan)
            curves.append(vals)
        stack = np.vstack(curves)
        with np.errstate(all="ignore"):
            present = np.sum(np.isfinite(stack), axis=0)
            for x, col, n in zip(grid, stack.T, present):
                if n == 0:
                    continue
                q25, q50, q75 = np.nanpercentile(col, [25, 50, 75])
                out.append({"task": task, "method": method, "cost": x, "median": q50, "q25": q25, "q75": q75,
                            "n_seeds": int(n)})
    return pd.DataFrame.from_records(out)


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
                "trials": int(len(group)), **{f"n_{s}": int(statuses.get(s, 0)) for s in ("ok", "cut", "diverged", "failed")},
            })
    return pd.DataFrame.from_records(rows)
