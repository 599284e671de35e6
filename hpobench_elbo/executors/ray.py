"""``--executor ray``: cells as Ray tasks on a cluster; the driver alone writes the ledgers.

Each cell is one Ray task with the resources asked (``num_cpus``, ``num_gpus``; torch's thread
count follows ``num_cpus``). The task builds the cell's task and method where it runs and runs the
loop in a thread; it is a streaming generator (``num_returns="streaming"``) that yields the header
it built and then one row per finished trial, as they finish. The driver opens the ledger
(``Ledger.open``, which checks an existing one against the header) and appends each row
(``Ledger.append``, fsynced): Ray's and Ray Tune's own state is never a source of results.

Ray's own retry is off (``max_retries=0``): it would rerun the cell from scratch. When a worker or
a node dies, the driver submits the cell again with the rows already in its ledger; the new
attempt replays them and continues, so only the trial in flight runs again. After ``max_attempts``
attempts the cell's summary reason starts with ``attempts exhausted``.

The ledger header records where the cell started (``where``: node id, host, pid). The stage cache
is ``ctx.out_dir/cache`` when Ray is started here (one machine), ``cache_dir`` when given (a path
every node sees), and otherwise per node (under the node's temporary directory): a stage a cell
already paid for whose entry is missing on a new node is computed again there.

Environment (see docs/ray.md): for a local Ray or a loopback address,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set in this process if unset (every process of a
loopback cluster needs it; Ray reads it at import), never for a real cluster's address. A local
Ray started here listens on 127.0.0.1 only, with ``RAY_AUTH_MODE=disabled`` if unset.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import tempfile
import threading
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpobench_elbo.contracts import Cell
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.loop import CellSummary, RunContext
from hpobench_elbo.errors import UserError
from hpobench_elbo.executors.driver import Driver
from hpobench_elbo.executors.worker import RemoteLedger, run_cell_here, where_here

INSTALL_HINT = "pip install 'hpobench-elbo[ray]' (or: pip install -c constraints-cpu.txt 'ray[tune]==2.60.*')"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
FORWARDED_ENV = ("HPOBENCH_ELBO_EXEC_LOG", "HPOBENCH_ELBO_WORKER_FAULT", "HPOBENCH_ELBO_FAULT", "HPOBENCH_ELBO_FAULT_PATH")
"""The driver's measurement and fault-injection variables (``engine.loop.EXEC_LOG_ENV``,
``executors.worker.WORKER_FAULT_ENV``, ``engine.faults``) that every cell task sets where it runs,
so that they reach the workers of an existing cluster, whose processes the driver did not start
(a local Ray's workers inherit them anyway). A path in them names a file on the node that runs the
cell: on one machine the same file for every node."""
LOCAL_HEAD_ENV = {"RAY_AUTH_MODE": "disabled"}


def is_loopback(address: str | None) -> bool:
    """True for no address (a local Ray) and for ``127.x.x.x`` / ``localhost`` addresses."""
    if address is None:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _import_ray(address: str | None = None) -> Any:
    """Import Ray; for a loopback cluster first set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (unless
    set): Ray reads it at import. Never for a real cluster: there it makes this process advertise
    127.0.0.1 and ``ray start --address`` refuse to join."""
    if is_loopback(address):
        for key, value in LOOPBACK_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray: Ray is not installed here; {INSTALL_HINT}") from None
    return ray


def connect(address: str | None, runtime_env: Mapping[str, Any] | None = None, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray; True if it started (and so must stop) a local instance.

    Already connected (``ray.init`` called by the caller): use that. ``address`` None: start a
    local Ray on loopback. Otherwise join the cluster at ``address`` (``host:port``, ``auto``, or
    ``ray://host:10001``).
    """
    ray = _import_ray(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"runtime_env": dict(runtime_env)} if runtime_env else {}
    if address is None:
        for key, value in LOCAL_HEAD_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=num_cpus, **kwargs)
        return True
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UserError(f"--address {address}: cannot join a Ray cluster there ({exc})") from None
    return True


# -- where the cell runs ----------------------------------------------------------------------------
def forwarded_env() -> dict[str, str]:
    """The ``FORWARDED_ENV`` variables set in this (the driver's) process."""
    return {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}


