"""The shared shape of a supervised task: data, labelled pool per seed, model, trainer, test.

A concrete task is one file that subclasses ``SupervisedTask`` and fills in its data, its model,
its search space and its scales. Constructing a task is cheap; data loads on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hpobench_elbo.contracts import Stage, TaskInfo, TrialResult, TrialSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import CacheView
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import SearchSpace
from hpobench_elbo.tasks.data import DataSplits, stratified_split, stratified_subset
from hpobench_elbo.tasks.trainer import Objective, TrainData, Trainer, evaluate

VALIDATION_FRACTION = 0.2


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under torch's global RNG seeded with ``seed``, restoring the RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class Scale:
    """How big a task runs: labelled pool size N (None = all), steps, batch size (None = full batch)."""

    n: int | None
    steps: int
    batch_size: int | None
    extra: Mapping[str, Any] = field(default_factory=dict)

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
        base = self.SCALES[scale]
        self.scale_name = scale
        self.scale = replace(base, n=n if n is not None else base.n, steps=steps or base.steps,
                             batch_size=batch_size if batch_size is not None else base.batch_size)
        self.device = device
        self._prepared: dict[int, Prepared] = {}
        self._splits: dict[str, Any] = {}  # the last split made (key -> TrainData)

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        """The search space (cheap: no data is loaded)."""
        raise NotImplementedError

    def load(self) -> DataSplits:
        raise NotImplementedError

    @property
    def objective(self) -> Objective:
        raise NotImplementedError

    def build_model(self, seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """A fresh trainable model and its prior mean (backbone name -> pretrained value; {} if none).

        Build new layers inside ``seeded(seed)`` so their initialisation depends on the seed only.
        """
        raise NotImplementedError

    def prepare(self, data: DataSplits, pool_idx: np.ndarray, meter: BudgetMeter, cache: CacheView,
                seeds: Seeds) -> Prepared:
        """Turn the seed's labelled pool and the test set into tensors (override to add cached stages).

        The base version holds nothing a cell should pay for, so ``run`` keeps its result per
        subset seed; an override with charged stages is called every trial (the cache charges).
        """
        pool = data.pool.subset(pool_idx)
        return Prepared(self.to_tensor(pool.x), self.label_tensor(pool.y),
                        self.to_tensor(data.test.x), self.label_tensor(data.test.y))

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", tuple(self.space_for(self.scale_name).names)),)

    # -- shared machinery -------------------------------------------------------------------
    @cached_property
    def data(self) -> DataSplits:
        return self.load()

    @property
    def n_pool(self) -> int:
        total = len(self.data.pool)
        return total if self.scale.n is None else min(self.scale.n, total)

    @cached_property
    def info(self) -> TaskInfo:
        return TaskInfo(
            name=self.name, scale=self.scale_name, space=self.space_for(self.scale_name), stages=self.stages(),
            has_backbone=self.has_backbone, n_pool=self.n_pool, metric=self.objective.metric,
            direction="max" if self.objective.metric == "accuracy" else "min",
            n_classes=self.data.pool.n_classes, description=self.description)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=self.device)

    def label_tensor(self, y: np.ndarray) -> torch.Tensor:
        dtype = torch.long if self.data.pool.n_classes else torch.float32
        return torch.tensor(y, dtype=dtype, device=self.device)

    def pool_indices(self, seeds: Seeds) -> np.ndarray:
        return stratified_subset(self.data.pool.y, self.scale.n, np.random.default_rng(seeds.subset))

    def run(self, spec: TrialSpec, meter: BudgetMeter, cache: CacheView, seeds: Seeds) -> TrialResult:
        self.info.space.validate(spec.config, where=f"trial {spec.trial_id} config")
        if type(self).prepare is SupervisedTask.prepare:
            if seeds.subset not in self._prepared:
                self._prepared[seeds.subset] = self.prepare(self.data, self.pool_indices(seeds), meter, cache, seeds)
            prepared = self._prepared[seeds.subset]
        else:
            prepared = self.prepare(self.data, self.pool_indices(seeds), meter, cache, seeds)
        x = prepared.x_pool
        data = self._split(prepared, spec.data, seeds)
        model, prior_mean = self.build_model(seeds.for_trial("init", spec.trial_id))
        noise = torch.Generator(device="cpu").manual_seed(seeds.for_trial("noise", spec.trial_id))
        trainer = Trainer(self.scale.steps, self.scale.batch_size, self.objective, self.device)
        result = trainer.fit(spec, self.info, model, data, meter, noise, prior_mean, n_data=len(x))
        if result.artifact is not None:
            result = replace(result, artifact=(result.artifact, prepared))
        return result

    def _split(self, prepared: Prepared, use: str, seeds: Seeds) -> TrainData:
        """All of the pool, or its stratified 80/20 train/validation split (the same for every trial of a seed)."""
        x, y = prepared.x_pool, prepared.y_pool
        if use != "split":
            return TrainData(x, y)
        reusable = prepared is self._prepared.get(seeds.subset)  # the per-seed tensors of the base prepare()
        key = (seeds.subset, seeds.split)
        if not reusable or self._splits.get("key") != key:
            train_idx, val_idx = stratified_split(y.cpu().numpy(), VALIDATION_FRACTION,
                                                  np.random.default_rng(seeds.split))
            train_t = torch.as_tensor(train_idx, device=x.device)
            val_t = torch.as_tensor(val_idx, device=x.device)
            self._splits = {"key": key, "data": TrainData(x[train_t], y[train_t], x[val_t], y[val_t])}
        return self._splits["data"]

    def test(self, result: TrialResult) -> dict[str, float]:
        model, prepared = result.artifact
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
