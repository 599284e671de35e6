"""Random search: Optuna's ``RandomSampler`` driven through Optuna's ask/tell interface.

Every trial draws a configuration from the task's search space (a log-uniform float that admits 0
is one continuous log10 coordinate, see ``space.Float``), trains on 80% of the labelled pool and is
scored on the other 20%; the recommendation is the trial with the lowest validation loss.
"""

from __future__ import annotations

import optuna

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialResult, TrialSpec, TunerSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.base import SelectsBestScore


class RandomSearch(SelectsBestScore):
    name = "random"
    validation = "selection"

    def __init__(self, info: TaskInfo, seed: int, max_trials: int | None = None) -> None:
        super().__init__(info, seed)
        RandomSearch.validate_options(None, {"max_trials": max_trials})  # not a subclass's override
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.max_trials = max_trials
        self.study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=seed))
        self.distributions = info.space.to_optuna()
        self.pending: optuna.trial.Trial | None = None
        self.asked = 0

    @staticmethod
    def validate_options(space: object, options: dict) -> None:
        """``max_trials`` is None or an integer >= 1."""
        max_trials = options.get("max_trials")
        if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int)
                                       or max_trials < 1):
            raise UserError(f"max_trials: expected an integer >= 1, got {max_trials!r}")

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        if self.max_trials is not None and self.asked >= self.max_trials:
            return None
        self.pending = self.study.ask(self.distributions)
        self.asked += 1
        return TrialSpec(config=self.info.space.from_optuna(self.pending.params), tuner=TunerSpec("sgd"))

    def observe(self, spec: TrialSpec, result: TrialResult) -> None:
        assert self.pending is not None, "tell without ask"
        if result.status == "ok" and result.score is not None:
            self.study.tell(self.pending, result.score)
        else:
            self.study.tell(self.pending, state=optuna.trial.TrialState.FAIL)
        self.pending = None


REGISTER = {"random": RandomSearch}
