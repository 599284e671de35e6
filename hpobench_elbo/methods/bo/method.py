"""The cost-aware BO family: ``eeipu``, ``ei``, ``carbo``, ``eips`` (METHODS.md C.3-C.5).

All four share one warm-up (the first ``n_init`` configurations are drawn uniformly from the
search space with a generator seeded from the cell's sampler seed only, so the four draw the same
warm-up), one objective GP and one acquisition optimiser; they differ in the cost model, the
cooling and the prefix pool:

======  ===========================  ============================  ===================
name    cost model                   eta                           prefixes (memo)
======  ===========================  ============================  ===================
ei      none                         0 (plain EI)                  empty prefix only
carbo   one GP, log total cost       cooling (B - spent)/(B - B_0)  empty prefix only
eips    one GP, log total cost       1 (EI per unit cost)          empty prefix only
eeipu   one GP per stage, log cost   cooling                       C.4 prefix pool
======  ===========================  ============================  ===================

Costs come only from ``AskContext.paid_prefixes`` (true stage costs recorded by the stage cache,
C.7-2); while a stage has no cost observation the cost factor is left out (the acquisition is EI).
Objective values come from ``tell``: ``-score`` of the ``ok`` trials. See docs/methods/bo.md.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from hpobench_elbo.contracts import AskContext, TaskInfo, TrialResult, TrialSpec, TunerSpec
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.base import SelectsBestScore
from hpobench_elbo.methods.bo.encoding import UnitCodec, inapplicable_space_reason
from hpobench_elbo.methods.bo.prefixes import POOL_MODES, PaidIndex, Prefix, prefix_pool
from hpobench_elbo.space import Config, SearchSpace, canonical

WARMUP_STREAM = 0xB0_1
"""Child-seed tag of the warm-up generator (shared by the four methods)."""


# -- options -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleDefaults:
    """The acquisition's settings at one scale: QMC cost samples, the optimiser's raw samples,
    restarts and L-BFGS-B iterations, and the GP fit's L-BFGS-B iterations from the initial
    hyperparameters (``fit_maxiter``) and from the previous fit's (``warm_fit_maxiter``)."""

    mc_samples: int
    raw_samples: int
    num_restarts: int
    maxiter: int
    fit_maxiter: int
    warm_fit_maxiter: int


SCALE_DEFAULTS: dict[str, ScaleDefaults] = {
    "gpu": ScaleDefaults(mc_samples=1000, raw_samples=512, num_restarts=10, maxiter=200, fit_maxiter=500,
                         warm_fit_maxiter=500),
    "cpu": ScaleDefaults(mc_samples=128, raw_samples=64, num_restarts=2, maxiter=10, fit_maxiter=100,
                         warm_fit_maxiter=20),
    "smoke": ScaleDefaults(mc_samples=64, raw_samples=32, num_restarts=2, maxiter=20, fit_maxiter=50,
                           warm_fit_maxiter=50),
}
"""C.5's defaults at ``gpu`` scale; reduced as C.7-8 suggests at ``cpu`` and ``smoke`` (and any other
scale: cpu). The ``cpu`` row was cut further (issue 18, item 4: acquisition L-BFGS-B 30 -> 10
iterations, warm-started GP fits 100 -> 20) so that an ask costs a fraction of a trial; the
settings before that are :data:`CPU_BEFORE_ISSUE_18` (docs/methods/bo.md has the measurement)."""

CPU_BEFORE_ISSUE_18: dict[str, Any] = {"raw_samples": 64, "num_restarts": 2, "maxiter": 30, "fit_maxiter": 100,
                                       "warm_fit_maxiter": 100, "posterior_reuse": False}
"""The ``cpu`` acquisition settings before issue 18, as options (``benchmarks/bo.py --ask-time``)."""


def _int_at_least(low: int, allow_none: bool) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"{name}: expected an integer >= {low}{' or null' if allow_none else ''}, got {value!r}")
        return int(value)
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise UserError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        return value
    return check


