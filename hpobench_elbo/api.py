"""The public entry points behind the CLI: run, resume, status, list."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.loop import CellSummary, RunContext
from hpobench_elbo.registry import METHODS, TASKS
from hpobench_elbo.engine.lock import ResultsLock, writer_active
from hpobench_elbo.errors import EnvironmentFailure, LedgerError, UserError
from hpobench_elbo.suite import Suite, load_suite, suite_from_mapping

SUITE_COPY = "suite.yaml"
RUN_META = "suite-hash.json"


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
    """Filter cells by ``task=...,method=...,seed=...,scale=...``: within one selection a key may
    repeat (``seed=0,seed=1``: either) and different keys must all match; selections separated by
    ``;`` are alternatives (``task=a;task=b,seed=0``: every cell of a, and b's seed 0). ``None``
    selects every cell; an empty or blank selection is refused (it would silently select all)."""
    if only is None:
        return list(cells)
    if not only.strip():
        raise UserError(f"--only {only!r}: an empty selection; give task=..., method=..., scale=... or seed=... "
                        "(or leave --only out to run every cell)")
    selections: list[dict[str, set[str]]] = []
    for part in only.split(";"):
        wanted: dict[str, set[str]] = {}
        for item in part.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep or key not in ("task", "method", "seed", "scale"):
                raise UserError(f"--only {only!r}: expected task=..., method=..., scale=... or seed=... "
                                "(';' between alternative selections)")
            wanted.setdefault(key, set()).add(value)
        selections.append(wanted)

    def matches(cell: Cell, wanted: dict[str, set[str]]) -> bool:
        values = {"task": cell.task, "method": cell.label or cell.method, "seed": str(cell.seed), "scale": cell.scale}
        return all(values[k] in v or (k == "method" and cell.method in v) for k, v in wanted.items())

    chosen = [c for c in cells if any(matches(c, wanted) for wanted in selections)]
    if not chosen:
        raise UserError(f"--only {only!r} matches no cell of the suite")
    return chosen


def run_order(cells: Sequence[Cell]) -> list[Cell]:
    """The order cells are started in: seed by seed (every task and method of the first seed, then
    the next), suite order within a seed, so a run stopped part way holds whole seeds to compare."""
    return sorted(cells, key=lambda cell: cell.seed)


@dataclass(frozen=True)
class Plan:
    suite: Suite
    cells: list[Cell]
    out_dir: Path
    only: str | None = None


def plan(suite_path: str | Path, out: str | Path | None = None, overrides: Sequence[str] = (),
         only: str | None = None) -> Plan:
    suite = load_suite(suite_path, overrides)
    out_dir = Path(out or suite.output or f"results/{suite.name}")
    return Plan(suite, run_order(select_cells(suite.cells(), only)), out_dir, only)


def _write_text(path: Path, text: str) -> None:
    """Write a small file atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _move_aside(suite: Suite, out_dir: Path) -> Path | None:
    """Ledgers of cells no longer in the suite go to ``DIR/aside-<time>/`` (kept, never deleted)."""
    current = {c.cell_id for c in suite.cells()}
    stale = [p for p in out_dir.glob("*.jsonl") if p.stem not in current]
    if not stale:
        return None
    aside = out_dir / f"aside-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%f')}"
    aside.mkdir()
    for path in stale:
        for extra in (path, path.with_name(path.name + ".torn")):
            if extra.exists():
                os.replace(extra, aside / extra.name)
    return aside


def _store_suite(p: Plan, force: bool) -> None:
    """Keep the suite beside its results (``suite.yaml``) with its hash and the ``--only`` selection
    the run was started with (``run.json``); a changed suite is refused unless ``force``, and then
    the cells it no longer has are moved aside."""
    out_dir, suite = p.out_dir, p.suite
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = out_dir / RUN_META
    old = json.loads(meta.read_text()) if meta.exists() else {}
    if old and old.get("suite_hash") != suite.suite_hash:
        if not force:
            raise LedgerError(f"{out_dir}: holds results of a different version of suite {suite.name!r} "
                              f"({old.get('suite_hash')} != {suite.suite_hash}); use another --out, or --force "
                              "to continue anyway (cells no longer in the suite are then moved aside)")
        aside = _move_aside(suite, out_dir)
        if aside is not None:
            print(f"hpobench-elbo: cells no longer in the suite moved to {aside}", file=sys.stderr)
    _write_text(out_dir / SUITE_COPY, yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False))
    _write_text(meta, json.dumps({"suite_hash": suite.suite_hash, "name": suite.name, "only": p.only}))


