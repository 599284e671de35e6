"""Population-based training inside one trial (Jaderberg et al. 2017, "Population Based Training of
Neural Networks", Algorithm 1 with the truncation-selection exploit and the perturb explore).

The ``pbt`` tuner trains a population of K members (``population``: one configuration each) in one
trial, round-robin: every trainer step, each member in turn takes one step on the trainer's
minibatch under the task's recipe (``TrainSetup.make_optimizer``: schedule, clipping, Nesterov
momentum, so every member follows the same recipe as a search trial). Every ``interval`` steps
(default: a tenth of the run) the members are ranked by their mean loss on ``val_batches``
validation minibatches (the same minibatches for every member: a paired comparison), and

* **exploit** (truncation selection): each member in the bottom ``quantile`` (ceil(K q), at most
  K/2) copies the weights and buffers (``load_state_dict``), the optimizer's per-parameter state
  (momentum buffers, ``load_parameter_state``) and the hyperparameters of a member of the top
  quantile, drawn uniformly;
* **explore** (perturb): each hyperparameter of the copy is, with probability
  ``resample_probability``, drawn afresh from the task's search space, else a continuous one is
  multiplied by one of ``factors`` (drawn uniformly; an integer one is rounded) and a categorical
  one moves to a neighbouring option; values are clipped into the space (an exact 0 of a
  zero-admitting strength stays 0 unless resampled).

The defaults (K = 8 in the method, quantile 0.25, factors 0.8 / 1.2, resample probability 0.25)
are those of Ray Tune's ``PopulationBasedTraining``. At the last step the members are ranked once
more and the best is the trial's model (``eval_model``); the trainer scores it on the whole
validation split. Hyperparameters it sets: ``lr`` (the group's base rate under the recipe's
schedule), ``weight_decay``, ``momentum`` (where the space has them) and the L2-SP strengths
``alpha`` (backbone, towards the pretrained weights) and ``beta`` (head, towards zero), the same
penalty as the plain SGD tuner's.

Charging: the first member's step is the trainer's ``train`` unit; every other member's step is a
nested ``train`` unit of one minibatch; each ranking (every member on the validation minibatches,
the copies and the perturbations) is one ``hyper`` unit. A member whose training loss is not finite
stops stepping and ranks last until it is replaced. ``trajectory()``: at step 0, after every round
and at the end, one row per member (``step``, ``member``, its hyperparameters, its ranking
``val_loss`` and ``copied_from``, the member it copied in that round or -1).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hpobench_elbo.contracts import StepStats, TaskInfo, TrainSetup
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Choice, Float, Int, Param, SearchSpace

ROUNDS = 10
"""Default ``interval``: the run's steps / ROUNDS (rounded up)."""
SETTABLE = ("lr", "weight_decay", "momentum", "alpha", "beta")
"""The configuration keys a member's training reads."""
Batch = Sequence[torch.Tensor]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_pbt_options(where: str, *, interval: Any = None, quantile: Any = 0.25, resample_probability: Any = 0.25,
                      factors: Any = (0.8, 1.2), val_batches: Any = 4) -> None:
    """Raise UserError (one line naming ``where`` and the option) for a bad population option."""
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
        raise UserError(f"{where}: interval must be an integer >= 1 or null, got {interval!r}")
    if not _is_number(quantile) or not 0.0 < quantile <= 0.5:
        raise UserError(f"{where}: quantile must be a number in (0, 0.5], got {quantile!r}")
    if not _is_number(resample_probability) or not 0.0 <= resample_probability <= 1.0:
        raise UserError(f"{where}: resample_probability must be a number in [0, 1], got {resample_probability!r}")
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors \
            or not all(_is_number(f) and f > 0 for f in factors):
        raise UserError(f"{where}: factors must be a non-empty list of positive numbers, got {factors!r}")
    if isinstance(val_batches, bool) or not isinstance(val_batches, int) or val_batches < 1:
        raise UserError(f"{where}: val_batches must be an integer >= 1, got {val_batches!r}")


