"""The local executor: runs a suite's cells one after another in this process, with a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.loop import CellSummary, RunContext, run_cell
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.registry import build_cell, build_tuner


def run_one(cell: Cell, ctx: RunContext, cache: StageCache,
            on_trial: Callable[[Cell, dict[str, Any]], None] | None = None) -> CellSummary:
    """Build the cell's task and method here (one torch thread count per cell) and run it."""
    import torch
    import torch._dynamo  # noqa: F401  (imported lazily by the first optimizer: keep it out of trial 1)

    torch.set_num_threads(cell.threads)
    task, method = build_cell(cell, ctx.device, Seeds.from_cell(cell.seed).sampler)
    return run_cell(cell, task, method, build_tuner, ctx, cache, on_trial)


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
