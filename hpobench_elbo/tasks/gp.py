"""Gaussian-process regression with learnable kernel hyperparameters: ``gp-regression``.

The model of Harvey, Petrov and Hughes' GP extension (arXiv 2502.01861, METHODS.md A.5 "GP
extension"): a GP with an RBF kernel approximated by F random Fourier features (Rahimi and Recht,
2007), linear in its weights,

    f(x) = s * phi(x)^T w,   phi_j(x) = sqrt(2 / F) cos(omega_j . (x / ell) + b_j),
    omega_j ~ N(0, I_d),  b_j ~ U(0, 2 pi),  w ~ N(0, v I_F),  y | f ~ N(f(x), noise),

so that E[phi(x)^T phi(x')] = exp(-||(x - x') / ell||^2 / 2) and the implied kernel is
s^2 v k_RBF. Learnable: the lengthscale ell (one per input dimension, or one shared: option
``ard``), the output scale s, the likelihood's noise variance and the prior variance v, all
declared as ``contracts.ModelHyperparameter`` (softplus-parameterised; v has no parameter: it is
the weights' prior). The frequencies and phases are drawn once per cell (from the cell's ``init``
seed), so every trial and refit of a cell shares the same features; the weights start at a draw
from the prior N(0, v I) (the trial's ``init`` seed). s and v enter the implied kernel only as
s^2 v; search methods keep s at 1 and search v.

The model's output is (B, 2): the predictive mean and the log noise variance, so the task's loss is
the Gaussian mean NLL (``training.gaussian_objective``) whichever tuner trains it; the model also
gives the closed-form expected NLL under a Gaussian q over its weights
(``contracts.ClosedFormGaussianModel``): E_q[(y - s phi^T w)^2] = (y - s phi^T m)^2 + sigma^2 s^2 ||phi||^2.

Data: the UCI regression sets of ``tasks/uci.py`` (its ``DATASETS``), standardised with the
statistics of the examples the trial trains on (as ``uci-regression``), and the papers' 1-D toy
(``toy-sin``: x ~ N(0, 1), y = sin(3x) + 0.1 eps, N = 20, a fixed test set of 500 points), the
smoke scale's default. ``test`` reports RMSE and NLL in the original target units.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from hpobench_elbo.contracts import ModelHyperparameter, TrialResult
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Config, Float, SearchSpace
from hpobench_elbo.tasks.base import Prepared, Scale, SupervisedTask, Trial
from hpobench_elbo.tasks.data import ArrayDataset, DataSplits, load_dataset
from hpobench_elbo.tasks.data.splits import HOLDOUT_SEED
from hpobench_elbo.tasks.training import Objective, TrainData, gaussian_nll, gaussian_objective, seeded
from hpobench_elbo.tasks.uci import DATASETS as UCI_DATASETS
from hpobench_elbo.tasks.uci import Standardiser, UCIRegression

TOY = "toy-sin"
TOY_N, TOY_TEST = 20, 500
DATASETS: dict[str, str] = {
    **UCI_DATASETS,
    TOY: f"the DE-ELBo papers' 1-D toy: x ~ N(0, 1), y = sin(3x) + 0.1 noise; pool {TOY_N} / test {TOY_TEST}",
}
"""The data sets this task knows (option ``dataset``): every UCI set of ``tasks/uci.py`` and the toy."""

DIVERGENCE_THRESHOLD = 1e3
"""A standardised training NLL above this (or not finite) counts as divergence."""

FEATURE_STREAM = 7_919
"""Derives a cell's feature seed from its ``init`` seed (the same for every trial of the cell)."""

HYPERPARAMETERS = (
    ModelHyperparameter("lengthscale", "model", 1.0, parameter="raw_lengthscale"),
    ModelHyperparameter("outputscale", "model", 1.0, parameter="raw_outputscale"),
    ModelHyperparameter("noise", "likelihood", 0.1, parameter="likelihood.raw_noise"),
    ModelHyperparameter("prior_variance", "prior", 1.0),
)
"""What lives in the model (lengthscale, output scale), the likelihood (noise) and the prior (v)."""


