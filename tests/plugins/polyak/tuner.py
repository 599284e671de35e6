"""The tuner: the task's recipe takes the steps; from ``average_from`` of the run on, the tuner keeps
a running average of the weights (its extra work charged to ``hyper``) and deploys the average."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hpobench_elbo import StepStats, TaskInfo, TrainSetup


class PolyakTuner:
    score_name = "validation loss of the averaged weights"

    def __init__(self, average_from: float = 0.5) -> None:
        self.average_from = float(average_from)
        self.averaged = 0
        self._trajectory: list[dict[str, float]] = []

    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        self.setup = setup
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = setup.make_optimizer([{"params": self.params, "lr": float(config["lr"])}])
        self.average = [p.detach().clone() for p in self.params]
        self.start = int(self.average_from * setup.total_steps)

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        x, y = batch
        self.optimizer.zero_grad()
        loss = self.setup.loss_fn(model(x), y)
        loss.backward()
        self.optimizer.step(step)
        if step >= self.start:
            with self.setup.meter.unit("hyper"), torch.no_grad():
                self.averaged += 1
                for avg, p in zip(self.average, self.params):
                    avg.add_(p.detach() - avg, alpha=1.0 / self.averaged)
            if self.averaged == 1 or step == self.setup.total_steps - 1:
                self._trajectory.append({"step": float(step), "averaged_steps": float(self.averaged)})
        return StepStats(loss=float(loss.detach()), examples=len(x))

    def eval_model(self, model: nn.Module) -> nn.Module:
        averaged = copy.deepcopy(model)
        with torch.no_grad():
            for p, avg in zip([p for p in averaged.parameters() if p.requires_grad], self.average):
                p.copy_(avg)
        return averaged

    def selection_score(self) -> float | None:
        return None

    def trajectory(self) -> list[dict[str, float]]:
        return list(self._trajectory)
