"""A staged task in one file: scikit-learn's 8x8 digits through a cached random-projection stage
(``proj_dim``), then a linear classifier trained by the Trainer (``lr``, ``weight_decay``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hpobench_elbo import Choice, Float, SearchSpace, Stage
from hpobench_elbo.tasks import (
    DataSplits,
    Prepared,
    Scale,
    SupervisedTask,
    Trial,
    cross_entropy_objective,
    load_dataset,
    seeded,
)


class ProjectedDigits(SupervisedTask):
    name = "projected-digits"
    description = "digits -> cached random projection (proj_dim) -> linear classifier"
    SCALES = {"smoke": Scale(n=300, steps=30, batch_size=32)}

    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        return SearchSpace.of(proj_dim=Choice((8, 16)), lr=Float(1e-3, 1.0, log=True),
                              weight_decay=Float(1e-6, 1e-2, log=True, zero=True))

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("project", ("proj_dim",)), Stage("train", ("lr", "weight_decay")))

    def load(self) -> DataSplits:
        return load_dataset("digits")

    @property
    def objective(self):  # noqa: ANN201
        return cross_entropy_objective()

    def _projection(self, dim: int) -> torch.Tensor:
        with seeded(dim):
            return torch.randn(64, dim) / 8.0

    def prepare(self, trial: Trial) -> Prepared:
        dim = int(trial.config["proj_dim"])
        matrix = self._projection(dim)
        pool = trial.stage("project", {"proj_dim": dim},
                           lambda: self.to_tensor(trial.pool.x).reshape(len(trial.pool), -1) @ matrix,
                           examples=len(trial.pool))
        test = self.to_tensor(self.data.test.x).reshape(len(self.data.test), -1) @ matrix
        return Prepared(pool.output, self.label_tensor(trial.pool.y), test, self.label_tensor(self.data.test.y))

    def build_model(self, seed: int, config: Any) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        with seeded(seed):
            return nn.Linear(int(config["proj_dim"]), 10), {}
