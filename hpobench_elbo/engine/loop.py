"""The one loop: runs a cell (task x method x seed x budget) against its meter and ledger.

The loop is given the cell's task and method objects (built by the executor where the cell runs)
and the tuner factory; it names no method, tuner or task.

    ask (charged to ``method``) -> task.run (trains, checking the meter every step)
    -> test (every completed trial, uncharged) -> tell (charged to ``method``, test stripped)
    -> ledger.append (fsynced)

Resume is replay: every ledger row is re-asked from a fresh method, checked against the recorded
spec, and told its recorded result, so the method continues exactly where it was (random state
included) and no completed trial runs again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpobench_elbo.contracts import (
    AskContext,
    Cell,
    Method,
    PaidPrefix,
    Task,
    TaskInfo,
    TrialContext,
    TrialResult,
    TrialSpec,
    Tuner,
    TunerSpec,
)
from hpobench_elbo.engine.budget import REFIT_LOSS_FACTOR, REFIT_LOSS_SLACK, BudgetExhausted, BudgetMeter
from hpobench_elbo.engine.cache import CacheView, StageCache
from hpobench_elbo.engine.clock import make_clock
from hpobench_elbo.engine.faults import fault_point
from hpobench_elbo.engine.ledger import Ledger, LedgerLike
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import LedgerError, PluginError, is_environment_failure
from hpobench_elbo.space import canonical

TRIAL_TIMEOUT_FLOOR = 3600.0
"""Seconds: a trial is never stopped for time before this (unless the suite sets ``trial_timeout``)."""
TRIAL_TIMEOUT_FACTOR = 20.0
"""A trial may run this many times the cell's longest completed trial (or the floor) before it is
stopped and recorded as ``failed`` with reason ``timeout``."""


class TrialTimeout(Exception):
    """Raised inside a trial that ran past its time limit (recorded as failed, the cell goes on)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in this thread after ``seconds`` (SIGALRM; only in the main
    thread of a process on POSIX, elsewhere no limit is enforced)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TrialTimeout(f"timeout: the trial ran past {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EXEC_LOG_ENV = "HPOBENCH_ELBO_EXEC_LOG"
"""If set, a file to which every trial execution appends ``<cell-id> <trial-id>`` before it starts
(a diagnostic that counts executions outside the ledger)."""


@dataclass(frozen=True)
class RunContext:
    """Where and how cells run (the same for every cell of one invocation)."""

    out_dir: Path
    device: str
    suite_hash: str
    force: bool = False


@dataclass(frozen=True)
class CellSummary:
    cell_id: str
    n_trials: int
    spent: float
    budget: float
    unit: str
    recommendation: int | None
    reason: str


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("hpobench-elbo", "torch", "numpy", "optuna", "pandas"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _normal(obj: Any) -> Any:
    """What a value looks like after a JSON round trip (for replay comparison)."""
    return json.loads(json.dumps(obj, sort_keys=True))


def paid_prefixes(info: TaskInfo, results: list[TrialResult]) -> tuple[PaidPrefix, ...]:
    """Every stage prefix (stages 1..k of ``info.stages``) the cell's trials computed, whatever
    their status, in trial order, each once: from the ledger's rows, so replay gives the same."""
    names = [stage.name for stage in info.stages]
    seen: dict[str, PaidPrefix] = {}
    for result in results:
        # by the pipeline's order, not the mapping's: a ledger row's keys come back sorted
        for k in range(1, len(names) + 1):
            if names[k - 1] not in result.stage_costs:
                break
            params = [p for stage in info.stages[:k] for p in stage.params]
            values = canonical({p: result.spec.config[p] for p in params if p in result.spec.config})
            key = json.dumps([names[:k], values], sort_keys=True)
            if key not in seen:
                seen[key] = PaidPrefix(tuple(names[:k]), values, tuple(result.stage_costs[n] for n in names[:k]))
    return tuple(seen.values())


def refit_verdict(selected: TrialResult, refit: TrialResult) -> tuple[str, str | None]:
    """The refit guard: (``refit_status``, reason) of a refit that completed ``ok`` (one that did not
    is ``rejected`` by the loop, its status the reason).

    ``accepted`` (reason None): its final training loss is finite and within the margin of the
    selected trial's (:data:`REFIT_LOSS_FACTOR`, :data:`REFIT_LOSS_SLACK`); ``rejected``: it is not
    finite or beyond the margin, and the selected trial's own model stays deployed; ``unchecked``:
    one of the two recorded no training loss (a task that trains nothing), the refit is deployed.
    """
    mine, theirs = refit.metrics.get("train_loss"), selected.metrics.get("train_loss")
    if mine is None or theirs is None or not math.isfinite(theirs):
        return "unchecked", "no finite training loss recorded to compare"
    if not math.isfinite(mine):
        return "rejected", f"refit training loss {mine} is not finite"
    limit = REFIT_LOSS_FACTOR * theirs + REFIT_LOSS_SLACK
    if mine > limit:
        return "rejected", (f"refit training loss {mine:.4g} > {REFIT_LOSS_FACTOR:g} x the selected trial's "
                            f"{theirs:.4g} + {REFIT_LOSS_SLACK:g} = {limit:.4g}")
    return "accepted", None


def data_use(validation: str, refit: bool) -> str:
    """What data a method trains and selects on, in words (written in the ledger header): its 80/20
    validation split (and a refit on all N), validation minibatches, or all N with no validation."""
    if validation == "selection":
        return "validation split + refit" if refit else "validation split"
    if validation == "hypergradient":
        return "validation minibatches"
    return "none (all N)"


def stage_cache_access(cell: Cell, method: Method) -> dict[str, Any]:
    """The ledger header's ``stage_cache``: the cell's ``access`` rule and whether its method may read
    the stage cache (``open``): always under ``all``; under ``memoization-aware`` only when the method
    declares ``memoization_aware = True`` (``contracts.Method``), else every stage is computed and
    charged at its true cost."""
    aware = getattr(method, "memoization_aware", False) is True
    return {"access": cell.cache_access, "open": cell.cache_access == "all" or aware,
            "memoization_aware": aware}


def cell_header(cell: Cell, seeds: Seeds, unit: str, ctx: RunContext) -> dict[str, Any]:
    import torch

    return {
        "suite": cell.suite,
        "suite_hash": ctx.suite_hash,
        "cell_id": cell.cell_id,
        "cell": _normal(cell.definition()),
        "seeds": seeds.to_json(),
        "versions": _versions(),
        "git_sha": _git_sha(),
        "device": ctx.device,
        "clock": cell.clock,
        "unit": unit,
        "threads": cell.threads,
        "determinism": {"torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
    }


class CellRunner:
    """Runs (or resumes) one cell to the end of its budget or its method."""

    def __init__(self, cell: Cell, task: Task, method: Method, build_tuner: Callable[[TunerSpec], Tuner],
                 ctx: RunContext, cache: StageCache,
                 on_trial: Callable[[Cell, dict[str, Any]], None] | None = None,
                 open_ledger: Callable[[dict[str, Any]], LedgerLike] | None = None) -> None:
        """``task`` and ``method`` are the cell's objects, built by the caller with the cell's seeds
        (``Seeds.from_cell(cell.seed)``; the method from its ``sampler`` seed). ``open_ledger(header)``
        returns the cell's ledger (its recorded rows and end, and ``append``); by default the file
        under ``ctx.out_dir``. A worker that is not the driver passes one that sends rows to the
        driver, which alone writes the file."""
        self.cell = cell
        self.ctx = ctx
        self.on_trial = on_trial
        self.seeds = Seeds.from_cell(cell.seed)
        self.meter = BudgetMeter(cell.budget, make_clock(cell.clock, ctx.device, dict(cell.clock_options)))
        self.task = task
        self.info: TaskInfo = self.task.info
        self.method = method
        self.build_tuner = build_tuner
        header = {**cell_header(cell, self.seeds, self.meter.unit_name, ctx),
                  "metric": self.info.metric, "direction": self.info.direction,
                  "recipe": None if self.info.recipe is None else self.info.recipe.to_json(),
                  "validation": method.validation, "data_use": data_use(method.validation, cell.refit),
                  "stage_cache": stage_cache_access(cell, method)}
        if open_ledger is None:
            def open_ledger(head: dict[str, Any]) -> LedgerLike:
                return Ledger.open(ctx.out_dir / f"{cell.cell_id}.jsonl", head, force=ctx.force)
        self.ledger = open_ledger(header)
        self.cache: CacheView = cache.view(closed=not header["stage_cache"]["open"])
        self.results: dict[int, TrialResult] = {}
        self.recommendation: int | None = None
        self.refit_enabled = cell.refit and self.method.validation == "selection"
        self.refit_done = False
        self.stop_reason = "budget"
        self.next_id = 0
        self.failures = 0
        self.last_error: str | None = None
        self.longest_trial = 0.0

    # -- helpers ----------------------------------------------------------------------------
    def _ask_context(self) -> AskContext:
        return AskContext(remaining=self.meter.remaining, budget=self.meter.budget, spent=self.meter.spent,
                          n_completed=sum(r.status == "ok" for r in self.results.values()),
                          paid_prefixes=paid_prefixes(self.info, [self.results[t] for t in sorted(self.results)]),
                          read_price=self.meter.read_price)

    def _update_reserve(self) -> None:
        """Hold back the estimated refit cost of the current recommendation (trial cost x N / n_train)."""
        if not self.refit_enabled or self.recommendation is None:
            return
        chosen = self.results[self.recommendation]
        work = sum(chosen.cost.get(p, 0.0) for p in ("train", "hyper", "cache"))
        scale = self.info.n_pool / max(1, chosen.n_train)
        self.meter.reserve = work * scale

    def _method_recommendation(self) -> int | None:
        rec = self._call_method("recommend")
        if rec is not None and (rec not in self.results or self.results[rec].status != "ok"):
            raise PluginError(f"method {self.cell.method!r} recommended trial {rec}, which did not complete ok")
        return rec

    def _call_method(self, member: str, *args: Any) -> Any:
        """A call into the method; anything it raises (but the budget running out) is a plug-in error."""
        try:
            return getattr(self.method, member)(*args)
        except (BudgetExhausted, PluginError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one line naming the plug-in, no traceback
            raise PluginError(f"method {self.cell.method!r}: {member}() raised {type(exc).__name__}: {exc}") from None

    def _checkpoint(self, trial_id: int, step: int, value: float) -> bool:
        """The trainer's report at a checkpoint: the method's answer (charged to ``method``); a
        method without ``checkpoint`` lets every trial run to its end."""
        if not hasattr(self.method, "checkpoint"):
            return True
        with self.meter.unit("method", check=False):
            keep = bool(self._call_method("checkpoint", trial_id, step, value))
        if not keep:
            fault_point("prune")
        return keep

    def _timeout(self) -> float:
        """Seconds a trial may run: the suite's ``trial_timeout``, else a generous multiple of the
        cell's longest trial so far, never below :data:`TRIAL_TIMEOUT_FLOOR`."""
        if self.cell.trial_timeout is not None:
            return float(self.cell.trial_timeout)
        return max(TRIAL_TIMEOUT_FLOOR, TRIAL_TIMEOUT_FACTOR * self.longest_trial)

    # -- replay -----------------------------------------------------------------------------
    def replay(self) -> None:
        for row in self.ledger.rows:
            result = TrialResult.from_json(row)
            spec = result.spec
            if spec.kind == "refit":
                self.refit_done = True
                self.stop_reason = row.get("stop_reason", self.stop_reason)
            else:
                asked = self.method.ask(self._ask_context())
                recorded = _normal({**{k: row[k] for k in ("config", "tuner", "data")},
                                    "checkpoints": row.get("checkpoints", [])})
                replayed = None if asked is None else _normal(
                    {"config": asked.config, "tuner": asked.tuner.to_json(), "data": asked.data,
                     "checkpoints": list(asked.checkpoints)})
                if replayed != recorded:
                    raise LedgerError(
                        f"{self.ledger.path}: trial {spec.trial_id} does not replay "
                        f"(method asked {replayed}, ledger has {recorded}); the method or suite changed")
                if hasattr(self.method, "checkpoint"):  # the recorded intermediate values, in order
                    for step, value in result.intermediate:
                        self.method.checkpoint(spec.trial_id, step, value)
                self.method.tell(spec, result.without_test())
                self._count_failure(result)
            self.results[spec.trial_id] = result
            self.meter.restore(row["meter"], row["spent"])
            self.cache.paid_keys.update(result.cache_keys)
            self.recommendation = row.get("recommendation")
            self.next_id = spec.trial_id + 1
            self._update_reserve()

    # -- one trial --------------------------------------------------------------------------
    def _execute(self, spec: TrialSpec) -> TrialResult:
        log = os.environ.get(EXEC_LOG_ENV)
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{self.cell.cell_id} {spec.trial_id}\n")
        self.cache.begin_trial()
        started = time.perf_counter()
        try:
            with deadline(self._timeout()):
                result = self.task.run(spec, TrialContext(self.meter, self.cache, self.seeds, self.build_tuner,
                                                          self._checkpoint))
        except BudgetExhausted:
            result = TrialResult(spec=spec, status="cut", cost={})
        except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the cell goes on
            if is_environment_failure(exc):  # disk full, read-only...: stop the run, record nothing
                raise
            result = TrialResult(spec=spec, status="failed", cost={}, error=f"{type(exc).__name__}: {exc}"[:500])
        if self.cache.failure is not None:  # a stage-cache write the task caught: still the environment's
            raise self.cache.failure
        if result.status == "ok":
            self.longest_trial = max(self.longest_trial, time.perf_counter() - started)
        stats = self.cache.stats
        return dataclasses.replace(result, cache_hits=stats.hits, cache_misses=stats.misses,
                                   cost_saved=stats.cost_saved, cache_keys=tuple(stats.paid_keys),
                                   cache_recomputed=stats.recomputed)

    def _record(self, result: TrialResult, before: Any, **extra: Any) -> None:
        cost, overshoot = self.meter.since(before)
        result = result.with_cost(cost, overshoot)
        self.results[result.spec.trial_id] = result
        row = {**result.to_json(), "recommendation": self.recommendation, "spent": self.meter.spent,
               "meter": self.meter.by_phase(), "unit": self.meter.unit_name, **extra}
        self.ledger.append(row)
        if self.on_trial:
            self.on_trial(self.cell, row)

    def _test(self, result: TrialResult) -> TrialResult:
        if result.status != "ok":
            return result.without_artifact()
        with self.meter.unit("test", check=False):
            test = self.task.test(result)
        return result.with_test(test).without_artifact()

    def _search_step(self) -> bool:
        """Ask, run, test, tell, record one trial; False when the method has nothing more to ask."""
        before = self.meter.snapshot()
        with self.meter.unit("method"):
            spec = self._call_method("ask", self._ask_context())
        if spec is None:
            return False
        spec = dataclasses.replace(spec, trial_id=self.next_id, kind="trial")
        self.next_id += 1
        result = self._test(self._execute(spec))
        with self.meter.unit("method", check=False):
            self._call_method("tell", spec, result.without_test())
        self.results[spec.trial_id] = result
        self._count_failure(result)
        self.recommendation = self._method_recommendation()
        self._record(result, before)
        self._update_reserve()
        return True

    def _refit(self) -> None:
        fault_point("refit")
        chosen = self.results[self.recommendation]  # type: ignore[index]
        spec = dataclasses.replace(chosen.spec, data="all", kind="refit", refit_of=chosen.spec.trial_id,
                                   trial_id=self.next_id, checkpoints=())
        self.next_id += 1
        before = self.meter.snapshot()
        self.meter.reserve = 0.0
        result = self._test(self._execute(spec))
        if result.status == "ok":
            verdict, reason = refit_verdict(chosen, result)
        else:  # never deployed: the selected trial's model stays
            verdict, reason = "rejected", f"the refit ended {result.status}" + (f": {result.error}" if result.error else "")
        if verdict != "rejected":
            self.recommendation = spec.trial_id
        guard = {"refit_status": verdict, **({"refit_reason": reason} if reason else {})}
        self.refit_done = True
        self._record(result, before, stop_reason=self.stop_reason, **guard)

    # -- the cell ---------------------------------------------------------------------------
    def run(self) -> CellSummary:
        if self.ledger.end is None:
            self.replay()
            while not self.refit_done:
                if self.meter.exhausted:
                    break
                if self.refit_enabled and self.recommendation is not None and self.meter.searchable <= 0:
                    self.stop_reason = "refit reserve"
                    break
                if self.failures >= self.cell.max_failures:
                    self.stop_reason = "failing"
                    break
                if sum(r.spec.kind == "trial" for r in self.results.values()) >= self.cell.max_trials:
                    self.stop_reason = "trial cap"  # prices that cannot exhaust the budget still end
                    break
                try:
                    if not self._search_step():
                        self.stop_reason = "method done"
                        break
                except BudgetExhausted:  # the ask itself found the budget spent
                    break
            if self.refit_enabled and not self.refit_done and self.recommendation is not None \
                    and not self.meter.exhausted:
                self._refit()
            extra = {"error": self.last_error} if self.stop_reason == "failing" else {}
            self.ledger.append({"reason": self.stop_reason, "spent": self.meter.spent, "recommendation": self.recommendation,
                                "overshoot": self.meter.overshoot, "meter": self.meter.by_phase(), **extra}, kind="end")
        end = self.ledger.end or {}
        reason = str(end.get("reason", ""))
        if reason == "failing":
            reason = f"failing: {self.cell.max_failures} trials failed in a row; last error: {end.get('error')}"
        return CellSummary(self.cell.cell_id, len(self.ledger.rows), float(end.get("spent", self.meter.spent)),
                           self.cell.budget, self.meter.unit_name, end.get("recommendation"), reason)

    def _count_failure(self, result: TrialResult) -> None:
        """Consecutive failed trials (the cell stops at ``max_failures``); any other status resets."""
        if result.status == "failed":
            self.failures += 1
            self.last_error = result.error
        else:
            self.failures = 0


def run_cell(cell: Cell, task: Task, method: Method, build_tuner: Callable[[TunerSpec], Tuner], ctx: RunContext,
             cache: StageCache, on_trial: Callable[[Cell, dict[str, Any]], None] | None = None) -> CellSummary:
    """Run or resume one cell with its built task and method; the ledger under ``ctx.out_dir`` is the result."""
    return CellRunner(cell, task, method, build_tuner, ctx, cache, on_trial).run()
