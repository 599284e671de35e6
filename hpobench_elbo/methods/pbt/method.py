"""The ``pbt`` method: population-based training (Jaderberg et al. 2017) as one trial per population.

Each ``ask`` draws a population of ``population`` (K, default 8) configurations from the task's
search space (``SearchSpace.sample`` with ``numpy.random.default_rng(seed)``, the cell's sampler
seed) and a seed for the population's exploit/explore draws, and returns one trial whose tuner
(``pbt``, ``tuner.py``) trains all K members round-robin on 80% of the labelled pool, ranking them
on validation minibatches every ``interval`` steps (data use ``hypergradient``: the validation
split is used inside training, written in the ledger header as "validation minibatches"). The
trial's configuration is member 0's initial one; the trial's model is its best member at the end,
scored on the whole validation split. While the budget lasts, each ``ask`` starts a new
population; the method recommends the ok trial with the lowest final validation loss (no refit:
the deployed model is the one PBT trained).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialSpec, TunerSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.base import SelectsBestScore
from hpobench_elbo.methods.pbt.tuner import SETTABLE, check_pbt_options
from hpobench_elbo.space import Float

DEFAULTS: dict[str, Any] = {"population": 8, "interval": None, "quantile": 0.25, "resample_probability": 0.25,
                            "factors": [0.8, 1.2], "val_batches": 4, "max_trials": None}
"""The options and their defaults (population, quantile, factors and resample probability: Ray Tune's
``PopulationBasedTraining``; ``interval`` None: a tenth of the task's steps)."""


class PBT(SelectsBestScore):
    """One trial per population of K members; recommends the trial with the lowest validation loss."""

    name = "pbt"
    validation = "hypergradient"

    def __init__(self, info: TaskInfo, seed: int, **options: Any) -> None:
        super().__init__(info, seed)
        reason = self.inapplicable_reason(info)
        if reason is not None:
            raise UserError(f"{self.name}: not applicable to task {info.name!r}: {reason}")
        self.options = self.checked_options(options)
        self.rng = np.random.default_rng(seed)
        self.asked = 0

    @classmethod
    def checked_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option with its default filled in; UserError (one line) on an unknown or bad one."""
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise UserError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
        checked = {**DEFAULTS, **options}
        k = checked["population"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise UserError(f"{cls.name}: population must be an integer >= 2, got {k!r}")
        m = checked["max_trials"]
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise UserError(f"{cls.name}: max_trials must be an integer >= 1 or null, got {m!r}")
        check_pbt_options(cls.name, interval=checked["interval"], quantile=checked["quantile"],
                          resample_probability=checked["resample_probability"], factors=checked["factors"],
                          val_batches=checked["val_batches"])
        checked["factors"] = [float(f) for f in checked["factors"]]
        return checked

    @classmethod
    def validate_options(cls, space: Any, options: Mapping[str, Any]) -> None:
        """Suite-load check of the options (the space does not constrain them)."""
        cls.checked_options(options)

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        """None when PBT can run on the task, else one line saying why not."""
        names = info.space.names
        if info.recipe is None:
            return "the task trains no model (it has no training recipe)"
        if "lr" not in names or not isinstance(info.space["lr"], Float):
            return "the search space has no continuous 'lr'"
        other = [n for n in names if n not in SETTABLE]
        if other:
            return f"the search space has hyperparameters a member's training cannot change: {', '.join(other)}"
        staged = [s.name for s in info.stages[:-1] if s.params]
        if staged:
            return f"hyperparameters of earlier pipeline stages ({', '.join(staged)}) cannot change during training"
        return None

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        if self.options["max_trials"] is not None and self.asked >= self.options["max_trials"]:
            return None
        self.asked += 1
        space = self.info.space
        population = [space.sample(self.rng) for _ in range(self.options["population"])]
        tuner_options = {"population": population, "seed": int(self.rng.integers(2**31 - 1)),
                         **{k: self.options[k] for k in ("interval", "quantile", "resample_probability",
                                                         "factors", "val_batches")}}
        return TrialSpec(config=dict(population[0]), tuner=TunerSpec("pbt", tuner_options), data="split")


REGISTER = {PBT.name: PBT}
