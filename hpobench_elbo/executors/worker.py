"""What runs where a cell runs, for every executor: build the cell's task and method here, set the
torch thread count, and run the loop against a ledger that the caller provides.

A worker that is not the driver (a ``--jobs`` process, a Ray task) runs the loop against a
:class:`RemoteLedger`: it holds the rows the driver has recorded (the loop replays them) and its
``append`` hands each row to the driver, which alone writes the file (``Ledger.append``, fsynced)
and returns the record as written.

Fault injection for the executor tests and benchmarks (unset, it costs nothing):
``HPOBENCH_ELBO_WORKER_FAULT`` holds JSON ``{"at": N, "action": "kill" | "stall", "seconds": S,
"once": PATH, "cell": TEXT}``: the N-th trial a worker *executes* in one attempt of a cell (replayed
trials do not count) first SIGKILLs the worker process (``kill``) or sleeps S seconds (``stall``).
With ``once`` the fault fires only if ``PATH`` does not exist yet (it is created, atomically, with
the worker's ``where`` in it, so a test can see where it fired); with ``cell`` only in cells whose
id contains ``TEXT``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hpobench_elbo.contracts import Cell, TrialSpec
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.ledger import LedgerLike
from hpobench_elbo.engine.loop import CellRunner, CellSummary, RunContext
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.registry import build_cell, build_tuner

WORKER_FAULT_ENV = "HPOBENCH_ELBO_WORKER_FAULT"

Send = Callable[[dict[str, Any], str], dict[str, Any]]
"""``send(row, kind) -> record``: hand one row to the driver; the record as written comes back."""


def where_here(executor: str, **extra: Any) -> dict[str, Any]:
    """Where this process is (written into the ledger header as ``where``)."""
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(), **extra}


class RemoteLedger:
    """A worker's ledger (``engine.ledger.LedgerLike``): the driver's recorded rows and end, and an
    ``append`` that hands each row to the driver (which writes and fsyncs it)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], end: dict[str, Any] | None, send: Send) -> None:
        self.path = path
        self.rows = list(rows)
        self.end = end
        self._send = send

    def append(self, row: Mapping[str, Any], kind: str = "trial") -> None:
        record = self._send(dict(row), kind)
        if kind == "trial":
            self.rows.append(record)
        else:
            self.end = record


def local_device(device: str) -> str:
    """Resolve ``auto`` where the cell runs (a Ray driver may have no GPU while its workers do)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _FaultTask:
    """The cell's task with the ``HPOBENCH_ELBO_WORKER_FAULT`` hook before each executed trial."""

    def __init__(self, task: Any, plan: dict[str, Any], cell: Cell, where: Mapping[str, Any]) -> None:
        self._task = task
        self._plan = plan
        self._cell = cell
        self._where = dict(where)
        self._executed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def run(self, spec: TrialSpec, trial: Any) -> Any:
        self._executed += 1
        if self._executed == int(self._plan.get("at", 1)):
            _fire(self._plan, {**self._where, "cell": self._cell.cell_id, "trial": spec.trial_id})
        return self._task.run(spec, trial)


def _fire(plan: Mapping[str, Any], where: Mapping[str, Any]) -> None:
    once = plan.get("once")
    if once:
        try:
            fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(dict(where)))
            fh.flush()
            os.fsync(fh.fileno())
    if plan.get("action", "kill") == "stall":
        time.sleep(float(plan.get("seconds", 60)))
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_plan(cell: Cell) -> dict[str, Any] | None:
    raw = os.environ.get(WORKER_FAULT_ENV)
    if not raw:
        return None
    plan = json.loads(raw)
    if plan.get("cell") and plan["cell"] not in cell.cell_id:
        return None
    return plan


def run_cell_here(cell: Cell, ctx: RunContext, cache: StageCache,
                  open_ledger: Callable[[dict[str, Any]], LedgerLike], where: Mapping[str, Any],
                  threads: int | None = None,
                  on_trial: Callable[[Cell, dict[str, Any]], None] | None = None,
                  header_extra: Mapping[str, Any] | None = None) -> CellSummary:
    """Build the cell's task and method in this process and run (or resume) the cell.

    ``threads`` (default the cell's) is torch's intra-op thread count here; the ledger header gets
    ``where``, the thread count actually used (``threads``) and ``header_extra``.
    """
    import torch
    import torch._dynamo  # noqa: F401  (imported lazily by the first optimizer: keep it out of trial 1)

    used = max(1, int(threads or cell.threads))
    torch.set_num_threads(used)
    ctx = dataclasses.replace(ctx, device=local_device(ctx.device))
    task, method = build_cell(cell, ctx.device, Seeds.from_cell(cell.seed).sampler)
    plan = fault_plan(cell)
    if plan is not None:
        task = _FaultTask(task, plan, cell, where)

    def opened(header: dict[str, Any]) -> LedgerLike:
        return open_ledger({**header, **dict(header_extra or {}), "where": dict(where), "threads": used})

    runner = CellRunner(cell, task, method, build_tuner, ctx, cache, on_trial=on_trial, open_ledger=opened)
    return runner.run()
