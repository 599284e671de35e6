"""The one budget meter. Every unit of charged work in a cell goes through it.

The budget rule, written once:

* Charged phases are ``train``, ``validate``, ``hyper``, ``method`` and ``cache``; ``test`` is
  measured and recorded, never charged.
* The meter is checked before every step and every indivisible unit (``unit(check=True)`` raises
  ``BudgetExhausted`` when nothing is left). A unit already started runs to its end; what it
  spends beyond the budget is recorded as overshoot.
* A trial stopped by ``BudgetExhausted`` is ``cut``: recorded with its cost, never recommended.
* A reserve (the estimated refit cost) can be held back: while it is set, work is refused once only
  the reserve is left, so search trials are cut there and the refit finds its reserve intact.

Units nest: a tuner's extra work (``hyper``) inside a training step is charged to ``hyper`` and
excluded from the step's ``train`` charge, so no time is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from hpobench_elbo.contracts import PHASES
from hpobench_elbo.engine.clock import Clock

RECORDED_PHASES = (*PHASES, "test")


class BudgetExhausted(Exception):
    """Raised before a unit of work when the budget is spent; the trial in flight becomes ``cut``."""


@dataclass(frozen=True)
class Snapshot:
    by_phase: Mapping[str, float]
    overshoot: float
    wall: float


class BudgetMeter:
    """Charges cost by phase against a budget, under one clock."""

    def __init__(self, budget: float, clock: Clock) -> None:
        if not budget > 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.budget = float(budget)
        self.clock = clock
        self.reserve = 0.0
        self._by_phase = {p: 0.0 for p in RECORDED_PHASES}
        self._wall_charged = 0.0  # wall seconds inside charged units (harness overhead = the rest)
        self._stack: list[list[float]] = []  # [token, wall of nested units]
        self.last_unit_cost = 0.0  # cost of the most recently finished unit (cache accounting)

    # -- state ------------------------------------------------------------------------------
    @property
    def spent(self) -> float:
        return float(sum(self._by_phase[p] for p in PHASES))

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent)

    @property
    def searchable(self) -> float:
        """What is left for new trials once the refit reserve is held back."""
        return max(0.0, self.budget - self.spent - self.reserve)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget

    @property
    def overshoot(self) -> float:
        return max(0.0, self.spent - self.budget)

    @property
    def unit_name(self) -> str:
        return self.clock.unit

    def by_phase(self) -> dict[str, float]:
        return dict(self._by_phase)

    def snapshot(self) -> Snapshot:
        return Snapshot(dict(self._by_phase), self.overshoot, self._wall_charged)

    def since(self, before: Snapshot) -> tuple[dict[str, float], float]:
        """Per-phase cost and overshoot added since ``before``."""
        cost = {p: self._by_phase[p] - before.by_phase[p] for p in RECORDED_PHASES}
        return {p: v for p, v in cost.items() if v != 0.0}, self.overshoot - before.overshoot

    @property
    def wall_charged(self) -> float:
        return self._wall_charged

    # -- charging ---------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse new work once the budget, less any refit reserve, is spent."""
        if self.spent >= self.budget - self.reserve:
            what = "budget" if self.reserve == 0 else "budget less the refit reserve"
            raise BudgetExhausted(f"{what} ({self.budget - self.reserve:g} {self.unit_name}) spent")

    @contextmanager
    def unit(self, phase: str, examples: int = 0, check: bool = True) -> Iterator[None]:
        """One indivisible unit of work: checked before it starts (outermost only), charged after.

        Nested units are never refused (the enclosing unit has started) and their wall time is
        excluded from the enclosing unit's.
        """
        if phase not in RECORDED_PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        if check and not self._stack:
            self.check()
        frame = [self.clock.begin(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            cost, wall = self.clock.end(frame[0], phase, examples)
            nested_wall = frame[1]
            if nested_wall and self.clock.is_wall:  # nested units are charged on their own
                cost = max(0.0, cost - nested_wall)
            self._by_phase[phase] += cost
            self.last_unit_cost = cost
            if self._stack:
                self._stack[-1][1] += wall
            elif phase != "test":
                self._wall_charged += wall

    def charge(self, phase: str, amount: float) -> None:
        """Charge a known cost directly (a stage's stored true cost, a simulated stage)."""
        if phase not in RECORDED_PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        self._by_phase[phase] += float(amount)

    def restore(self, by_phase: Mapping[str, float]) -> None:
        """Replay: set the cumulative per-phase cost recorded in the ledger (exact, no re-summing)."""
        for phase in RECORDED_PHASES:
            self._by_phase[phase] = float(by_phase.get(phase, 0.0))
