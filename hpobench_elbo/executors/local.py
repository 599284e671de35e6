"""The local executor: runs a suite's cells one after another in this process, with a progress bar.

``run_parallel`` (``executors/parallel.py``, re-exported here) is ``--jobs N``: N cells at once in
worker processes, the driver alone writing the ledgers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.ledger import Ledger, LedgerLike
from hpobench_elbo.engine.loop import CellSummary, RunContext
from hpobench_elbo.executors.parallel import run_parallel
from hpobench_elbo.executors.worker import run_cell_here, where_here


def run_one(cell: Cell, ctx: RunContext, cache: StageCache,
            on_trial: Callable[[Cell, dict[str, Any]], None] | None = None) -> CellSummary:
    """Build the cell's task and method here (one torch thread count per cell) and run it; this
    process writes the ledger (its header records ``where``)."""

    def open_ledger(header: dict[str, Any]) -> LedgerLike:
        return Ledger.open(ctx.out_dir / f"{cell.cell_id}.jsonl", header, force=ctx.force)

    return run_cell_here(cell, ctx, cache, open_ledger, where_here("local"), on_trial=on_trial)


def run_local(cells: Sequence[Cell], ctx: RunContext, progress: bool = True) -> list[CellSummary]:
    """Run (or resume) every cell; the ledgers under ``ctx.out_dir`` are the results."""
    cache = StageCache(ctx.out_dir / "cache", enabled=all(c.cache for c in cells))
    total = float(sum(c.budget for c in cells))
    bar = tqdm(total=total, unit="budget", disable=not progress, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} [{elapsed}<{remaining}] {postfix}")
    summaries = []
    with bar:
        for i, cell in enumerate(cells):
            done = {"spent": 0.0}
            bar.set_postfix_str(f"cell {i + 1}/{len(cells)} {cell.task}/{cell.label or cell.method}/s{cell.seed}")

            def on_trial(c: Cell, row: dict[str, Any], done: dict[str, float] = done) -> None:
                step = min(row["spent"], c.budget) - done["spent"]
                done["spent"] += step
                bar.update(step)

            summary = run_one(cell, ctx, cache, on_trial)
            bar.update(cell.budget - done["spent"])
            summaries.append(summary)
    return summaries


__all__ = ["run_local", "run_one", "run_parallel"]
