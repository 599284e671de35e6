"""The (data-emphasized) ELBo tuner: learns the prior variances inside one training run.

Implements METHODS.md Part A (Harvey, Petrov, Hughes, arXiv 2410.19675 and 2502.01861) from the
equations, as a tuner the ``Trainer`` drives:

* q(w) = N(m, sigma^2 I) over **all** D trainable parameters of the model (``per_parameter_sigma``:
  one sigma per weight element, the "diag" variant). sigma = softplus(rho), rho starts at
  softplus^-1(``sigma_init``). m *is* the model's parameters; rho and the prior variances are
  tensors owned by the tuner, never module parameters, and are not counted in D.
* Prior (L2-SP): backbone N(mu, lambda I) with mu the pretrained values (``setup.prior_mean``), head
  N(0, tau I). ``prior="l2-zero"`` centres the backbone at 0 (L2-zero); ``"auto"`` is L2-SP when
  the task has a prior mean, otherwise every parameter is a head parameter (one variance, tau).
* lambda and tau are never free: every step uses the closed forms
  lambda* = (||m_b - mu||^2 + sum sigma_d^2) / D_b and tau* = (||m_h||^2 + sum sigma_d^2) / D_h
  (= ||.||^2/D + sigma^2 for the iso q), and the concentrated KL
  KL(lambda*) = D/2 log lambda* - 1/2 sum log sigma_d^2 (= D/2 log(1 + ||.||^2/(D sigma^2)) iso).
* Per-step loss (the HEAD form, pitfall A.8-1): mean minibatch NLL at one sample
  w = m + sigma * eps (one eps per minibatch, through ``torch.func.functional_call``)
  + KL / (kappa n_train), with kappa = D / n_train ("data-emphasized") or a number (1: plain ELBo).
* The task's recipe (``TrainSetup.make_optimizer``: SGD with Nesterov momentum, the schedule, the
  gradient-norm clipping; no weight decay) over [m, rho], starting from the config's ``lr``.
* Selection: after training, the final training objective = mean NLL over the whole training set
  averaged over ``selection_samples`` posterior samples (eval mode) + KL / (kappa n_train); lower is
  better. Prediction (``eval_model``) is deterministic at the mean m (pitfall A.8-7).

Charging: the KL and its gradient are computed in each step inside a nested ``hyper`` unit
(examples=0); the selection pass is one ``hyper`` unit of ``selection_samples * n_train``
examples. Squared norms are accumulated in float64 (pitfall A.8-4); the parameter map is an
explicit name -> slice table over the trainable parameters whose backbone entries are checked
against the prior mean's names and shapes (pitfall A.8-2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from hpobench_elbo.contracts import StepStats, TaskInfo, TrainSetup
from hpobench_elbo.errors import UserError

PRIORS = ("auto", "l2-sp", "l2-zero")
DATA_EMPHASIZED = "data-emphasized"
TRAJECTORY_POINTS = 50
SIGMA_QUANTILES = (0.05, 0.5, 0.95)
_QUANTILE_MAX = 1_000_000  # elements; larger sigma vectors are strided-subsampled for quantiles


# ---------------------------------------------------------------------------------------------
# The Gaussian KL pieces (float64 scalars in, float64 scalars out; differentiable)
# ---------------------------------------------------------------------------------------------

def softplus_inverse(y: float) -> float:
    """rho with softplus(rho) = y (stable for small and large y)."""
    if not y > 0:
        raise ValueError(f"softplus_inverse needs y > 0, got {y}")
    return y + math.log(-math.expm1(-y))


def gaussian_kl(sq_dist: Any, sum_var: Any, sum_log_var: Any, dim: int, prior_var: Any) -> Any:
    """KL( N(m, diag(s^2)) || N(mu, v I) ) in dimension ``dim``.

    ``sq_dist`` = ||m - mu||^2, ``sum_var`` = sum s_d^2, ``sum_log_var`` = sum log s_d^2, ``prior_var`` = v:
    1/2 [ (sum s_d^2 + ||m - mu||^2)/v - D + D log v - sum log s_d^2 ] (METHODS.md A.2).
    """
    return 0.5 * ((sum_var + sq_dist) / prior_var - dim + dim * torch.log(torch.as_tensor(prior_var))
                  - sum_log_var)


def optimal_prior_variance(sq_dist: Any, sum_var: Any, dim: int) -> Any:
    """The minimiser of :func:`gaussian_kl` over v: (||m - mu||^2 + sum s_d^2) / D."""
    return (sq_dist + sum_var) / dim


def concentrated_kl(sq_dist: Any, sum_var: Any, sum_log_var: Any, dim: int) -> Any:
    """:func:`gaussian_kl` at the optimal prior variance: D/2 log v* - 1/2 sum log s_d^2."""
    v = optimal_prior_variance(sq_dist, sum_var, dim)
    return 0.5 * (dim * torch.log(torch.as_tensor(v)) - sum_log_var)


def concentrated_kl_iso(sq_dist: Any, sigma2: Any, dim: int) -> Any:
    """The iso special case, in its cancellation-free form: D/2 log(1 + ||m - mu||^2 / (D sigma^2))."""
    return 0.5 * dim * torch.log1p(torch.as_tensor(sq_dist) / (dim * sigma2))


def training_objective(mean_nll: Any, kl: Any, kappa: float, n_train: int) -> Any:
    """The per-example loss the tuner minimises: mean NLL + KL / (kappa n) (= -L_kappa / (kappa n))."""
    return mean_nll + kl / (kappa * n_train)


# ---------------------------------------------------------------------------------------------
# The parameter map
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamSlice:
    """One trainable parameter's place in the flat weight vector w (module order)."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int
    group: str  # "backbone" (prior N(mu or 0, lambda I)) or "head" (prior N(0, tau I))

    @property
    def numel(self) -> int:
        return self.stop - self.start


