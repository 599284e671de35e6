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
  w = m + sigma * eps (one eps per minibatch) + KL / (kappa n_train), with kappa = D / n_train
  ("data-emphasized") or a number (1: plain ELBo).
* The task's recipe (``TrainSetup.make_optimizer``: SGD with Nesterov momentum, the schedule, the
  gradient-norm clipping; no weight decay) over [m, rho] (one parameter group), starting from the
  config's ``lr``.
* Selection: after training, the final training objective = mean NLL over the whole training set
  averaged over ``selection_samples`` posterior samples (eval mode) + KL / (kappa n_train); lower is
  better. Prediction (``eval_model``) is deterministic at the mean m (pitfall A.8-7).

The fused step (issue 11; the cost of a step does not grow with the number of parameter tensors):

* Flat buffers of D elements in parameter-map order, made once: eps, m (a copy), a scratch vector,
  the gradient (every trainable parameter's ``.grad`` is a view of it for the whole run, so autograd
  accumulates d NLL / d w there in place; the tuner zeroes it instead of ``zero_grad``), mu, and for
  the diag q one flat rho leaf (``self.rho`` maps names to views of it; ``rho_leaf`` is what the
  optimizer steps).
* Sample: eps is one draw of D normals from the trial's noise generator (the same stream as a
  per-tensor version), sigma * eps is one multiply, and w = m + sigma * eps is written into the
  parameters in place (``torch._foreach_copy_`` / ``_foreach_add_``); the model runs as it is (no
  ``functional_call``) and m is copied back, exactly, after the backward pass. d NLL / d m is the
  gradient at w; d NLL / d sigma = sum grad_w * eps (one ``dot``; diag: elementwise).
* KL: ||m_g - mu_g||^2 as float32 squares summed in float64 (pitfall A.8-4), one sum per maximal run
  of consecutive parameters of a group (usually one per group). These sums, the NLL, d NLL / d sigma
  and rho reach the host in one transfer, the step's only device synchronisation (trajectory rows
  included); lambda*, tau*, the KL and the coefficients of its gradient are float64 host
  arithmetic, evaluated as autograd would chain them. The gradient is then applied in closed form:
  d reg / d m = 2 c_g (m - mu) (c_g = d reg / d ||m_g - mu_g||^2) and rho's gradient through softplus.

