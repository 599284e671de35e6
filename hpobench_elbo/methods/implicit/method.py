"""Methods of the one-pass hypergradient family (Clarke, Oldewage, Hernandez-Lobato, ICLR 2022).

Each trial starts from random initial hyperparameters (METHODS.md B.2: log10 lr ~ U(-6, -1), log10
decay ~ U(-7, -2) per decay strength of the task's space, momentum ~ U(0, 1)), drawn from
``numpy.random.default_rng(seed)`` and clipped into the task's search space (the trial's config is
that clipped draw; a momentum the space lacks travels as the tuner option ``momentum_init``). While
the budget lasts each ``ask`` starts a new run from a new draw. The hypergradient methods train on
the 80% split and learn on validation minibatches; they recommend the ok run with the lowest final
validation loss. ``random-fixed`` keeps its draw fixed, trains on all N and recommends its latest
completed run (the paper's "Random" row: no selection).

=================== =================== =============================================================
method              tuner               learns
=================== =================== =============================================================
``implicit``        implicit-neumann    decay + lr + momentum (T = 10, i = 5, Adam 0.05)
``implicit-hdlr``   implicit-neumann    decay + one lr per weight element + momentum
``lorraine``        implicit-neumann    decay only (lr and momentum stay at the draw)
``baydin``          implicit-neumann    lr only, every step, one step back (T = 1, i = 1), SGD 1e-3
``diff-through-opt`` implicit-unrolled  decay + lr + momentum, exact through the last 5 of 10 steps
``random-fixed``    implicit-fixed      nothing
=================== =================== =============================================================

Each has a ``-recipe`` variant (``implicit-recipe``, ``implicit-hdlr-recipe``, ``lorraine-recipe``,
``baydin-recipe``, ``diff-through-opt-recipe``, ``random-fixed-recipe``): the same method whose
tuner takes the option ``recipe: true``, so that what the method learns stays learned and the
task's recipe supplies the rest (gradient clipping, Nesterov, the schedule as a factor of the
learned rate, the recipe's momentum where momentum is neither learned nor searched; see
``tuner.py``). The plain names keep the paper's update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialId, TrialSpec, TunerSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.base import SelectsBestScore
from hpobench_elbo.methods.implicit.hypergrad import DECAY_KEYS
from hpobench_elbo.space import Float

KNOWN_KEYS = ("lr", "momentum", *DECAY_KEYS)
RANGES: dict[str, tuple[float, float]] = {"lr_range": (-6.0, -1.0), "decay_range": (-7.0, -2.0),
                                          "momentum_range": (0.0, 1.0)}
"""Initial-value ranges (B.2): log10 lr, log10 of each decay strength, momentum (linear)."""


def _check_range(method: str, name: str, value: Any) -> list[float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and value[0] <= value[1])
    if ok and name == "momentum_range":
        ok = 0.0 <= value[0] and value[1] <= 1.0
    if not ok:
        bounds = " inside [0, 1]" if name == "momentum_range" else ""
        raise UserError(f"{method}: {name} must be a pair [lo, hi] with lo <= hi{bounds}, got {value!r}")
    return [float(value[0]), float(value[1])]


def _check_option(method: str, name: str, value: Any) -> Any:
    if name in RANGES:
        return _check_range(method, name, value)
    if name == "max_trials" and value is None:
        return None
    if name == "hyper_lr":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise UserError(f"{method}: hyper_lr must be a positive number, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{method}: {name} must be an integer >= 1, got {value!r}")
    return value


def _clip(param: Any, value: float) -> float:
    """``value`` moved into a Float parameter's [lo, hi] (a log float that admits 0 keeps its lo)."""
    if isinstance(param, Float):
        return float(min(max(value, param.lo), param.hi))
    return float(value)