def build_param_map(params: Mapping[str, torch.Tensor], prior_mean: Mapping[str, torch.Tensor]) -> tuple[ParamSlice, ...]:
    """Name -> slice table over ``params`` (in their order); names in ``prior_mean`` are backbone.

    Raises ValueError when a prior-mean entry's shape differs from its parameter's.
    """
    table, offset = [], 0
    for name, p in params.items():
        group = "head"
        if name in prior_mean:
            if tuple(prior_mean[name].shape) != tuple(p.shape):
                raise ValueError(f"prior mean of {name!r} has shape {tuple(prior_mean[name].shape)}, "
                                 f"the parameter has {tuple(p.shape)}")
            group = "backbone"
        table.append(ParamSlice(name, tuple(p.shape), offset, offset + p.numel(), group))
        offset += p.numel()
    return tuple(table)


# ---------------------------------------------------------------------------------------------
# The tuner
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ELBoOptions:
    """The ELBo tuner's options, checked once here (the methods build them to validate theirs).

    ``kappa``: ``"data-emphasized"`` (D / n_train) or a positive number (1: the plain ELBo);
    ``sigma_init``: the initial posterior standard deviation; ``per_parameter_sigma``: one sigma per
    weight element (the diag q) instead of one shared sigma; ``selection_samples``: posterior
    samples of the final training objective; ``prior``: ``auto``, ``l2-sp`` or ``l2-zero``.
    """

    kappa: str | float = DATA_EMPHASIZED
    sigma_init: float = 1e-4
    per_parameter_sigma: bool = False
    selection_samples: int = 10
    prior: str = "auto"

    def __post_init__(self) -> None:
        kappa = self.kappa
        if isinstance(kappa, str) and kappa != DATA_EMPHASIZED or not isinstance(kappa, str) and (
                isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not kappa > 0
                or not math.isfinite(kappa)):
            raise UserError(f"kappa: expected {DATA_EMPHASIZED!r} or a positive number, got {kappa!r}")
        if isinstance(self.sigma_init, bool) or not isinstance(self.sigma_init, (int, float)) \
                or not self.sigma_init > 0:
            raise UserError(f"sigma_init: expected a positive number, got {self.sigma_init!r}")
        if not isinstance(self.per_parameter_sigma, bool):
            raise UserError(f"per_parameter_sigma: expected true or false, got {self.per_parameter_sigma!r}")
        if self.prior not in PRIORS:
            raise UserError(f"prior: expected one of {', '.join(PRIORS)}, got {self.prior!r}")
        samples = self.selection_samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UserError(f"selection_samples: expected an integer >= 1, got {samples!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kappa": self.kappa, "per_parameter_sigma": self.per_parameter_sigma, "prior": self.prior,
                "sigma_init": float(self.sigma_init), "selection_samples": self.selection_samples}


