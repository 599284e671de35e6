"""The local executor: runs a suite's cells one after another in this process, with a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.loop import Cell, CellSummary, RunContext, run_cell


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

            summary = run_cell(cell, ctx, cache, on_trial)
            bar.update(cell.budget - done["spent"])
            summaries.append(summary)
    return summaries
