"""Paid stage prefixes and the prefix pool of EEIPU (METHODS.md C.4, C.7-2, C.7-3).

The only source of stage costs and of what is cached is ``AskContext.paid_prefixes``: the prefixes
(stages 1..k) this cell has computed, with the canonical values of their parameters and the true
cost of each stage as the stage cache recorded it. A prefix of length k implies its shorter
prefixes were computed too, so every length 1..k is indexed.

The prefix pool is the empty prefix plus, for each of the top ``n_prefixes`` configurations
(completed after the warm-up, best score first), its prefixes of length 1..K-1 that this cell has
paid for, without duplicates. Pinned coordinates take the **exact** cached values
(``PaidPrefix.values``), never values that went through a normalisation and back, so a pinned
candidate keys the cache exactly as the run that paid for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hpobench_elbo.contracts import PaidPrefix, Stage
from hpobench_elbo.space import canonical

PoolMode = Literal["top", "top-all", "random"]
POOL_MODES: tuple[str, ...] = ("top", "top-all", "random")
"""``top``: C.4, configurations completed after the warm-up; ``top-all``: warm-up included;
``random``: paid prefixes drawn uniformly (the ICLR text's "M prefixes sampled randomly")."""


def stage_params(stages: Sequence[Stage], depth: int) -> tuple[str, ...]:
    """The parameters consumed by stages 1..depth."""
    return tuple(n for s in stages[:depth] for n in s.params)


def prefix_key(stages: Sequence[Stage], depth: int, values: Mapping[str, Any]) -> tuple[Any, ...]:
    """A hashable key of a depth-``depth`` prefix: the canonical values of its parameters, in order."""
    return (depth, *(repr(canonical(values[n])) for n in stage_params(stages, depth)))


@dataclass(frozen=True)
class Prefix:
    """``depth`` leading stages pinned to ``values`` (the exact cached values; empty for depth 0)."""

    depth: int
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageObservation:
    """One computed stage: the values of the parameters of stages 1..k and the stage's true cost."""

    stage: int
    values: Mapping[str, Any]
    cost: float


class PaidIndex:
    """What this cell has computed: every paid prefix by key, and the per-stage cost observations."""

    def __init__(self, stages: Sequence[Stage], paid: Iterable[PaidPrefix]) -> None:
        self.stages = tuple(stages)
        names = [s.name for s in self.stages]
        self.prefixes: dict[tuple[Any, ...], Prefix] = {}
        self.observations: dict[tuple[Any, ...], StageObservation] = {}
        for pp in paid:
            depth = len(pp.stages)
            if depth == 0 or list(pp.stages) != names[:depth] or len(pp.stage_costs) != depth:
                continue  # not a prefix of this task's pipeline
            if any(n not in pp.values for n in stage_params(self.stages, depth)):
                continue
            for d in range(1, depth + 1):
                values = {n: pp.values[n] for n in stage_params(self.stages, d)}
                key = prefix_key(self.stages, d, values)
                self.prefixes.setdefault(key, Prefix(d, values))
                self.observations.setdefault(key, StageObservation(d - 1, values, float(pp.stage_costs[d - 1])))

    def __len__(self) -> int:
        return len(self.prefixes)

    def lookup(self, config: Mapping[str, Any], depth: int) -> Prefix | None:
        """The paid prefix of ``config``'s first ``depth`` stages, if this cell has computed it."""
        return self.prefixes.get(prefix_key(self.stages, depth, config))

    def cached_depth(self, config: Mapping[str, Any]) -> int:
        """delta: how many leading stages of ``config`` would be read from the cache."""
        depth = 0
        for d in range(1, len(self.stages) + 1):
            if self.lookup(config, d) is None:
                break
            depth = d
        return depth

    def stage_data(self, stage: int) -> list[StageObservation]:
        """True cost observations of stage ``stage`` (0-based), one per distinct upstream key."""
        return [o for o in self.observations.values() if o.stage == stage]

    def total_data(self) -> list[StageObservation]:
        """True total cost of each computed full pipeline (sum of its stage costs)."""
        k = len(self.stages)
        full = [o for o in self.observations.values() if o.stage == k - 1]
        totals = []
        for o in full:
            costs = [self.observations[prefix_key(self.stages, d, o.values)].cost for d in range(1, k + 1)]
            totals.append(StageObservation(k - 1, o.values, float(sum(costs))))
        return totals


def prefix_pool(index: PaidIndex, ranked: Sequence[Mapping[str, Any]], n_prefixes: int,
                mode: PoolMode = "top", rng: np.random.Generator | None = None) -> list[Prefix]:
    """The empty prefix, then the paid prefixes (lengths 1..K-1) of the candidate configurations.

    ``ranked``: configurations best first (for ``top``, only those completed after the warm-up).
    ``random`` instead draws ``n_prefixes`` distinct paid prefixes of length 1..K-1 uniformly.
    """
    pool = [Prefix(0)]
    k = len(index.stages)
    if k < 2 or n_prefixes <= 0:
        return pool
    if mode == "random":
        candidates = sorted((p for p in index.prefixes.values() if p.depth < k),
                            key=lambda p: prefix_key(index.stages, p.depth, p.values))
        if rng is None or not candidates:
            return pool
        chosen = rng.choice(len(candidates), size=min(n_prefixes, len(candidates)), replace=False)
        return pool + [candidates[int(i)] for i in sorted(chosen)]
    seen: set[tuple[Any, ...]] = set()
    for config in ranked[:n_prefixes]:
        for depth in range(1, k):
            prefix = index.lookup(config, depth)
            if prefix is None:
                break  # a longer prefix of this configuration cannot be cached either
            key = prefix_key(index.stages, depth, prefix.values)
            if key not in seen:
                seen.add(key)
                pool.append(prefix)
    return pool
