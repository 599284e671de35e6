"""The mathematics of the one-pass hypergradient family (METHODS.md B.1), free of any training loop.

* :class:`Hyperparameters` holds the weight-update hyperparameters: the learned ones as leaf
  tensors phi in transformed space (eta = 10^phi, decay = 10^phi, mu = sigmoid(phi)), the fixed ones
  as plain numbers. ``natural_from(leaves)`` is the one transform, so autograd carries the chain
  rule from the natural values to phi.
* :func:`sgd_update` is u(lambda, w) of PyTorch's SGD with dampening 0 and no Nesterov:
  d = grad L_T(w) + decay term, b_new = mu b_old + d, u = eta * b_new (b_old a constant: the
  momentum history is detached). Decay terms: ``weight_decay`` gamma adds gamma w to the gradient;
  the L2-SP strengths add the gradient of alpha ||w_b - w_pretrained||^2 (backbone = names of the
  prior mean) and beta ||w_head||^2. With the task's recipe (the ``-recipe`` variants) the same
  map takes three recipe items, each a differentiable change of u: the loss gradient g is clipped
  to total norm c first, g <- g min(1, c / (||g|| + 1e-6)) (before the decay terms, where PyTorch's
  SGD adds weight decay after ``clip_grad_norm_``); the step is Nesterov's, u = s eta (d + mu b_new);
  and s, the schedule's factor at this step (cosine: (1 + cos(pi t / T)) / 2), multiplies eta.
* :func:`neumann_hypergradient` is Algorithm 1: -v^T sum_{j<i} (I - du/dw)^j du/dphi, by
  vector-Jacobian products only (``torch.autograd.grad`` with ``grad_outputs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

DECAY_KEYS = ("weight_decay", "alpha", "beta")
"""Decay hyperparameters this family understands (a task's space names which it has)."""
GROUPS = ("decay", "lr", "momentum")
"""What a tuner may learn: the decay strengths, the learning rate(s), the momentum."""
LOG10_LR_MIN, LOG10_LR_MAX = -10.0, 0.0
"""phi_eta is clamped to [-10, 0] after every hyper-step: eta in [1e-10, 1] (B.1)."""
LOG10_DECAY_FLOOR = -12.0
"""A learned decay strength that starts at exactly 0 starts at 1e-12 (0 has no log)."""
MOMENTUM_EPS = 1e-6
"""A learned momentum starts inside [1e-6, 1 - 1e-6] (0 and 1 have no logit)."""
QUANTILES = (0.05, 0.5, 0.95)
_QUANTILE_MAX = 1_000_000

Tensors = dict[str, torch.Tensor]


def group_of(key: str) -> str:
    return "decay" if key in DECAY_KEYS else key


def to_transformed(key: str, value: float) -> float:
    """phi for a natural value: log10 for learning rates and decays, logit for the momentum."""
    if key == "momentum":
        mu = min(max(value, MOMENTUM_EPS), 1.0 - MOMENTUM_EPS)
        return math.log(mu / (1.0 - mu))
    if key == "lr":
        return min(max(math.log10(value), LOG10_LR_MIN), LOG10_LR_MAX) if value > 0 else LOG10_LR_MIN
    return math.log10(value) if value > 0 else LOG10_DECAY_FLOOR


def to_natural(key: str, phi: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(phi) if key == "momentum" else torch.pow(10.0, phi)


class Hyperparameters:
    """The hyperparameters lambda of the update: learned ones as phi leaves, the rest fixed.

    ``values``: natural initial values keyed ``lr``, ``momentum`` and any of :data:`DECAY_KEYS`.
    ``learn``: which groups (:data:`GROUPS`) are learned. ``lr_shapes``: when given and the
    learning rate is learned, one learning rate per weight element (a leaf per parameter, named
    ``lr:<parameter name>``), all starting at the scalar initial value.
    """

    def __init__(self, values: Mapping[str, float], learn: Collection[str],
                 lr_shapes: Mapping[str, torch.Size] | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.fixed: dict[str, float] = {}
        self.names: list[str] = []
        self._leaves: list[torch.Tensor] = []
        for key, value in values.items():
            if group_of(key) not in learn:
                self.fixed[key] = float(value)
                continue
            phi = to_transformed(key, float(value))
            if key == "lr" and lr_shapes is not None:
                for pname, shape in lr_shapes.items():
                    self.names.append(f"lr:{pname}")
                    self._leaves.append(torch.full(shape, phi, dtype=dtype, device=device, requires_grad=True))
            else:
                self.names.append(key)
                self._leaves.append(torch.tensor(phi, dtype=torch.float64, device=device, requires_grad=True))

    def leaves(self) -> list[torch.Tensor]:
        """The learned phi tensors (in ``names`` order); empty when nothing is learned."""
        return list(self._leaves)

    def natural_from(self, leaves: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Natural values for these phi leaves: ``lr`` is a number, a tensor, or {parameter: tensor}."""
        out: dict[str, Any] = dict(self.fixed)
        for name, leaf in zip(self.names, leaves):
            key, _, pname = name.partition(":")
            if pname:
                out.setdefault("lr", {})[pname] = to_natural(key, leaf)
            else:
                out[key] = to_natural(key, leaf)
        return out

    def natural(self) -> dict[str, Any]:
        return self.natural_from(self._leaves)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clip every learning rate to [1e-10, 1] (in phi: [-10, 0])."""
        for name, leaf in zip(self.names, self._leaves):
            if name.partition(":")[0] == "lr":
                leaf.clamp_(LOG10_LR_MIN, LOG10_LR_MAX)

    @torch.no_grad()
    def summary(self) -> dict[str, float]:
        """Current natural values as floats; per-element learning rates as lr_q05/lr_q50/lr_q95, lr_mean."""
        row: dict[str, float] = {}
        for key, value in self.natural().items():
            if isinstance(value, dict):
                flat = torch.cat([v.reshape(-1).to(torch.float64) for v in value.values()])
                sub = flat[:: max(1, flat.numel() // _QUANTILE_MAX)]
                qs = torch.quantile(sub, torch.tensor(QUANTILES, dtype=torch.float64, device=sub.device))
                row.update({f"lr_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs.tolist())})
                row["lr_mean"] = float(flat.mean())
            else:
                row[key] = float(value)
        return row


def loss_and_gradient(model: nn.Module, loss_fn: Callable[..., torch.Tensor], weights: Mapping[str, torch.Tensor],
                      batch: Sequence[torch.Tensor], create_graph: bool) -> tuple[torch.Tensor, Tensors]:
    """Mean minibatch loss of ``model`` run with ``weights`` and its gradient w.r.t. them."""
    x, y = batch[0], batch[1]
    loss = loss_fn(functional_call(model, dict(weights), (x,)), y)
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=create_graph, materialize_grads=True)
    return loss, dict(zip(weights.keys(), grads))


CLIP_EPS = 1e-6
"""Added to the gradient norm in the clipping factor c / (||g|| + eps), as ``torch.nn.utils.clip_grad_norm_``."""


def clip_factor(grads: Mapping[str, torch.Tensor], clip_norm: float) -> torch.Tensor:
    """min(1, c / (||g|| + eps)) over the total norm of every gradient (differentiable: with a graph
    in ``grads`` the factor carries it)."""
    total = torch.sqrt(sum((g * g).sum() for g in grads.values()))
    return torch.clamp(clip_norm / (total + CLIP_EPS), max=1.0)


def sgd_update(weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
               buffers: Mapping[str, torch.Tensor] | None, hp: Mapping[str, Any],
               prior_mean: Mapping[str, torch.Tensor], *, clip_norm: float | None = None,
               nesterov: bool = False, lr_scale: float = 1.0) -> tuple[Tensors, Tensors]:
    """(u, b_new) of SGD with decay and heavy-ball momentum; ``w_new = w - u``.

    ``buffers`` None is an empty history (b_new = d, as PyTorch's first step). ``hp`` holds natural
    values (numbers or tensors): ``lr`` (or {parameter: tensor}), ``momentum`` and decay keys.
    The recipe's items (module doc): ``clip_norm`` clips the loss gradients' total norm before the
    decay terms (None: unclipped), ``nesterov`` takes Nesterov's step u = eta (d + mu b_new), and
    ``lr_scale`` (the schedule's factor) multiplies every learning rate. The defaults are the paper's update.
    """
    lr, mu = hp["lr"], hp.get("momentum", 0.0)
    gamma, alpha, beta = hp.get("weight_decay"), hp.get("alpha"), hp.get("beta")
    if clip_norm is not None:
        factor = clip_factor(grads, clip_norm)
        grads = {name: g * factor for name, g in grads.items()}
    u: Tensors = {}
    b_new: Tensors = {}
    for name, w in weights.items():
        d = grads[name]
        if gamma is not None:
            d = d + gamma * w
        if name in prior_mean:
            if alpha is not None:
                d = d + 2.0 * alpha * (w - prior_mean[name])
        elif beta is not None:
            d = d + 2.0 * beta * w
        b = d if buffers is None else mu * buffers[name] + d
        b_new[name] = b
        rate = lr[name] if isinstance(lr, dict) else lr
        step = d + mu * b if nesterov else b
        u[name] = (rate * lr_scale if lr_scale != 1.0 else rate) * step
    return u, b_new


def neumann_hypergradient(u: Sequence[torch.Tensor], w_prev: Sequence[torch.Tensor], phi: Sequence[torch.Tensor],
                          v: Sequence[torch.Tensor], terms: int) -> list[torch.Tensor]:
    """-v^T [sum_{j<terms} (I - du/dw)^j] du/dphi by VJPs (Algorithm 1; the direct term is 0).

    ``u`` must have been computed from ``w_prev`` and ``phi`` with a graph (``create_graph=True``
    for the gradient inside it when ``terms > 1``); ``v`` = dL_V/dw at the new weights.
    """
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    current = [t.detach() for t in v]
    total = list(current)
    for _ in range(terms - 1):
        jv = torch.autograd.grad(u, w_prev, grad_outputs=current, retain_graph=True, materialize_grads=True)
        current = [c - j.detach() for c, j in zip(current, jv)]
        total = [t + c for t, c in zip(total, current)]
    g = torch.autograd.grad(u, phi, grad_outputs=total, materialize_grads=True)
    return [-t.detach() for t in g]