Hyperparameters that live in the model or its likelihood (``contracts.ModelHyperparameter``, e.g.
a GP's lengthscales, output scale and noise; the GP extension of 2502.01861): the tuner declares
``learns_model_hyperparameters``, so the Trainer leaves them trainable; they are excluded from w (no
posterior, not counted in D), start at the config's values and are learned as point estimates in the
same optimizer group as [m, rho] (the papers' code "also updates prior/likelihood params if
learnable"), by the gradient of the same per-step loss. A ``prior`` hyperparameter (the weights'
prior variance) is tau, at its closed form. Their values are in every trajectory row (a vector:
its geometric mean under the name and each element as ``<name>_<i>``).

Closed form (``closed_form``, default ``auto``): when the model gives the exact expected NLL under
q (``contracts.ClosedFormGaussianModel``, a model linear in its weights with a Gaussian likelihood)
and q is iso, the per-step loss uses it instead of the one-sample estimate (no eps is drawn):
d NLL / d m, d NLL / d sigma and the hyperparameters' gradients come from one backward pass of
``model.expected_nll(x, y, sigma^2)``, and the selection score's NLL is the exact expectation over
the training set (one pass, ``n_train`` examples). ``closed_form=false`` keeps the Monte-Carlo
estimator (what the tests compare against the closed form); ``true`` refuses a model without it.

Charging: sampling and the forward/backward pass are the trainer's ``train`` unit; the KL, its
gradient, the NLL's gradient with respect to sigma (one dot product over D) and the trajectory row
are computed in each step inside a nested ``hyper`` unit (examples=0); the selection pass is one
``hyper`` unit of ``selection_samples * n_train`` examples. The parameter map is an explicit
name -> slice table over the trainable parameters whose backbone entries are checked against the
prior mean's names and shapes (pitfall A.8-2); the parameters must share one dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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
    samples of the final training objective; ``prior``: ``auto``, ``l2-sp`` or ``l2-zero``;
    ``closed_form``: ``"auto"`` (the exact expected NLL where the model gives it and q is iso),
    true (required) or false (always the one-sample estimate).
    """

    kappa: str | float = DATA_EMPHASIZED
    sigma_init: float = 1e-4
    per_parameter_sigma: bool = False
    selection_samples: int = 10
    prior: str = "auto"
    closed_form: str | bool = "auto"

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
        if self.closed_form != "auto" and not isinstance(self.closed_form, bool):
            raise UserError(f"closed_form: expected 'auto', true or false, got {self.closed_form!r}")
        if self.closed_form is True and self.per_parameter_sigma:
            raise UserError("closed_form: true needs the iso q (per_parameter_sigma: false)")

    def to_json(self) -> dict[str, Any]:
        out = {"kappa": self.kappa, "per_parameter_sigma": self.per_parameter_sigma, "prior": self.prior,
               "sigma_init": float(self.sigma_init), "selection_samples": self.selection_samples}
        if self.closed_form != "auto":  # written only when set (older ledgers have none)
            out["closed_form"] = self.closed_form
        return out


@dataclass(frozen=True)
class _Run:
    """A maximal run of consecutive parameters of one group in the flat vector: w[start:stop]."""

    group: str
    start: int
    stop: int


def _param_runs(table: Sequence[ParamSlice]) -> tuple[_Run, ...]:
    runs: list[_Run] = []
    for s in table:
        if runs and runs[-1].group == s.group:
            runs[-1] = _Run(s.group, runs[-1].start, s.stop)
        else:
            runs.append(_Run(s.group, s.start, s.stop))
    return tuple(runs)


# IEEE-style scalar helpers for the host-side (float64) KL arithmetic: Python raises where torch
# returns inf or nan, and a diverging run must reach the trainer's divergence check, not an exception.
def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a != a or a == 0.0 else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def _log1p(x: float) -> float:
    return math.log1p(x) if x > -1 else (-math.inf if x == -1 else math.nan)


def _softplus_derivative(rho: float) -> float:
    """d softplus / d rho as ``torch.nn.functional.softplus`` differentiates it (threshold 20)."""
    if rho > 20.0 or rho != rho:
        return 1.0 if rho > 20.0 else math.nan
    z = math.exp(rho)
    return z / (z + 1.0)


class ELBoTuner:
    """Mean-field Gaussian q over all trainable weights; lambda*, tau* in closed form every step.

    Options: those of :class:`ELBoOptions`. Config key read: ``lr``; every other key of the
    configuration is ignored (the ELBo learns the regularisation).

    The step is fused over the flat weight vector w (parameter-map order; see the module doc):
    the noise, the sample, the KL, lambda*/tau* and their gradients are a fixed handful of
    whole-vector operations whatever the number of parameter tensors, and a step synchronises
    with the device once.
    """

    score_name = "final training objective"
    learns_model_hyperparameters = True

    def __init__(self, **options: Any) -> None:
        opts = ELBoOptions(**options)
        self.closed_form_option = opts.closed_form
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
        named = dict(model.named_parameters())
        declared = [h for h in info.model_hyperparameters if h.parameter is not None]
        # the model's hyperparameters: point estimates, not weights (no posterior, not in D)
        self.hyper = [(h, named[h.parameter]) for h in declared if h.parameter in named
                      and named[h.parameter].requires_grad]
        hyper_names = {h.parameter for h in declared}
        self.params: dict[str, nn.Parameter] = {n: p for n, p in model.named_parameters()
                                                if p.requires_grad and n not in hyper_names}
        self.closed_form = (self.closed_form_option is not False and not self.per_parameter_sigma
                            and callable(getattr(model, "expected_nll", None)))
        if self.closed_form_option is True and not self.closed_form:
            raise UserError("elbo tuner: closed_form: true, but the model has no expected_nll")
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
        self._dims = {"backbone": self.n_backbone, "head": self.n_head}
        self._runs = _param_runs(self.param_map)
        self.prior_name = "l2-zero" if (self.prior == "l2-zero" or not prior_mean) else "l2-sp"
        self.n_train = int(setup.n_train)
        self.kappa = self.n_params / self.n_train if self.kappa_option == DATA_EMPHASIZED else float(self.kappa_option)

        first = next(iter(self.params.values()))
        kinds = {(p.dtype, p.device) for p in self.params.values()}
        if len(kinds) > 1:
            raise ValueError(f"elbo tuner: the trainable parameters must share one dtype and device, found "
                             f"{sorted(str(k) for k in kinds)}")
        dtype, device = first.dtype, first.device
        n = self.n_params
        # The flat buffers (parameter-map order). p.grad of every parameter is a view of _grad for the
        # whole run: autograd accumulates into it in place, and the KL gradient is added flat.
        self._plist = [self.params[s.name] for s in self.param_map]
        self._eps = torch.empty(n, dtype=dtype, device=device)      # eps ~ N(0, I), one draw per step
        self._work = torch.empty(n, dtype=dtype, device=device)     # sigma * eps, then scratch
        self._m = torch.empty(n, dtype=dtype, device=device)        # a copy of m, then m - mu
        self._grad = torch.zeros(n, dtype=dtype, device=device)
        self._work_views = self._views(self._work)
        self._m_views = self._views(self._m)
        with torch.no_grad():
            for p, g in zip(self._plist, self._views(self._grad)):
                p.grad = g
        self._mu: torch.Tensor | None = None
        if self.prior_name == "l2-sp":
            self._mu = torch.zeros(n, dtype=dtype, device=device)
            with torch.no_grad():
                for s in self.param_map:
                    if s.group == "backbone":
                        self._mu[s.start:s.stop].copy_(prior_mean[s.name].detach().reshape(-1))
        # per run: (run, its slices of _m, _work, _grad, and of mu where the run is centred at mu)
        self._run_views = [(r, self._m[r.start:r.stop], self._work[r.start:r.stop], self._grad[r.start:r.stop],
                            self._mu[r.start:r.stop] if r.group == "backbone" and self._mu is not None else None)
                           for r in self._runs]

        rho0 = softplus_inverse(self.sigma_init)
        if self.per_parameter_sigma:
            self._rho_flat = torch.full((n,), rho0, dtype=dtype, device=device, requires_grad=True)
            self._rho_flat.grad = torch.zeros_like(self._rho_flat)
            # name -> rho of that parameter: views of the one flat leaf the optimizer steps
            self.rho: dict[str, torch.Tensor] | torch.Tensor = dict(zip(
                [s.name for s in self.param_map], self._views(self._rho_flat.detach())))
            self.rho_leaf = self._rho_flat
            # made once: building it inside a step would be a host-to-device copy (a synchronisation)
            self._quantile_levels = torch.tensor(SIGMA_QUANTILES, dtype=torch.float64, device=device)
        else:
            self.rho = torch.tensor(rho0, dtype=dtype, device=device, requires_grad=True)
            self.rho.grad = torch.zeros_like(self.rho)
            self.rho_leaf = self.rho
        # one parameter group [m, rho] (same rate, momentum and clipping as two groups would have; a
        # second group only costs the optimizer's per-group overhead)
        self.optimizer = setup.make_optimizer([{"params": [*self.params.values(), self.rho_leaf,
                                                           *(p for _, p in self.hyper)], "lr": self.lr}])
        self.total_steps = int(setup.total_steps)
        self.record_every = max(1, self.total_steps // TRAJECTORY_POINTS)
        if device.type == "cpu" and isinstance(setup.generator, torch.Generator):
            self.noise = setup.generator
        else:  # a generator on the device, seeded from the trial's noise generator
            seed = int(torch.randint(0, 2**62, (1,), generator=setup.generator))
            self.noise = torch.Generator(device=device).manual_seed(seed)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` cut into one view per parameter, shaped like it (set-up time only)."""
        return [flat[s.start:s.stop].view(s.shape) for s in self.param_map]

    # -- pieces -----------------------------------------------------------------------------------
    def _sigma(self) -> torch.Tensor:
        """sigma = softplus(rho): a scalar (iso) or the flat per-weight vector (diag); no graph."""
        rho = self._rho_flat if isinstance(self.rho, dict) else self.rho
        return nn.functional.softplus(rho.detach())

    def _perturb(self) -> torch.Tensor:
        """Set the model's parameters to w = m + sigma * eps, one fresh eps drawn as one flat vector
        of D normals from ``self.noise`` (m is kept in ``_m``); returns sigma. :meth:`_restore` undoes it."""
        with torch.no_grad():
            sigma = self._sigma()
            torch.randn(self.n_params, generator=self.noise, out=self._eps)
            torch.mul(self._eps, sigma, out=self._work)
            torch._foreach_copy_(self._m_views, self._plist)
            torch._foreach_add_(self._plist, self._work_views)
        return sigma

    def _restore(self) -> None:
        """The parameters hold m again, exactly (copied back from ``_m``, not w - sigma * eps)."""
        with torch.no_grad():
            torch._foreach_copy_(self._plist, self._m_views)

    @contextmanager
    def _perturbed(self) -> Iterator[torch.Tensor]:
        """:meth:`_perturb` inside, :meth:`_restore` on the way out (also on an error)."""
        sigma = self._perturb()
        try:
            yield sigma
        finally:
            self._restore()

    def _prior(self, sigma: torch.Tensor, extra: Sequence[torch.Tensor] = (), quantiles: bool = False,
               ) -> tuple[list[float], dict[str, Any]]:
        """The KL pieces at m (``_m`` must hold m; it is left holding m - mu) and sigma.

        Squared norms: squares in the parameters' dtype, summed in float64 (pitfall A.8-4), one sum
        per run of the flat vector (likewise sum sigma_d^2 and sum log sigma_d^2 for the diag q).
        ``extra`` (0-dim tensors), the sums and, with ``quantiles``, the diag q's sigma quantiles
        come to the host in **one** transfer; lambda*, tau*, the KL and the coefficients of its
        gradient are then float64 host arithmetic (:meth:`_host_terms`). Returns (the ``extra``
        values, the host terms; for the diag q they also hold sigma in float64 as ``"sigma64"``).
        """
        f64 = torch.float64
        sums: list[torch.Tensor] = []
        for _, m, work, _, mu in self._run_views:
            if mu is not None:
                m.sub_(mu)
            sums.append(torch.mul(m, m, out=work).sum(dtype=f64))
        vectors: list[torch.Tensor] = []
        sigma64 = None
        if isinstance(self.rho, dict):
            sigma64 = sigma.to(f64)
            var = sigma64 * sigma64
            log_var = var.log()
            sums += [var[r.start:r.stop].sum() for r in self._runs]
            sums += [log_var[r.start:r.stop].sum() for r in self._runs]
            if quantiles:
                sub = sigma64[:: max(1, self.n_params // _QUANTILE_MAX)]
                vectors.append(torch.quantile(sub, self._quantile_levels))
        else:
            extra = [*extra, sigma]
        flat = torch.stack([*extra, *sums])  # float64 (type promotion: exact for the float32 values)
        values = (torch.cat([flat, *vectors]) if vectors else flat).tolist()  # the one device synchronisation
        k, r = len(extra), len(self._runs)
        host = values[k:]
        if sigma64 is None:
            terms = self._host_terms(host[:r], None, None, values[k - 1], [])
            return values[:k - 1], terms
        terms = self._host_terms(host[:r], host[r:2 * r], host[2 * r:3 * r], None, host[3 * r:])
        terms["sigma64"] = sigma64
        return values[:k], terms

    def _host_terms(self, sq_runs: Sequence[float], var_runs: Sequence[float] | None,
                    log_var_runs: Sequence[float] | None, sigma: float | None,
                    quantiles: Sequence[float]) -> dict[str, float]:
        """lambda*, tau*, the concentrated KL (METHODS.md A.2) and the gradient coefficients of
        reg = KL / (kappa n), in float64 on the host, each evaluated as autograd would chain it.

        ``grad_sq_<group>`` = d reg / d ||m_g - mu_g||^2; iso: ``grad_sigma`` = d reg / d sigma;
        diag: ``grad_var_<group>`` = d reg / d sum_d sigma_d^2, ``grad_log_var`` = d reg / d sum_d log sigma_d^2.
        """
        diag = sigma is None
        sq = dict.fromkeys(self._dims, 0.0)
        var_sum = dict.fromkeys(self._dims, 0.0)
        log_var_sum = dict.fromkeys(self._dims, 0.0)
        for i, run in enumerate(self._runs):
            sq[run.group] += sq_runs[i]
            if var_runs is not None and log_var_runs is not None:
                var_sum[run.group] += var_runs[i]
                log_var_sum[run.group] += log_var_runs[i]
        inv_kn = 1.0 / (self.kappa * self.n_train)  # d reg / d KL
        out: dict[str, float] = {}
        kl = 0.0
        grad_s2 = 0.0  # iso: d reg / d sigma^2
        for group, key in (("backbone", "lambda"), ("head", "tau")):
            dim = self._dims[group]
            if dim == 0:
                continue
            s = sq[group]
            if diag:
                v = _div(s + var_sum[group], dim)
                kl_g = 0.5 * (dim * _log(v) - log_var_sum[group])
                grad_sq = _div(_div(inv_kn * 0.5 * dim, v), dim)  # also d reg / d sum_var
                out[f"grad_var_{group}"] = grad_sq
            else:
                sigma2 = sigma * sigma  # type: ignore[operator]
                den = dim * sigma2
                u = _div(s, den)
                v = _div(s + dim * sigma2, dim)
                kl_g = 0.5 * dim * _log1p(u)
                g = _div(inv_kn * (0.5 * dim), u + 1.0)
                grad_sq = _div(g, den)
                grad_s2 += -g * _div(u, den) * dim
            out[key] = v
            out[f"kl_{group}"] = kl_g
            out[f"sq_{group}"] = s
            out[f"grad_sq_{group}"] = grad_sq
            kl += kl_g
        out["kl"] = kl
        out["reg"] = kl / (self.kappa * self.n_train)
        if diag:
            out["grad_log_var"] = -(inv_kn * 0.5)
            out["sigma"] = math.sqrt(max(0.0, sum(var_sum.values())) / self.n_params)
            for q, value in zip(SIGMA_QUANTILES, quantiles):
                out[f"sigma_q{round(q * 100):02d}"] = value
        else:
            out["sigma"] = sigma  # type: ignore[assignment]
            out["grad_sigma"] = grad_s2 * (2.0 * sigma)  # type: ignore[operator]
        return out

    def _add_prior_gradient(self, terms: Mapping[str, Any], rho: float | None = None,
                            grad_sigma_nll: float | None = None) -> None:
        """Turn ``_grad`` (holding d NLL / d w) into d (NLL + reg) / d m and set rho's gradient.

        NLL part of rho: d NLL / d sigma = sum grad_w * eps (iso: ``grad_sigma_nll``, computed by the
        caller), through softplus. Reg part: 2 c_g (m - mu) per group (``_m`` holds m - mu), and
        through sigma as :meth:`_host_terms` gives it.
        """
        grad = self._grad
        if isinstance(self.rho, dict):
            # diag, while grad is d NLL / d w: d reg / d sigma_d = 2 sigma_d (c_V,g + c_L / sigma_d^2)
            # (float64, then the parameters' dtype), plus grad_w * eps, through softplus
            s64 = terms["sigma64"]
            g = torch.reciprocal(s64).mul_(2.0 * terms["grad_log_var"])
            for r in self._runs:
                g[r.start:r.stop].add_(s64[r.start:r.stop], alpha=2.0 * terms[f"grad_var_{r.group}"])
            g_sigma = g.to(grad.dtype).addcmul_(grad, self._eps)
            self._rho_flat.grad = torch.ops.aten.softplus_backward(g_sigma, self._rho_flat.detach(), 1.0, 20.0)
        else:
            assert rho is not None and grad_sigma_nll is not None
            self.rho.grad.fill_(  # type: ignore[union-attr]
                (grad_sigma_nll + terms["grad_sigma"]) * _softplus_derivative(rho))
        for run, m, work, g_run, _ in self._run_views:
            torch.mul(m, terms[f"grad_sq_{run.group}"], out=work)
            g_run.add_(work, alpha=2.0)

    def prior_terms(self) -> dict[str, Any]:
        """KL pieces at the current (m, sigma): per group sq_dist, optimal variance, concentrated KL.

        Returns float64 0-dim tensors (values; the step applies the KL's gradient in closed form):
        ``kl`` (total), ``lambda`` (if D_b > 0), ``tau`` (if D_h > 0), ``kl_backbone``, ``kl_head``,
        ``sq_backbone``, ``sq_head``.
        """
        with torch.no_grad():
            torch._foreach_copy_(self._m_views, self._plist)
            _, terms = self._prior(self._sigma())
        keys = [k for k in terms if k in ("kl", "lambda", "tau") or k.startswith(("kl_", "sq_"))]
        return {k: torch.tensor(terms[k], dtype=torch.float64, device=self._device()) for k in keys}

    def _device(self) -> torch.device:
        return self._grad.device

    def sigma_summary(self) -> dict[str, float]:
        """sigma (iso), or for the diag q the RMS sigma and quantiles of the per-weight sigmas."""
        with torch.no_grad():
            if not isinstance(self.rho, dict):
                return {"sigma": float(nn.functional.softplus(self.rho))}
            flat = nn.functional.softplus(self._rho_flat).to(torch.float64)
            summary = {"sigma": float(flat.square().mean().sqrt())}
            sub = flat[:: max(1, flat.numel() // _QUANTILE_MAX)]
            qs = torch.quantile(sub, torch.tensor(SIGMA_QUANTILES, dtype=torch.float64, device=sub.device))
            for q, v in zip(SIGMA_QUANTILES, qs.tolist()):
                summary[f"sigma_q{round(q * 100):02d}"] = float(v)
            return summary

    def _row(self, step: int, terms: Mapping[str, float], nll: float, **extra: float) -> None:
        row: dict[str, float] = {"step": step}
        for key in ("lambda", "tau"):
            if key in terms:
                row[key] = terms[key]
        row.update({k: v for k, v in terms.items() if k == "sigma" or k.startswith("sigma_q")})
        row["kl"] = terms["kl"]
        row["nll"] = float(nll)
        row.update(self.hyperparameter_values())
        row.update(extra)
        self._trajectory.append(row)

    # -- the contract -------------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int,
             val_batch: Callable[[], tuple[torch.Tensor, ...]] | None) -> StepStats:
        x, y = batch
        record = step % self.record_every == 0 or step == self.total_steps - 1
        self._grad.zero_()  # the parameters' .grad are views of it (the optimizer's zero_grad would unbind them)
        for _, p in self.hyper:
            p.grad = None
        grad_sigma_nll: torch.Tensor | None = None
        if self.closed_form:  # the exact E_q[NLL] at m: no sample; d/d sigma by autograd
            sigma = self._sigma()
            s = sigma.clone().requires_grad_(True)
            nll = self.model.expected_nll(x, y, s * s)
            nll.backward()
            grad_sigma_nll = s.grad.reshape(())  # type: ignore[union-attr]
        else:
            sigma = self._perturb()  # the forward and backward run at w = m + sigma * eps
            try:
                nll = self.setup.loss_fn(model(x), y)
                nll.backward()  # grad = d NLL / d w = d NLL / d m
            finally:
                self._restore()
        with self.setup.meter.unit("hyper", examples=0), torch.no_grad():
            if grad_sigma_nll is not None:
                torch._foreach_copy_(self._m_views, self._plist)  # _prior reads m from _m
                (nll_value, grad_s, rho), terms = self._prior(sigma, [nll.detach(), grad_sigma_nll, self.rho])
                self._add_prior_gradient(terms, rho, grad_s)
            elif isinstance(self.rho, dict):
                (nll_value,), terms = self._prior(sigma, [nll], quantiles=record)
                self._add_prior_gradient(terms)
            else:
                extra = [nll, torch.dot(self._grad, self._eps), self.rho]
                (nll_value, grad_sigma_nll, rho), terms = self._prior(sigma, extra)
                self._add_prior_gradient(terms, rho, grad_sigma_nll)
            if record:
                self._row(step, terms, nll_value)
        self.optimizer.step(step)
        self._steps_done = step + 1
        objective = nll_value + terms["reg"]  # the minibatch training objective NLL + KL / (kappa n)
        return StepStats(loss=nll_value if math.isfinite(objective) else objective, examples=len(x),
                         objective=objective)

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model itself: its parameters are the mean m (deterministic prediction)."""
        return model

    @torch.no_grad()
    def final_objective(self) -> dict[str, float]:
        """Mean NLL over the training set averaged over posterior samples, KL, and the objective.

        One ``hyper`` unit of ``selection_samples * n_train`` examples (``n_train`` with the closed
        form: the exact expectation in one pass), computed once.
        """
        if self._final is not None:
            return self._final
        if self.setup.train_data is None:
            raise RuntimeError("elbo tuner: the trainer gave no train_data for the selection pass")
        x, y = self.setup.train_data
        n = len(x)
        chunk = max(1024, int(self.setup.batch_size))
        passes = 1 if self.closed_form else self.selection_samples
        with self.setup.meter.unit("hyper", examples=passes * n):
            was_training = self.model.training
            self.model.eval()
            try:
                total = 0.0
                if self.closed_form:  # the exact expectation over q, one pass
                    var = self._sigma().square()
                    for i in range(0, n, chunk):
                        xb, yb = x[i:i + chunk], y[i:i + chunk]
                        total += float(self.model.expected_nll(xb, yb, var)) * len(xb)
                else:
                    for _ in range(self.selection_samples):
                        with self._perturbed():
                            for i in range(0, n, chunk):
                                xb, yb = x[i:i + chunk], y[i:i + chunk]
                                total += float(self.setup.loss_fn(self.model(xb), yb)) * len(xb)
                mean_nll = total / (passes * n)
                torch._foreach_copy_(self._m_views, self._plist)
                _, terms = self._prior(self._sigma(), quantiles=True)
            finally:
                self.model.train(was_training)
        kl = terms["kl"]
        objective = float(training_objective(mean_nll, kl, self.kappa, self.n_train))
        self._row(self._steps_done, terms, mean_nll, objective=objective)
        self._final = {"nll": mean_nll, "kl": kl, "objective": objective}
        return self._final

    def selection_score(self) -> float | None:
        """The final training objective (lower is better; no validation data)."""
        return self.final_objective()["objective"]

    def trajectory(self) -> list[dict[str, float]]:
        return [dict(row) for row in self._trajectory]

    @torch.no_grad()
    def hyperparameter_values(self) -> dict[str, float]:
        """The learned model/likelihood hyperparameters now: a scalar under its name; a vector's
        geometric mean under its name and each element as ``<name>_<i>``. {} when there are none."""
        out: dict[str, float] = {}
        for h, p in self.hyper:
            values = h.value(p.detach()).double().reshape(-1)
            out[h.name] = float(values.log().mean().exp()) if values.numel() > 1 else float(values[0])
            if values.numel() > 1:
                out.update({f"{h.name}_{i}": float(v) for i, v in enumerate(values.tolist())})
        return out

    # -- inspection ----------------------------------------------------------------------------------
    def flat_mean(self) -> torch.Tensor:
        """m as one vector in parameter-map order (a copy)."""
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self._plist])

    def flat_prior_mean(self) -> torch.Tensor:
        """The prior mean as one vector aligned with :meth:`flat_mean` (zeros for the head / L2-zero)."""
        if self._mu is None:
            return torch.zeros(self.n_params, dtype=self._grad.dtype, device=self._device())
        return self._mu.clone()
