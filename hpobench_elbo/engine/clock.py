"""Clocks price a unit of work: measured device time, or a deterministic count.

``DeviceClock`` measures wall time, synchronizing CUDA before reading the time so queued kernels
are counted where they run. ``CountingClock`` prices each unit by the example passes it does and a
fixed price per event, so a run is exactly repeatable on a noisy machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    unit: str
    is_wall: bool  # True when the cost is measured time (nested units must then be subtracted)

    def begin(self) -> float: ...

    def end(self, token: float, phase: str, examples: int) -> tuple[float, float]:
        """Return (cost, wall seconds) of the unit begun at ``token``."""
        ...


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass(frozen=True)
class DeviceClock:
    """Charged cost = wall seconds of the unit, after ``torch.cuda.synchronize()`` on a GPU."""

    device: str = "cpu"
    is_wall: bool = True

    @property
    def unit(self) -> str:
        return "GPU-seconds" if self.device.startswith("cuda") else "device-seconds (CPU)"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cuda", self.device.startswith("cuda"))

    def begin(self) -> float:
        if self._cuda:
            _synchronize(self.device)
        return time.perf_counter()

    def end(self, token: float, phase: str, examples: int) -> tuple[float, float]:
        if self._cuda:
            _synchronize(self.device)
        wall = time.perf_counter() - token
        return wall, wall


@dataclass(frozen=True)
class CountingClock:
    """Charged cost = ``per_example`` x example passes + ``per_event`` per unit (cost units).

    ``cache_read`` is the fixed price of reading a cached stage output. Forward-only passes
    (validation, selection) count like training passes: a deliberate, simple convention.
    """

    per_example: float = 1e-3
    per_event: float = 1e-3
    cache_read: float = 1e-2

    unit: str = "cost units"
    is_wall: bool = False

    @property
    def cache_key(self) -> str:
        """Stage-cache entries store costs at these prices, so the prices are part of their key."""
        return f"{self.unit} ({self.per_example:g}/example, {self.per_event:g}/event, {self.cache_read:g}/read)"

    def begin(self) -> float:
        return time.perf_counter()

    def end(self, token: float, phase: str, examples: int) -> tuple[float, float]:
        price = self.cache_read if phase == "cache" else self.per_example * examples + self.per_event
        return price, time.perf_counter() - token


def make_clock(kind: str, device: str, options: dict | None = None) -> Clock:
    """The clock a suite asks for (``device`` or ``counting``)."""
    options = options or {}
    if kind == "device":
        return DeviceClock(device=device)
    if kind == "counting":
        return CountingClock(**options)
    raise ValueError(f"unknown clock {kind!r}")
