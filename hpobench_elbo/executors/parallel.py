"""``--jobs N``: N cells at once in worker processes on this machine; the driver writes the ledgers.

Each worker is a fresh interpreter (multiprocessing's ``spawn``) that runs one cell after another.
For a cell it builds the task and the method itself and runs the loop against a ledger that lives
in the driver: it sends the header it built (the driver opens or checks the file with
``Ledger.open`` and answers with the rows and end already recorded, which the loop replays), then
one message per finished trial (the driver appends it with ``Ledger.append``, fsynced, and answers
with the record). Only the driver process writes a ledger; the workers share the stage cache, whose
writes are atomic renames.

A worker dies with its driver (``die_with_parent``): a SIGKILLed driver leaves no worker that
starts another trial. A worker that dies (killed, out of memory) loses only the trial in flight: the driver starts a new
worker and submits the cell again; the attempt replays the ledger and continues. After
``max_attempts`` attempts the cell's summary reason starts with ``attempts exhausted``. Ctrl-C
stops the workers (they ignore SIGINT, so the driver decides), appends rows that had already
arrived, and raises ``KeyboardInterrupt``; every ledger is then a consistent prefix and ``resume``
continues.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.loop import CellSummary, RunContext
from hpobench_elbo.errors import UserError
from hpobench_elbo.executors.driver import Driver
from hpobench_elbo.executors.worker import RemoteLedger, run_cell_here, where_here


def check_oversubscription(cells: Sequence[Cell], jobs: int, oversubscribe: bool) -> dict[str, int] | None:
    """Under the device clock, N cells x their threads above the CPU count distort measured times:
    refused (``UserError``) unless ``oversubscribe``; then the figures are returned, for the ledger
    headers (``oversubscribed``). None when the cores suffice or the clock counts."""
    if not cells or not any(c.clock == "device" for c in cells):
        return None
    threads = max(c.threads for c in cells)
    cpus = os.cpu_count() or 1
    running = min(jobs, len(cells))
    if running * threads <= cpus:
        return None
    if not oversubscribe:
        raise UserError(f"--jobs {jobs} x {threads} threads per cell needs {running * threads} CPU cores and this "
                        f"machine has {cpus}: device-clock times would be distorted; lower --jobs or pass "
                        f"--oversubscribe (recorded in the ledgers)")
    return {"jobs": running, "threads": threads, "cpus": cpus}


# -- the worker process ---------------------------------------------------------------------------
class _Abandon(Exception):
    """The driver told this worker to drop its cell."""


class _DriverGone(Exception):
    """The pipe to the driver is closed: the driver has stopped."""


def die_with_parent(parent: int) -> None:
    """Make this worker process die as soon as its driver (``parent``, its pid) does, even by
    SIGKILL: on Linux the kernel sends SIGKILL when the parent exits (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere, and for a parent that is already gone, a daemon thread checks the parent pid every
    0.2 s. A worker holds no results (the driver has every row), so it must not start another trial
    once nobody can record it."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # gone before the call above took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def _worker_main(conn: multiprocessing.connection.Connection, ctx: RunContext, cache_root: str | None,
                 cache_enabled: bool, header_extra: dict[str, Any], parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    try:
        _serve(conn, ctx, cache_root, cache_enabled, header_extra)
    finally:
        # a worker holds no results (the driver has every row): skip the interpreter's slow
        # teardown of torch (seconds per worker)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _exchange(conn: multiprocessing.connection.Connection, message: tuple[Any, ...]) -> tuple[Any, ...]:
    """Send one message to the driver and wait for its answer."""
    try:
        conn.send(message)
        return conn.recv()
    except (EOFError, OSError):
        raise _DriverGone() from None


def _serve(conn: multiprocessing.connection.Connection, ctx: RunContext, cache_root: str | None,
           cache_enabled: bool, header_extra: dict[str, Any]) -> None:
    cache = StageCache(cache_root, enabled=cache_enabled)
    try:
        conn.send(("ready", os.getpid()))
    except OSError:
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        cell: Cell = message[1]
        path = ctx.out_dir / f"{cell.cell_id}.jsonl"

        def send(row: dict[str, Any], kind: str, cell_id: str = cell.cell_id) -> dict[str, Any]:
            reply = _exchange(conn, ("append", cell_id, row, kind))
            if reply[0] != "ok":
                raise _Abandon()
            return reply[1]

        def open_ledger(header: dict[str, Any], cell_id: str = cell.cell_id, path: Path = path) -> RemoteLedger:
            reply = _exchange(conn, ("open", cell_id, header))
            if reply[0] != "ledger":
                raise _Abandon()
            return RemoteLedger(path, reply[1], reply[2], send)

        try:
            summary = run_cell_here(cell, ctx, cache, open_ledger, where_here("local-jobs"), header_extra=header_extra)
        except _Abandon:
            continue
        except _DriverGone:
            return
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which decides
            text = traceback.format_exc()
            try:
                try:
                    conn.send(("error", cell.cell_id, exc, text))
                except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
                    conn.send(("error", cell.cell_id, RuntimeError(f"{type(exc).__name__}: {exc}"), text))
            except OSError:
                return
            continue
        try:
            conn.send(("done", cell.cell_id, summary))
        except OSError:
            return


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class _Worker:
    process: Any
    conn: multiprocessing.connection.Connection
    cell: str | None = None
    dead: bool = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)


