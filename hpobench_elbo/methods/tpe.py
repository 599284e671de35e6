"""TPE: Optuna's ``TPESampler`` driven through Optuna's ask/tell interface, as ``random`` does.

The first ``n_startup_trials`` configurations (Optuna's default, 10) are random; after that each
configuration maximises the tree-structured Parzen estimators' density ratio over the completed
trials' validation losses (Optuna's defaults otherwise, seeded by the cell's sampler seed). Trials
train on 80% of the labelled pool and are scored on the other 20%; cut, diverged and failed trials
are told to Optuna as failed. The recommendation is the trial with the lowest validation loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from hpobench_elbo.contracts import TaskInfo
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.random import RandomSearch


class TPESearch(RandomSearch):
    name = "tpe"
    validation = "selection"

    def __init__(self, info: TaskInfo, seed: int, max_trials: int | None = None, n_startup_trials: int = 10) -> None:
        super().__init__(info, seed, max_trials=max_trials)
        self.validate_options(None, {"max_trials": max_trials, "n_startup_trials": n_startup_trials})
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)

    @staticmethod
    def validate_options(space: object, options: Mapping[str, Any]) -> None:
        """``max_trials`` is None or an integer >= 1; ``n_startup_trials`` an integer >= 0."""
        RandomSearch.validate_options(space, dict(options))
        n = options.get("n_startup_trials", 10)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"n_startup_trials: expected an integer >= 0, got {n!r}")

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        return None


REGISTER = {"tpe": TPESearch}
