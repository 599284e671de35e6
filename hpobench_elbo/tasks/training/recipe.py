"""The training recipe applied to every tuner: the one cosine schedule, gradient clipping and the
momentum step (DESIGN.md, "Budget rule": same recipe for everyone).

``contracts.Recipe`` says what a task's recipe is; :class:`RecipeOptimizer` is how the ``Trainer``
applies it. Tuners that follow the recipe get one through ``TrainSetup.make_optimizer`` and never
build an optimizer, a schedule or a clipping step of their own; the one exception is an update
that must stay differentiable in its hyperparameters (the implicit family's ``-recipe`` variants),
which applies the same items (``Recipe.scheduled_lr``, ``clip_norm``, ``nesterov``) inside it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hpobench_elbo.contracts import Recipe, cosine_lr

__all__ = ["RecipeOptimizer", "cosine_lr", "scheduled_lr"]


def scheduled_lr(recipe: Recipe, lr: float, step: int) -> float:
    """The base rate ``lr`` at ``step`` under the recipe's schedule (``Recipe.scheduled_lr``)."""
    return recipe.scheduled_lr(lr, step)


OPTIMIZERS = ("sgd", "adam")
"""The recipe's optimizers (``Recipe.optimizer``)."""


class RecipeOptimizer:
    """SGD (or Adam, when the recipe says ``optimizer="adam"``) over parameter groups under a task's recipe.

    Each group is a mapping with ``params`` and a base ``lr``, optionally ``momentum`` (else the
    recipe's) and ``weight_decay`` (PyTorch-style, added to the gradient; default 0). Nesterov follows
    the recipe wherever momentum is positive; Adam uses its default betas and ignores momentum.
    :meth:`step` sets every group's rate from the schedule,
    clips the total gradient norm over ``clip_params`` (default: every parameter of the groups) to
    ``recipe.clip_norm``, and steps.
    """

    def __init__(self, recipe: Recipe, param_groups: Sequence[Mapping[str, Any]],
                 clip_params: Iterable[torch.Tensor] | None = None) -> None:
        self.recipe = recipe
        if recipe.optimizer not in OPTIMIZERS:
            raise ValueError(f"recipe optimizer {recipe.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if recipe.optimizer == "adam":
            adam_groups = [{"params": list(g["params"]), "lr": float(g["lr"]),
                            "weight_decay": float(g.get("weight_decay", 0.0))} for g in param_groups]
            self.base_lrs = [g["lr"] for g in adam_groups]
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(adam_groups, lr=adam_groups[0]["lr"])
            self.clip_params = list(clip_params) if clip_params is not None else \
                [p for g in adam_groups for p in g["params"]]
            return
        groups = []
        for group in param_groups:
            momentum = float(group.get("momentum", recipe.momentum))
            groups.append({"params": list(group["params"]), "lr": float(group["lr"]), "momentum": momentum,
                           "weight_decay": float(group.get("weight_decay", 0.0)),
                           "nesterov": bool(recipe.nesterov and momentum > 0)})
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"])
        self.clip_params = list(clip_params) if clip_params is not None else \
            [p for g in groups for p in g["params"]]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def parameter_state(self) -> dict[str, Any]:
        """A copy of the per-parameter state (the momentum buffers), without the hyperparameters:
        what population-based training copies from one member to another."""
        return copy.deepcopy(self.optimizer.state_dict()["state"])

    def load_parameter_state(self, state: Mapping[Any, Any]) -> None:
        """Take the per-parameter state of an optimizer over parameters of the same shapes, in the same
        order (from :meth:`parameter_state`); this optimizer keeps its own rates, momentum and decay."""
        own = self.optimizer.state_dict()
        self.optimizer.load_state_dict({"state": dict(state), "param_groups": own["param_groups"]})

    def step(self, step: int) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = scheduled_lr(self.recipe, base, step)
        if self.recipe.clip_norm is not None:  # the norm is never read: no device synchronisation here
            nn.utils.clip_grad_norm_(self.clip_params, self.recipe.clip_norm)
        self.optimizer.step()