def quantile_size(k: int, quantile: float) -> int:
    """How many members are in the top (and the bottom) quantile: ceil(k q), at most k // 2."""
    return min(int(math.ceil(k * quantile)), k // 2)


def perturb(space: SearchSpace, config: Mapping[str, Any], rng: np.random.Generator, factors: Sequence[float],
            resample_probability: float) -> dict[str, Any]:
    """PBT's explore step: every parameter resampled from the space with ``resample_probability``,
    else multiplied by a factor (continuous, integer) or moved to a neighbour (categorical); the
    result always lies inside ``space``."""
    out: dict[str, Any] = {}
    for name, param in space:
        value = config[name]
        if rng.random() < resample_probability:
            out[name] = param.sample(rng)
            continue
        out[name] = _perturbed(param, value, rng, factors)
    return out


def _perturbed(param: Param, value: Any, rng: np.random.Generator, factors: Sequence[float]) -> Any:
    if isinstance(param, Choice):
        i = param.options.index(value) + (1 if rng.random() < 0.5 else -1)
        return param.options[min(max(i, 0), len(param.options) - 1)]
    factor = float(factors[int(rng.integers(len(factors)))])
    if isinstance(param, Int):
        return int(min(max(round(value * factor), param.lo), param.hi))
    assert isinstance(param, Float)
    if param.zero and value == 0.0:
        return 0.0
    return float(min(max(float(value) * factor, param.lo), param.hi))


class Member:
    """One member of the population: its model, its hyperparameters and its recipe optimizer."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        self.model = model
        self.config = config
        self.optimizer: Any = None
        self.diverged = False
        self.val_loss = math.nan
        self.copied_from = -1


class PBTTuner:
    """A population of K members trained round-robin, exploited and explored every ``interval`` steps."""

    name = "pbt"
    score_name = "validation loss"

    def __init__(self, *, population: Sequence[Mapping[str, Any]], seed: int, interval: int | None = None,
                 quantile: float = 0.25, resample_probability: float = 0.25,
                 factors: Sequence[float] = (0.8, 1.2), val_batches: int = 4) -> None:
        where = f"{self.name} tuner"
        if isinstance(population, (str, bytes)) or not isinstance(population, Sequence) or len(population) < 2 \
                or not all(isinstance(c, Mapping) for c in population):
            raise UserError(f"{where}: population must be a list of at least 2 configurations, got {population!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"{where}: seed must be an integer, got {seed!r}")
        check_pbt_options(where, interval=interval, quantile=quantile, resample_probability=resample_probability,
                          factors=factors, val_batches=val_batches)
        self.population = [dict(c) for c in population]
        self.seed = seed
        self.interval_option = interval
        self.quantile = float(quantile)
        self.resample_probability = float(resample_probability)
        self.factors = [float(f) for f in factors]
        self.val_batches = val_batches
        self.members: list[Member] = []
        self.best = 0
        self._trajectory: list[dict[str, Any]] = []

    # -- set-up ---------------------------------------------------------------------------------
    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        self.setup = setup
        self.space = info.space
        unknown = [n for n in info.space.names if n not in SETTABLE]
        if unknown or "lr" not in info.space.names:
            raise UserError(f"{self.name} tuner: needs 'lr' and can set only {', '.join(SETTABLE)}; "
                            f"the space has {', '.join(info.space.names)}")
        configs = [info.space.validate(c, where=f"{self.name} member {k}") for k, c in enumerate(self.population)]
        if dict(config) != configs[0]:
            raise UserError(f"{self.name} tuner: the trial's configuration must be member 0's")
        self.rng = np.random.default_rng(self.seed)
        self.interval = self.interval_option or max(1, math.ceil(setup.total_steps / ROUNDS))
        self.prior_mean = {n: v.to(setup.device) for n, v in setup.prior_mean.items()}
        models = [model] + [copy.deepcopy(model) for _ in configs[1:]]
        self.members = [Member(m, c) for m, c in zip(models, configs)]
        for member in self.members:
            member.optimizer = self.make_optimizer(member)
        self.best = 0
        self._trajectory = []
        self.record(0)

    def make_optimizer(self, member: Member) -> Any:
        """The recipe's optimizer over the member's trainable parameters at its hyperparameters."""
        config = member.config
        group: dict[str, Any] = {"params": [p for p in member.model.parameters() if p.requires_grad],
                                 "lr": float(config["lr"]), "weight_decay": float(config.get("weight_decay", 0.0))}
        if "momentum" in config:
            group["momentum"] = float(config["momentum"])
        return self.setup.make_optimizer([group])

    # -- pieces ---------------------------------------------------------------------------------
    def penalty(self, member: Member) -> torch.Tensor | None:
        """alpha * ||w_b - w_pretrained||^2 + beta * ||w_head||^2 (None when both are 0)."""
        alpha, beta = float(member.config.get("alpha", 0.0)), float(member.config.get("beta", 0.0))
        if not (alpha or beta):
            return None
        total = torch.zeros((), device=self.setup.device)
        for name, p in member.model.named_parameters():
            if not p.requires_grad:
                continue
            if name in self.prior_mean and alpha:
                total = total + alpha * (p - self.prior_mean[name]).pow(2).sum()
            elif name not in self.prior_mean and beta:
                total = total + beta * p.pow(2).sum()
        return total

    def member_step(self, member: Member, batch: Batch, step: int) -> float:
        """One recipe step of one member on ``batch``; returns its minibatch loss."""
        x, y = batch[0], batch[1]
        member.optimizer.zero_grad()
        loss = self.setup.loss_fn(member.model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            member.diverged = True
            return value
        extra = self.penalty(member)
        (loss if extra is None else loss + extra).backward()
        member.optimizer.step(step)
        return value

    @torch.no_grad()
    def validation_loss(self, member: Member, batches: Sequence[Batch]) -> float:
        """Mean loss over ``batches`` in eval mode (inf for a diverged member or a non-finite loss)."""
        if member.diverged:
            return math.inf
        model = member.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in batches:
            n = len(batch[0])
            total += float(self.setup.loss_fn(model(batch[0]), batch[1])) * n
            count += n
        model.train(was_training)
        value = total / max(1, count)
        return value if math.isfinite(value) else math.inf

    def exploit(self, loser: int, winner: int) -> None:
        """Member ``loser`` takes ``winner``'s weights, buffers, optimizer state and hyperparameters,
        then explores (perturbs) the hyperparameters."""
        lose, win = self.members[loser], self.members[winner]
        lose.model.load_state_dict(win.model.state_dict())
        lose.config = perturb(self.space, win.config, self.rng, self.factors, self.resample_probability)
        lose.optimizer = self.make_optimizer(lose)
        lose.optimizer.load_parameter_state(win.optimizer.parameter_state())
        lose.diverged = win.diverged
        lose.copied_from = winner

    def rank(self, val_batch: Callable[[], tuple[torch.Tensor, ...]], step: int, exploit: bool) -> None:
        """Rank every member on the same validation minibatches; exploit and explore when asked."""
        batches = [val_batch() for _ in range(self.val_batches)]
        examples = len(self.members) * sum(len(b[0]) for b in batches)
        with self.setup.meter.unit("hyper", examples=examples):
            for member in self.members:
                member.val_loss = self.validation_loss(member, batches)
                member.copied_from = -1
            order = sorted(range(len(self.members)), key=lambda k: (self.members[k].val_loss, k))
            self.best = order[0]
            if exploit:
                n = quantile_size(len(self.members), self.quantile)
                top, bottom = order[:n], order[len(order) - n:]
                for loser in bottom:
                    self.exploit(loser, top[int(self.rng.integers(len(top)))])
        self.record(step)

    def record(self, step: int) -> None:
        for k, member in enumerate(self.members):
            row: dict[str, Any] = {"step": float(step), "member": k,
                                   **{n: float(v) for n, v in member.config.items() if isinstance(v, (int, float))}}
            if math.isfinite(member.val_loss):
                row["val_loss"] = member.val_loss
            row["copied_from"] = member.copied_from
            self._trajectory.append(row)

    # -- the contract ---------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        if val_batch is None:
            raise ValueError(f"{self.name} tuner: ranking the members needs a validation split (data='split')")
        losses = []
        for k, member in enumerate(self.members):
            if member.diverged:
                losses.append(math.inf)
            elif k == 0:  # the trainer's own train unit
                losses.append(self.member_step(member, batch, step))
            else:
                with self.setup.meter.unit("train", examples=len(batch[0])):
                    losses.append(self.member_step(member, batch, step))
        done = step + 1
        if done >= self.setup.total_steps:
            self.rank(val_batch, done, exploit=False)
        elif done % self.interval == 0:
            self.rank(val_batch, done, exploit=True)
        finite = [v if math.isfinite(v) else math.inf for v in losses]
        return StepStats(loss=float(statistics.median(finite)), examples=len(batch[0]))

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.members[self.best].model if self.members else model

    def selection_score(self) -> float | None:
        return None  # the trainer scores the best member on the whole validation split

    def trajectory(self) -> list[dict[str, float]]:
        return [dict(row) for row in self._trajectory]


TUNERS = {PBTTuner.name: PBTTuner}
