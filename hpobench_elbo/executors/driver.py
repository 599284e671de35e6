"""The driver's side of a parallel run (``--jobs`` processes or Ray): it alone writes the ledgers.

Workers send the header they built (the driver opens or checks the ledger, ``Ledger.open``) and
then one row per finished trial (the driver appends it, fsynced, ``Ledger.append``). The driver
counts attempts: a cell whose worker died is submitted again with the rows already recorded, so
the new attempt replays them and continues (only the trial in flight runs again), at most
``max_attempts`` times in all; then its summary's reason starts with ``attempts exhausted``.

Progress, as in the sequential executor: a tqdm bar on stderr over the charged cost of every
cell's budget, with cells done, running (and where) and remaining.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.ledger import Ledger, read_ledger
from hpobench_elbo.engine.loop import CellSummary, RunContext
from hpobench_elbo.errors import LedgerError

EXHAUSTED = "attempts exhausted"


@dataclass
class Attempt:
    """One submission of a cell: where it ran and how it ended (``done``, ``died: ...``)."""

    cell_id: str
    number: int
    where: dict[str, Any] = field(default_factory=dict)
    outcome: str = "running"
    rows: int = 0  # trial rows this attempt added


class Driver:
    """Ledgers, attempts, summaries and the progress bar of one parallel run."""

    def __init__(self, cells: Sequence[Cell], ctx: RunContext, max_attempts: int = 3, progress: bool = True) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.cells = {c.cell_id: c for c in cells}
        self.order = [c.cell_id for c in cells]
        self.ctx = ctx
        self.max_attempts = max_attempts
        self.ledgers: dict[str, Ledger] = {}
        self.summaries: dict[str, CellSummary] = {}
        self.attempts: dict[str, list[Attempt]] = {c: [] for c in self.order}
        self.spent: dict[str, float] = {c: 0.0 for c in self.order}
        self.running: dict[str, str] = {}  # cell id -> where, in words
        self.rows_handled = 0
        self.handling_cpu = 0.0  # driver CPU seconds spent receiving and appending rows
        total = float(sum(c.budget for c in cells))
        self.bar = tqdm(total=total, unit="budget", disable=not progress, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} [{elapsed}<{remaining}] {postfix}")

    # -- ledgers ----------------------------------------------------------------------------
    def path(self, cell_id: str) -> Path:
        return self.ctx.out_dir / f"{cell_id}.jsonl"

    def recorded(self, cell_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The rows and end already recorded for a cell (for a worker that cannot ask back)."""
        if cell_id in self.ledgers:
            ledger = self.ledgers[cell_id]
            return list(ledger.rows), ledger.end
        path = self.path(cell_id)
        if not path.exists() or path.stat().st_size == 0 or b"\n" not in path.read_bytes():
            return [], None
        contents = read_ledger(path)
        return contents.rows, contents.end

    def finished_already(self, cell_id: str) -> CellSummary | None:
        """The summary of a cell whose ledger already ends and matches it (no worker is needed),
        else None: the cell is submitted, and its worker's header meets ``Ledger.open``'s checks."""
        if cell_id in self.summaries:
            return self.summaries[cell_id]
        path = self.path(cell_id)
        if not path.exists():
            return None
        try:
            contents = read_ledger(path)
        except LedgerError:
            return None  # the worker's open reports it, as sequentially
        cell, header, end = self.cells[cell_id], contents.header, contents.end
        # a finished ledger of this very cell is its result, whichever suite ran it (``--reuse``)
        same = header.get("cell") == json.loads(json.dumps(cell.definition(), sort_keys=True))
        if end is None or contents.torn is not None or not same:
            return None
        summary = CellSummary(cell_id, len(contents.rows), float(end.get("spent", 0.0)), cell.budget,
                              str(header.get("unit", "")), end.get("recommendation"), str(end.get("reason", "")))
        self.summaries[cell_id] = summary
        self.spent[cell_id] = cell.budget
        self.bar.update(cell.budget)
        self._postfix()
        return summary

    def open(self, cell_id: str, header: Mapping[str, Any]) -> Ledger:
        """Open (create, or check against ``header``) the cell's ledger; LedgerError as sequentially."""
        ledger = Ledger.open(self.path(cell_id), header, force=self.ctx.force)
        self.ledgers[cell_id] = ledger
        attempt = self.attempts[cell_id][-1] if self.attempts[cell_id] else None
        if attempt is not None:
            attempt.where = dict(header.get("where") or {})
            self.running[cell_id] = describe_where(attempt.where)
        self._postfix()
        return ledger

    def append(self, cell_id: str, row: Mapping[str, Any], kind: str) -> dict[str, Any]:
        """Append one row (fsynced) and return the record as written."""
        start = time.process_time()
        ledger = self.ledgers[cell_id]
        ledger.append(row, kind)
        record = ledger.rows[-1] if kind == "trial" else ledger.end
        assert record is not None
        if kind == "trial":
            cell = self.cells[cell_id]
            step = min(float(row.get("spent", 0.0)), cell.budget) - self.spent[cell_id]
            if step > 0:
                self.spent[cell_id] += step
                self.bar.update(step)
            if self.attempts[cell_id]:
                self.attempts[cell_id][-1].rows += 1
        self.rows_handled += 1
        self.handling_cpu += time.process_time() - start
        return record

    # -- attempts ---------------------------------------------------------------------------
    def start(self, cell_id: str, where: Mapping[str, Any] | None = None) -> Attempt:
        attempt = Attempt(cell_id, len(self.attempts[cell_id]) + 1, dict(where or {}))
        self.attempts[cell_id].append(attempt)
        self.running[cell_id] = describe_where(attempt.where) if where else "waiting"
        self._postfix()
        return attempt

    def finish(self, cell_id: str, summary: CellSummary, outcome: str = "done") -> None:
        self.attempts[cell_id][-1].outcome = outcome
        self.summaries[cell_id] = summary
        self.running.pop(cell_id, None)
        cell = self.cells[cell_id]
        if cell.budget > self.spent[cell_id]:
            self.bar.update(cell.budget - self.spent[cell_id])
            self.spent[cell_id] = cell.budget
        self._postfix()

    def died(self, cell_id: str, why: str) -> bool:
        """Record a lost attempt; True if the cell should be submitted again."""
        attempt = self.attempts[cell_id][-1]
        attempt.outcome = f"died: {why}"
        self.running.pop(cell_id, None)
        if len(self.attempts[cell_id]) < self.max_attempts:
            self._postfix()
            return True
        self.finish(cell_id, self._exhausted(cell_id, why), outcome=f"died: {why}")
        return False

    def _exhausted(self, cell_id: str, why: str) -> CellSummary:
        cell = self.cells[cell_id]
        ledger = self.ledgers.get(cell_id)
        rows = ledger.rows if ledger is not None else []
        unit = str(ledger.header.get("unit", "")) if ledger is not None else ""
        last = rows[-1] if rows else {}
        n = len(self.attempts[cell_id])
        return CellSummary(cell_id, len(rows), float(last.get("spent", 0.0)), cell.budget, unit,
                           last.get("recommendation"),
                           f"{EXHAUSTED}: the worker was lost in {n} of {n} attempts (last: {why}); "
                           f"the ledger keeps {len(rows)} trials, resume continues")

    # -- results and display ----------------------------------------------------------------
    def results(self) -> list[CellSummary]:
        return [self.summaries[c] for c in self.order if c in self.summaries]

    def _postfix(self) -> None:
        done = len(self.summaries)
        running = [f"{self.cells[c].label or self.cells[c].method}/s{self.cells[c].seed}@{w}"
                   for c, w in self.running.items()]
        remaining = len(self.order) - done - len(running)
        text = f"done {done}/{len(self.order)}, running {len(running)}"
        if running:
            text += " [" + ", ".join(running[:4]) + (", ..." if len(running) > 4 else "") + "]"
        self.bar.set_postfix_str(text + f", remaining {remaining}")

    def close(self) -> None:
        self.bar.close()


def describe_where(where: Mapping[str, Any]) -> str:
    """A short place for the progress bar: ``node 1a2b3c4d`` (Ray) or ``pid 1234``."""
    if where.get("node_id"):
        return f"node {str(where['node_id'])[:8]}"
    if where.get("pid"):
        return f"pid {where['pid']}"
    return "?"
