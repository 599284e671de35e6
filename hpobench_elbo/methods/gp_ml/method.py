"""``gp-ml``: the exact Gaussian process with type-II maximum likelihood, a reference for GP tasks.

The kernel's hyperparameters (lengthscales, kernel variance, noise) maximise the exact GP's log
marginal likelihood on all N labelled examples (Rasmussen and Williams 2006, ch. 5.4; the
comparison of the DE-ELBo papers' GP extension, arXiv 2502.01861, METHODS.md A.5), on GPyTorch
(``tuner.py`` in this folder). No random features and no validation data (``validation =
"none"``): one trial per learning rate of ``lrs`` (default one, 0.1), each trained on all N under
the task's recipe; the recommendation is the lowest final negative log marginal likelihood.

Applies to tasks that declare the model hyperparameters ``lengthscale`` and ``noise``
(``contracts.ModelHyperparameter``; ``tasks/gp.py``). Its config holds ``lr`` and every declared
model hyperparameter at its ``init`` (its starting point); other keys get the ELBo methods' fixed
placeholders. The cost of a step is a Cholesky factorisation of an N x N matrix: O(N^3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialSpec, TunerSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.base import SelectsBestScore
from hpobench_elbo.methods.elbo.method import _check_lrs, placeholder_value
from hpobench_elbo.methods.gp_ml.tuner import REQUIRED
from hpobench_elbo.space import SearchSpace

DEFAULT_LRS = (0.1,)


class ExactGPMarginalLikelihood(SelectsBestScore):
    """One exact-GP type-II ML trial per learning rate on all N; recommends the lowest -log p(y)."""

    name = "gp-ml"
    validation = "none"

    def __init__(self, info: TaskInfo, seed: int, lrs: Sequence[float] = DEFAULT_LRS) -> None:
        super().__init__(info, seed)
        self.lrs = _check_lrs(lrs)
        self.config: dict[str, Any] = {}
        if info is not None:
            reason = self.inapplicable_reason(info)
            if reason:
                raise UserError(f"gp-ml: {reason}")
            self.validate_options(info.space, {"lrs": lrs})
            starts = {h.name: h.init for h in info.model_hyperparameters}
            self.config = {name: starts[name] if name in starts else placeholder_value(p) for name, p in info.space}
        self.position = 0

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        """Needs a GP task: declared ``lengthscale`` and ``noise`` model hyperparameters and an ``lr``."""
        names = {h.name for h in info.model_hyperparameters}
        missing = [n for n in REQUIRED if n not in names]
        if missing:
            return f"needs a task that declares the model hyperparameters {', '.join(REQUIRED)} (a GP)"
        return None if "lr" in info.space.names else "needs an 'lr' hyperparameter"

    @staticmethod
    def validate_options(space: SearchSpace, options: Mapping[str, Any]) -> None:
        """Every learning rate of ``lrs`` is positive and inside lr's range."""
        for i, lr in enumerate(_check_lrs(options.get("lrs", DEFAULT_LRS))):
            if "lr" in space.names and not space["lr"].contains(lr):
                raise UserError(f"lrs[{i}]: {lr!r} is outside lr's range {space['lr'].describe()}")

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        if self.position >= len(self.lrs):
            return None
        lr = self.lrs[self.position]
        self.position += 1
        return TrialSpec(config={**self.config, "lr": lr}, tuner=TunerSpec("gp-ml"), data="all")
