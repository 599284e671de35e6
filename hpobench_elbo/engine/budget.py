"""The one budget meter. Every unit of charged work in a cell goes through it.

The budget rule, written once:

* Charged phases are ``train``, ``validate``, ``hyper``, ``method`` and ``cache``; ``test`` is
  measured and recorded, never charged.
* The meter is checked before every step and every indivisible unit (``unit(check=True)`` raises
  ``BudgetExhausted`` when nothing is left). A unit already started runs to its end; what it
  spends beyond the budget is recorded as overshoot.
* A trial stopped by ``BudgetExhausted`` is ``cut``: recorded with its cost, never recommended.
* A trial its method stops at a checkpoint is ``pruned``: recorded with its cost (the steps it ran,
  its checkpoint passes charged to ``validate``, the method's answers to ``method``), never
  recommended. ``diverged`` and ``failed`` trials are recorded with their cost and the cell goes on.
* A reserve (the estimated refit cost) can be held back: while it is set, work is refused once only
  the reserve is left, so search trials are cut there and the refit finds its reserve intact.
* The refit guard: a refit (the selected configuration retrained on all N) is deployed only when
  it completes ok with a finite final training loss no worse than 1.5 x the selected trial's + 0.05
  (``REFIT_LOSS_FACTOR``, ``REFIT_LOSS_SLACK``); otherwise it is recorded as rejected, with the
  reason, and the selected trial's own model stays deployed. Either way the refit's cost stays
  charged.

Units nest: a tuner's extra work (``hyper``) inside a training step is charged to ``hyper`` and
excluded from the step's ``train`` charge, so no time is counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hpobench_elbo.contracts import PHASES
from hpobench_elbo.engine.clock import Clock

RECORDED_PHASES = (*PHASES, "test")
REFIT_LOSS_FACTOR = 1.5
REFIT_LOSS_SLACK = 0.05
"""The refit guard's margin: a completed refit is rejected when its final training loss (the
``train_loss`` metric: the mean of the last ten minibatch losses, in the task's loss units,
e.g. standardised MSE or cross-entropy) is not finite or exceeds ``REFIT_LOSS_FACTOR`` times the
selected trial's plus ``REFIT_LOSS_SLACK``. The slack keeps minibatch noise on a near-zero
loss from rejecting a sound refit; a refit that collapsed (a regression net that predicts the mean
has a standardised training MSE near 1) is far beyond it."""


class _Unit:
    """A unit of work in flight (see ``BudgetMeter.unit``)."""

    __slots__ = ("meter", "phase", "examples", "check", "token", "nested_wall")

    def __init__(self, meter: BudgetMeter, phase: str, examples: int, check: bool) -> None:
        self.meter = meter
        self.phase = phase
        self.examples = examples
        self.check = check
        self.token = 0.0
        self.nested_wall = 0.0

    def __enter__(self) -> None:  # a unit may be entered again after it ended (one per training loop)
        self.nested_wall = 0.0
        self.meter._enter(self)

    def __exit__(self, *exc: object) -> None:
        self.meter._exit(self)


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
        self._stack: list[_Unit] = []
        self._spent = 0.0  # running total of the charged phases
        self._is_wall = bool(getattr(clock, "is_wall", False))
        self.last_unit_cost = 0.0  # cost of the most recently finished unit (cache accounting)
        self._reads = 0
        self._read_total = 0.0

    # -- state ------------------------------------------------------------------------------
    @property
    def spent(self) -> float:
        return self._spent

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

    @property
    def price_key(self) -> str:
        """The clock's unit and, for a counting clock, its prices (part of every stage-cache key)."""
        return str(getattr(self.clock, "cache_key", self.clock.unit))

    @property
    def read_price(self) -> float:
        """What reading one cached stage is charged: exact under a counting clock; under a device
        clock the mean of the reads measured so far in this process (0 before the first)."""
        price = getattr(self.clock, "cache_read", None)
        if price is not None:
            return float(price)
        return self._read_total / self._reads if self._reads else 0.0

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
        if self._spent >= self.budget - self.reserve:
            what = "budget" if self.reserve == 0 else "budget less the refit reserve"
            raise BudgetExhausted(f"{what} ({self.budget - self.reserve:g} {self.unit_name}) spent")

    def unit(self, phase: str, examples: int = 0, check: bool = True) -> _Unit:
        """One indivisible unit of work, used as ``with meter.unit(phase, examples):``.

        Checked before it starts (outermost units only), charged when it ends. Nested units are
        never refused (the enclosing unit has started) and their wall time is excluded from the
        enclosing unit's. A small class rather than a generator: it runs once per training step.
        """
        if phase not in self._by_phase:
            raise ValueError(f"unknown phase {phase!r}")
        return _Unit(self, phase, examples, check)

    def _enter(self, unit: _Unit) -> None:
        if unit.check and not self._stack and self._spent >= self.budget - self.reserve:
            self.check()
        self._stack.append(unit)
        unit.token = self.clock.begin()

    def _exit(self, unit: _Unit) -> None:
        cost, wall = self.clock.end(unit.token, unit.phase, unit.examples)
        self._stack.pop()
        if unit.nested_wall and self._is_wall:  # nested units are charged on their own
            cost = max(0.0, cost - unit.nested_wall)
        self._by_phase[unit.phase] += cost
        if unit.phase != "test":
            self._spent += cost
        self.last_unit_cost = cost
        if unit.phase == "cache":
            self._reads += 1
            self._read_total += cost
        if self._stack:
            self._stack[-1].nested_wall += wall
        elif unit.phase != "test":
            self._wall_charged += wall

    def charge(self, phase: str, amount: float) -> None:
        """Charge a known cost directly (a stage's stored true cost, a simulated stage)."""
        if phase not in RECORDED_PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        if amount < 0:
            raise ValueError("a charge cannot be negative")
        self._by_phase[phase] += float(amount)
        if phase != "test":
            self._spent += float(amount)

    def restore(self, by_phase: Mapping[str, float], spent: float | None = None) -> None:
        """Replay: set the cumulative per-phase cost and total recorded in the ledger (exact, no re-summing)."""
        for phase in RECORDED_PHASES:
            self._by_phase[phase] = float(by_phase.get(phase, 0.0))
        self._spent = float(spent) if spent is not None else float(sum(self._by_phase[p] for p in PHASES))
