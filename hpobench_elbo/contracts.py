"""The shared types: what methods, tuners, tasks and the engine say to each other.

Everything here is data (frozen dataclasses) or a protocol. ``methods/`` and ``tasks/`` import this
module and ``engine/``, never each other. A ``TrialSpec`` is data only: it is written to the
ledger, compared on replay and may be shipped to another process.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from hpobench_elbo.space import Config, SearchSpace

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpobench_elbo.engine.budget import BudgetMeter
    from hpobench_elbo.engine.cache import CacheView
    from hpobench_elbo.engine.seeds import Seeds

Status = Literal["ok", "cut", "diverged", "failed"]
Kind = Literal["trial", "refit"]
Validation = Literal["none", "selection", "hypergradient"]
DataUse = Literal["split", "all"]
TrialId = int
PHASES: tuple[str, ...] = ("train", "validate", "hyper", "method", "cache")
"""Charged phases. ``test`` is measured and recorded but never charged."""


@dataclass(frozen=True)
class Stage:
    """A named step of a task's pipeline and the hyperparameters it consumes (unit of memoization)."""

    name: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know about a task."""

    name: str
    scale: str
    space: SearchSpace
    stages: tuple[Stage, ...]
    has_backbone: bool
    n_pool: int
    metric: str
    direction: Literal["max", "min"]
    n_classes: int | None = None
    description: str = ""

    @property
    def default_stage(self) -> Stage:
        return self.stages[-1]


@dataclass(frozen=True)
class TunerSpec:
    """Which tuner takes a trial's steps and with what options (turned into an object by the registry)."""

    name: str = "sgd"
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class TrialSpec:
    """What to run: a configuration, how its steps are taken and which data it trains on.

    ``data="split"`` trains on 80% of the labelled pool and validates on the other 20%;
    ``data="all"`` trains on the whole pool (no validation). The loop assigns ``trial_id``.
    """

    config: Config
    tuner: TunerSpec = field(default_factory=TunerSpec)
    data: DataUse = "split"
    kind: Kind = "trial"
    trial_id: TrialId = -1
    refit_of: TrialId | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "kind": self.kind,
            "config": dict(self.config),
            "tuner": self.tuner.to_json(),
            "data": self.data,
            "refit_of": self.refit_of,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TrialSpec:
        tuner = obj.get("tuner") or {}
        return cls(
            config=dict(obj["config"]),
            tuner=TunerSpec(tuner.get("name", "sgd"), dict(tuner.get("options", {}))),
            data=obj.get("data", "split"),
            kind=obj.get("kind", "trial"),
            trial_id=int(obj["trial_id"]),
            refit_of=obj.get("refit_of"),
        )


@dataclass(frozen=True)
class TrialResult:
    """What happened in one trial.

    ``score`` is what the method selects on, lower is better (validation loss for search methods,
    the final training objective for DE-ELBo). ``metrics`` never holds test values; ``test`` does,
    and ``without_test()`` strips it before a method sees the result. ``artifact`` is the trained
    model kept in memory for the uncharged test evaluation; it is never written or compared.
    """

    spec: TrialSpec
    status: Status
    cost: Mapping[str, float]
    steps: int = 0
    planned_steps: int = 0
    score: float | None = None
    score_name: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    test: Mapping[str, float] | None = None
    trajectory: tuple[Mapping[str, float], ...] = ()
    cache_hits: int = 0
    cache_misses: int = 0
    cost_saved: float = 0.0
    cache_keys: tuple[str, ...] = ()
    overshoot: float = 0.0
    n_train: int = 0
    error: str | None = None
    artifact: Any = field(default=None, compare=False, repr=False)

    @property
    def total_cost(self) -> float:
        return float(sum(self.cost.get(p, 0.0) for p in PHASES))

    def with_test(self, test: Mapping[str, float]) -> TrialResult:
        return dataclasses.replace(self, test=dict(test))

    def without_test(self) -> TrialResult:
        return dataclasses.replace(self, test=None)

    def without_artifact(self) -> TrialResult:
        return dataclasses.replace(self, artifact=None)

    def with_cost(self, cost: Mapping[str, float], overshoot: float) -> TrialResult:
        return dataclasses.replace(self, cost=dict(cost), overshoot=overshoot)

    def to_json(self) -> dict[str, Any]:
        def finite(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            **self.spec.to_json(),
            "status": self.status,
            "cost": {k: float(v) for k, v in self.cost.items()},
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "score": finite(self.score),
            "score_name": self.score_name,
            "metrics": {k: finite(v) for k, v in self.metrics.items()},
            "test": None if self.test is None else {k: finite(v) for k, v in self.test.items()},
            "trajectory": [{k: finite(v) if isinstance(v, float) else v for k, v in t.items()}
                           for t in self.trajectory],
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cost_saved": float(self.cost_saved),
            "cache_keys": list(self.cache_keys),
            "overshoot": float(self.overshoot),
            "n_train": self.n_train,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TrialResult:
        def num(x: Any) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            spec=TrialSpec.from_json(obj),
            status=obj["status"],
            cost=dict(obj["cost"]),
            steps=int(obj.get("steps", 0)),
            planned_steps=int(obj.get("planned_steps", 0)),
            score=None if obj.get("score") is None else float(obj["score"]),
            score_name=obj.get("score_name", ""),
            metrics={k: num(v) for k, v in obj.get("metrics", {}).items()},
            test=None if obj.get("test") is None else {k: num(v) for k, v in obj["test"].items()},
            trajectory=tuple(obj.get("trajectory", ())),
            cache_hits=int(obj.get("cache_hits", 0)),
            cache_misses=int(obj.get("cache_misses", 0)),
            cost_saved=float(obj.get("cost_saved", 0.0)),
            cache_keys=tuple(obj.get("cache_keys", ())),
            overshoot=float(obj.get("overshoot", 0.0)),
            n_train=int(obj.get("n_train", 0)),
            error=obj.get("error"),
        )


