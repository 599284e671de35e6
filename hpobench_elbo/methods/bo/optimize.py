"""Maximising an acquisition over several boxes at once (METHODS.md C.4, batched across prefixes).

Each box is [lower, upper] in the GP's input space; a prefix pins coordinates by setting
lower = upper there. For every box: ``raw_samples`` scrambled-Sobol points (the same seeded
sequence mapped into each box), the best ``num_restarts`` of them by acquisition value as starting
points, then one L-BFGS-B run over all starting points of all boxes together (the summed
acquisition, whose gradient separates per point; as BoTorch's multi-start ``gen_candidates_scipy``
does for a batch). The best point per box is returned, a starting point if the descent ever made
it worse.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize

from hpobench_elbo.methods.bo.acquisition import sobol_unit
from hpobench_elbo.methods.bo.surrogates import DTYPE

Acquisition = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (n, d), delta (n,)) -> acquisition values (n,)."""


def evaluate(fn: Acquisition, x: torch.Tensor, delta: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Acquisition values without gradients, in chunks, non-finite values as -inf."""
    with torch.no_grad():
        values = torch.cat([fn(x[i:i + chunk], delta[i:i + chunk]) for i in range(0, len(x), chunk)])
    return torch.nan_to_num(values, nan=-torch.inf, posinf=-torch.inf)


def maximize_boxes(fn: Acquisition, lower: torch.Tensor, upper: torch.Tensor, delta: torch.Tensor,
                   raw_samples: int, num_restarts: int, maxiter: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best point and value per box. ``lower``, ``upper``: (P, d); ``delta``: (P,) passed to ``fn``."""
    n_boxes, dim = lower.shape
    width = upper - lower
    base = sobol_unit(raw_samples, dim, seed)  # (R, d)
    raw = lower.unsqueeze(1) + width.unsqueeze(1) * base.unsqueeze(0)  # (P, R, d)
    raw_values = evaluate(fn, raw.reshape(-1, dim), delta.repeat_interleave(raw_samples)).reshape(n_boxes, -1)
    r = min(num_restarts, raw_samples)
    top = raw_values.topk(r, dim=1).indices  # (P, r)
    starts = torch.gather(raw, 1, top.unsqueeze(-1).expand(n_boxes, r, dim))
    start_values = torch.gather(raw_values, 1, top)
    points, values = starts, start_values
    if maxiter > 0:
        points, values = _lbfgsb(fn, starts, delta.repeat_interleave(r), lower, upper, maxiter)
        worse = ~(values >= start_values)
        points = torch.where(worse.unsqueeze(-1), starts, points)
        values = torch.where(worse, start_values, values)
    best = values.argmax(dim=1)
    rows = torch.arange(n_boxes)
    return points[rows, best], values[rows, best]


def _lbfgsb(fn: Acquisition, starts: torch.Tensor, delta: torch.Tensor, lower: torch.Tensor,
            upper: torch.Tensor, maxiter: int) -> tuple[torch.Tensor, torch.Tensor]:
    n_boxes, r, dim = starts.shape
    lo = lower.unsqueeze(1).expand(n_boxes, r, dim).reshape(-1).numpy()
    hi = upper.unsqueeze(1).expand(n_boxes, r, dim).reshape(-1).numpy()

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(np.clip(flat, lo, hi), dtype=DTYPE).reshape(n_boxes * r, dim).requires_grad_(True)
        values = fn(x, delta)
        finite = torch.isfinite(values)
        loss = -torch.where(finite, values, torch.zeros_like(values)).sum()
        loss.backward()
        grad = torch.nan_to_num(x.grad, nan=0.0, posinf=0.0, neginf=0.0)
        return float(loss.detach()), grad.reshape(-1).numpy().astype(np.float64)

    result = minimize(loss_and_grad, starts.reshape(-1).numpy(), jac=True, method="L-BFGS-B",
                      bounds=list(zip(lo, hi)), options={"maxiter": maxiter})
    x = torch.tensor(np.clip(result.x, lo, hi), dtype=DTYPE).reshape(n_boxes * r, dim)
    values = evaluate(fn, x, delta)
    return x.reshape(n_boxes, r, dim), values.reshape(n_boxes, r)
