"""The public entry points behind the CLI: run, resume, status, list."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.loop import CellSummary, RunContext
from hpobench_elbo.registry import METHODS, TASKS
from hpobench_elbo.errors import LedgerError, UserError
from hpobench_elbo.suite import Suite, load_suite, suite_from_mapping

SUITE_COPY = "suite.yaml"


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is bad input."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device {device}: expected auto, cpu or cuda")
    return device


def select_cells(cells: Sequence[Cell], only: str | None) -> list[Cell]:
    """Filter cells by ``task=...,method=...,seed=...`` (each key may repeat: ``seed=0,seed=1``)."""
    if not only:
        return list(cells)
    wanted: dict[str, set[str]] = {}
    for item in only.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in ("task", "method", "seed", "scale"):
            raise UserError(f"--only {only!r}: expected task=..., method=..., scale=... or seed=...")
        wanted.setdefault(key, set()).add(value)

    def keep(cell: Cell) -> bool:
        values = {"task": cell.task, "method": cell.label or cell.method, "seed": str(cell.seed), "scale": cell.scale}
        return all(values[k] in v or (k == "method" and cell.method in v) for k, v in wanted.items())

    chosen = [c for c in cells if keep(c)]
    if not chosen:
        raise UserError(f"--only {only!r} matches no cell of the suite")
    return chosen


@dataclass(frozen=True)
class Plan:
    suite: Suite
    cells: list[Cell]
    out_dir: Path


def plan(suite_path: str | Path, out: str | Path | None = None, overrides: Sequence[str] = (),
         only: str | None = None) -> Plan:
    suite = load_suite(suite_path, overrides)
    out_dir = Path(out or suite.output or f"results/{suite.name}")
    return Plan(suite, select_cells(suite.cells(), only), out_dir)


def _store_suite(suite: Suite, out_dir: Path, force: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / SUITE_COPY
    meta = out_dir / "suite-hash.json"
    if meta.exists():
        old = json.loads(meta.read_text()).get("suite_hash")
        if old != suite.suite_hash and not force:
            raise LedgerError(f"{out_dir}: holds results of a different version of suite {suite.name!r} "
                              f"({old} != {suite.suite_hash}); use another --out, or --force to continue anyway")
    copy.write_text(yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False))
    meta.write_text(json.dumps({"suite_hash": suite.suite_hash, "name": suite.name}))


def execute(p: Plan, device: str = "auto", force: bool = False, progress: bool = True) -> list[CellSummary]:
    """Run the planned cells with the suite's executor."""
    ctx = RunContext(out_dir=p.out_dir, device=resolve_device(device), suite_hash=p.suite.suite_hash, force=force)
    _store_suite(p.suite, p.out_dir, force)
    if p.suite.executor == "ray":
        from hpobench_elbo.executors.ray import run_ray  # type: ignore[import-not-found]

        return run_ray(p.cells, ctx)
    from hpobench_elbo.executors.local import run_local

    return run_local(p.cells, ctx, progress=progress)


def run(suite_path: str | Path, out: str | Path | None = None, device: str = "auto", overrides: Sequence[str] = (),
        only: str | None = None, force: bool = False, progress: bool = True) -> list[CellSummary]:
    """Run a suite file (cells already finished in ``out`` are kept; interrupted ones resume)."""
    return execute(plan(suite_path, out, overrides, only), device, force, progress)


def resume(results_dir: str | Path, device: str = "auto", force: bool = False, progress: bool = True,
           only: str | None = None) -> list[CellSummary]:
    """Continue a run from its results directory (its stored suite copy)."""
    results_dir = Path(results_dir)
    copy = results_dir / SUITE_COPY
    if not copy.exists():
        raise UserError(f"{results_dir}: not a results directory (no {SUITE_COPY})")
    suite = load_suite(copy)
    p = Plan(suite, select_cells(suite.cells(), only), results_dir)
    return execute(p, device, force, progress)


def status(results_dir: str | Path) -> list[dict[str, Any]]:
    """Per cell of the stored suite: done / running (ledger started) / remaining, charged cost."""
    results_dir = Path(results_dir)
    copy = results_dir / SUITE_COPY
    if not copy.exists():
        raise UserError(f"{results_dir}: not a results directory (no {SUITE_COPY})")
    suite = load_suite(copy)
    rows = []
    for cell in suite.cells():
        path = results_dir / f"{cell.cell_id}.jsonl"
        state, spent, trials = "remaining", 0.0, 0
        if path.exists():
            contents = read_ledger(path)
            trials = len(contents.rows)
            spent = contents.rows[-1]["spent"] if contents.rows else 0.0
            state = "done" if contents.end is not None else "running"
        rows.append({"cell": cell.cell_id, "state": state, "trials": trials, "spent": spent, "budget": cell.budget,
                     "clock": cell.clock})
    return rows


def data_sizes(task: Any) -> str:
    """The task's data: labelled pool size, test size and classes (loads the data), or why not."""
    if not hasattr(type(task), "data"):
        return "no data set (simulated)"
    try:
        splits = task.data
    except UserError as exc:
        return f"not installed: {exc}"
    classes = f", {splits.pool.n_classes} classes" if splits.pool.n_classes else ", regression"
    return f"{splits.pool.name}: pool {len(splits.pool):,}, test {len(splits.test):,}{classes}"


def list_registered() -> dict[str, Any]:
    """Tasks (with scales and search spaces) and methods."""
    tasks = {}
    for name in TASKS.names():
        cls = TASKS.get(name)
        task = cls(scale=next(iter(cls.SCALES)))
        tasks[name] = task.summary() if hasattr(task, "summary") else {"name": name}
        tasks[name]["data"] = data_sizes(task)
    methods = {}
    for name in METHODS.names():
        cls = METHODS.get(name)
        module_doc = sys.modules[cls.__module__].__doc__ if cls.__module__ in sys.modules else ""
        doc = (module_doc or cls.__doc__ or "").strip().splitlines()
        methods[name] = {"validation": getattr(cls, "validation", "?"), "doc": doc[0] if doc else ""}
    return {"tasks": tasks, "methods": methods}


__all__ = ["run", "resume", "status", "list_registered", "plan", "execute", "suite_from_mapping", "resolve_device"]
