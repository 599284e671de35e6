"""Learned ELBo: the data-emphasized ELBo (``de-elbo``) and the plain ELBo (``elbo``) as HPO methods.

Implements the method of Harvey, Petrov and Hughes, "Learning the Regularization Strength for Deep
Fine-Tuning via a Data-Emphasized Variational Objective" (arXiv 2410.19675) and "Learning
Hyperparameters via a Data-Emphasized Variational Objective" (arXiv 2502.01861), from the
equations of METHODS.md Part A. The prior variances (lambda for the backbone, tau for the head,
i.e. the L2-SP strengths) are learned inside one training run by maximising

    L_kappa = kappa * sum_i E_q[log p(y_i | x_i, w)] - KL(q || p(w | lambda, tau))

over a mean-field Gaussian q, with lambda and tau at their closed-form optimum every step (the
``elbo`` tuner, ``tuner.py`` in this folder). The only search is over the initial
learning rate: one trial per learning rate, each trained on **all** N labelled examples (no
validation split, ``validation = "none"``); the recommendation is the ok trial with the lowest
final training objective (mean NLL over 10 posterior samples + KL / (kappa N)), never a
validation score (pitfall A.8-6).

Methods:

* ``de-elbo``: kappa = D / N (D = every trainable parameter of the model), the papers' method.
* ``elbo``: kappa = 1, the plain ELBo baseline ("iso ELBO" of 2502.01861).

Defaults (METHODS.md A.5): learning rates (1e-1, 1e-2, 1e-3, 1e-4), asked in that order; sigma
init 1e-4 (softplus), one sigma shared by all weights (``per_parameter_sigma=True``: the diag
variant), 10 posterior samples for the selection score; the task's recipe for the rest (SGD with
Nesterov momentum 0.9, cosine annealing, gradient-norm clipping; no weight decay); prior
``auto`` = L2-SP when the task has a pretrained backbone, else L2-zero (``prior="l2-zero"`` forces
a zero mean). Steps, batch size and data come from the task's scale, as for every method.

Configuration: the trial's config must validate against the task's search space, so every key
other than ``lr`` gets a fixed value inside the space that the ELBo tuner ignores (it learns the
regularisation itself): 0 for a log-scale float that admits 0 (e.g. ``weight_decay``), else the
lowest value of a float or integer (e.g. ``momentum`` = 0.0 in the MLP tasks' space), else the first
option of a choice. A space without ``lr`` is refused (``UserError``). A key that is one of the task's model
hyperparameters (``info.model_hyperparameters``, e.g. a GP's lengthscale and noise) gets its declared
``init`` instead: the tuner learns it from there (the prior variance in closed form).

Option ``closed_form`` (``auto``, true, false) is passed to the tuner: the exact expected NLL where
the model gives it (``tuner.py``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from collections.abc import Mapping, Sequence
from typing import Any

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialId, TrialSpec, TunerSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.base import SelectsBestScore
from hpobench_elbo.methods.elbo.tuner import ELBoOptions
from hpobench_elbo.space import Choice, Float, Int, Param, SearchSpace

DEFAULT_LRS = (1e-1, 1e-2, 1e-3, 1e-4)


def placeholder_value(param: Param) -> Any:
    """A fixed in-space value for a hyperparameter the ELBo tuner ignores (see the module doc)."""
    if isinstance(param, Float):
        return 0.0 if param.zero else float(param.lo)
    if isinstance(param, Int):
        return int(param.lo)
    if isinstance(param, Choice):
        return param.options[0]
    raise UserError(f"unsupported hyperparameter type {type(param).__name__}")


def _check_lrs(lrs: Any) -> tuple[float, ...]:
    if isinstance(lrs, (str, bytes)) or not isinstance(lrs, Sequence) or not lrs:
        raise UserError(f"lrs: expected a non-empty list of learning rates, got {lrs!r}")
    out = []
    for i, lr in enumerate(lrs):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise UserError(f"lrs[{i}]: expected a positive number, got {lr!r}")
        out.append(float(lr))
    return tuple(out)


class DataEmphasizedELBo(SelectsBestScore):
    """One ``elbo``-tuner trial per learning rate on all N; recommends the lowest final training objective."""

    name = "de-elbo"
    validation = "none"
    kappa: str | float = "data-emphasized"

    def __init__(self, info: TaskInfo, seed: int, lrs: Sequence[float] = DEFAULT_LRS,
                 per_parameter_sigma: bool = False, prior: str = "auto", sigma_init: float = 1e-4,
                 selection_samples: int = 10, closed_form: str | bool = "auto") -> None:
        super().__init__(info, seed)
        self.lrs = _check_lrs(lrs)
        self.tuner_options = ELBoOptions(kappa=self.kappa, per_parameter_sigma=per_parameter_sigma, prior=prior,
                                         sigma_init=sigma_init, selection_samples=selection_samples,
                                         closed_form=closed_form).to_json()
        self.fixed: dict[str, Any] = {}
        if info is not None:
            self.validate_options(info.space, {"lrs": lrs})
            starts = {h.name: h.init for h in info.model_hyperparameters}  # learned from their declared start
            self.fixed = {name: starts[name] if name in starts else placeholder_value(p)
                          for name, p in info.space if name != "lr"}
        self.position = 0

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        """The sweep is over the learning rate: a space without ``lr`` cannot take it."""
        return None if "lr" in info.space.names else f"needs an 'lr' hyperparameter (the space has {', '.join(info.space.names)})"

    @staticmethod
    def validate_options(space: SearchSpace, options: Mapping[str, Any]) -> None:
        """The options are valid, the space has ``lr`` and holds every learning rate of the sweep."""
        ELBoOptions(**{k: v for k, v in options.items() if k in ELBoOptions.__dataclass_fields__})
        if "lr" not in space.names:
            raise UserError(f"the ELBo methods need an 'lr' hyperparameter; the space has {', '.join(space.names)}")
        for i, lr in enumerate(_check_lrs(options.get("lrs", DEFAULT_LRS))):
            if not space["lr"].contains(lr):
                raise UserError(f"lrs[{i}]: {lr!r} is outside lr's range {space['lr'].describe()}")

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        if self.position >= len(self.lrs):
            return None
        lr = self.lrs[self.position]
        self.position += 1
        config = {**self.fixed, "lr": lr}
        if self.info is not None:
            config = {name: config[name] for name in self.info.space.names}  # the space's order
        return TrialSpec(config=config, tuner=TunerSpec("elbo", dict(self.tuner_options)), data="all")


class PlainELBo(DataEmphasizedELBo):
    """The plain ELBo baseline (kappa = 1): the same sweep and selection."""

    name = "elbo"
    kappa = 1.0



class PrunedDataEmphasizedELBo(DataEmphasizedELBo):
    """``de-elbo-pruned``: the same four-learning-rate sweep, stopping a run early when its training
    objective is clearly worse than the other runs' at the same checkpoint (no validation data).

    Checkpoints at ``fractions`` of the task's steps (default 1/4 and 1/2). At a checkpoint the
    trainer reports the mean training objective since the previous checkpoint; the method keeps every
    run's value per checkpoint (a rung) and stops the run when its value ranks in the worse half of
    the values seen at that rung, itself included (successive halving with eta = 2 over the sweep,
    promoted asynchronously: a run is compared with the runs before it). The first run always
    finishes. Selection is unchanged: the lowest final training objective among finished runs.
    """

    name = "de-elbo-pruned"

    def __init__(self, info: TaskInfo, seed: int, lrs: Sequence[float] = DEFAULT_LRS,
                 per_parameter_sigma: bool = False, prior: str = "auto", sigma_init: float = 1e-4,
                 selection_samples: int = 10, fractions: Sequence[float] = (0.25, 0.5),
                 closed_form: str | bool = "auto") -> None:
        super().__init__(info, seed, lrs, per_parameter_sigma, prior, sigma_init, selection_samples, closed_form)
        if isinstance(fractions, (str, bytes)) or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in fractions):
            raise UserError(f"fractions: expected numbers strictly between 0 and 1, got {fractions!r}")
        steps = info.recipe.steps if info is not None and info.recipe is not None else 0
        self.checkpoints = tuple(sorted({max(1, int(round(f * steps))) for f in fractions if int(round(f * steps)) < steps}))
        self.rungs: dict[int, list[float]] = {}

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        spec = super().ask(ctx)
        return None if spec is None else replace(spec, checkpoints=self.checkpoints)

    def checkpoint(self, trial: TrialId, step: int, value: float) -> bool:
        seen = self.rungs.setdefault(step, [])
        seen.append(value)
        rank = sum(v < value for v in seen) + 1  # 1 = best so far at this rung
        return len(seen) < 2 or rank <= math.ceil(len(seen) / 2)