class HypergradientMethod(SelectsBestScore):
    """Base of the family: draws initial hyperparameters, one trial per draw, recommends by final val loss."""

    name: ClassVar[str] = "implicit"
    validation: ClassVar[str] = "hypergradient"
    data: ClassVar[str] = "split"
    tuner: ClassVar[str] = "implicit-neumann"
    learns: ClassVar[tuple[str, ...]] = ("decay", "lr", "momentum")
    tuner_fixed: ClassVar[Mapping[str, Any]] = {}
    """Tuner options the method sets and a user does not."""
    recipe: ClassVar[bool] = False
    """Whether its tuner follows the task's recipe where it does not learn (the ``-recipe`` variants)."""
    defaults: ClassVar[Mapping[str, Any]] = {"update_interval": 10, "neumann_terms": 5, "hyper_lr": 0.05}
    """Options passed to the tuner (a user may change them)."""

    def __init__(self, info: TaskInfo, seed: int, **options: Any) -> None:
        super().__init__(info, seed)
        reason = self.inapplicable_reason(info)
        if reason is not None:
            raise UserError(f"{self.name}: not applicable to task {info.name!r}: {reason}")
        self.options = self.checked_options(options)
        self.rng = np.random.default_rng(seed)
        self.asked = 0
        self.decay_keys = [k for k in DECAY_KEYS if k in info.space.names]

    @classmethod
    def checked_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option with its default filled in, checked; UserError (one line) on a bad one."""
        known = {"max_trials": None, **RANGES, **cls.defaults}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        checked = {k: _check_option(cls.name, k, options.get(k, default)) for k, default in known.items()}
        if checked.get("lookback", 0) > checked.get("update_interval", math.inf):
            raise UserError(f"{cls.name}: lookback ({checked['lookback']}) must not exceed update_interval "
                            f"({checked['update_interval']})")
        return checked

    @classmethod
    def validate_options(cls, space: Any, options: Mapping[str, Any]) -> None:
        """Suite-load check of the options (the space does not constrain them)."""
        cls.checked_options(options)

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        """None when this method can run on the task, else one line saying why not."""
        names = info.space.names
        if info.recipe is None:
            return "the task trains no model (it has no training recipe)"
        if "lr" not in names or not isinstance(info.space["lr"], Float):
            return "the search space has no continuous 'lr'"
        other = [n for n in names if n not in KNOWN_KEYS]
        if other:
            return f"the search space has hyperparameters this method cannot set: {', '.join(other)}"
        if cls.learns == ("decay",) and not any(k in names for k in DECAY_KEYS):
            return f"nothing to learn: the search space has none of {', '.join(DECAY_KEYS)}"
        return None

    def draw(self) -> dict[str, float]:
        """One initial draw in natural units (lr, each decay strength of the space, momentum)."""
        lr_lo, lr_hi = self.options["lr_range"]
        decay_lo, decay_hi = self.options["decay_range"]
        mom_lo, mom_hi = self.options["momentum_range"]
        out = {"lr": float(10.0 ** self.rng.uniform(lr_lo, lr_hi))}
        out.update({k: float(10.0 ** self.rng.uniform(decay_lo, decay_hi)) for k in self.decay_keys})
        out["momentum"] = float(self.rng.uniform(mom_lo, mom_hi))
        return out

    def tuner_options(self, momentum_init: float | None) -> dict[str, Any]:
        opts: dict[str, Any] = {"learn": list(self.learns),
                                **{k: self.options[k] for k in self.defaults}, **self.tuner_fixed}
        if momentum_init is not None:
            opts["momentum_init"] = momentum_init
        if self.recipe:  # written only when set: the paper's variants' specs (and cell replays) are unchanged
            opts["recipe"] = True
        return opts

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        max_trials = self.options["max_trials"]
        if max_trials is not None and self.asked >= max_trials:
            return None
        self.asked += 1
        draw = self.draw()
        space = self.info.space
        config = {k: _clip(space[k], v) for k, v in draw.items() if k in space.names}
        momentum_init = None if "momentum" in space.names else draw["momentum"]
        return TrialSpec(config=config, tuner=TunerSpec(self.tuner, self.tuner_options(momentum_init)), data=self.data)


class Implicit(HypergradientMethod):
    """Ours^{WD+LR+M}: decay, learning rate and momentum by the Neumann hypergradient."""

    name = "implicit"


class ImplicitHDLR(HypergradientMethod):
    """Ours^{WD+HDLR+M}: as ``implicit`` with one learning rate per weight element."""

    name = "implicit-hdlr"
    tuner_fixed = {"per_element_lr": True}


class Lorraine(HypergradientMethod):
    """Lorraine et al.'s setting: the same Neumann machinery learning the decay strengths only."""

    name = "lorraine"
    learns = ("decay",)


