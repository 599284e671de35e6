"""The plain SGD tuner: how search methods' configurations are trained.

Configuration keys it reads: ``lr`` (required), ``weight_decay`` (PyTorch-style, added to the
gradient), ``momentum`` (else the ``momentum`` option), and the L2-SP penalty strengths ``alpha``
(backbone, towards the pretrained weights) and ``beta`` (head, towards zero), added to the mean
loss as ``alpha * ||w_b - w_pretrained||^2 + beta * ||w_head||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hpobench_elbo.contracts import StepStats, TaskInfo, TrainSetup
from hpobench_elbo.errors import UserError


def l2sp_penalty(params: Mapping[str, torch.Tensor], prior_mean: Mapping[str, torch.Tensor],
                 alpha: float, beta: float) -> torch.Tensor:
    """alpha * ||w_b - mu||^2 + beta * ||w_h||^2 (backbone = names in ``prior_mean``)."""
    total = torch.zeros(())
    for name, p in params.items():
        if name in prior_mean and alpha:
            total = total + alpha * (p - prior_mean[name]).pow(2).sum()
        elif name not in prior_mean and beta:
            total = total + beta * p.pow(2).sum()
    return total


def cosine_lr(lr: float, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` of a cosine annealing from ``lr`` to 0 over ``total_steps``."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


class SGDTuner:
    """SGD with weight decay, (Nesterov) momentum, a cosine or constant schedule and the L2-SP penalty."""

    score_name = "validation loss"

    def __init__(self, momentum: float = 0.9, nesterov: bool = True, schedule: str = "cosine",
                 clip_norm: float | None = None, per_parameter_lr: bool = False) -> None:
        """``per_parameter_lr``: the learning rate is a tensor shaped like each parameter (one rate per
        weight element, all starting at the configured ``lr``), as the high-dimensional learning-rate
        variant of Clarke et al. (METHODS.md B.1) needs; ``lr_tensors`` exposes them. The update is
        PyTorch's SGD (weight decay added to the gradient, then momentum, Nesterov) done by hand."""
        if schedule not in ("cosine", "constant"):
            raise UserError(f"sgd tuner: schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.default_momentum = momentum
        self.nesterov = nesterov
        self.schedule = schedule
        self.clip_norm = clip_norm
        self.per_parameter_lr = per_parameter_lr

    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        self.setup = setup
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.prior_mean = {n: v.to(setup.device) for n, v in setup.prior_mean.items() if n in self.params}
        self.alpha = float(config.get("alpha", 0.0))
        self.beta = float(config.get("beta", 0.0))
        self.lr = float(config["lr"])
        momentum = float(config.get("momentum", self.default_momentum))
        self.momentum = momentum
        self.weight_decay = float(config.get("weight_decay", 0.0))
        self.lr_tensors = {n: torch.full_like(p, self.lr) for n, p in self.params.items()} \
            if self.per_parameter_lr else {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.optimizer = torch.optim.SGD(
            list(self.params.values()), lr=self.lr, momentum=momentum,
            weight_decay=float(config.get("weight_decay", 0.0)), nesterov=self.nesterov and momentum > 0)
        self.total_steps = setup.total_steps

    def _lr_at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.lr
        return cosine_lr(self.lr, step, self.total_steps)

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        x, y = batch
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.setup.loss_fn(model(x), y)
        objective = loss + l2sp_penalty(self.params, self.prior_mean, self.alpha, self.beta) \
            if (self.alpha or self.beta) else loss
        objective.backward()
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(list(self.params.values()), self.clip_norm)
        if self.per_parameter_lr:
            self._elementwise_step(self._lr_at(step) / self.lr if self.lr else 0.0)
        else:
            self.optimizer.step()
        return StepStats(loss=float(loss.detach()), examples=len(x))

    @torch.no_grad()
    def _elementwise_step(self, schedule_factor: float) -> None:
        """p -= factor * lr_tensor * d, with d from PyTorch's SGD rule (wd, momentum, Nesterov)."""
        nesterov = self.nesterov and self.momentum > 0
        for name, p in self.params.items():
            if p.grad is None:
                continue
            d = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum > 0:
                buf = self.buffers.get(name)
                buf = d.clone() if buf is None else buf.mul_(self.momentum).add_(d)
                self.buffers[name] = buf
                d = d.add(buf, alpha=self.momentum) if nesterov else buf
            p.sub_(schedule_factor * self.lr_tensors[name] * d)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return model

    def selection_score(self) -> float | None:
        return None  # selected on validation loss by the trainer

    def trajectory(self) -> list[dict[str, float]]:
        return []


REGISTER = {"sgd": SGDTuner}