def _cell_stream(cell: Cell, ctx: RunContext, rows: list[dict[str, Any]], end: dict[str, Any] | None,
                 cache_root: str | None, cache_enabled: bool, threads: int, env: Mapping[str, str]) -> Any:
    """The Ray task (a streaming generator): ``("open", header)``, ``("append", row, kind)`` per
    row, then ``("done", summary)`` or ``("error", exception, traceback)``. ``env``: the driver's
    ``forwarded_env()``, set in this worker process first."""
    import ray

    os.environ.update(env)
    node_id = ray.get_runtime_context().get_node_id()
    where = where_here("ray", node_id=node_id, node_ip=ray.util.get_node_ip_address())
    if cache_root is None:  # per node
        cache_root = str(Path(tempfile.gettempdir()) / "hpobench-elbo-cache" / f"{cell.suite}-{ctx.suite_hash}")
    cache = StageCache(cache_root, enabled=cache_enabled)
    out: queue.Queue[tuple[Any, ...]] = queue.Queue()
    path = ctx.out_dir / f"{cell.cell_id}.jsonl"

    def send(row: dict[str, Any], kind: str) -> dict[str, Any]:
        out.put(("append", row, kind))
        return {"type": kind, **row}

    def open_ledger(header: dict[str, Any]) -> RemoteLedger:
        out.put(("open", header))
        return RemoteLedger(path, rows, end, send)

    def work() -> None:
        try:
            out.put(("done", run_cell_here(cell, ctx, cache, open_ledger, where, threads=threads)))
        except BaseException as exc:  # noqa: BLE001 - reported to the driver, which decides
            out.put(("error", exc if _pickles(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"),
                     traceback.format_exc()))

    thread = threading.Thread(target=work, name=f"cell-{cell.cell_id}", daemon=True)
    thread.start()
    while True:
        item = out.get()
        yield item
        if item[0] in ("done", "error"):
            break
    thread.join()


def _pickles(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return True
    except Exception:  # noqa: BLE001
        return False


# -- the driver -----------------------------------------------------------------------------------
class RayRun:
    """One Ray run; :func:`run_ray` is the function to call. After ``run``: ``driver`` (ledgers,
    attempts per cell with where each ran, driver CPU per row)."""

    def __init__(self, cells: Sequence[Cell], ctx: RunContext, max_attempts: int = 3,
                 num_cpus_per_cell: float | None = None, num_gpus_per_cell: float = 0, progress: bool = True,
                 cache_dir: str | Path | None = None) -> None:
        self.cells = {c.cell_id: c for c in cells}
        self.order = [c.cell_id for c in cells]
        # workers do not share the driver's working directory: absolute paths only
        self.ctx = dataclasses.replace(ctx, out_dir=Path(ctx.out_dir).resolve())
        self.driver = Driver(list(cells), self.ctx, max_attempts, progress)
        self.num_cpus = num_cpus_per_cell
        self.num_gpus = num_gpus_per_cell
        self.cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
        self.cache_enabled = all(c.cache for c in cells)
        self.live: dict[Any, str] = {}  # generator -> cell id
        self.remote: Any = None
        self.shared_cache: str | None = None

    def _resources(self, cell: Cell) -> tuple[float, int]:
        cpus = float(self.num_cpus) if self.num_cpus is not None else float(cell.threads)
        return cpus, max(1, int(cpus))

    def _check_cluster(self, ray: Any) -> None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        need_cpu = max(self._resources(c)[0] for c in self.cells.values())
        fits = [n for n in nodes if n["Resources"].get("CPU", 0) >= need_cpu
                and n["Resources"].get("GPU", 0) >= self.num_gpus]
        if not fits:
            warnings.warn(f"no live node of the Ray cluster has the {need_cpu:g} CPUs and {self.num_gpus:g} GPUs a "
                          "cell asks for; the cells wait until such a node joins", stacklevel=3)

    def _submit(self, ray: Any, cell_id: str) -> None:
        cell = self.cells[cell_id]
        rows, end = self.driver.recorded(cell_id)
        cpus, threads = self._resources(cell)
        if self.remote is None:
            self.remote = ray.remote(_cell_stream)
        remote = self.remote.options(num_returns="streaming", max_retries=0, retry_exceptions=False,
                                     num_cpus=cpus, num_gpus=self.num_gpus,
                                     name=f"cell:{cell.label or cell.method}/s{cell.seed}")
        cache_root = self.cache_dir if self.cache_dir is not None else self.shared_cache
        generator = remote.remote(cell, self.ctx, rows, end, cache_root, self.cache_enabled, threads, forwarded_env())
        self.driver.start(cell_id)
        self.live[generator] = cell_id

    def _handle(self, cell_id: str, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "open":
            self.driver.open(cell_id, item[1])  # LedgerError: stop the run, as sequentially
        elif kind == "append":
            self.driver.append(cell_id, item[1], item[2])
        elif kind == "done":
            self.driver.finish(cell_id, item[1])
        elif kind == "error":
            exc, text = item[1], item[2]
            if isinstance(exc, (UserError, OSError)):  # bad input (exit 2), the environment (exit 3)
                raise exc
            raise RuntimeError(f"cell {cell_id} raised {type(exc).__name__} on Ray:\n{text}")

    def run(self, address: str | None = None, runtime_env: Mapping[str, Any] | None = None) -> list[CellSummary]:
        todo = [c for c in self.order if self.driver.finished_already(c) is None]
        if not todo:  # every ledger already ends: nothing to schedule
            self.driver.close()
            return self.driver.results()
        ray = _import_ray(address)
        try:
            started = connect(address, runtime_env)
        except BaseException:
            self.driver.close()
            raise
        self.shared_cache = str(self.ctx.out_dir / "cache") if address is None and started else None
        try:
            self._check_cluster(ray)
            for cell_id in todo:
                self._submit(ray, cell_id)
            while self.live:
                ready, _ = ray.wait(list(self.live), num_returns=1, timeout=1.0)
                for generator in ready:
                    self._step(ray, generator)
        except BaseException:
            for generator in list(self.live):
                try:
                    ray.cancel(generator, force=True)
                except Exception:  # noqa: BLE001 - stopping anyway
                    pass
            self.live.clear()
            raise
        finally:
            self.driver.close()
            if started:
                ray.shutdown()
        return self.driver.results()

    def _step(self, ray: Any, generator: Any) -> None:
        cell_id = self.live[generator]
        try:
            ref = next(generator)
        except StopIteration:
            del self.live[generator]
            if cell_id not in self.driver.summaries:  # ended without a result: count as lost
                self._lost(ray, cell_id, "the task ended without a result")
            return
        try:
            item = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # our code raised outside the loop: not a lost node
            del self.live[generator]
            raise RuntimeError(f"cell {cell_id}: the Ray task failed: {exc}") from None
        except ray.exceptions.RayError as exc:  # worker crashed, node died, object lost, OOM-killed
            del self.live[generator]
            self._lost(ray, cell_id, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return
        self._handle(cell_id, item)
        if item[0] in ("done", "error"):
            del self.live[generator]

    def _lost(self, ray: Any, cell_id: str, why: str) -> None:
        if self.driver.died(cell_id, why):
            self._submit(ray, cell_id)


def run_ray(cells: Sequence[Cell], ctx: RunContext, address: str | None = None, max_attempts: int = 3,
            num_cpus_per_cell: float | None = None, num_gpus_per_cell: float = 0, progress: bool = True,
            cache_dir: str | Path | None = None, runtime_env: Mapping[str, Any] | None = None) -> list[CellSummary]:
    """Run (or resume) the cells as Ray tasks; this process (the driver) alone writes the ledgers.

    ``address``: None starts a local Ray on loopback (stopped at the end); ``"auto"``, ``host:port``
    or ``ray://host:10001`` joins that cluster; if this process already called ``ray.init``, that
    connection is used. ``num_cpus_per_cell`` (default: the suite's ``threads``) and
    ``num_gpus_per_cell`` are each cell's Ray resources; torch's thread count follows the CPUs.
    ``cache_dir``: a stage-cache path every node sees (default: ``ctx.out_dir/cache`` for a local
    Ray, else per node). ``runtime_env``: passed to ``ray.init``. Returns one summary per cell.
    """
    return RayRun(cells, ctx, max_attempts, num_cpus_per_cell, num_gpus_per_cell, progress, cache_dir).run(
        address, runtime_env)


__all__ = ["run_ray", "RayRun", "connect"]
