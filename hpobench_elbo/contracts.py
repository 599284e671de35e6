"""The shared types: what methods, tuners, tasks and the engine say to each other (the bottom layer).

Everything here is data (frozen dataclasses) or a protocol, documented where it is defined, after
Optuna's ``samplers/_base.py``: for every member, when it is called, its arguments, what it
returns and what it may not do. Members are required unless documented as optional with a default.
This module imports nothing from the engine at run time: what a task sees of the budget meter and
the stage cache are the narrow protocols :class:`MeterView` and :class:`CacheView` below.
``methods/`` and ``tasks/`` import this module and ``engine/``, never each other. A ``TrialSpec`` is
data only: it is written to the ledger, compared on replay and may be shipped to another process.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from hpobench_elbo.space import Config, SearchSpace

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpobench_elbo.engine.seeds import Seeds

Status = Literal["ok", "cut", "pruned", "diverged", "failed"]
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
class Recipe:
    """What no method tunes on a task: defined once by the task's scale, applied to every tuner.

    The ``Trainer`` hands every tuner an optimizer built from the recipe (``TrainSetup.make_optimizer``):
    SGD with ``momentum`` (used where the search space has no ``momentum``) and ``nesterov``,
    the learning-rate ``schedule`` (``cosine`` annealing to 0 over ``steps``, or ``constant``), and
    the total gradient norm clipped at ``clip_norm`` (None: no clipping). ``batch_size`` (None: full
    batch) and ``steps`` are the training run's length. Written in every ledger header. A method
    that learns an item of the recipe (the implicit family learns the learning rate and momentum)
    replaces that item and says so in its doc.
    """

    steps: int
    batch_size: int | None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    schedule: Literal["cosine", "constant"] = "cosine"
    clip_norm: float | None = 1.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know about a task (never its data or test set).

    ``space`` is the search space every method sees; ``stages`` the pipeline's stages in order and
    the parameters each consumes (the unit of memoization); ``n_pool`` the labelled pool N;
    ``metric`` and ``direction`` describe the test metric; ``recipe`` the training recipe (None for
    a task that trains nothing, e.g. a simulated pipeline).
    """

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
    recipe: Recipe | None = None

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
    ``checkpoints``: training steps (counted from 1) after which the trainer reports an intermediate
    value to the method, which may stop the trial there (status ``pruned``); refits have none.
    """

    config: Config
    tuner: TunerSpec = field(default_factory=TunerSpec)
    data: DataUse = "split"
    kind: Kind = "trial"
    trial_id: TrialId = -1
    refit_of: TrialId | None = None
    checkpoints: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = {
            "trial_id": self.trial_id,
            "kind": self.kind,
            "config": dict(self.config),
            "tuner": self.tuner.to_json(),
            "data": self.data,
            "refit_of": self.refit_of,
        }
        if self.checkpoints:  # written only when used (schema 3 rows without it have none)
            out["checkpoints"] = list(self.checkpoints)
        return out

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
            checkpoints=tuple(int(c) for c in obj.get("checkpoints") or ()),
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
    stage_costs: Mapping[str, float] = field(default_factory=dict)
    intermediate: tuple[tuple[int, float], ...] = ()
    cache_recomputed: int = 0
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
            "stage_costs": {k: float(v) for k, v in self.stage_costs.items()},
            **({"intermediate": [[int(s), finite(v)] for s, v in self.intermediate]} if self.intermediate else {}),
            **({"cache_recomputed": self.cache_recomputed} if self.cache_recomputed else {}),
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
            stage_costs={k: float(v) for k, v in (obj.get("stage_costs") or {}).items()},
            intermediate=tuple((int(s), num(v)) for s, v in obj.get("intermediate") or ()),
            cache_recomputed=int(obj.get("cache_recomputed", 0)),
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
    """What one tuner step reports back to the trainer: the minibatch loss, its example count and,
    for a tuner that minimises more than the loss (e.g. the ELBo's NLL + KL / (kappa n)), that
    training ``objective`` (what its checkpoints report; default: the loss)."""

    loss: float
    examples: int
    objective: float | None = None


@dataclass(frozen=True)
class StageRun:
    """One stage served through the cache: its output and its **true** cost under the cell's clock.

    ``hit`` is True when the cell read an entry it had already paid for (charged the read price);
    False when it computed the stage, or paid the stored true cost of an entry another cell
    computed. ``true_cost`` is the stage's recorded cost in every case (never the read price).
    """

    stage: str
    output: Any
    true_cost: float
    hit: bool


class MeterView(Protocol):
    """What a task and a tuner see of the cell's budget meter (``engine/budget.BudgetMeter``).

    Every unit of charged work goes through ``unit``; a task or tuner never reads a clock itself.
    """

    unit_name: str
    """The clock's unit (``GPU-seconds``, ``device-seconds (CPU)`` or ``cost units``)."""

    def unit(self, phase: str, examples: int = 0, check: bool = True) -> AbstractContextManager[None]:
        """One indivisible unit of work: ``with meter.unit("hyper", examples=0): ...``.

        Checked before it starts (raises ``BudgetExhausted``, which the trainer turns into a ``cut``
        trial) unless ``check`` is False or it is nested in a unit already started; charged to
        ``phase`` when it ends (``test`` is recorded, never charged). Nested units are charged on
        their own and excluded from the enclosing unit's charge. ``examples`` prices the unit
        under the counting clock.
        """
        ...


class CacheView(Protocol):
    """What a task sees of the stage cache: one cell's window on the shared store (``engine/cache``).

    Charges as if the cache were the cell's own (DESIGN.md, "The stage cache").
    """

    def get(self, meter: MeterView, *, task: str, stage: str, data_seed: int, params: Mapping[str, Any],
            compute: Callable[[], Any], examples: int = 0, phase: str = "train",
            simulated_cost: float | None = None) -> StageRun:
        """The output of ``stage`` for ``params`` (every upstream parameter too), and its true cost.

        Called by a task once per stage per trial. Computed (charged to ``phase``, priced by
        ``examples`` under a counting clock, or ``simulated_cost`` when given), or read: a cell's own
        earlier entry is charged the read price, an entry another cell computed its stored true
        cost. ``compute`` returns tensors (or tuples/dicts of tensors): entries are loaded with
        ``torch.load(weights_only=True)``. The key is built here and nowhere else.
        """
        ...

    def uncharged(self, *, task: str, name: str, params: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
        """A shared store entry that is never charged (e.g. test-set features computed inside a
        ``test`` unit by ``compute``): read when present, else computed and stored."""
        ...


@dataclass(frozen=True)
class TrainSetup:
    """What a tuner needs to know about the training run it drives (built by the ``Trainer``).

    ``prior_mean`` maps backbone parameter names to their pretrained values (the L2-SP centre);
    parameters not in it are head parameters, centred at zero. ``n_data`` is the size of the
    task's full labelled pool (D in kappa = D / n_train is the tuner's own business).
    ``make_optimizer(param_groups, clip_params=None)`` returns the task recipe's optimizer over
    ``param_groups`` (dicts with ``params`` and a base ``lr``; optional ``momentum``,
    ``weight_decay``): its ``step(step)`` applies the recipe's schedule to each group's base rate,
    clips the total gradient norm (over ``clip_params``, default every parameter of the groups)
    and takes the momentum step; ``zero_grad()`` clears the gradients; ``parameter_state()``
    returns a copy of its per-parameter state (momentum buffers) and ``load_parameter_state(state)``
    takes such a state from an optimizer over same-shaped parameters, keeping its own rates (what
    population-based training copies between members). Tuners that follow the recipe use it
    instead of building an optimizer of their own.
    """

    loss_fn: Callable[..., Any]
    n_train: int
    n_data: int
    total_steps: int
    batch_size: int
    prior_mean: Mapping[str, Any]
    generator: Any
    meter: MeterView
    recipe: Recipe
    make_optimizer: Callable[..., Any]
    device: str = "cpu"
    train_data: tuple[Any, ...] | None = None
    """``(x_train, y_train)``: the whole training set, for tuners that make a pass over it (e.g. the
    ELBo tuner's final training objective, charged by the tuner to ``hyper``)."""


def _always_continue(trial: int, step: int, value: float) -> bool:
    return True


@dataclass(frozen=True)
class TrialContext:
    """What the loop hands a task for one trial: the meter, the cell's cache view, the cell's
    seeds, ``build_tuner(TunerSpec) -> Tuner`` (the tuner registry, so tasks never name a
    method), and ``checkpoint(trial_id, step, value) -> bool``, which the trainer calls at each of
    the spec's checkpoints (the loop asks the method, charged to ``method``; False: stop, ``pruned``)."""

    meter: MeterView
    cache: CacheView
    seeds: Seeds
    build_tuner: Callable[[TunerSpec], Tuner]
    checkpoint: Callable[[int, int, float], bool] = _always_continue


@dataclass(frozen=True)
class Cell:
    """One (task, method, seed, budget) run with a stable id (a hash of its definition). Data only."""

    cell_id: str
    suite: str
    task: str
    scale: str
    task_options: Mapping[str, Any]
    method: str
    method_options: Mapping[str, Any]
    seed: int
    budget: float
    clock: str
    clock_options: Mapping[str, Any]
    refit: bool
    cache: bool
    threads: int
    label: str = ""
    max_failures: int = 5
    trial_timeout: float | None = None

    def definition(self) -> dict[str, Any]:
        return {
            "task": self.task, "scale": self.scale, "task_options": dict(self.task_options),
            "method": self.method, "method_options": dict(self.method_options), "seed": self.seed,
            "budget": self.budget, "clock": self.clock, "clock_options": dict(self.clock_options),
            "refit": self.refit, "cache": self.cache, "label": self.label or self.method,
        }


@runtime_checkable
class Method(Protocol):
    """An HPO method: proposes trials, observes results, says what it would deploy now.

    A method is built where its cell runs by ``Factory(info: TaskInfo, seed: int, **options)``
    (``seed`` is the cell's ``sampler`` seed: the method's only source of randomness). The loop
    charges everything inside ``ask``, ``tell`` and ``checkpoint`` to phase ``method``. A method never
    sees test values and never trains anything itself: it spends the budget only through the
    trials it asks for. On resume the loop replays the ledger: a fresh method is asked again and
    told the recorded results, so ``ask`` must be deterministic given the method's seed and what it
    was told.
    """

    name: str
    """The registry name (used in cell ids and reports)."""

    validation: Validation
    """What data it uses: ``"selection"`` (trains on 80% of N, selects on the 20% validation split,
    refit on all N if the suite asks), ``"hypergradient"`` (validation minibatches inside training)
    or ``"none"`` (trains on all N, selects without validation data)."""

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        """The next trial to run, or None when the method is done (the cell then ends).

        Called by the loop while budget remains. ``ctx`` says what is spent and which stage
        prefixes the cell has paid for. The returned spec's ``config`` must validate against
        ``info.space``; its ``trial_id`` and ``kind`` are set by the loop.
        """
        ...

    def tell(self, spec: TrialSpec, result: TrialResult) -> None:
        """The result of the trial ``ask`` returned (any status: ok, cut, pruned, diverged, failed).

        ``result.test`` is always None here. Called once per asked trial, in order, also on replay.
        """
        ...

    def recommend(self) -> TrialId | None:
        """The trial it would deploy now: one told with status ``ok``, or None. Called after every
        ``tell``; recommending a trial that was not ``ok`` is a plug-in error."""
        ...

    # Optional members (checked when present):
    #   checkpoint(trial: TrialId, step: int, value: float) -> bool: called at each of a trial's
    #       ``checkpoints`` (charged to ``method``) with the intermediate value, lower is better (the
    #       validation loss for a trial with a validation split, else the mean training objective
    #       since the previous checkpoint); False stops the trial, which is recorded ``pruned`` (charged,
    #       never recommended). On replay the recorded values are given again in order. Default: every
    #       trial runs to its end.
    #   inapplicable_reason(info: TaskInfo) -> str | None (classmethod): why this method cannot run
    #       on a task (the suite refuses the pair at load); default: applicable everywhere.
    #   validate_options(space: SearchSpace, options: Mapping) -> None (staticmethod): raise
    #       UserError for options that do not fit a task's space; default: checked when built.


@runtime_checkable
class Tuner(Protocol):
    """How one training run takes its steps (after AlgoPerf's ``update_params`` contract).

    Built by the ``Trainer`` from the trial's ``TunerSpec`` (``Factory(**spec.tuner.options)``; a bad
    option raises ``UserError``). The Trainer checks the meter and charges each step to ``train``;
    a tuner charges its extra work (hypergradients, KL terms, selection passes) to ``hyper`` by
    wrapping it in ``setup.meter.unit("hyper")``. A tuner never reads test data.
    """

    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        """Called once before the first step: read the trial's hyperparameters from ``config``
        (validated against ``info.space``), build optimizer state and any extra parameters."""
        ...

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        """One training step on ``batch`` (step ``step`` of ``setup.total_steps``). ``val_batch()``
        draws a validation minibatch (None when the trial has no validation split). Returns the
        minibatch loss; a non-finite or huge loss makes the trial ``diverged``."""
        ...

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to validate and test after training (e.g. the posterior mean)."""
        ...

    def selection_score(self) -> float | None:
        """The score the method selects on, lower is better (e.g. the final training objective),
        or None to let the Trainer use the validation loss. Called once, after training."""
        ...

    # Optional member: ``score_name: str``, what ``selection_score`` measures (default
    # "training objective"), written to the ledger beside the score.

    def trajectory(self) -> list[dict[str, float]]:
        """The learned hyperparameters per hyper-step (scalars, or quantiles for per-weight
        values; at most a few dozen rows, or one per member per round for a population, whose rows
        carry a ``member`` index), for the report. ``[]`` when nothing is learned."""
        ...


@runtime_checkable
class Task(Protocol):
    """A training problem: data, model, search space, and how to run and test one trial.

    Built where its cell runs by ``Factory(scale=..., device=..., **options)``; construction must
    be cheap (data loads on first use). A task trains only through the ``Trainer`` or its cached
    stages, charging every unit of work through ``ctx.meter``; it never edits a method's spec.
    """

    name: str
    """The registry name."""

    info: TaskInfo
    """What a method may know of the task."""

    def run(self, spec: TrialSpec, ctx: TrialContext) -> TrialResult:
        """Run one trial and return its result (status ok, cut, diverged or failed; never raises
        for a bad trial except ``BudgetExhausted``, which the loop records as cut). ``result.artifact``
        holds what ``test`` needs, in memory only."""
        ...

    def test(self, result: TrialResult) -> dict[str, float]:
        """The test metrics of an ``ok`` trial (called once per ok trial, uncharged; the values
        go to the ledger, never to the method)."""
        ...


REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "Method": ("name", "validation", "ask", "tell", "recommend"),
    "Tuner": ("init", "step", "eval_model", "selection_score", "trajectory"),
    "Task": ("name", "info", "run", "test"),
}
"""The members ``registry.check_contract`` requires of each contract (explicit, so that the check
works the same on Python 3.10 to 3.13)."""

OPTIONAL_MEMBERS: dict[str, dict[str, int | None]] = {
    "Method": {"checkpoint": 3, "inapplicable_reason": 1, "validate_options": 2},
    "Tuner": {"score_name": None},
    "Task": {"summary": 0},
}
"""Optional members and the positional arguments each must accept when present (None: an attribute)."""
