"""The synthetic 3-stage pipeline of METHODS.md C.5: ``synthetic-pipeline`` (memoization benchmark).

Stages and their hyperparameters (all continuous)::

    s1  Beale-2D      x1, x2      on [-4.5, 4.5]^2
    s2  Hartmann-3D   x3, x4, x5  on [0, 1]^3
    s3  Beale-2D      x6, x7      on [-4.5, 4.5]^2

Objective (maximised, noise-free, deterministic)::

    objective(x) = -( log(1 + beale(x1, x2)) + hartmann3(x3, x4, x5) + log(1 + beale(x6, x7)) )

Beale, ``(1.5 - a + ab)^2 + (2.25 - a + ab^2)^2 + (2.625 - a + ab^3)^2``, ranges from 0 (at
a = 3, b = 0.5) to about 1.8e5 on its box, which would drown the Hartmann stage; its ``log1p``
ranges over [0, 12.1] and keeps the minimiser. Hartmann-3D is the standard one (four Gaussian
bumps, alpha = (1, 1.2, 3, 3.2)), with minimum -3.86278 at (0.114614, 0.555649, 0.852547). The
best objective is therefore 3.86278 (``BEST_OBJECTIVE``) and the method selects on
``score = -objective`` (lower is better); ``test(result)`` returns the same deterministic value.

Known stage costs (cost units; C.5's "sum of squared scaled cos/sin/logistic/poly terms per
dimension, divided by 500 d"): each parameter of stage k is mapped to z in [0, 1] by its box, and

    c_k(x) = sum_{j in stage k} ( s_k * h_j(z_j) )^2 / (500 * d_k)

where the term h_j cycles over the seven dimensions as cos, sin, logistic, poly, cos, sin,
logistic, each ranging over about [0.5, 1.5]::

    cos: 1 + cos(2 pi z) / 2      sin: 1 + sin(2 pi z) / 2
    logistic: 0.5 + 1 / (1 + exp(-8 (z - 0.5)))      poly: 0.5 + z^2

With the stage scales s = (40, 30, 20) (option ``cost_scales``) the mean stage costs are about
3.6, 1.8 and 0.9 (a full pipeline about 6.3, between 1.6 and 12), so a budget of 200 units buys
some thirty full evaluations, many more when early stages are memoised: the first stage is the
expensive one, as in real pipelines.

Memoization: every stage output (the vector of stage values so far) goes through the stage cache
with ``simulated_cost=c_k``; a stage's key holds the parameters of that stage and of every
upstream stage. A prefix this cell already paid for is charged the clock's read price (the
CountingClock's ``cache_read``, EEIPU's epsilon; C.5 uses 0.1), so x' sharing the first two
stage-blocks with x costs ``2 * read + c_3(x')``. An entry another cell computed is charged its
true cost (per-cell accounting, engine/cache.py). The stage keys use data seed 0: the pipeline has
no data, so the same configuration has the same output in every cell.

Every result records the **true** stage costs (``metrics["cost_s1"]`` ... ``cost_s3``, whether or
not the stage was served from the cache), the stage values ``f_s1`` ... ``f_s3``, the objective and
``n_memoised`` (leading stages read from the cache), so a cost-aware method can fit per-stage cost
models on true costs (METHODS.md C.7-2). The task is meant for the CountingClock; under the device
clock the simulated costs are charged as seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hpobench_elbo.contracts import Stage, TaskInfo, TrialContext, TrialResult, TrialSpec
from hpobench_elbo.engine.budget import BudgetExhausted
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Float, SearchSpace

BEALE_BOX = (-4.5, 4.5)
HARTMANN_BOX = (0.0, 1.0)

STAGES: tuple[Stage, ...] = (
    Stage("s1", ("x1", "x2")),
    Stage("s2", ("x3", "x4", "x5")),
    Stage("s3", ("x6", "x7")),
)
PARAM_NAMES: tuple[str, ...] = tuple(n for s in STAGES for n in s.params)
DEFAULT_COST_SCALES: tuple[float, float, float] = (40.0, 30.0, 20.0)
COST_TERMS: tuple[str, ...] = ("cos", "sin", "logistic", "poly", "cos", "sin", "logistic")
"""The cost term of each of the seven dimensions, in order x1..x7."""

HARTMANN3_ALPHA = (1.0, 1.2, 3.0, 3.2)
HARTMANN3_A = ((3.0, 10.0, 30.0), (0.1, 10.0, 35.0), (3.0, 10.0, 30.0), (0.1, 10.0, 35.0))
HARTMANN3_P = tuple(tuple(v * 1e-4 for v in row) for row in
                    ((3689, 1170, 2673), (4699, 4387, 7470), (1091, 8732, 5547), (381, 5743, 8828)))
HARTMANN3_MIN = -3.86278
BEST_OBJECTIVE = -HARTMANN3_MIN
"""The objective at x1, x2 = x6, x7 = (3, 0.5) and x3..x5 = Hartmann's minimiser."""
OPTIMUM: dict[str, float] = {"x1": 3.0, "x2": 0.5, "x3": 0.114614, "x4": 0.555649, "x5": 0.852547,
                             "x6": 3.0, "x7": 0.5}


