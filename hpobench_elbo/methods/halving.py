"""Successive halving baselines: ``asha`` (Optuna's ``SuccessiveHalvingPruner``, the asynchronous
successive halving of Li et al. 2020) and ``hyperband`` (Optuna's ``HyperbandPruner``), both with
random sampling, selecting on the validation loss and refitting on all N like ``random``.

Each trial lists checkpoints at the rungs ``r_min * eta^k`` below the task's step count
(``r_min`` = steps // ``min_resource_divisor``, ``eta`` = ``reduction_factor``); at each the trainer
reports the validation loss (one validation pass, charged to ``validate``), the method reports it to
its Optuna trial and stops the trial when the pruner says so (status ``pruned``: charged, never
recommended). Pruned trials are told to Optuna as pruned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import optuna

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialId, TrialResult, TrialSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.random import RandomSearch


def rungs(steps: int, divisor: int, eta: int) -> tuple[int, ...]:
    """Checkpoint steps ``r_min * eta^k < steps`` with ``r_min = max(1, steps // divisor)``."""
    out, rung = [], max(1, steps // divisor)
    while rung < steps:
        out.append(rung)
        rung *= eta
    return tuple(out)


class ASHA(RandomSearch):
    """Random configurations, stopped early by Optuna's successive-halving pruner."""

    name = "asha"
    validation = "selection"

    def __init__(self, info: TaskInfo, seed: int, max_trials: int | None = None, reduction_factor: int = 3,
                 min_resource_divisor: int = 9) -> None:
        super().__init__(info, seed, max_trials=max_trials)
        self.validate_options(None, {"reduction_factor": reduction_factor, "min_resource_divisor": min_resource_divisor})
        steps = info.recipe.steps if info is not None and info.recipe is not None else 1
        self.checkpoints = rungs(steps, min_resource_divisor, reduction_factor)
        min_resource = self.checkpoints[0] if self.checkpoints else 1
        # a fixed study name: Hyperband assigns brackets by hashing the study name and trial number
        self.study = optuna.create_study(study_name=f"{self.name}-{seed}", direction="minimize",
                                         sampler=optuna.samplers.RandomSampler(seed=seed),
                                         pruner=self.make_pruner(min_resource, steps, reduction_factor))

    @staticmethod
    def make_pruner(min_resource: int, max_resource: int, reduction_factor: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)

    @staticmethod
    def validate_options(space: object, options: Mapping[str, Any]) -> None:
        """``reduction_factor`` an integer >= 2, ``min_resource_divisor`` an integer >= 1."""
        RandomSearch.validate_options(space, dict(options))
        for key, low in (("reduction_factor", 2), ("min_resource_divisor", 1)):
            value = options.get(key, low)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{key}: expected an integer >= {low}, got {value!r}")

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        """Pruning needs training steps to stop between (a task with a training recipe)."""
        return None if info.recipe is not None else "the task trains nothing step by step (no recipe), so nothing can be pruned"

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        spec = super().ask(ctx)
        return None if spec is None else dataclasses.replace(spec, checkpoints=self.checkpoints)

    def checkpoint(self, trial: TrialId, step: int, value: float) -> bool:
        assert self.pending is not None, "checkpoint outside a trial"
        self.pending.report(value, step)
        return not self.pending.should_prune()

    def observe(self, spec: TrialSpec, result: TrialResult) -> None:
        if result.status == "pruned":
            assert self.pending is not None, "tell without ask"
            self.study.tell(self.pending, state=optuna.trial.TrialState.PRUNED)
            self.pending = None
            return
        super().observe(spec, result)


class Hyperband(ASHA):
    """Random configurations, stopped early by Optuna's Hyperband pruner (brackets of successive
    halving with different minimum resources)."""

    name = "hyperband"

    @staticmethod
    def make_pruner(min_resource: int, max_resource: int, reduction_factor: int) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                              reduction_factor=reduction_factor)


REGISTER = {ASHA.name: ASHA, Hyperband.name: Hyperband}
