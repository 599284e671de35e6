"""The exact GP with type-II maximum likelihood (the reference ``gp-ml`` learns its kernel with).

Rasmussen and Williams (2006), ch. 5.4: for a zero-mean GP with kernel k_theta and Gaussian noise,
the log marginal likelihood of the training targets is

    log p(y | X, theta) = -1/2 y^T (K + noise I)^-1 y - 1/2 log |K + noise I| - n/2 log(2 pi),

and theta (lengthscales, kernel variance, noise) maximises it. Here on GPyTorch: ``ExactGP`` with
``ScaleKernel(RBFKernel)`` (one lengthscale per input dimension when the task's model has one per
dimension, else one shared) and a ``GaussianLikelihood``, in float64, always by Cholesky (no
conjugate gradients; N up to a few thousand). The GPyTorch kernel variance is the RFF model's
s^2 v (``tasks/gp.py``), so it starts at outputscale^2 x prior_variance of the config.

The tuner follows the task's recipe (its optimizer, here Adam, the schedule and the learning rate
of the config) over the GP's raw parameters; each ``step`` is one step on -log p(y | X, theta) / n
over the **whole** training set (``TrainSetup.train_data``: the marginal likelihood does not split
into minibatches), whatever batch the Trainer hands it. The starting values come from the task's
declared model hyperparameters (``contracts.ModelHyperparameter``: ``lengthscale``,
``outputscale``, ``noise``, ``prior_variance``) in the config or the model. ``eval_model`` returns
the GP's exact predictive N(mean, var_f + noise) in the task's output format (mean, log variance;
``contracts.ClosedFormGaussianModel``). The selection score is the final -log p(y | X, theta) / n
(one extra pass, charged to ``hyper``). No validation data is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import warnings

with warnings.catch_warnings():  # linear_operator calls the deprecated torch.jit.script at import time
    warnings.simplefilter("ignore", DeprecationWarning)
    import gpytorch
import torch
from torch import nn

from hpobench_elbo.contracts import ModelHyperparameter, StepStats, TaskInfo, TrainSetup
from hpobench_elbo.errors import UserError

CHOLESKY_UP_TO = 20_000
"""GPyTorch uses Cholesky (never CG/Lanczos) up to this many training points."""

TRAJECTORY_POINTS = 50
REQUIRED = ("lengthscale", "noise")
"""Model hyperparameters a task must declare for the exact GP (``contracts.ModelHyperparameter``)."""


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood: gpytorch.likelihoods.GaussianLikelihood,
                 ard_dims: int | None) -> None:
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=ard_dims))

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class ExactGPPredictor(nn.Module):
    """The fitted exact GP as the task's model: (B, 2) outputs, predictive mean and log variance."""

    def __init__(self, gp: _ExactGP) -> None:
        super().__init__()
        self.gp = gp

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.gp.eval()
        with gpytorch.settings.max_cholesky_size(CHOLESKY_UP_TO), gpytorch.settings.fast_pred_var(False):
            pred = self.gp.likelihood(self.gp(x.to(torch.float64)))
        return torch.stack([pred.mean, pred.variance.log()], dim=1)


def log_marginal_likelihood(gp: _ExactGP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y | X, theta) (a sum over the n targets) of the GP at its current hyperparameters."""
    gp.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
    with gpytorch.settings.max_cholesky_size(CHOLESKY_UP_TO):
        return mll(gp(x), y) * len(y)


class ExactGPTuner:
    """Type-II maximum likelihood of an exact GP on the trial's training set. No options."""

    score_name = "negative log marginal likelihood per example"
    learns_model_hyperparameters = True

    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        declared = {h.name: h for h in info.model_hyperparameters}
        missing = [name for name in REQUIRED if name not in declared]
        if missing:
            raise UserError(f"gp-ml tuner: the task declares no model hyperparameter {missing} "
                            f"(it has {sorted(declared)})")
        if setup.train_data is None:
            raise RuntimeError("gp-ml tuner: the trainer gave no train_data")
        if "lr" not in config:
            raise UserError("gp-ml tuner: the configuration has no 'lr'")
        self.setup = setup
        named = dict(model.named_parameters())

        def start(name: str) -> torch.Tensor:
            h: ModelHyperparameter = declared[name]
            if h.parameter is not None and name not in config:
                return h.value(named[h.parameter].detach()).double()
            return torch.tensor([float(config.get(name, h.init))], dtype=torch.float64)

        length = start("lengthscale")
        if declared["lengthscale"].parameter is not None:
            length = length.expand(named[declared["lengthscale"].parameter].shape).clone()
        scale = start("outputscale") if "outputscale" in declared else torch.ones(1, dtype=torch.float64)
        variance = scale.square() * (start("prior_variance") if "prior_variance" in declared else 1.0)
        x, y = setup.train_data
        self.x = x.to(torch.float64)
        self.y = y.reshape(-1).to(torch.float64)
        likelihood = gpytorch.likelihoods.GaussianLikelihood()
        self.gp = _ExactGP(self.x, self.y, likelihood, ard_dims=length.numel() if length.numel() > 1 else None)
        self.gp.to(device=self.x.device, dtype=torch.float64)
        self.gp.covar_module.base_kernel.lengthscale = length.reshape(1, -1).to(self.x.device)
        self.gp.covar_module.outputscale = variance.reshape(()).to(self.x.device)
        likelihood.noise = start("noise").to(self.x.device)
        self.optimizer = setup.make_optimizer([{"params": list(self.gp.parameters()), "lr": float(config["lr"])}])
        self.total_steps = int(setup.total_steps)
        self.record_every = max(1, self.total_steps // TRAJECTORY_POINTS)
        self._trajectory: list[dict[str, float]] = []
        self._final: float | None = None

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        self.optimizer.zero_grad()
        loss = -log_marginal_likelihood(self.gp, self.x, self.y) / len(self.y)
        loss.backward()
        self.optimizer.step(step)
        value = float(loss.detach())
        if step % self.record_every == 0 or step == self.total_steps - 1:
            self._trajectory.append({"step": step, "neg_mll": value, **self.hyperparameters()})
        return StepStats(loss=value, examples=len(self.y))

    @torch.no_grad()
    def hyperparameters(self) -> dict[str, float]:
        """lengthscale (geometric mean, and each ``lengthscale_<i>`` when there are several), the kernel
        variance (GPyTorch's outputscale = the RFF model's s^2 v) and the noise variance."""
        length = self.gp.covar_module.base_kernel.lengthscale.reshape(-1)
        out = {"lengthscale": float(length.log().mean().exp())}
        if length.numel() > 1:
            out.update({f"lengthscale_{i}": float(v) for i, v in enumerate(length.tolist())})
        out["kernel_variance"] = float(self.gp.covar_module.outputscale)
        out["noise"] = float(self.gp.likelihood.noise.reshape(-1)[0])
        return out

    def eval_model(self, model: nn.Module) -> nn.Module:
        return ExactGPPredictor(self.gp)

    def selection_score(self) -> float | None:
        """-log p(y | X, theta) / n at the final hyperparameters (one ``hyper`` pass)."""
        if self._final is None:
            with self.setup.meter.unit("hyper", examples=len(self.y)), torch.no_grad():
                self._final = float(-log_marginal_likelihood(self.gp, self.x, self.y) / len(self.y))
            self._trajectory.append({"step": self.total_steps, "neg_mll": self._final, **self.hyperparameters()})
        return self._final

    def trajectory(self) -> list[dict[str, float]]:
        return [dict(row) for row in self._trajectory]
