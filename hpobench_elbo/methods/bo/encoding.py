"""Configurations <-> points of the unit cube, the input space of the Gaussian processes.

Each parameter becomes one coordinate ``u`` in [0, 1] of the declared box (METHODS.md C.2, C.7-1):

* ``Float``: linear, or ``log`` of the value on a log scale. A log float that admits an exact 0
  (``zero=True``) is the same log10 coordinate as the Optuna bridge (one extra decade below ``lo``;
  anything in that decade is 0), and 0 is encoded at the middle of the extra decade.
* ``Int``: as a float on [lo, hi] (log scale when ``log``); a point is decoded by rounding in the
  parameter's own scale (as BoTorch's rounding transform does): the acquisition is optimised over
  the continuous relaxation and the candidate is rounded once at the end, then scored again.
* ``Choice``: ordinal, by the position of the option (numeric options sorted by value); decoded by
  rounding the position. A choice of more than two non-numeric options has no order, and the
  BO family reports the space as inapplicable (``inapplicable_reason``).

Decoding clips to the box and puts floats in canonical form (``space.canonical``), so every decoded
configuration validates against the space and keys the stage cache the same way on every pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpobench_elbo.space import Choice, Config, Float, Int, Param, SearchSpace, canonical


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def inapplicable_space_reason(space: SearchSpace) -> str | None:
    """Why the space cannot be put in a unit cube with an order on every axis (None if it can)."""
    if len(space) == 0:
        return "the search space is empty"
    for name, param in space:
        if isinstance(param, Choice) and len(param.options) > 2 and not all(map(_numeric, param.options)):
            return (f"parameter {name!r} is a categorical choice of {len(param.options)} non-numeric options; "
                    "the BO family needs continuous, integer or ordinal parameters")
    return None


@dataclass(frozen=True)
class Axis:
    """One coordinate: the parameter's transformed range [lo, hi] and, for choices, its ordered options."""

    name: str
    param: Param
    lo: float
    hi: float
    options: tuple[Any, ...] = ()

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def transform(self, value: Any) -> float:
        p = self.param
        if isinstance(p, Choice):
            return float(self.options.index(value))
        if isinstance(p, Float) and p.zero:
            v = float(value)
            return math.log10(p.lo) - 0.5 if v == 0.0 else math.log10(v)
        return math.log(float(value)) if p.log else float(value)

    def encode(self, value: Any) -> float:
        return 0.5 if self.width == 0 else (self.transform(value) - self.lo) / self.width

    def decode(self, u: float) -> Any:
        t = self.lo + float(np.clip(u, 0.0, 1.0)) * self.width
        p = self.param
        if isinstance(p, Choice):
            return self.options[int(np.clip(round(t), 0, len(self.options) - 1))]
        if isinstance(p, Int):
            v = math.exp(t) if p.log else t
            return int(np.clip(round(v), p.lo, p.hi))
        assert isinstance(p, Float)
        if p.zero:
            if t < math.log10(p.lo):
                return 0.0
            v = 10.0 ** t
        else:
            v = math.exp(t) if p.log else t
        return float(min(max(canonical(v), p.lo), p.hi))


def _axis(name: str, param: Param) -> Axis:
    if isinstance(param, Choice):
        options = tuple(sorted(param.options)) if all(map(_numeric, param.options)) else tuple(param.options)
        return Axis(name, param, 0.0, float(len(options) - 1), options)
    if isinstance(param, Float) and param.zero:
        return Axis(name, param, math.log10(param.lo) - 1.0, math.log10(param.hi))
    if param.log:
        return Axis(name, param, math.log(param.lo), math.log(param.hi))
    return Axis(name, param, float(param.lo), float(param.hi))


class UnitCodec:
    """Encodes configurations of ``space`` as float64 vectors in [0, 1]^d and decodes them back."""

    def __init__(self, space: SearchSpace) -> None:
        reason = inapplicable_space_reason(space)
        if reason is not None:
            raise ValueError(reason)
        self.space = space
        self.axes = tuple(_axis(name, param) for name, param in space)
        self.names = tuple(a.name for a in self.axes)
        self.index = {name: i for i, name in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return len(self.axes)

    def columns(self, names: Sequence[str]) -> list[int]:
        return [self.index[n] for n in names]

    def encode_value(self, name: str, value: Any) -> float:
        return self.axes[self.index[name]].encode(value)

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        return np.array([a.encode(config[a.name]) for a in self.axes], dtype=np.float64)

    def decode(self, u: Sequence[float]) -> Config:
        return {a.name: a.decode(float(v)) for a, v in zip(self.axes, u)}
