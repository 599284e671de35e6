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
CacheAccess = Literal["all", "memoization-aware"]
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
    batch) and ``steps`` are the training run's length. ``optimizer="adam"`` (the DE-ELBo papers'
    choice for their GP) takes Adam steps instead (default betas; ``momentum`` and ``nesterov`` do
    not apply). Written in every ledger header. A method
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

    def scheduled_lr(self, lr: float, step: int) -> float:
        """The base rate ``lr`` at ``step`` (counted from 0) under the schedule: ``lr`` itself when
        ``constant``, else the cosine annealing 0.5 lr (1 + cos(pi step / steps)). The one
        definition of the schedule: the recipe's optimizer and any tuner that follows the recipe
        with its own update (``scheduled_lr(1.0, step)``: the factor of a learned rate) read it here."""
        return lr if self.schedule == "constant" else cosine_lr(lr, step, self.steps)


def cosine_lr(lr: float, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` of a cosine annealing from ``lr`` to 0 over ``total_steps``."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


ModelHyperparameterPlace = Literal["model", "likelihood", "prior"]
TRANSFORMS: tuple[str, ...] = ("softplus", "exp", "identity")
"""How a model hyperparameter's value follows from its raw (unconstrained) parameter."""


@dataclass(frozen=True)
class ModelHyperparameter:
    """A hyperparameter that lives in the model, its likelihood or its weight prior, not in the update
    (e.g. a GP's lengthscale, its output scale, the Gaussian likelihood's noise, the weights' prior
    variance). A task declares them in ``TaskInfo.model_hyperparameters``; the engine never reads them.

    * **Declared by the task.** ``name`` is the hyperparameter's name; when ``name`` is also a key of
      the task's search space, the trial's config value sets it, otherwise it starts at ``init``.
      ``where="model"`` or ``"likelihood"``: its raw value is the model's parameter ``parameter``
      (a name in ``model.named_parameters()``; a vector for e.g. one lengthscale per input
      dimension, every element set to the config value) and its value is ``transform(raw)``
      (``softplus``, ``exp`` or ``identity``, elementwise). ``where="prior"``: the variance v of the
      isotropic Gaussian prior N(0, v I) over the model's weights that have no prior mean
      (``parameter`` is None; every trainable parameter that is not a declared hyperparameter is a
      weight).
    * **Set by search methods.** A search method puts the value in the config like any other key;
      the task's ``build_model(seed, config)`` writes ``transform^-1(value)`` into the parameter.
      The ``Trainer`` freezes (``requires_grad=False``) every declared parameter unless the trial's
      tuner declares ``learns_model_hyperparameters = True`` (see ``Tuner``), so a tuner that does
      not learn them trains the weights at the config's values. Such a tuner applies a ``prior``
      hyperparameter as the MAP penalty ||w||^2 / (2 v n_train) added to the mean loss (the plain
      SGD tuner does).
    * **Found and learned by tuners.** A tuner that learns them finds each ``model``/``likelihood``
      one by ``parameter`` in the model, excludes it from the weights (it gets no posterior and
      is not counted in D) and learns it as a point estimate with the weights, starting from the
      config's value; it learns a ``prior`` one its own way (the ELBo tuner: in closed form). Its
      trajectory rows report values (``transform(raw)``), never raw parameters.

    The standard names, which methods that need a particular role look up: ``lengthscale`` and
    ``outputscale`` (an RBF kernel), ``noise`` (the Gaussian likelihood's variance) and
    ``prior_variance``.
    """

    name: str
    where: ModelHyperparameterPlace
    init: float
    parameter: str | None = None
    transform: str = "softplus"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"model hyperparameter {self.name!r}: transform must be one of {TRANSFORMS}")
        if (self.parameter is None) != (self.where == "prior"):
            raise ValueError(f"model hyperparameter {self.name!r}: a {self.where!r} hyperparameter "
                             + ("has no parameter" if self.where == "prior" else "needs its model parameter"))

    def value(self, raw: torch.Tensor) -> torch.Tensor:
        """The hyperparameter's value from its raw parameter (differentiable)."""
        import torch as _torch

        if self.transform == "softplus":
            return _torch.nn.functional.softplus(raw)
        return raw.exp() if self.transform == "exp" else raw

    def raw(self, value: float) -> float:
        """The raw parameter value that gives ``value`` (the inverse of :meth:`value`)."""
        if self.transform == "softplus":
            if not value > 0:
                raise ValueError(f"model hyperparameter {self.name!r}: softplus needs a value > 0, got {value}")
            return value + math.log(-math.expm1(-value))
        return math.log(value) if self.transform == "exp" else float(value)


class ClosedFormGaussianModel(Protocol):
    """An optional capability of a task's model that is linear in its weights with a Gaussian
    likelihood (e.g. a random-Fourier-feature GP): the expected NLL under a Gaussian q has a closed
    form, which a variational tuner uses instead of Monte-Carlo samples where it can.

    The model's ``forward(x)`` returns (B, 2) outputs: the predictive mean and the log predictive
    variance of a Gaussian likelihood (the task's loss is that Gaussian's mean NLL).
    """

    def expected_nll(self, x: torch.Tensor, y: torch.Tensor, weight_var: torch.Tensor) -> torch.Tensor:
        """The mean over the examples of E_q[-log p(y_i | x_i, w)] for q(w) = N(m, weight_var I) over
        the weights (every trainable parameter that is not a declared hyperparameter; m = their
        current values). Differentiable in m, the hyperparameters and ``weight_var`` (a 0-dim
        tensor). Called inside a tuner's step; it changes no parameter."""
        ...


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know about a task (never its data or test set).

    ``space`` is the search space every method sees; ``stages`` the pipeline's stages in order and
    the parameters each consumes (the unit of memoization); ``n_pool`` the labelled pool N;
    ``metric`` and ``direction`` describe the test metric; ``recipe`` the training recipe (None for
    a task that trains nothing, e.g. a simulated pipeline); ``model_hyperparameters`` the
    hyperparameters that live in the model, its likelihood or its prior (:class:`ModelHyperparameter`;
    empty for most tasks).
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
    model_hyperparameters: tuple[ModelHyperparameter, ...] = ()

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
    cache_access: CacheAccess = "all"
    """Who may read the stage cache: ``all`` (every method, the default) or ``memoization-aware``
    (only a method that declares ``memoization_aware = True``; EEIPU's paper's condition)."""
    max_trials: int = 10_000
    """The most trials the cell runs (the suite's ``max_trials_per_cell``; a refit is not counted);
    then it stops with reason ``trial cap``. Not part of the definition (nor of the cell id)."""

    def definition(self) -> dict[str, Any]:
        out = {
            "task": self.task, "scale": self.scale, "task_options": dict(self.task_options),
            "method": self.method, "method_options": dict(self.method_options), "seed": self.seed,
            "budget": self.budget, "clock": self.clock, "clock_options": dict(self.clock_options),
            "refit": self.refit, "cache": self.cache, "label": self.label or self.method,
        }
        if self.cache_access != "all":  # left out at its default: older ledgers' cells stay equal
            out["cache_access"] = self.cache_access
        return out


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
    #   memoization_aware: bool (class attribute): True declares that the method seeks stage-cache
    #       hits on purpose (it reads ``AskContext.paid_prefixes`` and proposes configurations that
    #       reuse cached stages, as EEIPU does). Read by the loop once, when the cell starts: under
    #       the suite key ``cache_access: memoization-aware`` only such a method's cell reads the
    #       stage cache, and every other method computes every stage of every trial at its true
    #       cost. Under ``cache_access: all`` (the default) it changes nothing. It may not change
    #       while the cell runs. Default: False.
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

    # Optional members:
    #   ``score_name: str``, what ``selection_score`` measures (default "training objective"),
    #       written to the ledger beside the score.
    #   ``learns_model_hyperparameters: bool`` (default False): True when the tuner learns the
    #       task's ``info.model_hyperparameters`` itself (see ``ModelHyperparameter``); the Trainer
    #       then leaves their parameters trainable, else it freezes them at the config's values
    #       before ``init``.

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
    "Method": {"checkpoint": 3, "inapplicable_reason": 1, "validate_options": 2, "memoization_aware": None},
    "Tuner": {"score_name": None, "learns_model_hyperparameters": None},
    "Task": {"summary": 0},
}
"""Optional members and the positional arguments each must accept when present (None: an attribute)."""