def _boolean(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise UserError(f"{name}: expected true or false, got {value!r}")
    return value


def _epsilon(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise UserError(f"{name}: expected a number >= 0 (cost units per cached stage) or null, got {value!r}")
    return float(value)


OPTION_SPECS: dict[str, tuple[Callable[[str, Any], Any], Any]] = {
    "n_init": (_int_at_least(1, False), 10),
    "normalize": (_one_of(("box", "observed")), "box"),
    "max_trials": (_int_at_least(1, True), None),
    "mc_samples": (_int_at_least(1, True), None),
    "raw_samples": (_int_at_least(1, True), None),
    "num_restarts": (_int_at_least(1, True), None),
    "maxiter": (_int_at_least(0, True), None),
    "fit_maxiter": (_int_at_least(1, True), None),
    "warm_fit_maxiter": (_int_at_least(1, True), None),
    "posterior_reuse": (_boolean, True),
    "n_prefixes": (_int_at_least(0, False), 5),
    "prefix_pool": (_one_of(POOL_MODES), "top"),
    "epsilon": (_epsilon, None),
}
"""Every option: its check and its default (None: the scale's default, or ``read_price`` for epsilon)."""


def parse_options(method: str, allowed: tuple[str, ...], options: Mapping[str, Any], scale: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"method {method!r}: unknown option {unknown[0]!r}; known: {', '.join(allowed)}")
    parsed = {name: OPTION_SPECS[name][0](name, options.get(name, OPTION_SPECS[name][1])) for name in allowed}
    defaults = SCALE_DEFAULTS.get(scale, SCALE_DEFAULTS["cpu"])
    for name in ("mc_samples", "raw_samples", "num_restarts", "maxiter", "fit_maxiter", "warm_fit_maxiter"):
        if name in parsed and parsed[name] is None:
            parsed[name] = getattr(defaults, name)
    return parsed


def _child_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _config_key(config: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f"{k}={canonical(config[k])!r}" for k in sorted(config))


# -- the methods ---------------------------------------------------------------------------------
class ExpectedImprovementBO(SelectsBestScore):
    """GP-EI: the base of the family (no cost model, eta = 0)."""

    name: ClassVar[str] = "ei"
    validation: ClassVar[str] = "selection"
    COST_MODEL: ClassVar[str] = "none"  # "none", "total" or "stages"
    ETA: ClassVar[str] = "zero"  # "zero", "one" or "cooling"
    memoization_aware: ClassVar[bool] = False
    """The contract's ``memoization_aware``: only EEIPU seeks cached prefixes (and may read the
    stage cache under ``cache_access: memoization-aware``)."""
    OPTIONS: ClassVar[tuple[str, ...]] = ("n_init", "normalize", "max_trials", "raw_samples", "num_restarts",
                                          "maxiter", "fit_maxiter", "warm_fit_maxiter", "posterior_reuse")

    def __init__(self, info: TaskInfo, seed: int, **options: Any) -> None:
        super().__init__(info, seed)
        self.options = parse_options(self.name, self.OPTIONS, options, getattr(info, "scale", "cpu"))
        reason = self.inapplicable_reason(info)
        if reason is not None:
            raise UserError(f"method {self.name!r} cannot run task {info.name!r}: {reason}")
        self.codec = UnitCodec(info.space)
        self.warmup_rng = np.random.default_rng(np.random.SeedSequence([int(seed), WARMUP_STREAM]))
        self.pool_rng = np.random.default_rng(np.random.SeedSequence([int(seed), WARMUP_STREAM, 1]))
        self.asked = 0
        self.pending_warmup: bool | None = None
        self.warmup_ids: set[int] = set()
        self.warmup_spent: float | None = None
        self.models: dict[str, tuple[np.ndarray, np.ndarray, Any]] = {}
        """Last fitted model per surrogate (objective, cost:<stage>, cost:total) with its data."""
        self.last: dict[str, Any] = {}
        """Diagnostics of the last BO proposal (eta, delta, pool size, acquisition value, seconds)."""
        self._scorer: Callable[[list[Config]], np.ndarray] | None = None

    # -- contract ---------------------------------------------------------------------------
    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        """None when the method can run on ``info``'s task, else why not (one line)."""
        reason = inapplicable_space_reason(info.space)
        if reason is not None:
            return reason
        names = set(info.space.names)
        for stage in info.stages:
            unknown = [p for p in stage.params if p not in names]
            if unknown:
                return f"stage {stage.name!r} names parameters outside the search space: {', '.join(unknown)}"
        return None

    @classmethod
    def validate_options(cls, space: SearchSpace | None, options: Mapping[str, Any]) -> None:
        parse_options(cls.name, cls.OPTIONS, options, "cpu")

    def ask(self, ctx: AskContext) -> TrialSpec | None:
        max_trials = self.options["max_trials"]
        if max_trials is not None and self.asked >= max_trials:
            return None
        iteration = self.asked
        self.asked += 1
        self.pending_warmup = iteration < self.options["n_init"]
        config = None
        if not self.pending_warmup:
            if self.warmup_spent is None:
                self.warmup_spent = float(ctx.spent)
            config = self.propose(ctx, iteration)
        if config is None:  # warm-up, too few completed trials, or nothing new to propose
            config = self.info.space.sample(self.warmup_rng)
        return TrialSpec(config=config, tuner=TunerSpec("sgd"), data="split")

    def observe(self, spec: TrialSpec, result: TrialResult) -> None:
        if self.pending_warmup:
            self.warmup_ids.add(spec.trial_id)
        self.pending_warmup = None

    # -- the BO step ------------------------------------------------------------------------
    def eta(self, ctx: AskContext) -> float:
        from hpobench_elbo.methods.bo.acquisition import cooling

        if self.ETA == "zero":
            return 0.0
        if self.ETA == "one":
            return 1.0
        assert self.warmup_spent is not None
        return cooling(ctx.budget, ctx.spent, self.warmup_spent)

    def _completed(self) -> list[TrialResult]:
        """ok trials with a finite score, best first (ties: earlier trial first)."""
        ok = [r for r in self.results.values()
              if r.status == "ok" and r.score is not None and math.isfinite(r.score)]
        return sorted(ok, key=lambda r: (r.score, r.spec.trial_id))

    def _fit(self, key: str, x: np.ndarray, y: np.ndarray,
             factory: Callable[[dict[str, torch.Tensor] | None, int], Any]) -> Any:
        """The model fitted to (x, y): the previous one if its data are unchanged, else a new fit
        warm-started from the previous hyperparameters (``warm_fit_maxiter`` L-BFGS-B iterations;
        ``fit_maxiter`` for a first fit). ``factory(warm, maxiter)`` builds the model."""
        previous = self.models.get(key)
        if previous is not None and np.array_equal(previous[0], x) and np.array_equal(previous[1], y):
            return previous[2]
        if previous is None:
            model = factory(None, self.options["fit_maxiter"])
        else:
            model = factory(previous[2].gp.hyperparameters(), self.options["warm_fit_maxiter"])
        self.models[key] = (x, y, model)
        return model

    def _cost_models(self, index: PaidIndex, frame: _Frame) -> list[Any]:
        from hpobench_elbo.methods.bo.surrogates import ConstantLogCost, LogCostModel

        stages = self.info.stages
        if self.COST_MODEL == "stages":
            groups = [(f"cost:{s.name}", list(s.params), index.stage_data(k)) for k, s in enumerate(stages)]
        elif self.COST_MODEL == "total":
            groups = [("cost:total", [n for s in stages for n in s.params], index.total_data())]
        else:
            return []
        if any(not data for _, _, data in groups):
            return []  # a stage without a true cost yet: no cost factor (EI)
        models: list[Any] = []
        for key, params, data in groups:
            if not params:  # a stage that consumes no parameter costs the same for every candidate
                models.append(ConstantLogCost(np.array([o.cost for o in data])))
                continue
            columns = self.codec.columns(params)
            x = np.array([[frame.to_z(self.codec.encode_value(n, o.values[n]), self.codec.index[n]) for n in params]
                          for o in data])
            cost = np.array([o.cost for o in data])
            models.append(self._fit(key, x, cost, lambda warm, maxiter, c=columns, x=x, cost=cost: LogCostModel(
                c, x, cost, warm, maxiter, reuse=self.options["posterior_reuse"])))
        return models

    def pool(self, index: PaidIndex, completed: list[TrialResult]) -> list[Prefix]:
        return [Prefix(0)]

    def epsilon(self, ctx: AskContext) -> float:
        return float(ctx.read_price)

    def propose(self, ctx: AskContext, iteration: int) -> Config | None:
        """The configuration that maximises the acquisition (None: fall back to a random draw).

        A numerical failure (a covariance that is not positive definite even with jitter) falls
        back to a random draw too and is kept in ``last["error"]``; GPyTorch's and BoTorch's
        numerical warnings are silenced here.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._propose(ctx, iteration)
        except (RuntimeError, ValueError, ArithmeticError) as exc:
            self.last = {"iteration": iteration, "error": f"{type(exc).__name__}: {exc}"[:300]}
            return None

    def _propose(self, ctx: AskContext, iteration: int) -> Config | None:
        from hpobench_elbo.methods.bo.acquisition import CostAwareAcquisition, normal_qmc
        from hpobench_elbo.methods.bo.optimize import evaluate, maximize_boxes
        from hpobench_elbo.methods.bo.surrogates import ObjectiveModel

        started = time.perf_counter()
        completed = self._completed()
        if len(completed) < 2:
            return None
        frame = _Frame.of(self.codec, [r.spec.config for r in self.results.values()], self.options["normalize"])
        x = np.stack([frame.to_z_vector(self.codec.encode(r.spec.config)) for r in completed])
        y = np.array([-float(r.score) for r in completed])  # type: ignore[arg-type]
        objective = self._fit("objective", x, y, lambda warm, maxiter: ObjectiveModel(
            x, y, warm, maxiter, reuse=self.options["posterior_reuse"]))
        index = PaidIndex(self.info.stages, ctx.paid_prefixes)
        costs = self._cost_models(index, frame)
        eta = self.eta(ctx)
        n_mc = self.options.get("mc_samples", 1)
        z = normal_qmc(n_mc, max(1, len(costs)), _child_seed(self.seed, iteration, 2))
        acquisition = CostAwareAcquisition(objective, costs, eta, self.epsilon(ctx), z)

        prefixes = self.pool(index, completed)
        lower = torch.tensor(np.tile(frame.z_lower, (len(prefixes), 1)))
        upper = torch.tensor(np.tile(frame.z_upper, (len(prefixes), 1)))
        for row, prefix in enumerate(prefixes):
            for name, value in prefix.values.items():
                i = self.codec.index[name]
                lower[row, i] = upper[row, i] = frame.to_z(self.codec.encode_value(name, value), i)
        delta = torch.tensor([p.depth for p in prefixes], dtype=torch.long)
        points, _ = maximize_boxes(acquisition, lower, upper, delta, self.options["raw_samples"],
                                   self.options["num_restarts"], self.options["maxiter"],
                                   _child_seed(self.seed, iteration, 1))

        # Round each box's best point to a valid configuration (pinned values exact), score it again
        # with the number of stages it would really read from the cache, and keep the best new one.
        candidates = []
        for prefix, point in zip(prefixes, points):
            config = self.codec.decode(frame.to_u_vector(point.numpy()))
            config.update(prefix.values)
            candidates.append(config)
        depths = [index.cached_depth(c) if self.memoization_aware else 0 for c in candidates]
        z_rounded = torch.tensor(np.stack([frame.to_z_vector(self.codec.encode(c)) for c in candidates]))
        values = evaluate(acquisition, z_rounded, torch.tensor(depths, dtype=torch.long)).numpy()

        def score(configs: list[Config]) -> np.ndarray:
            z_configs = torch.tensor(np.stack([frame.to_z_vector(self.codec.encode(c)) for c in configs]))
            d = [index.cached_depth(c) if self.memoization_aware else 0 for c in configs]
            return evaluate(acquisition, z_configs, torch.tensor(d, dtype=torch.long)).numpy()

        self._scorer = score
        seen = {_config_key(r.spec.config) for r in self.results.values()}
        order = sorted(range(len(candidates)), key=lambda i: (-values[i], i))
        chosen = next((i for i in order if _config_key(candidates[i]) not in seen), None)
        self.last = {"iteration": iteration, "eta": eta, "pool": len(prefixes), "cost_models": len(costs),
                     "delta": None if chosen is None else depths[chosen],
                     "value": None if chosen is None else float(values[chosen]),
                     "seconds": time.perf_counter() - started}
        return None if chosen is None else self.info.space.validate(candidates[chosen])


    def score_configs(self, configs: list[Config]) -> np.ndarray:
        """log acquisition values of ``configs`` under the last BO proposal's acquisition (each at the
        number of stages it would read from the cache); a diagnostic for comparing settings
        (``benchmarks/bo.py --ask-time``). Raises RuntimeError before the first BO proposal."""
        if self._scorer is None:
            raise RuntimeError("no BO proposal yet")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._scorer(configs)


@dataclass(frozen=True)
class _Frame:
    """The GP input space: z = (u - lo) / width per coordinate, u the declared unit cube (C.7-1).

    ``box``: lo = 0, width = 1. ``observed``: lo, width from the observed configurations (the data
    hull); a coordinate with no spread stays where it was observed.
    """

    lo: np.ndarray
    width: np.ndarray

    @classmethod
    def of(cls, codec: UnitCodec, configs: list[Config], mode: str) -> _Frame:
        if mode == "box":
            return cls(np.zeros(codec.dim), np.ones(codec.dim))
        u = np.stack([codec.encode(c) for c in configs])
        return cls(u.min(axis=0), u.max(axis=0) - u.min(axis=0))

    @property
    def safe_width(self) -> np.ndarray:
        return np.where(self.width > 1e-12, self.width, 1.0)

    @property
    def z_lower(self) -> np.ndarray:
        return np.zeros_like(self.lo)

    @property
    def z_upper(self) -> np.ndarray:
        return np.where(self.width > 1e-12, 1.0, 0.0)

    def to_z(self, u: float, i: int) -> float:
        return float((u - self.lo[i]) / self.safe_width[i])

    def to_z_vector(self, u: np.ndarray) -> np.ndarray:
        return (u - self.lo) / self.safe_width

    def to_u_vector(self, z: np.ndarray) -> np.ndarray:
        return self.lo + z * self.safe_width


class CArBO(ExpectedImprovementBO):
    """EI x E[1/C]^eta with one total-cost GP and cost cooling; memoisation-unaware (C.3 table)."""

    name = "carbo"
    COST_MODEL = "total"
    ETA = "cooling"
    OPTIONS = (*ExpectedImprovementBO.OPTIONS, "mc_samples")


class EIPS(CArBO):
    """EI per unit cost, E[1/C] from one total-cost GP, no cooling (C.3 table)."""

    name = "eips"
    ETA = "one"


class EEIPU(CArBO):
    """Memoisation-aware EEIPU: per-stage cost GPs, cooling, the C.4 prefix pool."""

    name = "eeipu"
    COST_MODEL = "stages"
    memoization_aware = True
    OPTIONS = (*CArBO.OPTIONS, "n_prefixes", "prefix_pool", "epsilon")

    def epsilon(self, ctx: AskContext) -> float:
        eps = self.options["epsilon"]
        return float(ctx.read_price) if eps is None else float(eps)

    def pool(self, index: PaidIndex, completed: list[TrialResult]) -> list[Prefix]:
        mode = self.options["prefix_pool"]
        ranked = [r.spec.config for r in completed if mode != "top" or r.spec.trial_id not in self.warmup_ids]
        return prefix_pool(index, ranked, self.options["n_prefixes"], mode, self.pool_rng)

