"""The stage cache: a content-addressed store shared by all cells, with per-cell accounting.

The store saves wall time; the *charge* is as if each cell had its own cache: the first time a cell
needs a stage output it pays that stage's true cost (measured when the entry was computed, by
whichever cell), and later hits inside the same cell pay the read. Results therefore do not depend
on the order in which cells run.

Keys hash the task, the stage, the data seed, the clock unit and every upstream parameter in
canonical form (``space.canonical``), so a float that round-tripped through a normalisation still
hits. Each entry is a ``.pt`` file of tensors (loaded with ``weights_only=True``) and a ``.json``
with its true cost and the SHA-256 of the ``.pt`` bytes; a corrupted entry is recomputed. Writes go
to a temporary file and are renamed into place, so concurrent processes never see half an entry.

A *closed* view (``StageCache.view(closed=True)``: a method that is not memoization-aware under the
suite key ``cache_access: memoization-aware``, as in EEIPU's paper) neither reads nor writes stage
outputs: every stage of every trial is computed and charged its true cost, as if the cell had no
cache. Its trials still record their stage costs (``StageRun.true_cost``); ``uncharged`` entries
(test-time features, never charged) are still shared, since they change no charge.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpobench_elbo.contracts import StageRun
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.faults import fault_point
from hpobench_elbo.errors import is_environment_failure
from hpobench_elbo.space import canonical

Output = Any  # a tensor, or a tuple/dict of tensors


def stage_key(task: str, stage: str, data_seed: int, params: Mapping[str, Any], unit: str) -> str:
    """The content address of one stage output (the only place a key is built).

    ``unit`` is the meter's ``price_key``: entries store costs in the clock's unit and prices.
    """
    blob = json.dumps(
        {"task": task, "stage": stage, "data_seed": int(data_seed), "params": canonical(dict(params)), "unit": unit},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TrialCacheStats:
    """Cache accounting of one trial, copied into its ledger row."""

    hits: int = 0
    misses: int = 0
    cost_saved: float = 0.0
    recomputed: int = 0
    paid_keys: list[str] = field(default_factory=list)


class StageCache:
    """The on-disk store under ``root`` (``results/<suite>/cache`` by default); safe to delete."""

    def __init__(self, root: str | Path | None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else None
        self.enabled = enabled and root is not None

    def view(self, paid_keys: Iterable[str] = (), closed: bool = False) -> CacheView:
        """A cell's view; ``paid_keys`` are the keys it already paid for (from its ledger on resume);
        ``closed``: the cell may not use the store for stage outputs (module doc)."""
        return CacheView(self, set(paid_keys), closed)

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.root is not None
        folder = self.root / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"

    def load(self, key: str) -> tuple[Output, float] | None:
        """The entry's output and true cost, or None if absent or corrupted."""
        if not self.enabled:
            return None
        data_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            raw = data_path.read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            return None
        try:
            output = torch.load(io.BytesIO(raw), weights_only=True)
        except Exception:  # noqa: BLE001 - any unreadable entry is simply recomputed
            return None
        return output, float(meta["cost"])

    def store(self, key: str, output: Output, cost: float, description: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        data_path, meta_path = self._paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(output, buffer)
        raw = buffer.getvalue()
        meta = {"cost": float(cost), "sha256": hashlib.sha256(raw).hexdigest(), **canonical(dict(description))}
        self._atomic_write(data_path, raw)
        fault_point("cache-write")
        self._atomic_write(meta_path, json.dumps(meta, sort_keys=True).encode())

    @staticmethod
    def _atomic_write(path: Path, raw: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class CacheView:
    """One cell's window on the shared store, charging as if the cache were the cell's own."""

    def __init__(self, store: StageCache, paid_keys: set[str], closed: bool = False) -> None:
        self.store = store
        self.paid_keys = paid_keys
        self.closed = closed
        self.stats = TrialCacheStats()
        self.failure: OSError | None = None
        """An environment failure (``errors.is_environment_failure``: disk full, read-only, ...) met
        by a store during this trial. The loop raises it after ``task.run`` even if the task caught
        it, so a full disk stops the run instead of turning into a ``failed`` trial."""

    def begin_trial(self) -> None:
        self.stats = TrialCacheStats()
        self.failure = None

    def _store(self, key: str, output: Output, cost: float, description: Mapping[str, Any]) -> None:
        """``StageCache.store``, remembering an environment failure (then re-raised) in ``failure``."""
        try:
            self.store.store(key, output, cost, description)
        except OSError as exc:
            if is_environment_failure(exc):
                self.failure = exc
            raise

    def has_paid(self, key: str) -> bool:
        return key in self.paid_keys

    def get(
        self,
        meter: BudgetMeter,
        *,
        task: str,
        stage: str,
        data_seed: int,
        params: Mapping[str, Any],
        compute: Callable[[], Output],
        examples: int = 0,
        phase: str = "train",
        simulated_cost: float | None = None,
    ) -> StageRun:
        """The stage output for ``params`` (computed, or read from the store, and charged) and its
        true cost (see ``contracts.CacheView.get``).

        ``examples`` prices the computation under a counting clock; ``simulated_cost`` replaces
        the measured cost entirely (synthetic pipelines with known stage costs).
        """
        key = stage_key(task, stage, data_seed, params, meter.price_key)
        description = {"task": task, "stage": stage, "data_seed": data_seed, "params": dict(params)}
        if self.closed:
            output, true_cost = self._compute(meter, compute, simulated_cost, examples, phase)
            self._paid(key)
            return StageRun(stage, output, true_cost, hit=False)
        if key in self.paid_keys and self.store.enabled:  # a disabled store has nothing to read
            with meter.unit("cache"):
                entry = self.store.load(key)
            if entry is None:  # paid for, but missing here (a new node, a deleted or damaged cache)
                output, true_cost = self._recompute_paid(meter, compute, simulated_cost, examples, phase, key,
                                                         description)
            else:
                output, true_cost = entry
            self.stats.hits += 1
            self.stats.cost_saved += max(0.0, true_cost - meter.last_unit_cost)
            return StageRun(stage, output, true_cost, hit=True)
        else:
            entry = self.store.load(key)
            if entry is not None:
                meter.check()  # paying for a stage is an indivisible unit
                output, true_cost = entry
                meter.charge(phase, true_cost)
                self._paid(key)
                return StageRun(stage, output, true_cost, hit=False)
        # compute (a miss, or a missing/corrupted entry)
        output, true_cost = self._compute(meter, compute, simulated_cost, examples, phase)
        self._store(key, output, true_cost, description)
        self._paid(key)
        return StageRun(stage, output, true_cost, hit=False)

    @staticmethod
    def _compute(meter: BudgetMeter, compute: Callable[[], Output], simulated_cost: float | None,
                 examples: int, phase: str) -> tuple[Output, float]:
        """Compute a stage as one indivisible unit charged to ``phase``: measured (priced by
        ``examples`` under a counting clock), or ``simulated_cost``; returns the output and its true cost."""
        if simulated_cost is None:
            with meter.unit(phase, examples=examples):
                output = compute()
            return output, meter.last_unit_cost
        meter.check()
        output = compute()
        meter.charge(phase, simulated_cost)
        return output, float(simulated_cost)

    def _recompute_paid(self, meter: BudgetMeter, compute: Callable[[], Output], simulated_cost: float | None,
                        examples: int, phase: str, key: str, description: Mapping[str, Any]) -> tuple[Output, float]:
        """A stage the cell already paid for whose entry is missing: recomputed uncharged (the cell is
        charged the read, as it would have been), stored again, and counted apart (``recomputed``).
        Its true cost is priced by the cell's clock as a computation would be, but not charged."""
        token = meter.clock.begin()
        output = compute()
        priced, _ = meter.clock.end(token, phase, examples)
        true_cost = float(simulated_cost) if simulated_cost is not None else float(priced)
        self.stats.recomputed += 1
        self._store(key, output, true_cost, description)
        return output, true_cost

    def uncharged(self, *, task: str, name: str, params: Mapping[str, Any], compute: Callable[[], Output]) -> Output:
        """A shared entry that is never charged (e.g. test features): read, else computed and stored."""
        key = stage_key(task, name, 0, params, "uncharged")
        entry = self.store.load(key)
        if entry is not None:
            return entry[0]
        output = compute()
        self._store(key, output, 0.0, {"task": task, "stage": name, "params": dict(params)})
        return output

    def _paid(self, key: str) -> None:
        self.stats.misses += 1
        self.stats.paid_keys.append(key)
        self.paid_keys.add(key)
