"""Grid search: the full grid in a seeded shuffled order, so a budget that ends mid-grid still
gives a fair anytime curve (a prefix of a random permutation of the grid).

Options: ``values`` (explicit values per parameter), ``resolution`` (points per parameter when no
values are given), ``tie`` (``{param: other}``: ``param`` takes ``other``'s value, e.g. one L2-SP
strength for backbone and head), ``shuffle``. Recommends the lowest validation loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialSpec, TunerSpec
from hpobench_elbo.errors import SpaceError
from hpobench_elbo.methods.base import SelectsBestScore
from hpobench_elbo.space import SearchSpace


def grid_points(space: SearchSpace, values: Mapping[str, Sequence[Any]] | None, resolution: int | None,
                tie: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """Every distinct grid configuration, with tied parameters copied from their partner."""
    tie = dict(tie or {})
    free = SearchSpace(tuple((n, p) for n, p in space if n not in tie))
    points = []
    for point in free.grid({k: v for k, v in (values or {}).items() if k not in tie}, resolution):
        full = {name: point[tie[name]] if name in tie else point[name] for name in space.names}
        points.append(full)
    return points


class GridSearch(SelectsBestScore):
    name = "grid"
    validation = "selection"

    def __init__(self, info: TaskInfo, seed: int, values: Mapping[str, Sequence[Any]] | None = None,
                 resolution: int | None = None, tie: Mapping[str, str] | None = None, shuffle: bool = True) -> None:
        super().__init__(info, seed)
        if info is not None:
            self.validate_options(info.space, {"values": values, "tie": tie, "resolution": resolution})
            self.points = grid_points(info.space, values, resolution, tie)
            if shuffle:
                order = np.random.default_rng(seed).permutation(len(self.points))
                self.points = [self.points[i] for i in order]
        self.position = 0

    @staticmethod
    def validate_options(space: SearchSpace, options: Mapping[str, Any]) -> None:
        """Explicit grid values must lie in the space; tied names must exist and not chain."""
        values, tie, resolution = options.get("values"), options.get("tie"), options.get("resolution")
        if values is not None and not isinstance(values, Mapping):
            raise SpaceError("values: expected a mapping of parameter -> list of values")
        if tie is not None and not isinstance(tie, Mapping):
            raise SpaceError("tie: expected a mapping of parameter -> the parameter whose value it takes")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                       or resolution < 1):
            raise SpaceError(f"resolution: expected an integer >= 1, got {resolution!r}")
        for name, other in (tie or {}).items():
            if name == other or other in (tie or {}):
                raise SpaceError(f"tie.{name}: must name a parameter that is not itself tied, got {other!r}")
        for name, vals in (values or {}).items():
            space[name]
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
                raise SpaceError(f"values.{name}: expected a non-empty list of values")
            for i, v in enumerate(vals):
                if not space[name].contains(v):
                    raise SpaceError(f"values.{name}[{i}]: {v!r} is outside {space[name].describe()}")
        for name, other in (tie or {}).items():
            space[name]
            space[other]

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        if self.position >= len(self.points):
            return None
        config = self.points[self.position]
        self.position += 1
        return TrialSpec(config=dict(config), tuner=TunerSpec("sgd"))


REGISTER = {"grid": GridSearch}
