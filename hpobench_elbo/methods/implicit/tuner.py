"""Tuners of the one-pass hypergradient family (Clarke, Oldewage, Hernandez-Lobato, ICLR 2022).

By default every tuner here trains with the paper's update, SGD with decay and heavy-ball momentum,
plain and unclipped (:func:`~hpobench_elbo.methods.implicit.hypergrad.sgd_update`), at a constant
learning rate and momentum except for what it learns; it ignores the recipe (Nesterov, schedule,
clipping) the trainer offers. With the option ``recipe: true`` (the ``-recipe`` methods) it keeps
what it learns and takes the rest of the task's recipe (``TrainSetup.recipe``) into the same update:
the loss gradient clipped at ``recipe.clip_norm``, Nesterov's step where ``recipe.nesterov``, the
schedule's factor multiplying the learned (or fixed) learning rate, and, where momentum is neither
learned nor in the configuration, ``recipe.momentum`` instead of ``momentum_init``; the Neumann
series and the unrolled window then differentiate that update (it stays its own optimizer: the
recipe's ``make_optimizer`` is not used, as it would hide u from autograd). Configuration keys read: ``lr`` (required), ``momentum`` (else the option
``momentum_init``, else 0), and whichever of ``weight_decay``, ``alpha``, ``beta`` the config holds
(the decay strengths; ``alpha`` pulls the backbone, the parameters named in ``setup.prior_mean``,
towards its pretrained values, ``beta`` the head towards 0).

Tuners (registry names):

* ``implicit-neumann`` (:class:`NeumannTuner`): every ``update_interval`` (T) weight steps, the
  last step is differentiated (graph kept, momentum history detached), and phi is updated from the
  Neumann-series hypergradient with ``neumann_terms`` (i) terms on one validation minibatch
  (METHODS.md B.2). With T = 1, i = 1, ``learn=["lr"]`` and ``hyper_optimizer="sgd"`` it is
  hypergradient descent on the learning rate (Baydin et al.), one step back, chain rule to
  log10(eta) included.
* ``implicit-unrolled`` (:class:`UnrolledTuner`): the exact hypergradient of the validation loss by
  backpropagating through the last ``lookback`` of every ``update_interval`` steps (momentum
  history inside the window differentiated, before it detached): "Diff-through-Opt".
* ``implicit-fixed`` (:class:`FixedTuner`): the same update with nothing learned (the "Random"
  baseline's training).

Common options: ``learn`` (a list from ``decay``, ``lr``, ``momentum``), ``update_interval``,
``hyper_lr``, ``hyper_optimizer`` (``adam``: betas (0.9, 0.999); ``sgd``), ``per_element_lr``
(one learning rate per weight element: "HDLR"), ``momentum_init``, ``recipe`` (default false: the
paper's update). After every hyper-step the
learning rates are clipped to [1e-10, 1]. Charging: the validation minibatch, the hypergradient
and the hyper-optimiser step are one ``hyper`` unit of (validation batch + i - 1 training batches)
example passes for ``implicit-neumann`` and (validation batch + lookback training batches) for
``implicit-unrolled``; the differentiated weight steps themselves stay in the trainer's ``train``
unit. No ``selection_score``: the trainer scores a run by its final validation loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hpobench_elbo.contracts import StepStats, TaskInfo, TrainSetup
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.implicit.hypergrad import (
    DECAY_KEYS,
    GROUPS,
    Hyperparameters,
    Tensors,
    loss_and_gradient,
    neumann_hypergradient,
    sgd_update,
)

TRAJECTORY_POINTS = 50
HYPER_OPTIMIZERS = ("adam", "sgd")
Batch = Sequence[torch.Tensor]


def _check_int(tuner: str, name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise UserError(f"{tuner} tuner: {name} must be an integer >= {lo}, got {value!r}")
    return value


def _check_bool(tuner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{tuner} tuner: {name} must be true or false, got {value!r}")
    return value


def _check_positive(tuner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise UserError(f"{tuner} tuner: {name} must be a positive number, got {value!r}")
    return float(value)


class HypergradientTuner:
    """SGD + decay + heavy-ball momentum whose hyperparameters phi a subclass learns (see the module doc)."""

    name = "implicit-fixed"
    score_name = "validation loss"

    def __init__(self, *, learn: Sequence[str] = ("decay", "lr", "momentum"), update_interval: int = 10,
                 hyper_lr: float = 0.05, hyper_optimizer: str = "adam", per_element_lr: bool = False,
                 momentum_init: float | None = None, recipe: bool = False) -> None:
        tag = self.name
        if isinstance(learn, (str, bytes)) or not isinstance(learn, Sequence) \
                or any(g not in GROUPS for g in learn) or len(set(learn)) != len(learn):
            raise UserError(f"{tag} tuner: learn must be a list of distinct items from {', '.join(GROUPS)}, "
                            f"got {learn!r}")
        self.learn = tuple(learn)
        self.update_interval = _check_int(tag, "update_interval", update_interval, 1)
        self.hyper_lr = _check_positive(tag, "hyper_lr", hyper_lr)
        if hyper_optimizer not in HYPER_OPTIMIZERS:
            raise UserError(f"{tag} tuner: hyper_optimizer must be one of {', '.join(HYPER_OPTIMIZERS)}, "
                            f"got {hyper_optimizer!r}")
        self.hyper_optimizer = hyper_optimizer
        self.per_element_lr = _check_bool(tag, "per_element_lr", per_element_lr)
        self.recipe = _check_bool(tag, "recipe", recipe)
        if momentum_init is not None and (isinstance(momentum_init, bool) or not isinstance(momentum_init, (int, float))
                                          or not 0.0 <= momentum_init < 1.0):
            raise UserError(f"{tag} tuner: momentum_init must be a number in [0, 1) or null, got {momentum_init!r}")
        self.momentum_init = momentum_init
        self.last_hypergradient: dict[str, torch.Tensor] = {}
        self._trajectory: list[dict[str, float]] = []

    # -- set-up ---------------------------------------------------------------------------------
    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        if "lr" not in config:
            raise UserError(f"{self.name} tuner: the configuration has no 'lr'")
        self.setup = setup
        self.model = model
        self.params: dict[str, nn.Parameter] = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError(f"{self.name} tuner: the model has no trainable parameters")
        first = next(iter(self.params.values()))
        self.prior_mean = {n: v.detach().to(device=first.device, dtype=self.params[n].dtype)
                           for n, v in setup.prior_mean.items() if n in self.params}
        momentum = config.get("momentum", self.momentum_init)
        if self.recipe and "momentum" not in config and "momentum" not in self.learn:
            momentum = setup.recipe.momentum  # not learned, not searched: the recipe's
        self.clip_norm = setup.recipe.clip_norm if self.recipe else None
        self.nesterov = bool(self.recipe and setup.recipe.nesterov)
        self.step_index = 0
        values = {"lr": float(config["lr"]), "momentum": 0.0 if momentum is None else float(momentum)}
        values.update({k: float(config[k]) for k in DECAY_KEYS if k in config})
        shapes = {n: p.shape for n, p in self.params.items()} if self.per_element_lr else None
        self.hp = Hyperparameters(values, self.learn, shapes, dtype=first.dtype, device=first.device)
        if "lr" not in self.learn:
            self.hp.fixed["lr"] = min(max(self.hp.fixed["lr"], 1e-10), 1.0)
        leaves = self.hp.leaves()
        self.optimizer: torch.optim.Optimizer | None = None
        if leaves:
            self.hp.clamp_()
            self.optimizer = (torch.optim.Adam(leaves, lr=self.hyper_lr, betas=(0.9, 0.999))
                              if self.hyper_optimizer == "adam" else torch.optim.SGD(leaves, lr=self.hyper_lr))
        self.buffers: Tensors | None = None
        n_hyper = max(1, int(setup.total_steps) // self.update_interval)
        self.record_every = max(1, math.ceil(n_hyper / TRAJECTORY_POINTS))
        self.n_hyper_steps = 0
        self._trajectory = [{"step": 0.0, **self.hp.summary()}] if leaves else []

    @property
    def learning(self) -> bool:
        return self.optimizer is not None

    # -- pieces ---------------------------------------------------------------------------------
    def update(self, weights: Mapping[str, torch.Tensor], batch: Batch, buffers: Tensors | None,
               leaves: Sequence[torch.Tensor], create_graph: bool) -> tuple[torch.Tensor, Tensors, Tensors]:
        """(training loss, u, b_new) at ``weights`` for the hyperparameters given by the phi ``leaves``."""
        loss, grads = loss_and_gradient(self.model, self.setup.loss_fn, weights, batch, create_graph)
        u, b_new = sgd_update(weights, grads, buffers, self.hp.natural_from(leaves), self.prior_mean,
                              clip_norm=self.clip_norm, nesterov=self.nesterov, lr_scale=self.lr_scale())
        return loss, u, b_new

    def lr_scale(self) -> float:
        """The factor of the learning rate at the current step: the recipe's schedule with ``recipe``
        (cosine: 1 at the first step, near 0 at the last), else 1 (the paper's constant rate)."""
        return self.setup.recipe.scheduled_lr(1.0, self.step_index) if self.recipe else 1.0

    def plain_step(self, batch: Batch) -> torch.Tensor:
        """One weight step at the current (constant) hyperparameters, no graph kept."""
        leaves = [t.detach() for t in self.hp.leaves()]
        loss, u, b_new = self.update(self.params, batch, self.buffers, leaves, create_graph=False)
        with torch.no_grad():
            for name, p in self.params.items():
                p.sub_(u[name])
        self.buffers = {n: b.detach() for n, b in b_new.items()}
        return loss.detach()

    def validation_gradient(self, val_batch: Batch) -> tuple[float, list[torch.Tensor]]:
        """Loss and dL_V/dw at the model's current weights on one validation minibatch (train mode)."""
        loss, grads = loss_and_gradient(self.model, self.setup.loss_fn, self.params, val_batch, create_graph=False)
        return float(loss.detach()), [g.detach() for g in grads.values()]

    def apply_hypergradient(self, grads: Sequence[torch.Tensor], step: int, **extra: float) -> None:
        """phi.grad := g; one hyper-optimiser step; clip the learning rates; record (every few steps)."""
        assert self.optimizer is not None
        self.last_hypergradient = dict(zip(self.hp.names, grads))
        for leaf, g in zip(self.hp.leaves(), grads):
            leaf.grad = g.to(leaf.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.hp.clamp_()
        self.n_hyper_steps += 1
        if self.n_hyper_steps % self.record_every == 0:
            self._trajectory.append({"step": float(step + 1), **self.hp.summary(), **extra})

    def hyper_unit(self, val_examples: int, train_passes: int, batch: Batch) -> Any:
        return self.setup.meter.unit("hyper", examples=val_examples + train_passes * len(batch[0]))

    # -- the contract ---------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        if self.learning and val_batch is None:
            raise ValueError(f"{self.name} tuner: learning hyperparameters needs a validation split (data='split')")
        self.step_index = step
        loss = self.learning_step(batch, step, val_batch) if self.learning else self.plain_step(batch)
        return StepStats(loss=float(loss), examples=len(batch[0]))

    def learning_step(self, batch: Batch, step: int, val_batch: Callable[[], tuple[torch.Tensor, ...]]) -> torch.Tensor:
        return self.plain_step(batch)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return model

    def selection_score(self) -> float | None:
        return None  # the trainer scores the run by its final validation loss

    def trajectory(self) -> list[dict[str, float]]:
        return [dict(row) for row in self._trajectory]


class FixedTuner(HypergradientTuner):
    """The family's update with every hyperparameter fixed (the "Random" baseline's training)."""

    name = "implicit-fixed"

    def __init__(self, *, momentum_init: float | None = None, recipe: bool = False) -> None:
        super().__init__(learn=(), momentum_init=momentum_init, recipe=recipe)


class NeumannTuner(HypergradientTuner):
    """Hyper-step every T weight steps from the last step's i-term Neumann hypergradient (B.2)."""

    name = "implicit-neumann"

    def __init__(self, *, learn: Sequence[str] = ("decay", "lr", "momentum"), update_interval: int = 10,
                 neumann_terms: int = 5, hyper_lr: float = 0.05, hyper_optimizer: str = "adam",
                 per_element_lr: bool = False, momentum_init: float | None = None, recipe: bool = False) -> None:
        super().__init__(learn=learn, update_interval=update_interval, hyper_lr=hyper_lr,
                         hyper_optimizer=hyper_optimizer, per_element_lr=per_element_lr, momentum_init=momentum_init,
                         recipe=recipe)
        self.neumann_terms = _check_int(self.name, "neumann_terms", neumann_terms, 1)

    def learning_step(self, batch: Batch, step: int, val_batch: Callable[[], tuple[torch.Tensor, ...]]) -> torch.Tensor:
        if step % self.update_interval != self.update_interval - 1:
            return self.plain_step(batch)
        return self.hyper_step(batch, step, val_batch)

    def hyper_step(self, batch: Batch, step: int, val_batch: Callable[[], tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """The differentiated weight step, then one hyper-step; returns the step's training loss."""
        w_prev = {n: p.detach().clone().requires_grad_(True) for n, p in self.params.items()}
        leaves = self.hp.leaves()
        loss, u, b_new = self.update(w_prev, batch, self.buffers, leaves, create_graph=self.neumann_terms > 1)
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(w_prev[name] - u[name])
        self.buffers = {n: b.detach() for n, b in b_new.items()}
        vb = val_batch()
        with self.hyper_unit(len(vb[0]), self.neumann_terms - 1, batch):
            val_loss, v = self.validation_gradient(vb)
            grads = neumann_hypergradient(list(u.values()), list(w_prev.values()), leaves, v, self.neumann_terms)
            self.apply_hypergradient(grads, step, val_loss=val_loss, train_loss=float(loss.detach()))
        return loss.detach()


class UnrolledTuner(HypergradientTuner):
    """Diff-through-Opt: backpropagate the validation loss through the last ``lookback`` of every T steps."""

    name = "implicit-unrolled"

    def __init__(self, *, learn: Sequence[str] = ("decay", "lr", "momentum"), update_interval: int = 10,
                 lookback: int = 5, hyper_lr: float = 0.05, hyper_optimizer: str = "adam",
                 per_element_lr: bool = False, momentum_init: float | None = None, recipe: bool = False) -> None:
        super().__init__(learn=learn, update_interval=update_interval, hyper_lr=hyper_lr,
                         hyper_optimizer=hyper_optimizer, per_element_lr=per_element_lr, momentum_init=momentum_init,
                         recipe=recipe)
        self.lookback = _check_int(self.name, "lookback", lookback, 1)
        if self.lookback > self.update_interval:
            raise UserError(f"{self.name} tuner: lookback ({lookback}) must not exceed update_interval "
                            f"({update_interval})")
        self._weights: Tensors | None = None  # weights inside the differentiated window (with graph)
        self._window_buffers: Tensors | None = None

    def learning_step(self, batch: Batch, step: int, val_batch: Callable[[], tuple[torch.Tensor, ...]]) -> torch.Tensor:
        pos = step % self.update_interval
        if pos < self.update_interval - self.lookback:
            return self.plain_step(batch)
        if pos == self.update_interval - self.lookback or self._weights is None:  # the window opens
            self._weights = {n: p.detach().clone().requires_grad_(True) for n, p in self.params.items()}
            self._window_buffers = self.buffers
        leaves = self.hp.leaves()
        loss, u, b_new = self.update(self._weights, batch, self._window_buffers, leaves, create_graph=True)
        self._weights = {n: w - u[n] for n, w in self._weights.items()}
        self._window_buffers = b_new
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self._weights[name])
        self.buffers = {n: b.detach() for n, b in b_new.items()}
        if pos == self.update_interval - 1:
            vb = val_batch()
            with self.hyper_unit(len(vb[0]), self.lookback, batch):
                val_loss, v = self.validation_gradient(vb)
                grads = torch.autograd.grad(list(self._weights.values()), leaves, grad_outputs=v,
                                            materialize_grads=True)
                self._weights = self._window_buffers = None  # free the window's graph
                self.apply_hypergradient([g.detach() for g in grads], step, val_loss=val_loss,
                                         train_loss=float(loss.detach()))
        return loss.detach()


TUNERS = {cls.name: cls for cls in (NeumannTuner, UnrolledTuner, FixedTuner)}