@dataclass(frozen=True)
class PaidPrefix:
    """A stage prefix (stages 1..k of the task's pipeline) that this cell has computed and paid for.

    ``stages`` are the names of stages 1..k, ``values`` the canonical values (``space.canonical``)
    of every parameter those stages consume, ``stage_costs`` the true cost of each of the k stages
    as the stage cache recorded it (in the cell's clock unit). A trial whose configuration agrees
    with ``values`` on those parameters reads the k stages from the cache at ``AskContext.read_price``
    each instead of paying ``stage_costs``.
    """

    stages: tuple[str, ...]
    values: Mapping[str, Any]
    stage_costs: tuple[float, ...]


@dataclass(frozen=True)
class AskContext:
    """What a method may know when it proposes the next trial.

    ``paid_prefixes`` lists every stage prefix this cell has computed (from any earlier trial of
    the cell, whatever its status, refits included), the same after a replay as in the
    uninterrupted run; ``read_price`` is what the meter charges for reading one cached stage
    (an estimate under the device clock, exact under the counting clock).
    """

    remaining: float
    budget: float
    spent: float
    n_completed: int
    paid_prefixes: tuple[PaidPrefix, ...] = ()
    read_price: float = 0.0


@dataclass(frozen=True)
class StepStats:
    """What one tuner step reports back to the trainer."""

    loss: float
    examples: int


@dataclass(frozen=True)
class TrainSetup:
    """What a tuner needs to know about the training run it drives.

    ``prior_mean`` maps backbone parameter names to their pretrained values (the L2-SP centre);
    parameters not in it are head parameters, centred at zero. ``n_data`` is the size of the
    task's full labelled pool (D in kappa = D / n_train is the tuner's own business).
    """

    loss_fn: Callable[..., Any]
    n_train: int
    n_data: int
    total_steps: int
    batch_size: int
    prior_mean: Mapping[str, Any]
    generator: Any
    meter: Any
    device: str = "cpu"
    predict_fn: Callable[..., Any] | None = None
    train_data: tuple[Any, ...] | None = None
    """``(x_train, y_train)``: the whole training set, for tuners that make a pass over it (e.g. the
    ELBo tuner's final training objective, charged by the tuner to ``hyper``)."""


@runtime_checkable
class Method(Protocol):
    """An HPO method: proposes trials, observes results, says what it would deploy now."""

    name: str
    validation: Validation

    def ask(self, ctx: AskContext) -> TrialSpec | None: ...

    def tell(self, spec: TrialSpec, result: TrialResult) -> None: ...

    def recommend(self) -> TrialId | None: ...


@runtime_checkable
class Tuner(Protocol):
    """How one training run takes its steps (after AlgoPerf's update_params contract)."""

    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None: ...

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats: ...

    def eval_model(self, model: nn.Module) -> nn.Module: ...

    def selection_score(self) -> float | None: ...

    def trajectory(self) -> list[dict[str, float]]: ...


@runtime_checkable
class Task(Protocol):
    """A training problem: data, model, search space, and how to run and test one trial."""

    name: str
    info: TaskInfo

    def run(self, spec: TrialSpec, meter: BudgetMeter, cache: CacheView, seeds: Seeds) -> TrialResult: ...

    def test(self, result: TrialResult) -> dict[str, float]: ...