class Baydin(HypergradientMethod):
    """Hypergradient descent on log10(lr) every step with SGD 1e-3 (chain rule eta ln 10 included)."""

    name = "baydin"
    learns = ("lr",)
    tuner_fixed = {"update_interval": 1, "neumann_terms": 1, "hyper_optimizer": "sgd"}
    defaults = {"hyper_lr": 1e-3}


class DiffThroughOpt(HypergradientMethod):
    """Exact hypergradient by backpropagating through the last 5 of every 10 steps (WD+LR+M, Adam 0.05)."""

    name = "diff-through-opt"
    tuner = "implicit-unrolled"
    defaults = {"update_interval": 10, "lookback": 5, "hyper_lr": 0.05}


class RandomFixed(HypergradientMethod):
    """The paper's Random row: the draw kept fixed, trained on all N, no selection (latest run)."""

    name = "random-fixed"
    validation = "none"
    data = "all"
    tuner = "implicit-fixed"
    learns = ()
    defaults = {}

    def tuner_options(self, momentum_init: float | None) -> dict[str, Any]:
        opts: dict[str, Any] = {} if momentum_init is None else {"momentum_init": momentum_init}
        return {**opts, "recipe": True} if self.recipe else opts

    def recommend(self) -> TrialId | None:
        ok = [tid for tid, r in self.results.items() if r.status == "ok"]
        return max(ok) if ok else None


class ImplicitRecipe(Implicit):
    """``implicit`` under the task's recipe: decay, lr and momentum learned; clipping, Nesterov and
    the schedule (a factor of the learned rate) from the recipe."""

    name = "implicit-recipe"
    recipe = True


class ImplicitHDLRRecipe(ImplicitHDLR):
    """``implicit-hdlr`` under the task's recipe (the schedule multiplies every per-element rate)."""

    name = "implicit-hdlr-recipe"
    recipe = True


class LorraineRecipe(Lorraine):
    """``lorraine`` under the task's recipe: decay learned; the drawn lr under the schedule, the drawn
    momentum (the recipe's where the space has none) with Nesterov, clipping."""

    name = "lorraine-recipe"
    recipe = True


class BaydinRecipe(Baydin):
    """``baydin`` under the task's recipe: lr learned every step as the schedule's base rate; the drawn
    momentum (the recipe's where the space has none) with Nesterov, clipping."""

    name = "baydin-recipe"
    recipe = True


class DiffThroughOptRecipe(DiffThroughOpt):
    """``diff-through-opt`` under the task's recipe (the unrolled window differentiates the clipped,
    scheduled Nesterov update)."""

    name = "diff-through-opt-recipe"
    recipe = True


class RandomFixedRecipe(RandomFixed):
    """``random-fixed`` under the task's recipe: the drawn lr (under the schedule) and decay, trained
    on all N with clipping and Nesterov; the control for the learned variants under the recipe."""

    name = "random-fixed-recipe"
    recipe = True


METHOD_CLASSES = (Implicit, ImplicitHDLR, Lorraine, Baydin, DiffThroughOpt, RandomFixed,
                  ImplicitRecipe, ImplicitHDLRRecipe, LorraineRecipe, BaydinRecipe, DiffThroughOptRecipe,
                  RandomFixedRecipe)
REGISTER = {cls.name: cls for cls in METHOD_CLASSES}