class ELBoTuner:
    """Mean-field Gaussian q over all trainable weights; lambda*, tau* in closed form every step.

    Options: those of :class:`ELBoOptions`. Config key read: ``lr``; every other key of the
    configuration is ignored (the ELBo learns the regularisation).
    """

    score_name = "final training objective"

    def __init__(self, **options: Any) -> None:
        opts = ELBoOptions(**options)
        self.kappa_option = opts.kappa
        self.sigma_init = float(opts.sigma_init)
        self.per_parameter_sigma = opts.per_parameter_sigma
        self.selection_samples = opts.selection_samples
        self.prior = opts.prior
        self._trajectory: list[dict[str, float]] = []
        self._final: dict[str, float] | None = None
        self._steps_done = 0

    # -- set-up ---------------------------------------------------------------------------------
    def init(self, model: nn.Module, info: TaskInfo, config: Mapping[str, Any], setup: TrainSetup) -> None:
        self.setup = setup
        self.model = model
        if "lr" not in config:
            raise UserError("elbo tuner: the configuration has no 'lr'")
        self.lr = float(config["lr"])
        self.params: dict[str, nn.Parameter] = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("elbo tuner: the model has no trainable parameters")
        all_names = {n for n, _ in model.named_parameters()}
        unknown = [n for n in setup.prior_mean if n not in all_names]
        if unknown:  # a prior mean that is not aligned with the model (pitfall A.8-2)
            raise ValueError(f"elbo tuner: prior mean names {unknown[:3]} are not parameters of the model")
        prior_mean = {n: v for n, v in setup.prior_mean.items() if n in self.params}
        if self.prior == "l2-sp" and not prior_mean:
            raise UserError("elbo tuner: prior 'l2-sp' needs a task with a pretrained backbone (no prior mean)")
        self.param_map = build_param_map(self.params, prior_mean)
        self.n_params = self.param_map[-1].stop
        self.n_backbone = sum(s.numel for s in self.param_map if s.group == "backbone")
        self.n_head = self.n_params - self.n_backbone
        self.prior_name = "l2-zero" if (self.prior == "l2-zero" or not prior_mean) else "l2-sp"
        self.mu: dict[str, torch.Tensor] = {}
        if self.prior_name == "l2-sp":
            self.mu = {s.name: prior_mean[s.name].detach().to(device=setup.device, dtype=self.params[s.name].dtype)
                       for s in self.param_map if s.group == "backbone"}
        self.n_train = int(setup.n_train)
        self.kappa = self.n_params / self.n_train if self.kappa_option == DATA_EMPHASIZED else float(self.kappa_option)

        first = next(iter(self.params.values()))
        rho0 = softplus_inverse(self.sigma_init)
        if self.per_parameter_sigma:
            self.rho: dict[str, torch.Tensor] | torch.Tensor = {
                n: torch.full_like(p, rho0, requires_grad=True) for n, p in self.params.items()}
            rho_list = list(self.rho.values())
        else:
            self.rho = torch.tensor(rho0, dtype=first.dtype, device=first.device, requires_grad=True)
            rho_list = [self.rho]
        self.optimizer = setup.make_optimizer([{"params": list(self.params.values()), "lr": self.lr},
                                               {"params": rho_list, "lr": self.lr}])
        self.total_steps = int(setup.total_steps)
        self.record_every = max(1, self.total_steps // TRAJECTORY_POINTS)
        device = torch.device(setup.device)
        if device.type == "cpu" and isinstance(setup.generator, torch.Generator):
            self.noise = setup.generator
        else:  # a generator on the device, seeded from the trial's noise generator
            seed = int(torch.randint(0, 2**62, (1,), generator=setup.generator))
            self.noise = torch.Generator(device=device).manual_seed(seed)

    # -- pieces -----------------------------------------------------------------------------------
    def _sigmas(self) -> dict[str, torch.Tensor]:
        """sigma per parameter name (a scalar tensor shared by all for the iso q)."""
        if isinstance(self.rho, dict):
            return {n: nn.functional.softplus(r) for n, r in self.rho.items()}
        sigma = nn.functional.softplus(self.rho)
        return {n: sigma for n in self.params}

    def _sample(self) -> dict[str, torch.Tensor]:
        """w = m + sigma * eps, one eps for the whole minibatch (differentiable in m and rho).

        eps is drawn as one flat vector of D normals (one kernel) and viewed per parameter.
        """
        sigmas = self._sigmas()
        first = next(iter(self.params.values()))
        eps = torch.randn(self.n_params, generator=self.noise, dtype=first.dtype, device=first.device)
        return {s.name: self.params[s.name] + sigmas[s.name] * eps[s.start:s.stop].view(s.shape)
                for s in self.param_map}

    def prior_terms(self) -> dict[str, Any]:
        """KL pieces at the current (m, sigma): per group sq_dist, optimal variance, concentrated KL.

        Returns float64 tensors (differentiable): ``kl`` (total), ``lambda`` (if D_b > 0), ``tau``
        (if D_h > 0), ``kl_backbone``, ``kl_head``.
        """
        f64 = torch.float64
        sq = {"backbone": torch.zeros((), dtype=f64, device=self._device()),
              "head": torch.zeros((), dtype=f64, device=self._device())}
        sum_var = dict(sq)
        sum_log_var = dict(sq)
        if isinstance(self.rho, dict):
            for s in self.param_map:
                sig = nn.functional.softplus(self.rho[s.name]).to(f64)
                var = sig.square()
                sum_var[s.group] = sum_var[s.group] + var.sum()
                sum_log_var[s.group] = sum_log_var[s.group] + torch.log(var).sum()
        else:
            sigma2 = nn.functional.softplus(self.rho).to(f64).square()
        for s in self.param_map:  # squares in the parameters' dtype, accumulated in float64 (pitfall A.8-4)
            p = self.params[s.name]
            diff = p - self.mu[s.name] if s.name in self.mu else p
            sq[s.group] = sq[s.group] + (diff * diff).sum(dtype=f64)
        out: dict[str, Any] = {}
        kl = torch.zeros((), dtype=f64, device=self._device())
        for group, dim, key in (("backbone", self.n_backbone, "lambda"), ("head", self.n_head, "tau")):
            if dim == 0:
                continue
            if isinstance(self.rho, dict):
                var_opt = optimal_prior_variance(sq[group], sum_var[group], dim)
                kl_g = concentrated_kl(sq[group], sum_var[group], sum_log_var[group], dim)
            else:
                var_opt = optimal_prior_variance(sq[group], dim * sigma2, dim)
                kl_g = concentrated_kl_iso(sq[group], sigma2, dim)
            out[key] = var_opt
            out[f"kl_{group}"] = kl_g
            out[f"sq_{group}"] = sq[group]
            kl = kl + kl_g
        out["kl"] = kl
        return out

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def sigma_summary(self) -> dict[str, float]:
        """sigma (iso), or for the diag q the RMS sigma and quantiles of the per-weight sigmas."""
        with torch.no_grad():
            if not isinstance(self.rho, dict):
                return {"sigma": float(nn.functional.softplus(self.rho))}
            flat = torch.cat([nn.functional.softplus(r).reshape(-1).to(torch.float64) for r in self.rho.values()])
            summary = {"sigma": float(flat.square().mean().sqrt())}
            sub = flat[:: max(1, flat.numel() // _QUANTILE_MAX)]
            qs = torch.quantile(sub, torch.tensor(SIGMA_QUANTILES, dtype=torch.float64, device=sub.device))
            for q, v in zip(SIGMA_QUANTILES, qs.tolist()):
                summary[f"sigma_q{round(q * 100):02d}"] = float(v)
            return summary

    def _record(self, step: int, terms: Mapping[str, Any], nll: float, **extra: float) -> None:
        row: dict[str, float] = {"step": step}
        for key in ("lambda", "tau"):
            if key in terms:
                row[key] = float(terms[key].detach())
        row.update(self.sigma_summary())
        row["kl"] = float(terms["kl"].detach())
        row["nll"] = float(nll)
        row.update(extra)
        self._trajectory.append(row)

    # -- the contract -------------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        x, y = batch
        self.optimizer.zero_grad()
        nll = self.setup.loss_fn(functional_call(model, self._sample(), (x,)), y)
        nll.backward()
        with self.setup.meter.unit("hyper", examples=0):
            terms = self.prior_terms()
            reg = terms["kl"] / (self.kappa * self.n_train)
            reg.backward()
            if step % self.record_every == 0 or step == self.total_steps - 1:
                self._record(step, terms, float(nll.detach()))
        self.optimizer.step(step)
        self._steps_done = step + 1
        nll_value, reg_value = torch.stack([nll.detach().double(), reg.detach()]).tolist()  # one device sync
        objective = nll_value + reg_value
        return StepStats(loss=nll_value if math.isfinite(objective) else objective, examples=len(x))

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model itself: its parameters are the mean m (deterministic prediction)."""
        return model

    @torch.no_grad()
    def final_objective(self) -> dict[str, float]:
        """Mean NLL over the training set averaged over posterior samples, KL, and the objective.

        One ``hyper`` unit of ``selection_samples * n_train`` examples (computed once).
        """
        if self._final is not None:
            return self._final
        if self.setup.train_data is None:
            raise RuntimeError("elbo tuner: the trainer gave no train_data for the selection pass")
        x, y = self.setup.train_data
        n = len(x)
        chunk = max(1024, int(self.setup.batch_size))
        with self.setup.meter.unit("hyper", examples=self.selection_samples * n):
            was_training = self.model.training
            self.model.eval()
            try:
                total = 0.0
                for _ in range(self.selection_samples):
                    w = self._sample()
                    for i in range(0, n, chunk):
                        xb, yb = x[i:i + chunk], y[i:i + chunk]
                        total += float(self.setup.loss_fn(functional_call(self.model, w, (xb,)), yb)) * len(xb)
                mean_nll = total / (self.selection_samples * n)
                terms = self.prior_terms()
            finally:
                self.model.train(was_training)
        kl = float(terms["kl"])
        objective = float(training_objective(mean_nll, kl, self.kappa, self.n_train))
        self._record(self._steps_done, terms, mean_nll, objective=objective)
        self._final = {"nll": mean_nll, "kl": kl, "objective": objective}
        return self._final

    def selection_score(self) -> float | None:
        """The final training objective (lower is better; no validation data)."""
        return self.final_objective()["objective"]

    def trajectory(self) -> list[dict[str, float]]:
        return [dict(row) for row in self._trajectory]

    # -- inspection ----------------------------------------------------------------------------------
    def flat_mean(self) -> torch.Tensor:
        """m as one vector in parameter-map order."""
        return torch.cat([self.params[s.name].detach().reshape(-1) for s in self.param_map])

    def flat_prior_mean(self) -> torch.Tensor:
        """The prior mean as one vector aligned with :meth:`flat_mean` (zeros for the head / L2-zero)."""
        parts: Sequence[torch.Tensor] = [
            self.mu[s.name].reshape(-1) if s.name in self.mu
            else torch.zeros(s.numel, dtype=self.params[s.name].dtype, device=self._device())
            for s in self.param_map]
        return torch.cat(list(parts))