def toy_splits() -> DataSplits:
    """The 1-D toy of 2502.01861 (fixed draws: the pool and the test set never depend on a cell seed)."""
    rng = np.random.default_rng(HOLDOUT_SEED)

    def draw(n: int) -> ArrayDataset:
        x = rng.standard_normal((n, 1)).astype(np.float32)
        y = (np.sin(3.0 * x[:, 0]) + 0.1 * rng.standard_normal(n)).astype(np.float32)
        return ArrayDataset(x, y, None, TOY)

    return DataSplits(pool=draw(TOY_N), test=draw(TOY_TEST))


class GaussianLikelihood(nn.Module):
    """y | f ~ N(f, noise), noise = softplus(raw_noise)."""

    def __init__(self, noise: float) -> None:
        super().__init__()
        self.raw_noise = nn.Parameter(torch.tensor([HYPERPARAMETERS[2].raw(noise)]))

    @property
    def noise(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_noise)


class RFFGP(nn.Module):
    """The random-Fourier-feature GP of the module doc; ``weights`` are the only weights."""

    def __init__(self, d_in: int, n_features: int, ard: bool, feature_seed: int, lengthscale: float,
                 outputscale: float, noise: float, prior_variance: float, weight_seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(feature_seed)
        self.register_buffer("omega", torch.randn(n_features, d_in, generator=gen))
        self.register_buffer("phase", 2 * math.pi * torch.rand(n_features, generator=gen))
        self.n_features = n_features
        self.raw_lengthscale = nn.Parameter(torch.full((d_in if ard else 1,), HYPERPARAMETERS[0].raw(lengthscale)))
        self.raw_outputscale = nn.Parameter(torch.tensor([HYPERPARAMETERS[1].raw(outputscale)]))
        self.likelihood = GaussianLikelihood(noise)
        wgen = torch.Generator().manual_seed(weight_seed)
        self.weights = nn.Parameter(math.sqrt(prior_variance) * torch.randn(n_features, generator=wgen))

    @property
    def lengthscale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_lengthscale)

    @property
    def outputscale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_outputscale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """s * phi(x), (B, F)."""
        z = (x / self.lengthscale) @ self.omega.T + self.phase
        return self.outputscale * math.sqrt(2.0 / self.n_features) * torch.cos(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.features(x) @ self.weights
        return torch.stack([mean, torch.log(self.likelihood.noise).expand_as(mean)], dim=1)

    def expected_nll(self, x: torch.Tensor, y: torch.Tensor, weight_var: torch.Tensor) -> torch.Tensor:
        """Mean over examples of E_{w ~ N(weights, weight_var I)}[-log N(y | s phi^T w, noise)] (exact)."""
        phi = self.features(x)
        noise = self.likelihood.noise
        sq = (y.reshape(-1) - phi @ self.weights) ** 2 + weight_var * (phi * phi).sum(dim=1)
        return (0.5 * torch.log(2 * math.pi * noise) + 0.5 * sq / noise).mean()


class GPRegression(SupervisedTask):
    """RFF-GP regression with learnable lengthscale(s), output scale, noise and prior variance."""

    name = "gp-regression"
    description = ("RFF GP (RBF kernel, learnable lengthscale per dimension, output scale, noise, prior "
                   "variance), Gaussian NLL on standardised data; test RMSE and NLL in original units "
                   f"(dataset: {' | '.join(DATASETS)})")
    SCALES = {
        "smoke": Scale(n=None, steps=100, batch_size=None, clip_norm=None, optimizer="adam",
                       extra={"features": 32, "dataset": TOY}),
        "cpu": Scale(n=None, steps=500, batch_size=None, clip_norm=None, optimizer="adam",
                     extra={"features": 256, "dataset": "boston"}),
        "gpu": Scale(n=None, steps=4000, batch_size=None, clip_norm=None, optimizer="adam",
                     extra={"features": 2048, "dataset": "boston"}),
    }

    def __init__(self, scale: str = "smoke", device: str = "cpu", dataset: str | None = None,
                 features: int | None = None, ard: bool = True, n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size)
        dataset = dataset if dataset is not None else self.scale.extra["dataset"]
        if dataset not in DATASETS:
            raise UserError(f"task {self.name!r}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if features is not None and (isinstance(features, bool) or not isinstance(features, int) or features < 1):
            raise UserError(f"task {self.name!r}: option features must be an integer >= 1, got {features!r}")
        if not isinstance(ard, bool):
            raise UserError(f"task {self.name!r}: option ard must be true or false, got {ard!r}")
        self.dataset = dataset
        self.n_features = int(features or self.scale.extra["features"])
        self.ard = ard
        self.description = f"{type(self).description}; this instance: {dataset} ({DATASETS[dataset]}), " \
                           f"F = {self.n_features}, {'ARD' if ard else 'one shared'} lengthscale"
        self._feature_seed = 0

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        """The learning rate (swept by the ELBo methods; the grid keeps 0.01) and what lives in the
        model: lengthscale (one value for every dimension), noise variance and prior variance."""
        return SearchSpace.of(
            lr=Float(1e-4, 0.3, log=True, grid=(0.1,)),
            lengthscale=Float(0.05, 20.0, log=True, grid=(0.3, 1.0, 3.0, 10.0)),
            noise=Float(1e-4, 1.0, log=True, grid=(1e-2, 0.1, 0.5)),
            prior_variance=Float(1e-3, 10.0, log=True, grid=(0.3, 3.0)),
        )

    def model_hyperparameters(self) -> tuple[ModelHyperparameter, ...]:
        return HYPERPARAMETERS

    def load(self) -> DataSplits:
        return toy_splits() if self.dataset == TOY else load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return gaussian_objective(divergence_threshold=DIVERGENCE_THRESHOLD)

    def build_model(self, seed: int, config: Config) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The RFF GP at the config's hyperparameters (the declared ``init`` for those not in it)."""
        values = {h.name: float(config.get(h.name, h.init)) for h in HYPERPARAMETERS}
        with seeded(seed):
            model = RFFGP(int(self.data.pool.x.shape[1]), self.n_features, self.ard, self._feature_seed,
                          values["lengthscale"], values["outputscale"], values["noise"], values["prior_variance"],
                          weight_seed=seed)
        return model, {}

    # -- one trial --------------------------------------------------------------------------
    transform = UCIRegression.transform  # the one standardisation on the trial's training examples

    def fit(self, trial: Trial, prepared: Prepared, data: TrainData) -> TrialResult:
        """As the base, with the cell's random features (one draw per cell, from its ``init`` seed)."""
        self._feature_seed = Seeds.derive(trial.ctx.seeds.init, FEATURE_STREAM)
        result = super().fit(trial, prepared, data)
        metrics = dict(result.metrics)
        metrics["target_std_train"] = data.transform.y_std
        return dataclasses.replace(result, metrics=metrics)

    @torch.no_grad()
    def test(self, result: TrialResult) -> dict[str, float]:
        """Test RMSE and NLL in the original target units; ``loss``: the standardised test NLL."""
        model, prepared, data = result.artifact
        std = data.transform
        assert isinstance(prepared, Prepared) and isinstance(std, Standardiser)
        was_training = model.training
        model.eval()
        out = model(std.x(prepared.x_test)).double()
        model.train(was_training)
        y_test = prepared.y_test.reshape(-1).double()
        pred = std.y_original(out[:, 0])
        mse = float(torch.mean((pred - y_test) ** 2))
        loss = float(gaussian_nll(out, std.y(y_test)))
        return {"rmse": math.sqrt(mse) if math.isfinite(mse) else float("nan"), "mse": mse,
                "nll": loss + math.log(std.y_std), "loss": loss}

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info["description"] = type(self).description
        info["datasets"] = dict(DATASETS)
        info["model_hyperparameters"] = {h.name: f"{h.where}, init {h.init:g}" for h in HYPERPARAMETERS}
        return info


REGISTER = {GPRegression.name: GPRegression}
