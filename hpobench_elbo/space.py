"""Search spaces: the one description of a task's hyperparameters that every method sees.

A space is an ordered set of named parameters. Each parameter knows how to sample itself from a
numpy Generator, enumerate grid points, validate a value, map itself to an Optuna distribution (and
back), and put a value in canonical form for cache keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Union

import numpy as np

from hpobench_elbo.errors import SpaceError

Config = dict[str, Any]


def canonical(value: Any) -> Any:
    """Canonical form of a hyperparameter value for keys: floats to 12 significant digits.

    A float that went through a method's normalisation and back (``lo + (hi - lo) * u``) differs
    from the original in its last bits; both map to the same canonical value.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v == 0.0:
            return 0.0
        return float(f"{v:.12g}")
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise SpaceError(f"value {value!r} of type {type(value).__name__} cannot be put in canonical form")


@dataclass(frozen=True)
class Float:
    """A real parameter on [lo, hi], log-uniform when ``log``.

    ``zero=True`` (only with ``log``) also admits an exact 0, as penalty strengths need: sampling is
    log-uniform over one extra decade below ``lo`` and any draw in that extra decade is 0, so 0 gets
    the weight of one decade, as it gets one point among the decades of a grid.
    """

    lo: float
    hi: float
    log: bool = False
    zero: bool = False
    grid: tuple[float, ...] | None = None
    resolution: int = 4

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise SpaceError(f"Float needs lo < hi, got [{self.lo}, {self.hi}]")
        if self.log and self.lo <= 0:
            raise SpaceError(f"a log-scale Float needs lo > 0, got {self.lo}")
        if self.zero and not self.log:
            raise SpaceError("zero=True needs log=True")

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        v = float(value)
        if self.zero and v == 0.0:
            return True
        tol = 1e-12 * max(abs(self.lo), abs(self.hi))
        return math.isfinite(v) and self.lo - tol <= v <= self.hi + tol

    def sample(self, rng: np.random.Generator) -> float:
        if not self.log:
            return float(rng.uniform(self.lo, self.hi))
        lo = math.log10(self.lo) - (1.0 if self.zero else 0.0)
        u = float(rng.uniform(lo, math.log10(self.hi)))
        return 0.0 if (self.zero and u < math.log10(self.lo)) else float(10.0**u)

    def grid_values(self, resolution: int | None = None) -> list[float]:
        if self.grid is not None and resolution is None:
            return list(self.grid)
        n = resolution or self.resolution
        if self.log:
            vals = [float(v) for v in np.logspace(math.log10(self.hi), math.log10(self.lo), n)]
        else:
            vals = [float(v) for v in np.linspace(self.hi, self.lo, n)]
        return vals + ([0.0] if self.zero else [])

    # Optuna bridge: a zero-admitting float is one continuous log10 coordinate.
    def to_optuna(self) -> Any:
        import optuna

        if self.zero:
            return optuna.distributions.FloatDistribution(math.log10(self.lo) - 1.0, math.log10(self.hi))
        return optuna.distributions.FloatDistribution(self.lo, self.hi, log=self.log)

    def from_optuna(self, value: Any) -> float:
        if self.zero:
            return 0.0 if value < math.log10(self.lo) else float(10.0 ** float(value))
        return float(value)

    def describe(self) -> str:
        scale = "log" if self.log else "linear"
        return f"float[{self.lo:g}, {self.hi:g}] {scale}" + (" or 0" if self.zero else "")


@dataclass(frozen=True)
class Int:
    """An integer parameter on [lo, hi] (inclusive), log-uniform when ``log``."""

    lo: int
    hi: int
    log: bool = False
    grid: tuple[int, ...] | None = None
    resolution: int = 4

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise SpaceError(f"Int needs lo <= hi, got [{self.lo}, {self.hi}]")

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            and self.lo <= int(value) <= self.hi
        )

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            u = rng.uniform(math.log(self.lo), math.log(self.hi + 1))
            return int(min(self.hi, math.floor(math.exp(u))))
        return int(rng.integers(self.lo, self.hi + 1))

    def grid_values(self, resolution: int | None = None) -> list[int]:
        if self.grid is not None and resolution is None:
            return list(self.grid)
        n = resolution or self.resolution
        space = np.geomspace if self.log else np.linspace
        return sorted({int(round(v)) for v in space(self.lo, self.hi, n)})

    def to_optuna(self) -> Any:
        import optuna

        return optuna.distributions.IntDistribution(self.lo, self.hi, log=self.log)

    def from_optuna(self, value: Any) -> int:
        return int(value)

    def describe(self) -> str:
        return f"int[{self.lo}, {self.hi}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Choice:
    """A categorical parameter."""

    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise SpaceError("Choice needs at least one option")

    def contains(self, value: Any) -> bool:
        return value in self.options

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]

    def grid_values(self, resolution: int | None = None) -> list[Any]:
        return list(self.options)

    def to_optuna(self) -> Any:
        import optuna

        return optuna.distributions.CategoricalDistribution(list(self.options))

    def from_optuna(self, value: Any) -> Any:
        return value

    def describe(self) -> str:
        return "choice{" + ", ".join(map(str, self.options)) + "}"


Param = Union[Float, Int, Choice]


@dataclass(frozen=True)
class SearchSpace:
    """Ordered named parameters; the single source of truth for what a configuration may hold."""

    params: tuple[tuple[str, Param], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, **params: Param) -> SearchSpace:
        return cls(tuple(params.items()))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.params]

    def __getitem__(self, name: str) -> Param:
        for key, param in self.params:
            if key == name:
                return param
        raise SpaceError(f"unknown hyperparameter {name!r}; known: {', '.join(self.names)}")

    def __iter__(self) -> Iterator[tuple[str, Param]]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def sample(self, rng: np.random.Generator) -> Config:
        return {name: param.sample(rng) for name, param in self.params}

    def grid(self, values: Mapping[str, Sequence[Any]] | None = None, resolution: int | None = None) -> list[Config]:
        """Every grid point: explicit ``values`` per parameter win over the parameter's own grid."""
        values = dict(values or {})
        for name in values:
            self[name]  # raises on unknown names
        axes = [values.get(name) or param.grid_values(resolution) for name, param in self.params]
        return [dict(zip(self.names, point)) for point in product(*axes)]

    def validate(self, config: Mapping[str, Any], where: str = "config", partial: bool = False) -> Config:
        """Return ``config`` as a plain dict, or raise SpaceError naming the offending key."""
        for key in config:
            if key not in self.names:
                raise SpaceError(f"{where}.{key}: unknown hyperparameter; known: {', '.join(self.names)}")
        for name, param in self.params:
            if name not in config:
                if partial:
                    continue
                raise SpaceError(f"{where}: missing hyperparameter {name!r}")
            if not param.contains(config[name]):
                raise SpaceError(f"{where}.{name}: {config[name]!r} is outside {param.describe()}")
        return dict(config)

    def to_optuna(self) -> dict[str, Any]:
        return {name: param.to_optuna() for name, param in self.params}

    def from_optuna(self, params: Mapping[str, Any]) -> Config:
        return {name: param.from_optuna(params[name]) for name, param in self.params}

    def describe(self) -> str:
        return ", ".join(f"{name}: {param.describe()}" for name, param in self.params)