# -- the functions -------------------------------------------------------------------------------
def beale(a: float, b: float) -> float:
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b * b) ** 2 + (2.625 - a + a * b ** 3) ** 2


def beale_score(a: float, b: float) -> float:
    """log(1 + Beale): 0 at the minimiser (3, 0.5), at most about 12.1 on the box."""
    return math.log1p(beale(a, b))


def hartmann3(x: Sequence[float]) -> float:
    total = 0.0
    for alpha, a_row, p_row in zip(HARTMANN3_ALPHA, HARTMANN3_A, HARTMANN3_P):
        total += alpha * math.exp(-sum(a * (xj - p) ** 2 for a, xj, p in zip(a_row, x, p_row)))
    return -total


def stage_value(k: int, config: Mapping[str, float]) -> float:
    """The (to be minimised) value of stage ``k`` (0-based) from that stage's own parameters."""
    v = [float(config[n]) for n in STAGES[k].params]
    return beale_score(*v) if k in (0, 2) else hartmann3(v)


def objective_value(config: Mapping[str, float]) -> float:
    """The noise-free objective (maximised): minus the sum of the three stage values."""
    return -sum(stage_value(k, config) for k in range(len(STAGES)))


def _box(name: str) -> tuple[float, float]:
    return HARTMANN_BOX if name in STAGES[1].params else BEALE_BOX


def _term(kind: str, z: float) -> float:
    if kind == "cos":
        return 1.0 + 0.5 * math.cos(2.0 * math.pi * z)
    if kind == "sin":
        return 1.0 + 0.5 * math.sin(2.0 * math.pi * z)
    if kind == "logistic":
        return 0.5 + 1.0 / (1.0 + math.exp(-8.0 * (z - 0.5)))
    if kind == "poly":
        return 0.5 + z * z
    raise ValueError(kind)


def stage_costs(config: Mapping[str, float],
                cost_scales: Sequence[float] = DEFAULT_COST_SCALES) -> tuple[float, ...]:
    """The true cost of each stage: sum_j (s_k h_j(z_j))^2 / (500 d_k), z_j the box-normalised value."""
    costs = []
    for k, stage in enumerate(STAGES):
        total = 0.0
        for name in stage.params:
            lo, hi = _box(name)
            z = (float(config[name]) - lo) / (hi - lo)
            total += (cost_scales[k] * _term(COST_TERMS[PARAM_NAMES.index(name)], z)) ** 2
        costs.append(total / (500.0 * len(stage.params)))
    return tuple(costs)


# -- the task ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticScale:
    """The pipeline is the same at every scale (no data, no model); kept for the suite's vocabulary."""

    note: str = "3 stages, known costs"

    def describe(self) -> str:
        return f"{self.note} (mean full pipeline about 6.3 cost units)"


