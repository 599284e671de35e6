"""Gaussian-process surrogates (METHODS.md C.2), built on BoTorch's ``SingleTaskGP``.

* The objective GP models the standardised objective (``-score``, maximised) over all coordinates.
* A cost GP models the standardised log cost of one stage over that stage's coordinates only
  (EEIPU), or the log total cost over every coordinate (CArBO, EIPS).

The kernel, priors and likelihood are pinned here rather than left to BoTorch's defaults (which
changed in BoTorch 0.12): the BoTorch defaults of early 2024 that the EEIPU code ran with, a
constant mean, a scaled Matern-5/2 kernel with one lengthscale per input (ARD),
lengthscale prior Gamma(3, 6), outputscale prior Gamma(2, 0.15), Gaussian noise with prior
Gamma(1.1, 0.05), initialised at its mode and bounded below by 1e-4. No input or outcome transform
is attached: the caller standardises the targets and hands inputs already in the unit cube.

Fitting maximises the exact marginal likelihood (with the priors) by L-BFGS-B, one attempt, from
the previous fit's hyperparameters when the shapes agree (warm start), otherwise from the initial
values above. BoTorch's ``fit_gpytorch_mll`` is not used because its retries resample
hyperparameters from the global torch RNG; a failed fit falls back to the initial values, so the
result is a deterministic function of the data and the warm start.

Prediction reuses the posterior's training-side solve (the GP regression equations, Rasmussen and
Williams 2006, eq. 2.25-2.26): once per fit, the Cholesky factor L of K(X, X) + noise I and
alpha = (K + noise I)^-1 (y - c) are computed; then at test points x, with k = K(x, X) from the
fitted kernel module, mean = c + k alpha and variance = k(x, x) - |L^-1 k^T|^2. This is the same
posterior as BoTorch's ``model.posterior`` (a test checks it) without rebuilding a posterior object
at every call of the acquisition optimiser.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64
NOISE_FLOOR = 1e-4


def _gp_modules(dim: int):  # noqa: ANN202 - gpytorch types
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.likelihoods import GaussianLikelihood
    from gpytorch.priors import GammaPrior

    noise_prior = GammaPrior(1.1, 0.05)
    noise_mode = (noise_prior.concentration - 1) / noise_prior.rate
    likelihood = GaussianLikelihood(
        noise_prior=noise_prior,
        noise_constraint=GreaterThan(NOISE_FLOOR, transform=None, initial_value=noise_mode))
    kernel = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=dim, lengthscale_prior=GammaPrior(3.0, 6.0)),
                         outputscale_prior=GammaPrior(2.0, 0.15))
    return likelihood, kernel


@dataclass(frozen=True)
class Standardizer:
    """y -> (y - mean) / std with the observations' mean and standard deviation (1 if degenerate)."""

    mean: float
    std: float

    @classmethod
    def of(cls, y: np.ndarray) -> Standardizer:
        std = float(np.std(y)) if len(y) > 1 else 1.0
        return cls(float(np.mean(y)), std if std > 1e-12 else 1.0)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.mean) / self.std


