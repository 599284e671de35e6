"""What a report reads: every readable ledger of a results directory, its headers, and what was not readable.

A report is built from the ledgers alone. Unlike a resume, a report does not stop at the first
damaged file: it reads what it can, lists the rest under "data problems", and refuses (with a
``UserError``) only when nothing at all is readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hpobench_elbo.engine.ledger import LedgerContents, read_ledger
from hpobench_elbo.errors import LedgerError, UserError
from hpobench_elbo.report.traces import cache_access, ledger_paths, ledger_records, task_label

if TYPE_CHECKING:
    from hpobench_elbo.suite import Suite

# Trajectory entries that are diagnostics of the objective, not hyperparameters.
TRAJECTORY_DIAGNOSTICS = frozenset({"step", "kl", "nll", "loss", "elbo", "objective", "train_loss", "grad_norm",
                                    "member", "copied_from"})


@dataclass(frozen=True)
class ReportData:
    """The readable content of a results directory.

    ``rows``: one row per trial row, the columns of ``load_results``. ``cells``: one row per
    readable ledger (header fields, end record, row count), so a cell with no trial row still
    appears. ``trajectories``: long format (cell_id, task, method, seed, trial_id, param, cost,
    value), cost = cumulative charged cost, interpolated linearly over each trial's steps.
    ``headers``: the raw header per cell id. ``problems``: one line per unreadable or damaged part.
    ``suite_name``: the name of the suite stored beside the ledgers (``suite.yaml``; None without
    a readable one); headers may name other suites too (cells taken with ``--reuse``).
    """

    source: Path
    rows: pd.DataFrame
    cells: pd.DataFrame
    trajectories: pd.DataFrame
    headers: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    suite_name: str | None = None


def _stored_suite(source: Path) -> Suite | None:
    """The suite stored beside the ledgers (None when there is no readable ``suite.yaml``)."""
    from hpobench_elbo.suite import load_suite

    try:
        return load_suite(source / "suite.yaml") if (source / "suite.yaml").exists() else None
    except UserError:
        return None


def read_report_data(results_dir: str | Path) -> ReportData:
    """Read every ledger under ``results_dir``; raise ``UserError`` when none is readable."""
    source = Path(results_dir)
    paths = ledger_paths(source)
    if not paths:
        raise UserError(f"{source}: no ledgers (*.jsonl) to report on")
    problems: list[str] = []
    contents: list[LedgerContents] = []
    suite = _stored_suite(source)
    current = None if suite is None else {c.cell_id for c in suite.cells()}
    if current is not None:
        left_out = [p for p in paths if p.stem not in current]
        problems += [f"{p.name}: left out, not a cell of the current suite (suite.yaml)" for p in left_out]
        paths = [p for p in paths if p.stem in current]
    for path in paths:
        try:
            item = read_ledger(path)
        except (LedgerError, UnicodeDecodeError, KeyError, TypeError) as exc:
            problems.append(f"{path.name}: skipped, not readable ({exc})")
            continue
        if item.torn is not None:
            problems.append(f"{path.name}: torn last line ignored (a crash mid-write); the rows before it are used")
        contents.append(item)
    rows, cells, trajectories, headers = _frames(contents, problems)
    if cells.empty:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more like these" if len(problems) > 3 else "")
        raise UserError(f"{source}: no readable ledger ({shown})")
    return ReportData(source, rows, cells, trajectories, headers, problems,
                      suite.name if suite is not None else None)


def _frames(contents: list[LedgerContents], problems: list[str]
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    paths: list[dict[str, Any]] = []
    headers: dict[str, dict[str, Any]] = {}
    for item in contents:
        cell_id = item.header.get("cell_id", "?")
        try:
            cell_rows = ledger_records(item)
            cell = cell_record(item)
        except (KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{cell_id}: skipped, a record lacks a required field ({exc})")
            continue
        records.extend(cell_rows)
        cells.append(cell)
        headers[cell["cell_id"]] = item.header
        paths.extend(trajectory_records(item, cell))
    return (pd.DataFrame.from_records(records), pd.DataFrame.from_records(cells),
            pd.DataFrame.from_records(paths, columns=TRAJECTORY_COLUMNS), headers)


def cell_record(contents: LedgerContents) -> dict[str, Any]:
    """One cell's identity and bookkeeping from its header and end record."""
    h, end = contents.header, contents.end or {}
    cell = h["cell"]
    spent = end.get("spent", contents.rows[-1]["spent"] if contents.rows else 0.0)
    return {
        "cell_id": h["cell_id"], "suite": h["suite"], "task": task_label(h), "task_name": cell["task"],
        "cache_access": cache_access(h),
        "stage_cache": "open" if (h.get("stage_cache") or {}).get("open", True) else "closed", "scale": cell["scale"],
        "method": cell.get("label") or cell["method"], "method_name": cell["method"], "seed": cell["seed"],
        "budget": float(cell["budget"]), "unit": h["unit"], "metric": h.get("metric") or "accuracy",
        "direction": h.get("direction", "max"), "n_rows": len(contents.rows), "spent": float(spent or 0.0),
        "end_reason": end.get("reason", "not finished"), "data_use": h.get("data_use"),
        **machine_loads(contents),
    }