class SyntheticPipeline:
    """Beale-2D -> Hartmann-3D -> Beale-2D with known per-stage costs and a memoised stage cache."""

    name = "synthetic-pipeline"
    description = "synthetic 3-stage pipeline (Beale-2D, Hartmann-3D, Beale-2D) with known stage costs " \
                  "(EEIPU, METHODS.md C.5); maximise the negated summed score"
    SCALES: dict[str, SyntheticScale] = {"smoke": SyntheticScale(), "cpu": SyntheticScale(), "gpu": SyntheticScale()}
    DATA_SEED = 0

    def __init__(self, scale: str = "smoke", device: str = "cpu",
                 cost_scales: Sequence[float] = DEFAULT_COST_SCALES) -> None:
        if scale not in self.SCALES:
            raise UserError(f"task {self.name!r}: unknown scale {scale!r}; known: {', '.join(self.SCALES)}")
        scales = tuple(float(s) for s in cost_scales)
        if len(scales) != len(STAGES) or not all(s > 0 and math.isfinite(s) for s in scales):
            raise UserError(f"task {self.name!r}: cost_scales must be {len(STAGES)} positive numbers, got {cost_scales!r}")
        self.scale_name = scale
        self.device = device
        self.cost_scales = scales
        self.stage_calls: Counter[str] = Counter()  # stage executions in this process (not cache reads)
        self.info = TaskInfo(name=self.name, scale=scale, space=self.space_for(scale), stages=STAGES,
                             has_backbone=False, n_pool=0, metric="objective", direction="max",
                             description=self.description)

    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        beale_grid = (-3.0, 0.0, 3.0)
        hartmann_grid = (0.1, 0.5, 0.9)
        params: dict[str, Float] = {}
        for name in PARAM_NAMES:
            lo, hi = _box(name)
            params[name] = Float(lo, hi, grid=hartmann_grid if name in STAGES[1].params else beale_grid)
        return SearchSpace.of(**params)

    def stage_costs(self, config: Mapping[str, float]) -> tuple[float, ...]:
        return stage_costs(config, self.cost_scales)

    def _compute(self, k: int, previous: torch.Tensor | None, config: Mapping[str, float]) -> torch.Tensor:
        self.stage_calls[STAGES[k].name] += 1
        value = torch.tensor([stage_value(k, config)], dtype=torch.float64)
        return value if previous is None else torch.cat([previous, value])

    def run(self, spec: TrialSpec, ctx: TrialContext) -> TrialResult:
        space_config = self.info.space.validate(spec.config, where=f"trial {spec.trial_id} config")
        config = {n: float(space_config[n]) for n in PARAM_NAMES}  # ints from YAML key like floats
        costs = self.stage_costs(config)
        metrics: dict[str, float] = {f"cost_{s.name}": c for s, c in zip(STAGES, costs)}
        metrics["cost_true_total"] = float(sum(costs))
        output: torch.Tensor | None = None
        memoised, leading, done = 0, True, 0
        paid: dict[str, float] = {}
        try:
            for k, stage in enumerate(STAGES):
                upstream = {n: config[n] for s in STAGES[:k + 1] for n in s.params}
                run = ctx.cache.get(ctx.meter, task=self.name, stage=stage.name, data_seed=self.DATA_SEED,
                                    params=upstream, simulated_cost=costs[k],
                                    compute=lambda k=k, prev=output: self._compute(k, prev, config))
                output = run.output
                paid[stage.name] = run.true_cost
                if leading and run.hit:
                    memoised += 1
                else:
                    leading = False
                done += 1
        except BudgetExhausted:
            metrics["n_memoised"] = float(memoised)
            return TrialResult(spec=spec, status="cut", cost={}, steps=done, planned_steps=len(STAGES),
                               metrics=metrics, stage_costs=paid)
        assert output is not None and output.numel() == len(STAGES)
        values = [float(v) for v in output]
        objective = -float(sum(values))
        metrics.update({f"f_{s.name}": v for s, v in zip(STAGES, values)})
        metrics["objective"] = objective
        metrics["n_memoised"] = float(memoised)
        return TrialResult(spec=spec, status="ok", cost={}, steps=len(STAGES), planned_steps=len(STAGES),
                           score=-objective, score_name="negated objective", metrics=metrics, n_train=0,
                           stage_costs=paid)

    def test(self, result: TrialResult) -> dict[str, float]:
        """The noise-free objective of the trial's configuration (deterministic, uncharged)."""
        return {"objective": objective_value({n: float(result.spec.config[n]) for n in PARAM_NAMES})}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "scales": {name: scale.describe() for name, scale in self.SCALES.items()},
            "space": self.space_for(self.scale_name).describe(),
            "stages": {s.name: list(s.params) for s in STAGES},
            "cost_scales": list(self.cost_scales),
        }


REGISTER = {SyntheticPipeline.name: SyntheticPipeline}