class FittedGP:
    """A fitted ``SingleTaskGP`` on standardised targets, with a differentiable marginal prediction."""

    def __init__(self, x: np.ndarray, y: np.ndarray, warm: dict[str, torch.Tensor] | None = None,
                 maxiter: int = 100, reuse: bool = True) -> None:
        """Fit a GP to ``x`` (n, d) in the unit cube and standardised ``y`` (n,), from ``warm``
        (the previous fit's hyperparameters) when given; ``reuse``: predict from the cached
        training-side solve (module doc), else through ``posterior`` at every call."""
        from botorch.models import SingleTaskGP

        self.train_x = torch.as_tensor(x, dtype=DTYPE)
        self.train_y = torch.as_tensor(y, dtype=DTYPE).reshape(-1, 1)
        likelihood, kernel = _gp_modules(self.train_x.shape[-1])
        self.model = SingleTaskGP(self.train_x, self.train_y, likelihood=likelihood, covar_module=kernel,
                                  outcome_transform=None, input_transform=None).to(DTYPE)
        self.initial = self.hyperparameters()
        if warm is not None and all(k in warm and warm[k].shape == v.shape for k, v in self.initial.items()):
            self._load(warm)
        self.fit_ok = self._fit(maxiter)
        self.model.eval()
        self._solve = self._training_solve() if reuse else None

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state[name])

    def _fit(self, maxiter: int) -> bool:
        from botorch.optim.fit import fit_gpytorch_mll_scipy
        from botorch.optim.core import OptimizationStatus
        from gpytorch.mlls import ExactMarginalLogLikelihood

        mll = ExactMarginalLogLikelihood(self.model.likelihood, self.model)
        mll.train()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fit_gpytorch_mll_scipy(mll, options={"maxiter": maxiter})
            ok = result.status != OptimizationStatus.FAILURE and \
                all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        except Exception:  # noqa: BLE001 - numerical failure of one fit: fall back, stay deterministic
            ok = False
        if not ok:
            self._load(self.initial)
        mll.eval()
        return ok

    def _training_solve(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(c, L, alpha) of the fitted model (see the module doc), or None when K + noise I has no
        Cholesky factor even with jitter (``predict`` then asks BoTorch's posterior)."""
        from linear_operator.utils.cholesky import psd_safe_cholesky

        with torch.no_grad():
            x, y = self.train_x, self.train_y.reshape(-1)
            k = self.model.covar_module.forward(x, x)
            noise = self.model.likelihood.noise.reshape(-1)[0]
            try:
                chol = psd_safe_cholesky(k + noise * torch.eye(len(x), dtype=DTYPE))
            except Exception:  # noqa: BLE001 - numerical failure: fall back to the posterior object
                return None
            c = self.model.mean_module.constant.reshape(())
            alpha = torch.cholesky_solve((y - c).unsqueeze(-1), chol).reshape(-1)
        return c.detach(), chol, alpha

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of the latent function at each row of ``x`` (n, d); differentiable."""
        if self._solve is None:
            return self.posterior(x)
        c, chol, alpha = self._solve
        kernel = self.model.covar_module
        cross = kernel.forward(x, self.train_x)  # (n, N)
        mean = c + cross @ alpha
        v = torch.linalg.solve_triangular(chol, cross.transpose(0, 1), upper=False)  # (N, n)
        prior = kernel.forward(x, x, diag=True).reshape(-1)
        return mean, prior - (v * v).sum(dim=0)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict`` through BoTorch's ``model.posterior`` (the reference it is tested against)."""
        import gpytorch

        with gpytorch.settings.debug(False):  # skips input checks, not numerics
            post = self.model.posterior(x.unsqueeze(-2))
            return post.mean.reshape(-1), post.variance.reshape(-1)


class ObjectiveModel:
    """The objective GP on standardised ``y`` (maximised) and the best standardised observation."""

    def __init__(self, x: np.ndarray, y: np.ndarray, warm: dict[str, torch.Tensor] | None, maxiter: int,
                 reuse: bool = True) -> None:
        self.standardizer = Standardizer.of(y)
        ys = self.standardizer(y)
        self.gp = FittedGP(x, ys, warm, maxiter, reuse)
        self.best = float(np.max(ys))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gp.predict(x)


class LogCostModel:
    """A GP on the standardised log cost of one stage (or of the whole pipeline), on its own columns."""

    def __init__(self, columns: list[int], x: np.ndarray, cost: np.ndarray,
                 warm: dict[str, torch.Tensor] | None, maxiter: int, floor: float = 1e-9,
                 reuse: bool = True) -> None:
        """``x``: (n, len(columns)) inputs of the model's own columns; ``cost``: (n,) true costs."""
        self.columns = columns
        log_cost = np.log(np.maximum(np.asarray(cost, dtype=np.float64), floor))
        self.standardizer = Standardizer.of(log_cost)
        self.gp = FittedGP(x, self.standardizer(log_cost), warm, maxiter, reuse)

    def predict_log(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the log cost at each row of the full input ``x`` (n, d)."""
        mean, var = self.gp.predict(x[:, self.columns])
        s = self.standardizer
        return s.mean + s.std * mean, s.std * var.clamp_min(0.0).sqrt()


class ConstantLogCost:
    """The cost of a stage that consumes no parameter: the mean and spread of its observed log costs."""

    def __init__(self, cost: np.ndarray, floor: float = 1e-9) -> None:
        log_cost = np.log(np.maximum(np.asarray(cost, dtype=np.float64), floor))
        self.mean, self.std = float(np.mean(log_cost)), float(np.std(log_cost))

    def predict_log(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        return torch.full((n,), self.mean, dtype=DTYPE), torch.full((n,), self.std, dtype=DTYPE)