class WorkerError(RuntimeError):
    """A cell raised an unexpected exception in its worker (the worker's traceback is the message)."""


class ParallelRun:
    """One ``--jobs`` run; :func:`run_parallel` is the function to call. Attributes after ``run``:
    ``driver`` (ledgers, attempts per cell with where each ran, driver CPU per row)."""

    def __init__(self, cells: Sequence[Cell], ctx: RunContext, jobs: int, progress: bool = True,
                 max_attempts: int = 3, cache_dir: str | Path | None = None,
                 header_extra: dict[str, Any] | None = None) -> None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs}: expected at least 1")
        self.cells = list(cells)
        self.ctx = ctx
        self.jobs = min(jobs, max(1, len(self.cells)))
        self.driver = Driver(self.cells, ctx, max_attempts, progress)
        root = Path(cache_dir) if cache_dir is not None else ctx.out_dir / "cache"
        self.cache_root = str(root.resolve())
        self.cache_enabled = all(c.cache for c in self.cells)
        self.header_extra = dict(header_extra or {})
        self.mp = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.pending: deque[str] = deque(c.cell_id for c in self.cells
                                         if self.driver.finished_already(c.cell_id) is None)
        self.by_id = {c.cell_id: c for c in self.cells}

    def _spawn(self) -> _Worker:
        parent, child = self.mp.Pipe(duplex=True)
        args = (child, self.ctx, self.cache_root, self.cache_enabled, self.header_extra, os.getpid())
        process = self.mp.Process(target=_worker_main, args=args, daemon=True, name="hpobench-elbo-worker")
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self.workers.append(worker)
        return worker

    def _assign(self) -> None:
        idle = [w for w in self.workers if w.cell is None and not w.dead]
        while self.pending and len([w for w in self.workers if not w.dead]) < self.jobs:
            idle.append(self._spawn())
        while self.pending and idle:
            worker = idle.pop(0)
            cell_id = self.pending.popleft()
            worker.cell = cell_id
            self.driver.start(cell_id, {"pid": worker.pid})
            try:
                worker.conn.send(("run", self.by_id[cell_id]))
            except OSError:
                worker.dead = True  # noticed by _service

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            return
        cell_id = message[1]
        if kind == "open":
            ledger = self.driver.open(cell_id, message[2])  # LedgerError: stop the run, as sequentially
            self._reply(worker, ("ledger", ledger.rows, ledger.end))
        elif kind == "append":
            record = self.driver.append(cell_id, message[2], message[3])
            self._reply(worker, ("ok", record))
        elif kind == "done":
            self.driver.finish(cell_id, message[2])
            worker.cell = None
        elif kind == "error":
            exc, text = message[2], message[3]
            if isinstance(exc, (UserError, OSError)):  # bad input (exit 2), the environment (exit 3)
                raise exc
            raise WorkerError(f"cell {cell_id} raised {type(exc).__name__} in worker pid {worker.pid}:\n{text}")

    @staticmethod
    def _reply(worker: _Worker, message: tuple[Any, ...]) -> None:
        try:
            worker.conn.send(message)
        except OSError:
            worker.dead = True  # it died after sending; noticed by _service

    def _drain(self, worker: _Worker, appends_only: bool = False) -> None:
        """Handle every complete message the worker has sent; mark it dead at end of file."""
        while not worker.dead:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                worker.dead = True
                return
            if appends_only and message[0] != "append":
                continue
            self._handle(worker, message)

    def _service(self, worker: _Worker) -> None:
        self._drain(worker)
        if not worker.dead and worker.process.is_alive():
            return
        worker.dead = True
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
        code = worker.process.exitcode
        worker.conn.close()
        self.workers.remove(worker)
        if worker.cell is not None:
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            if self.driver.died(worker.cell, f"worker pid {worker.pid} ended with {how}"):
                self.pending.appendleft(worker.cell)

    def run(self) -> list[CellSummary]:
        try:
            while self.pending or any(w.cell is not None for w in self.workers):
                self._assign()
                waitables: list[Any] = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
                ready = set(multiprocessing.connection.wait(waitables, timeout=1.0))
                for worker in list(self.workers):
                    if worker.conn in ready or worker.process.sentinel in ready or worker.dead:
                        self._service(worker)
        except BaseException:
            self._stop(abort=True)
            raise
        else:
            self._stop(abort=False)
        finally:
            self.driver.close()
        return self.driver.results()

    def _stop(self, abort: bool) -> None:
        """Stop every worker; on abort (Ctrl-C, an error) kill them first, then keep rows already sent."""
        for worker in self.workers:
            if abort:
                worker.process.kill()
            else:
                try:
                    worker.conn.send(("stop",))
                except OSError:
                    pass
        for worker in self.workers:
            worker.process.join(timeout=10 if not abort else 5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            if abort and worker.cell is not None:
                try:
                    self._drain(worker, appends_only=True)  # a finished trial already sent is kept
                except Exception:  # noqa: BLE001 - stopping anyway; the ledger stays a consistent prefix
                    pass
            worker.conn.close()
        self.workers.clear()


def run_parallel(cells: Sequence[Cell], ctx: RunContext, jobs: int, progress: bool = True, max_attempts: int = 3,
                 oversubscribe: bool = False, cache_dir: str | Path | None = None) -> list[CellSummary]:
    """Run (or resume) the cells ``jobs`` at a time in worker processes; the driver (this process)
    alone writes the ledgers under ``ctx.out_dir``. Returns one summary per cell, in cell order.

    ``oversubscribe``: allow ``jobs x threads`` above the CPU count under the device clock (refused
    otherwise with a ``UserError``); the ledger headers then record ``oversubscribed`` (jobs,
    threads, cpus). ``cache_dir``: the stage cache (default ``ctx.out_dir/cache``).
    A cell whose worker died ``max_attempts`` times gets a summary whose reason starts with
    ``attempts exhausted``.
    """
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected at least 1")
    figures = check_oversubscription(cells, jobs, oversubscribe)
    extra = {"oversubscribed": figures} if figures else None
    return ParallelRun(cells, ctx, jobs, progress, max_attempts, cache_dir, extra).run()


__all__ = ["run_parallel", "ParallelRun", "check_oversubscription", "WorkerError"]
