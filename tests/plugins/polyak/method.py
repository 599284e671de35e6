"""The method: log-uniform learning rates from the task's ``lr`` range; selects on validation loss."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hpobench_elbo import AskContext, TaskInfo, TrialResult, TrialSpec, TunerSpec, UserError


class PolyakSearch:
    name = "polyak"
    validation = "selection"

    def __init__(self, info: TaskInfo, seed: int, trials: int = 3, average_from: float = 0.5) -> None:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise UserError(f"trials: expected an integer >= 1, got {trials!r}")
        self.info = info
        self.rng = np.random.default_rng(seed)
        self.trials = trials
        self.average_from = float(average_from)
        self.scores: dict[int, float] = {}
        self.asked = 0

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        return None if "lr" in info.space.names else "needs an 'lr' hyperparameter"

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        if self.asked >= self.trials:
            return None
        self.asked += 1
        lr_param = self.info.space["lr"]
        lr = math.exp(self.rng.uniform(math.log(lr_param.lo), math.log(lr_param.hi)))
        config: dict[str, Any] = {name: (lr if name == "lr" else p.lo if hasattr(p, "lo") else p.options[0])
                                  for name, p in self.info.space}
        return TrialSpec(config, TunerSpec("plugins.polyak:PolyakTuner", {"average_from": self.average_from}))

    def tell(self, spec: TrialSpec, result: TrialResult) -> None:
        if result.status == "ok" and result.score is not None:
            self.scores[spec.trial_id] = result.score

    def recommend(self) -> int | None:
        return min(self.scores, key=lambda t: (self.scores[t], t)) if self.scores else None