def machine_loads(contents: LedgerContents) -> dict[str, float]:
    """The machine's 1-minute load average while the cell ran (ledger schema 4: at the start, at
    each trial row and at the end): ``load_median``, ``load_max`` (NaN where none was recorded)
    and ``cpus`` (the machine's logical CPUs, NaN where unknown)."""
    start = contents.header.get("machine") or {}
    readings = [start["load"][0]] if isinstance(start.get("load"), list) and start["load"] else []
    for record in (*contents.rows, contents.end or {}):
        load = (record.get("machine") or {}).get("load")
        if isinstance(load, (int, float)) and not isinstance(load, bool):
            readings.append(float(load))
    values = np.array(readings, dtype=float)
    return {"load_median": float(np.median(values)) if values.size else np.nan,
            "load_max": float(values.max()) if values.size else np.nan,
            "cpus": float(start["cpus"]) if isinstance(start.get("cpus"), int) else np.nan}


TRAJECTORY_COLUMNS = ["cell_id", "task", "method", "seed", "trial_id", "member", "param", "cost", "value"]


def trajectory_records(contents: LedgerContents, cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Learned-hyperparameter values per hyper-step, placed on the cell's cumulative charged cost.

    A trial ran from ``spent - cost`` to ``spent``; step ``s`` of ``steps`` is placed at the
    fraction ``s / steps`` of that interval (the ledger records costs per trial, not per step).
    A point with a ``member`` index (a population-based tuner: one row per member per round) belongs
    to that member's line; other points have member -1.
    """
    out = []
    for row in contents.rows:
        trajectory = row.get("trajectory") or []
        if not trajectory:
            continue
        cost = sum(v for k, v in row["cost"].items() if k != "test")
        start, steps = row["spent"] - cost, max(int(row.get("steps") or 0), 1)
        for index, point in enumerate(trajectory):
            step = point.get("step", index)
            at = start + cost * min(float(step) / steps, 1.0)
            member = point.get("member", -1)
            member = int(member) if isinstance(member, (int, float)) and not isinstance(member, bool) else -1
            for param, value in point.items():
                if param in TRAJECTORY_DIAGNOSTICS or not _is_number_or_null(value):
                    continue
                out.append({"cell_id": cell["cell_id"], "task": cell["task"], "method": cell["method"],
                            "seed": cell["seed"], "trial_id": row["trial_id"], "member": member,
                            "param": param, "cost": at,
                            "value": float(value) if value is not None else np.nan})
    return out


def _is_number_or_null(value: Any) -> bool:
    """A trajectory value: a number, or null (a non-finite value is written as null)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
