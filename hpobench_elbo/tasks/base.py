"""The one staged-task base: data, labelled pool per seed, split, cached stages, model, trainer, test.

A concrete task is one file that subclasses :class:`SupervisedTask` and fills in hooks; it never
overrides :meth:`SupervisedTask.run`, which does, for every trial::

    config  = the spec's configuration, validated against the space
    pool    = the seed's stratified labelled pool (``Seeds.subset``)
    split   = the one train/validation split (``data.train_validation_split``, ``Seeds.split``)
    prepared  = self.prepare(trial)              hook: inputs of the trainable part; runs the task's
                                                 cached stages through ``trial.stage(...)``
    data      = self.transform(trial, prepared)  hook: e.g. standardise on the training examples
    result    = self.fit(trial, data)            hook: default trains with the Trainer and the recipe
    metrics  += the true cost of every stage run (``cost_<stage>``) and ``n_memoised``

under torch's RNG seeded with the trial's ``noise`` seed. Constructing a task is cheap; data loads
on first use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hpobench_elbo.contracts import ModelHyperparameter, Recipe, Stage, StageRun, TaskInfo, TrialContext, TrialResult, TrialSpec
from hpobench_elbo.engine.budget import BudgetExhausted
from hpobench_elbo.errors import UserError, is_environment_failure
from hpobench_elbo.space import Config, SearchSpace
from hpobench_elbo.tasks.data import ArrayDataset, DataSplits, stratified_subset, train_validation_split
from hpobench_elbo.tasks.training import Objective, TrainData, Trainer, evaluate, seeded


@dataclass(frozen=True)
class Scale:
    """How big a task runs: labelled pool size N (None = all), steps, batch size (None = full batch).

    ``clip_norm`` (default 1.0, the DE-ELBo papers' total gradient-norm clipping), ``schedule``
    (default cosine annealing) and ``optimizer`` (default SGD with Nesterov momentum; ``adam``)
    complete the task's training recipe at this scale (see ``contracts.Recipe``); ``extra`` holds
    task-specific settings.
    """

    n: int | None
    steps: int
    batch_size: int | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    clip_norm: float | None = 1.0
    schedule: str = "cosine"
    optimizer: str = "sgd"

    def describe(self) -> str:
        n = "all" if self.n is None else str(self.n)
        batch = "full" if self.batch_size is None else str(self.batch_size)
        return f"N={n}, {self.steps} steps, batch {batch}"


@dataclass(frozen=True)
class Prepared:
    """A seed's data, ready for the trainable model: inputs (raw or cached features) and labels."""

    x_pool: torch.Tensor
    y_pool: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Trial:
    """One trial as the hooks see it: spec, validated config, the seed's pool and split, the
    context, and the stages run so far (:meth:`stage` runs one through the cache)."""

    spec: TrialSpec
    config: Config
    pool: ArrayDataset
    train_idx: np.ndarray
    val_idx: np.ndarray | None
    ctx: TrialContext
    task_name: str
    stage_runs: list[StageRun] = field(default_factory=list)

    def stage(self, name: str, params: Mapping[str, Any], compute: Callable[[], Any], examples: int) -> StageRun:
        """Serve stage ``name`` through the cell's cache (charged to ``train``), keyed by the seed's
        data, ``params`` (the stage's parameters and everything upstream) and nothing else."""
        run = self.ctx.cache.get(self.ctx.meter, task=self.task_name, stage=name, data_seed=self.ctx.seeds.subset,
                                 params=params, compute=compute, examples=examples)
        self.stage_runs.append(run)
        return run


def stage_metrics(runs: list[StageRun]) -> dict[str, float]:
    """``cost_<stage>`` (true cost) of every stage run and ``n_memoised`` (leading stages read from the
    cell's own cache)."""
    metrics = {f"cost_{run.stage}": run.true_cost for run in runs}
    memoised = 0
    for run in runs:
        if not run.hit:
            break
        memoised += 1
    metrics["n_memoised"] = float(memoised)
    return metrics


MAX_SIZE_OPTION = 10**9
"""The largest ``n``, ``steps`` or ``batch_size`` a task option may give (checked when a suite loads;
an ``n`` above the task's labelled pool is refused when its data loads)."""


class SupervisedTask:
    """Base class: subclasses set ``name``, ``SCALES``, ``objective`` and implement the hooks."""

    name: ClassVar[str]
    SCALES: ClassVar[dict[str, Scale]]
    description: ClassVar[str] = ""
    has_backbone: ClassVar[bool] = False

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None,
                 steps: int | None = None, batch_size: int | None = None) -> None:
        if scale not in self.SCALES:
            raise UserError(f"task {self.name!r}: unknown scale {scale!r}; known: {', '.join(self.SCALES)}")
        for key, value in (("n", n), ("steps", steps), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"task {self.name!r}: option {key} must be an integer >= 1, got {value!r}")
            if value is not None and value > MAX_SIZE_OPTION:
                raise UserError(f"task {self.name!r}: option {key} = {value:,} is above {MAX_SIZE_OPTION:,}, "
                                "the most any task here can use")
        self.n_option = n  # an explicit n above the labelled pool is refused once the data is loaded
        base = self.SCALES[scale]
        self.scale_name = scale
        self.scale = replace(base, n=n if n is not None else base.n, steps=steps or base.steps,
                             batch_size=batch_size if batch_size is not None else base.batch_size)
        self.device = device
        self._prepared: dict[int, Prepared] = {}

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        """The search space (cheap: no data is loaded)."""
        raise NotImplementedError

    def load(self) -> DataSplits:
        """The pool and the fixed test set (``tasks/data``)."""
        raise NotImplementedError

    @property
    def objective(self) -> Objective:
        raise NotImplementedError

    def build_model(self, seed: int, config: Config) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """A fresh trainable model for the trial's ``config`` and its prior mean (backbone name ->
        pretrained value; {} if none).

        Build new layers inside ``seeded(seed)`` so their initialisation depends on the seed only.
        """
        raise NotImplementedError

    def prepare(self, trial: Trial) -> Prepared:
        """Inputs of the trainable model for the seed's pool and the test set. Override to run cached
        stages (``trial.stage``); the base version holds nothing a cell pays for, so its result is
        kept per subset seed."""
        pool = trial.pool
        return Prepared(self.to_tensor(pool.x), self.label_tensor(pool.y),
                        self.to_tensor(self.data.test.x), self.label_tensor(self.data.test.y))

    def transform(self, trial: Trial, prepared: Prepared) -> TrainData:
        """The tensors the trial trains and validates on (override e.g. to standardise with
        statistics of ``trial.train_idx`` only)."""
        x, y = prepared.x_pool, prepared.y_pool
        train = torch.as_tensor(trial.train_idx, device=x.device)
        if trial.val_idx is None:
            return TrainData(x[train], y[train])
        val = torch.as_tensor(trial.val_idx, device=x.device)
        return TrainData(x[train], y[train], x[val], y[val])

    def fit(self, trial: Trial, prepared: Prepared, data: TrainData) -> TrialResult:
        """Train the model with the Trainer under the task's recipe (override for a stage that trains
        with its own code); ``artifact`` = (eval model, prepared, data) for :meth:`test`."""
        seeds = trial.ctx.seeds
        model, prior_mean = self.build_model(seeds.for_trial("init", trial.spec.trial_id), trial.config)
        noise = torch.Generator(device="cpu").manual_seed(seeds.for_trial("noise", trial.spec.trial_id))
        trainer = Trainer(self.recipe, self.objective, self.device)
        result = trainer.fit(trial.spec, self.info, model, data, trial.ctx, noise, prior_mean,
                             n_data=len(prepared.x_pool))
        if result.artifact is not None:
            result = replace(result, artifact=(result.artifact, prepared, data))
        return result

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", tuple(self.space_for(self.scale_name).names)),)

    def model_hyperparameters(self) -> tuple[ModelHyperparameter, ...]:
        """Hook: the hyperparameters that live in the model, its likelihood or its prior
        (``contracts.ModelHyperparameter``; cheap, no data is loaded). Default: none."""
        return ()

    # -- shared machinery -------------------------------------------------------------------
    @cached_property
    def data(self) -> DataSplits:
        splits = self.load()
        if not isinstance(splits, DataSplits):
            raise UserError(f"task {self.name!r}: load() returned {type(splits).__name__}, expected DataSplits")
        return splits

    @property
    def n_pool(self) -> int:
        """The labelled pool N: the scale's ``n`` (all of the pool if None, or if the pool is smaller);
        an ``n`` given as an option that is larger than the pool is bad input (``UserError``)."""
        total = len(self.data.pool)
        if self.n_option is not None and self.n_option > total:
            raise UserError(f"task {self.name!r}: option n = {self.n_option:,} is larger than the labelled pool "
                            f"of {self.data.pool.name} ({total:,} examples)")
        return total if self.scale.n is None else min(self.scale.n, total)

    @property
    def recipe(self) -> Recipe:
        """The training recipe at this scale: SGD, Nesterov momentum 0.9, the scale's schedule and
        clipping, batch and steps (what no method tunes)."""
        adam = self.scale.optimizer == "adam"
        return Recipe(steps=self.scale.steps, batch_size=self.scale.batch_size, clip_norm=self.scale.clip_norm,
                      schedule=self.scale.schedule, optimizer=self.scale.optimizer,  # type: ignore[arg-type]
                      **({"momentum": 0.0, "nesterov": False} if adam else {}))

    def static_info(self) -> TaskInfo:
        """``info`` without loading the data (``n_pool`` 0, ``n_classes`` None): what a suite checks
        when it loads (which methods apply to the task)."""
        return TaskInfo(
            name=self.name, scale=self.scale_name, space=self.space_for(self.scale_name), stages=self.stages(),
            has_backbone=self.has_backbone, n_pool=0, metric=self.objective.metric,
            direction="max" if self.objective.metric == "accuracy" else "min",
            description=self.description, recipe=self.recipe, model_hyperparameters=self.model_hyperparameters())

    @cached_property
    def info(self) -> TaskInfo:
        return dataclasses.replace(self.static_info(), n_pool=self.n_pool, n_classes=self.data.pool.n_classes)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=self.device)

    def label_tensor(self, y: np.ndarray) -> torch.Tensor:
        dtype = torch.long if self.data.pool.n_classes else torch.float32
        return torch.tensor(y, dtype=dtype, device=self.device)

    def pool_indices(self, seed: int) -> np.ndarray:
        return stratified_subset(self.data.pool.y, self.scale.n, np.random.default_rng(seed))

    def run(self, spec: TrialSpec, ctx: TrialContext) -> TrialResult:
        """One trial through the hooks (see the module doc); never overridden."""
        config = self.info.space.validate(spec.config, where=f"trial {spec.trial_id} config")
        seeds = ctx.seeds
        pool = self.data.pool.subset(self.pool_indices(seeds.subset))
        train_idx, val_idx = train_validation_split(pool.y, spec.data, seeds.split)
        trial = Trial(spec, config, pool, train_idx, val_idx, ctx, self.name)
        try:
            with seeded(seeds.for_trial("noise", spec.trial_id), self.device):
                if type(self).prepare is SupervisedTask.prepare:  # nothing charged: keep it per seed
                    if seeds.subset not in self._prepared:
                        self._prepared[seeds.subset] = self.prepare(trial)
                    prepared = self._prepared[seeds.subset]
                else:
                    prepared = self.prepare(trial)
                data = self.transform(trial, prepared)
                result = self.fit(trial, prepared, data)
        except BudgetExhausted:
            if not trial.stage_runs:
                raise
            result = TrialResult(spec=spec, status="cut", cost={}, steps=len(trial.stage_runs))
        except Exception as exc:  # noqa: BLE001 - a failing hook fails the trial, never the cell
            if is_environment_failure(exc):  # disk full, read-only...: the run stops (exit 3)
                raise
            result = TrialResult(spec=spec, status="failed", cost={}, steps=len(trial.stage_runs),
                                 error=f"{type(exc).__name__}: {exc}"[:500])
        if trial.stage_runs:
            result = dataclasses.replace(result, metrics={**result.metrics, **stage_metrics(trial.stage_runs)},
                                         stage_costs={run.stage: run.true_cost for run in trial.stage_runs})
        return result

    def test(self, result: TrialResult) -> dict[str, float]:
        model, prepared, data = result.artifact
        return self.transform_test(evaluate(model, prepared.x_test, prepared.y_test, self.objective))

    def transform_test(self, metrics: dict[str, float]) -> dict[str, float]:
        """Hook: e.g. report regression MSE in the original units."""
        return metrics

    def summary(self) -> dict[str, Any]:
        """What ``hpobench-elbo list`` shows (cheap: no data is loaded)."""
        return {
            "name": self.name,
            "description": self.description,
            "scales": {name: scale.describe() for name, scale in self.SCALES.items()},
            "space": self.space_for(self.scale_name).describe(),
        }
