"""Acquisition functions of the cost-aware BO family (METHODS.md C.3), in log space.

    EI(x)      = s(x) [phi(z) + z Phi(z)],  z = (m(x) - y+) / s(x)    (standardised y, s^2 >= 1e-9)
    I_delta(x) = (1/M) sum_r 1 / ( delta * eps + sum_{k > delta} exp(g_k^(r)(x)) )
    EEIPU(x)   = EI(x) * I_delta(x) ** eta,   eta = (B - spent) / (B - B_0) clipped to [0, 1]

``g_k^(r)`` is the r-th quasi-Monte-Carlo sample of stage k's log cost: the posterior mean plus the
posterior standard deviation times the r-th point of a scrambled Sobol sequence mapped through the
inverse normal CDF, one Sobol dimension per stage (samples independent across stages). ``delta``
is the number of leading stages read from the cache and ``eps`` the read price of one stage.

Everything is computed as a logarithm (log EI + eta log I), which orders candidates exactly as the
product does and keeps gradients alive where EI underflows. EI is EEIPU at eta = 0; CArBO is EEIPU
with one total-cost model and delta = 0; EIPS is CArBO with eta = 1 always.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hpobench_elbo.methods.bo.surrogates import DTYPE, LogCostModel, ObjectiveModel

VAR_FLOOR = 1e-9
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def cooling(budget: float, spent: float, warmup_spent: float) -> float:
    """Cost cooling eta = (B - spent) / (B - B_0), clipped to [0, 1]; 0 when the warm-up ate the budget."""
    if not budget > warmup_spent:
        return 0.0
    return float(np.clip((budget - spent) / (budget - warmup_spent), 0.0, 1.0))


def normal_qmc(n: int, dim: int, seed: int) -> torch.Tensor:
    """``n`` x ``dim`` standard-normal quasi-random points (scrambled Sobol + inverse CDF), seeded."""
    engine = torch.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=int(seed))
    u = engine.draw(n, dtype=DTYPE).clamp(1e-10, 1.0 - 1e-10)
    return math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)


def sobol_unit(n: int, dim: int, seed: int) -> torch.Tensor:
    """``n`` x ``dim`` scrambled Sobol points in [0, 1)^dim, seeded."""
    return torch.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=int(seed)).draw(n, dtype=DTYPE)


def log_h(z: torch.Tensor) -> torch.Tensor:
    """log(phi(z) + z Phi(z)), accurate for very negative z (where the sum cancels)."""
    hi = z.clamp_min(-1.0)
    direct = torch.log(torch.exp(-0.5 * hi * hi - _LOG_SQRT_2PI) + hi * torch.special.ndtr(hi))
    t = (-z).clamp_min(1.0)  # z <= -1: phi(z) (1 - t R(t)), R the Mills ratio = sqrt(pi/2) erfcx(t/sqrt2)
    mills_t = t * math.sqrt(math.pi / 2.0) * torch.special.erfcx(t / math.sqrt(2.0))
    t_big = t.clamp_min(100.0)  # 1 - t R(t) = 1/t^2 - 3/t^4 + 15/t^6 - ... (no cancellation)
    asym = -2.0 * torch.log(t_big) + torch.log1p(-3.0 / t_big ** 2 + 15.0 / t_big ** 4)
    tail_factor = torch.where(t < 100.0, torch.log1p(-mills_t.clamp_max(1.0 - 1e-16)), asym)
    tail = -0.5 * t * t - _LOG_SQRT_2PI + tail_factor
    return torch.where(z > -1.0, direct, tail)


def log_ei(mean: torch.Tensor, var: torch.Tensor, best: float) -> torch.Tensor:
    """log EI of a maximisation problem, the posterior variance clamped at 1e-9."""
    s = var.clamp_min(VAR_FLOOR).sqrt()
    return torch.log(s) + log_h((mean - best) / s)


def log_expected_inverse_cost(mean_log: torch.Tensor, std_log: torch.Tensor, z: torch.Tensor,
                              delta: torch.Tensor, eps: float) -> torch.Tensor:
    """log I_delta: QMC estimate of E[1 / (delta eps + sum_{k >= delta} C_k)], log C_k ~ N(mean, std^2).

    ``mean_log``, ``std_log``: (n, K) per candidate and stage; ``z``: (M, K) base samples;
    ``delta``: (n,) cached leading stages per candidate (0 <= delta < K); ``eps``: read price.
    """
    n, k = mean_log.shape
    samples = mean_log.unsqueeze(0) + std_log.unsqueeze(0) * z.unsqueeze(1)  # (M, n, K)
    active = torch.arange(k, device=mean_log.device).unsqueeze(0) >= delta.unsqueeze(1)  # (n, K)
    terms = samples.masked_fill(~active.unsqueeze(0), -math.inf)
    if eps > 0:
        reads = torch.where(delta > 0, torch.log(delta.to(DTYPE).clamp_min(1.0) * eps),
                            torch.full((n,), -math.inf, dtype=DTYPE))
        terms = torch.cat([terms, reads.reshape(1, n, 1).expand(z.shape[0], n, 1)], dim=-1)
    log_denominator = torch.logsumexp(terms, dim=-1)  # (M, n)
    return torch.logsumexp(-log_denominator, dim=0) - math.log(z.shape[0])


def log_eeipu(log_ei_values: torch.Tensor, log_inverse_cost: torch.Tensor, eta: float) -> torch.Tensor:
    """log EEIPU = log EI + eta log I (exactly log EI at eta = 0)."""
    return log_ei_values if eta == 0.0 else log_ei_values + eta * log_inverse_cost


class CostAwareAcquisition:
    """log EEIPU of a fitted objective model and cost models, as a function of (x, delta).

    ``costs`` holds one model per stage (EEIPU) or one total-cost model (CArBO, EIPS); with no cost
    models, or ``eta`` = 0, the value is log EI.
    """

    def __init__(self, objective: ObjectiveModel, costs: list[LogCostModel], eta: float, eps: float,
                 z: torch.Tensor) -> None:
        self.objective = objective
        self.costs = costs
        self.eta = float(eta)
        self.eps = float(eps)
        self.z = z

    def __call__(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        mean, var = self.objective.predict(x)
        value = log_ei(mean, var, self.objective.best)
        if self.eta == 0.0 or not self.costs:
            return value
        moments = [c.predict_log(x) for c in self.costs]
        mean_log = torch.stack([m for m, _ in moments], dim=-1)
        std_log = torch.stack([s for _, s in moments], dim=-1)
        inverse = log_expected_inverse_cost(mean_log, std_log, self.z[:, :len(self.costs)], delta, self.eps)
        return log_eeipu(value, inverse, self.eta)