def reuse_finished(cells: Sequence[Cell], out_dir: Path, source: str | Path) -> list[str]:
    """Copy into ``out_dir`` every ledger of ``source`` that is a *finished* run of one of ``cells``
    and that ``out_dir`` does not hold yet; return the cell ids taken.

    A cell id is the hash of the cell's whole definition (task, scale, options, method, options,
    label, seed, budget, clock, refit, cache), so a finished ledger with that id is that cell's
    result wherever it was run. Unfinished, torn or damaged ledgers are not taken (the cell runs
    here); nothing in ``source`` changes. Called under ``out_dir``'s writer lock."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"--reuse {source}: not a directory")
    taken = []
    for cell in cells:
        mine, theirs = out_dir / f"{cell.cell_id}.jsonl", source / f"{cell.cell_id}.jsonl"
        if mine.exists() or not theirs.exists():
            continue
        try:
            contents = read_ledger(theirs)
        except (LedgerError, UnicodeDecodeError, KeyError, TypeError):
            continue
        if contents.end is None or contents.torn is not None or contents.header.get("cell_id") != cell.cell_id:
            continue
        _write_text(mine, theirs.read_text())
        taken.append(cell.cell_id)
    return taken


def execute(p: Plan, device: str = "auto", force: bool = False, progress: bool = True,
            reuse: str | Path | Sequence[str | Path] | None = None) -> list[CellSummary]:
    """Run the planned cells with the suite's executor (``local``, with ``jobs`` cells at once, or
    ``ray``), holding the results directory's writer lock: this process alone writes the ledgers.
    ``reuse``: a results directory, or several (searched in order), whose finished runs of planned
    cells are taken, not rerun (``reuse_finished``)."""
    suite = p.suite
    # on Ray each worker resolves ``auto`` where it runs; locally the driver checks the device now
    resolved = device if suite.executor == "ray" else resolve_device(device)
    ctx = RunContext(out_dir=p.out_dir, device=resolved, suite_hash=suite.suite_hash, force=force)
    try:
        with ResultsLock(p.out_dir):
            _store_suite(p, force)
            sources = [] if reuse is None else [reuse] if isinstance(reuse, (str, Path)) else list(reuse)
            for source in sources:
                taken = reuse_finished(p.cells, p.out_dir, source)
                if taken and progress:
                    print(f"hpobench-elbo: {len(taken)} finished cell(s) taken from {source}", file=sys.stderr)
            if suite.executor == "ray":
                from hpobench_elbo.executors.ray import run_ray

                return run_ray(p.cells, ctx, address=suite.address, max_attempts=suite.max_attempts,
                               num_gpus_per_cell=suite.num_gpus, progress=progress)
            if suite.jobs > 1:
                from hpobench_elbo.executors.parallel import run_parallel

                return run_parallel(p.cells, ctx, suite.jobs, progress=progress, max_attempts=suite.max_attempts,
                                    oversubscribe=suite.oversubscribe)
            from hpobench_elbo.executors.local import run_local

            return run_local(p.cells, ctx, progress=progress)
    except OSError as exc:
        raise EnvironmentFailure.from_os_error(exc, p.out_dir) from None


def run(suite_path: str | Path, out: str | Path | None = None, device: str = "auto", overrides: Sequence[str] = (),
        only: str | None = None, force: bool = False, progress: bool = True,
        reuse: str | Path | Sequence[str | Path] | None = None) -> list[CellSummary]:
    """Run a suite file (cells already finished in ``out`` are kept; interrupted ones resume;
    finished runs of its cells in the results directory ``reuse`` are taken, not rerun)."""
    return execute(plan(suite_path, out, overrides, only), device, force, progress, reuse)


def _stored(results_dir: Path, overrides: Sequence[str] = ()) -> tuple[Suite, dict[str, Any]]:
    copy = results_dir / SUITE_COPY
    if not copy.exists():
        raise UserError(f"{results_dir}: not a results directory (no {SUITE_COPY})")
    meta_path = results_dir / RUN_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return load_suite(copy, overrides), meta


def resume(results_dir: str | Path, device: str = "auto", force: bool = False, progress: bool = True,
           only: str | None = None, overrides: Sequence[str] = ()) -> list[CellSummary]:
    """Continue a run from its results directory: its stored suite and the ``--only`` selection it
    was started with (unless ``only`` is given). ``overrides`` may change how cells are spread
    (``jobs``, ``executor``, ``address``, ...), which the suite's hash does not cover."""
    results_dir = Path(results_dir)
    suite, meta = _stored(results_dir, overrides)
    chosen = only if only is not None else meta.get("only")
    p = Plan(suite, run_order(select_cells(suite.cells(), chosen)), results_dir, chosen)
    return execute(p, device, force, progress)


def status(results_dir: str | Path) -> list[dict[str, Any]]:
    """Per cell of the run's selection: done, running (a writer holds the directory), interrupted
    (started, no writer), remaining (not started, or an empty ledger), or damaged (with why); the
    trials recorded and the charged cost. Reads only: takes no lock, changes no file."""
    results_dir = Path(results_dir)
    suite, meta = _stored(results_dir)
    active = writer_active(results_dir)
    rows = []
    for cell in select_cells(suite.cells(), meta.get("only")):
        path = results_dir / f"{cell.cell_id}.jsonl"
        state, spent, trials, problem, where = "remaining", 0.0, 0, None, ""
        if path.exists() and path.stat().st_size > 0:
            try:
                contents = read_ledger(path)
            except LedgerError as exc:
                state, problem = "damaged", str(exc)
            else:
                trials = len(contents.rows)
                spent = contents.rows[-1]["spent"] if contents.rows else 0.0
                placed = contents.header.get("where") or {}
                where = placed.get("node_ip") or placed.get("host") or ""
                state = "done" if contents.end is not None else ("running" if active else "interrupted")
        rows.append({"cell": cell.cell_id, "state": state, "trials": trials, "spent": spent, "budget": cell.budget,
                     "clock": cell.clock, "problem": problem, "where": where})
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
