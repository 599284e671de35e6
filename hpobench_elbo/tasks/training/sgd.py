"""The plain SGD tuner: how search methods' configurations are trained, under the task's recipe.

Configuration keys it reads: ``lr`` (required), ``weight_decay`` (PyTorch-style, added to the
gradient), ``momentum`` (where the space searches it; else the recipe's), and the L2-SP penalty
strengths ``alpha`` (backbone, towards the pretrained weights) and ``beta`` (head, towards zero),
added to the mean loss as ``alpha * ||w_b - w_pretrained||^2 + beta * ||w_head||^2``, and a task's
``prior`` model hyperparameter (``contracts.ModelHyperparameter``: the variance v of the weights'
prior N(0, v I)) as the MAP penalty ``||w_head||^2 / (2 v n_train)``. The task's other model
hyperparameters are frozen at the config's values by the Trainer (this tuner does not learn them). Schedule,
Nesterov momentum and gradient clipping come from the recipe (``TrainSetup.make_optimizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hpobench_elbo.contracts import StepStats, TaskInfo, TrainSetup


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


class SGDTuner:
    """SGD with weight decay and the L2-SP penalty, stepped by the recipe's optimizer. No options."""

    score_name = "validation loss"

    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        self.setup = setup
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.prior_mean = {n: v.to(setup.device) for n, v in setup.prior_mean.items() if n in self.params}
        self.alpha = float(config.get("alpha", 0.0))
        self.beta = float(config.get("beta", 0.0))
        for hyper in info.model_hyperparameters:  # a prior variance v: beta += 1 / (2 v n_train)
            if hyper.where == "prior":
                self.beta += 1.0 / (2.0 * float(config.get(hyper.name, hyper.init)) * setup.n_train)
        group: dict[str, Any] = {"params": list(self.params.values()), "lr": float(config["lr"]),
                                 "weight_decay": float(config.get("weight_decay", 0.0))}
        if "momentum" in config:
            group["momentum"] = float(config["momentum"])
        self.optimizer = setup.make_optimizer([group])

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        x, y = batch
        self.optimizer.zero_grad()
        loss = self.setup.loss_fn(model(x), y)
        objective = loss + l2sp_penalty(self.params, self.prior_mean, self.alpha, self.beta) \
            if (self.alpha or self.beta) else loss
        objective.backward()
        self.optimizer.step(step)
        return StepStats(loss=float(loss.detach()), examples=len(x))

    def eval_model(self, model: nn.Module) -> nn.Module:
        return model

    def selection_score(self) -> float | None:
        return None  # selected on validation loss by the trainer

    def trajectory(self) -> list[dict[str, float]]:
        return []
