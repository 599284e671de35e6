"""The cost-aware BO family (eeipu, ei, carbo, eips) and tpe: METHODS.md C.8 C-T1..C-T6.

The formula tests call the acquisition code directly; the method tests drive a method with
``AskContext``s whose ``paid_prefixes`` are built here (a simulated stage cache with known stage
costs); the last test runs ``eeipu`` through the real loop and needs the loop to fill
``AskContext.paid_prefixes`` and ``read_price``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hpobench_elbo.contracts import AskContext, PaidPrefix, Stage, TaskInfo, TrialResult
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.bo.acquisition import (
    CostAwareAcquisition,
    cooling,
    log_ei,
    log_expected_inverse_cost,
    log_h,
    normal_qmc,
)
from hpobench_elbo.methods.bo.encoding import UnitCodec
from hpobench_elbo.methods.bo.prefixes import PaidIndex, Prefix, prefix_pool
from hpobench_elbo.registry import METHODS
from hpobench_elbo.space import Choice, Float, Int, SearchSpace, canonical
from hpobench_elbo.tasks import synthetic

BO_METHODS = ("eeipu", "ei", "carbo", "eips")
FAST = {"raw_samples": 16, "num_restarts": 2, "maxiter": 15, "fit_maxiter": 30}


# -- helpers -------------------------------------------------------------------------------------
def synthetic_info(scale: str = "smoke") -> TaskInfo:
    return synthetic.SyntheticPipeline(scale=scale).info


def paid_prefix(stages: Sequence[Stage], config: Mapping[str, Any], costs: Sequence[float], depth: int) -> PaidPrefix:
    values = {p: canonical(config[p]) for s in stages[:depth] for p in s.params}
    return PaidPrefix(tuple(s.name for s in stages[:depth]), values, tuple(costs[:depth]))


class SimulatedCache:
    """Drives a method like the loop does, charging read_price per leading cached stage (C.1)."""

    def __init__(self, method: Any, info: TaskInfo, costs: Callable[[Mapping[str, Any]], Sequence[float]],
                 score: Callable[[Mapping[str, Any]], float], budget: float = 200.0, read_price: float = 0.1) -> None:
        self.method, self.info, self.costs, self.score = method, info, costs, score
        self.budget, self.read_price = budget, read_price
        self.paid: dict[tuple[Any, ...], PaidPrefix] = {}
        self.spent = 0.0
        self.rows: list[dict[str, Any]] = []

    def context(self) -> AskContext:
        return AskContext(self.budget - self.spent, self.budget, self.spent, len(self.rows),
                          tuple(self.paid.values()), self.read_price)

    def step(self) -> dict[str, Any]:
        spec = dataclasses.replace(self.method.ask(self.context()), trial_id=len(self.rows))
        config = self.info.space.validate(spec.config)
        costs = list(self.costs(config))
        charged, memoised = 0.0, 0
        for depth in range(1, len(self.info.stages) + 1):
            prefix = paid_prefix(self.info.stages, config, costs, depth)
            key = tuple(sorted((k, repr(v)) for k, v in prefix.values.items()))
            if memoised == depth - 1 and key in self.paid:
                memoised, charged = depth, charged + self.read_price
            else:
                charged += costs[depth - 1]
                self.paid.setdefault(key, prefix)
        self.spent += charged
        self.method.tell(spec, TrialResult(spec=spec, status="ok", cost={}, score=self.score(config)))
        row = {"config": config, "memoised": memoised, "charged": charged, **self.method.last}
        self.rows.append(row)
        return row


def synthetic_driver(method: str, seed: int = 0, **options: Any) -> SimulatedCache:
    info = synthetic_info()
    return SimulatedCache(METHODS.create(method, info, seed, **{**FAST, **options}), info,
                          synthetic.stage_costs, lambda c: -synthetic.objective_value(c))


# -- C-T1: expected inverse cost -----------------------------------------------------------------
def test_qmc_expected_inverse_cost_matches_lognormal_closed_form() -> None:
    mu, s = math.log(20.0), 0.5
    z = normal_qmc(1000, 1, seed=0)
    estimate = float(log_expected_inverse_cost(torch.tensor([[mu]], dtype=torch.float64),
                                               torch.tensor([[s]], dtype=torch.float64), z,
                                               torch.tensor([0]), eps=0.1).exp())
    exact = math.exp(-mu + s * s / 2)  # E[1/C] of a log-normal: 0.05666
    naive = 1.0 / math.exp(mu + s * s / 2)  # 1/E[C]: 0.0441
    assert estimate == pytest.approx(exact, rel=0.01)
    assert abs(estimate - naive) > 10 * abs(estimate - exact)


def test_log_h_matches_direct_formula_and_stays_finite() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50  # the reference in high precision (the float64 direct formula cancels for z << 0)
    z = torch.linspace(-30.0, 6.0, 181, dtype=torch.float64)
    exact = [float(mpmath.log(mpmath.npdf(v) + v * mpmath.ncdf(v))) for v in map(mpmath.mpf, z.tolist())]
    assert torch.allclose(log_h(z), torch.tensor(exact, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    far = log_h(torch.tensor([-50.0, -200.0, -1e4], dtype=torch.float64))
    assert torch.isfinite(far).all() and (far.diff() < 0).all()
    # asymptotics: log h(z) ~ log phi(z) - 2 log|z|
    t = torch.tensor(1e4, dtype=torch.float64)
    assert float(far[-1]) == pytest.approx(float(-0.5 * t * t - 0.5 * math.log(2 * math.pi) - 2 * torch.log(t)),
                                           rel=1e-9)


# -- C-T2: memo discount and cooling -------------------------------------------------------------
class _Fixed:
    """A stand-in model with fixed predictions per candidate (to test the acquisition alone)."""

    def __init__(self, mean: Sequence[float], var: Sequence[float], best: float = 0.0) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float64)
        self.var = torch.tensor(var, dtype=torch.float64)
        self.best = best

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = x[:, 0].long()
        return self.mean[idx], self.var[idx]

    def predict_log(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, v = self.predict(x)
        return m, v.sqrt()


def _acq(ei_mean: Sequence[float], stage_costs: Sequence[Sequence[float]], eta: float, eps: float = 0.1,
         sd: float = 0.1) -> CostAwareAcquisition:
    objective = _Fixed(ei_mean, [1.0] * len(ei_mean))
    costs = [_Fixed([math.log(c[k]) for c in stage_costs], [sd ** 2] * len(stage_costs))
             for k in range(len(stage_costs[0]))]
    z = normal_qmc(1000, len(costs), seed=3)
    return CostAwareAcquisition(objective, costs, eta, eps, z)  # type: ignore[arg-type]


def test_eeipu_grows_with_cached_stages_and_is_ei_at_eta_zero() -> None:
    x = torch.zeros(3, 1, dtype=torch.float64)
    delta = torch.tensor([0, 1, 2])
    ei = float(log_ei(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 0.0).exp())
    values = {eta: (_acq([0.0], [[100.0, 50.0, 10.0]], eta)(x, delta).exp() / ei) for eta in (1.0, 0.5, 0.0)}
    full = values[1.0].tolist()
    assert full[0] < full[1] < full[2]
    assert full == pytest.approx([1 / 160, 1 / 60.1, 1 / 10.2], rel=0.02)  # C.8: 0.0062, 0.0168, 0.0999
    half = values[0.5]
    assert float(half[2] / half[0]) < float(values[1.0][2] / values[1.0][0])  # less peaked
    assert (values[0.0] == 1.0).all()  # exactly EI


# -- C-T3: the cost-aware choice -----------------------------------------------------------------
def _winner(acq: CostAwareAcquisition) -> int:
    values = acq(torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.tensor([0, 0]))
    return int(values.argmax())


def test_cheaper_candidate_wins_at_equal_ei_and_flips_with_cooling() -> None:
    # equal EI, costs 30 vs 45: the cost-aware acquisition picks the cheap one, EI is indifferent
    equal = _acq([0.0, 0.0], [[30.0], [45.0]], eta=1.0)
    assert _winner(equal) == 0
    ei_values = _acq([0.0, 0.0], [[30.0], [45.0]], eta=0.0)(torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                                                           torch.tensor([0, 0]))
    assert float(ei_values[0]) == float(ei_values[1])
    # EI doubled on the expensive one, cost 1.5x: the expensive one wins at eta = 1
    expensive_better = [0.0, float(_mean_for_ei_ratio(2.0))]
    assert _winner(_acq(expensive_better, [[30.0], [45.0]], eta=1.0)) == 1
    # cost ratio 3 > EI ratio 2: cheap wins at eta = 1, expensive at eta = 0 (the winner flips)
    winners = [_winner(_acq(expensive_better, [[30.0], [90.0]], eta=eta)) for eta in (1.0, 0.75, 0.25, 0.0)]
    assert winners[0] == 0 and winners[-1] == 1
    assert winners == sorted(winners)  # flips once


def _mean_for_ei_ratio(ratio: float) -> float:
    """The posterior mean m (unit variance, best 0) with EI(m) = ratio * EI(0) (bisection)."""
    target = math.log(ratio) + float(log_h(torch.tensor(0.0, dtype=torch.float64)))
    lo, hi = 0.0, 5.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(log_h(torch.tensor(mid, dtype=torch.float64))) < target else (lo, mid)
    return lo


def test_cost_aware_methods_change_their_selection() -> None:
    """x1 drives the cost (x50 across its range) and not the objective: CArBO and EIPS go cheap."""
    space = SearchSpace.of(x1=Float(0.0, 1.0), x2=Float(0.0, 1.0))
    info = TaskInfo("toy", "smoke", space, (Stage("all", ("x1", "x2")),), False, 0, "objective", "max")

    def costs(c: Mapping[str, Any]) -> list[float]:
        return [math.exp(4.0 * c["x1"])]

    def score(c: Mapping[str, Any]) -> float:
        return (c["x2"] - 0.3) ** 2

    chosen = {}
    for name in ("carbo", "eips", "ei"):
        sim = SimulatedCache(METHODS.create(name, info, 1, n_init=8, **FAST), info, costs, score)
        rows = [sim.step() for _ in range(12)]
        chosen[name] = float(np.mean([r["config"]["x1"] for r in rows[8:]]))
    assert chosen["carbo"] < 0.25 and chosen["eips"] < 0.25
    assert chosen["ei"] > max(chosen["carbo"], chosen["eips"]) + 0.2


# -- C-T5: prefix pool ---------------------------------------------------------------------------
def test_prefix_pool_top_post_warmup_prefixes_with_exact_values() -> None:
    stages = synthetic.STAGES
    rng = np.random.default_rng(0)
    space = synthetic_info().space
    configs = [space.sample(rng) for _ in range(9)]
    costs = (3.0, 2.0, 1.0)
    paid = [paid_prefix(stages, c, costs, 3) for c in configs]
    index = PaidIndex(stages, paid)
    assert len(index) == 27 and len(index.stage_data(0)) == 9
    pool = prefix_pool(index, configs[2:], n_prefixes=5)  # configs[:2] play the warm-up
    assert pool[0] == Prefix(0)
    assert len(pool) == 1 + 5 * 2  # lengths 1..K-1 of the top five
    expected = {(d, tuple(canonical(c[p]) for p in synthetic.PARAM_NAMES[:2 if d == 1 else 5]))
                for c in configs[2:7] for d in (1, 2)}
    assert {(p.depth, tuple(p.values.values())) for p in pool[1:]} == expected
    by_x1 = {pp.values["x1"]: pp for pp in paid}
    for p in pool[1:]:  # the pinned values are the cached ones, not re-encoded values
        assert all(v is by_x1[p.values["x1"]].values[k] for k, v in p.values.items())
    # duplicates removed; unpaid prefixes left out; a single-stage task has the empty prefix only
    assert len(prefix_pool(index, configs[2:4] + configs[2:4], n_prefixes=4)) == 1 + 2 * 2
    unpaid = dict(configs[2], x3=0.123456)
    assert [p.depth for p in prefix_pool(index, [unpaid], 5)] == [0, 1]
    one = PaidIndex((Stage("train", tuple(space.names)),), [])
    assert prefix_pool(one, configs, 5) == [Prefix(0)]


def test_eeipu_pins_exact_cached_values_and_learns_costs_only_from_paid_prefixes() -> None:
    sim = synthetic_driver("eeipu", n_init=6)
    rows = [sim.step() for _ in range(12)]
    bo = rows[6:]
    assert all("error" not in r and r["cost_models"] == 3 for r in bo)  # one GP per stage, on the paid prefixes
    assert any(r["delta"] > 0 for r in bo)
    for r in bo:
        assert r["memoised"] == r["delta"]  # the predicted cached depth is what the cache served
    for r in (r for r in bo if r["delta"]):
        prefix = paid_prefix(synthetic.STAGES, r["config"], [0, 0, 0], r["delta"])
        cached = next(p for p in sim.paid.values() if p.stages == prefix.stages and p.values == prefix.values)
        for name, value in cached.values.items():  # bit-exact, same type
            assert type(r["config"][name]) is type(value) and r["config"][name] == value
    # the same method without paid prefixes has no cost data: plain EI (no guessing from history)
    m = METHODS.create("eeipu", synthetic_info(), 0, n_init=2, **FAST)
    for i in range(3):
        spec = dataclasses.replace(m.ask(AskContext(100, 200, 10.0 * i, i)), trial_id=i)
        m.tell(spec, TrialResult(spec=spec, status="ok", cost={}, score=-synthetic.objective_value(spec.config)))
    assert m.last["cost_models"] == 0 and m.last["pool"] == 1


def test_stage_without_parameters_has_a_constant_cost_model() -> None:
    space = SearchSpace.of(x1=Float(0.0, 1.0), x2=Float(0.0, 1.0))
    stages = (Stage("prep", ()), Stage("fit", ("x1",)), Stage("head", ("x2",)))
    info = TaskInfo("toy", "smoke", space, stages, False, 0, "objective", "max")
    sim = SimulatedCache(METHODS.create("eeipu", info, 0, n_init=3, **FAST), info,
                         lambda c: [5.0, 1.0 + c["x1"], 0.5], lambda c: (c["x1"] - 0.4) ** 2 + c["x2"])
    rows = [sim.step() for _ in range(5)]
    assert rows[3]["cost_models"] == 3 and rows[4]["delta"] >= 1  # the empty-parameter stage is always cached


# -- C-T6: cooling -------------------------------------------------------------------------------
def test_cooling_schedule() -> None:
    assert cooling(100.0, 40.0, 40.0) == 1.0
    etas = [cooling(100.0, s, 40.0) for s in np.linspace(40.0, 100.0, 7)]
    assert etas == pytest.approx(np.linspace(1.0, 0.0, 7).tolist())
    assert cooling(100.0, 130.0, 40.0) == 0.0  # an overshooting last trial
    assert cooling(100.0, 120.0, 100.0) == 0.0 and cooling(100.0, 120.0, 150.0) == 0.0  # warm-up ate B
    sim = synthetic_driver("carbo", n_init=4)
    rows = [sim.step() for _ in range(7)]
    bo_etas = [r["eta"] for r in rows[4:]]
    assert bo_etas[0] == 1.0 and all(0.0 <= e <= 1.0 for e in bo_etas) and bo_etas == sorted(bo_etas, reverse=True)


# -- shared warm-up, determinism, options, spaces ------------------------------------------------
def test_warmup_is_shared_and_methods_replay_identically() -> None:
    firsts = {}
    for name in BO_METHODS:
        sim = synthetic_driver(name, seed=5, n_init=3)
        firsts[name] = [sim.step()["config"] for _ in range(4)]
    warm = [firsts[n][:3] for n in BO_METHODS]
    assert all(w == warm[0] for w in warm)
    again = synthetic_driver("eeipu", seed=5, n_init=3)
    assert [again.step()["config"] for _ in range(4)] == firsts["eeipu"]
    other_seed = synthetic_driver("eeipu", seed=6, n_init=3)
    assert other_seed.step()["config"] != firsts["eeipu"][0]


def test_options_are_checked_in_one_line() -> None:
    info = synthetic_info()
    with pytest.raises(UserError, match="n_prefixes"):
        METHODS.create("eeipu", info, 0, n_prefixes=-1)
    with pytest.raises(UserError, match="unknown option 'n_prefixes'"):
        METHODS.create("carbo", info, 0, n_prefixes=3)
    with pytest.raises(UserError, match="normalize"):
        METHODS.get("ei").validate_options(info.space, {"normalize": "hull"})
    for name in BO_METHODS:
        m = METHODS.create(name, info, 0)
        assert m.validation == "selection" and m.options["n_init"] == 10
    assert METHODS.create("eeipu", info, 0).options["mc_samples"] == 64  # smoke scale
    assert METHODS.create("eeipu", synthetic_info("gpu"), 0).options["mc_samples"] == 1000
    with pytest.raises(UserError, match="n_startup_trials"):
        METHODS.create("tpe", info, 0, n_startup_trials=-2)


def test_encoding_roundtrip_and_applicability() -> None:
    space = SearchSpace.of(res=Choice((64, 32, 48)), steps=Int(20, 400, log=True), lr=Float(1e-4, 1e-1, log=True),
                           l2=Float(1e-6, 1e-1, log=True, zero=True), m=Float(0.0, 0.99))
    codec = UnitCodec(space)
    rng = np.random.default_rng(0)
    for _ in range(50):
        config = space.sample(rng)
        u = codec.encode(config)
        assert ((0.0 <= u) & (u <= 1.0)).all()
        back = codec.decode(u)
        space.validate(back)
        assert back["res"] == config["res"] and back["steps"] == config["steps"]
        assert (back["l2"] == 0.0) == (config["l2"] == 0.0)
        assert back["lr"] == pytest.approx(config["lr"], rel=1e-9)
    for u in rng.uniform(size=(50, codec.dim)):  # any point decodes to a valid configuration
        space.validate(codec.decode(u))
    assert codec.decode(codec.encode({"res": 32, "steps": 20, "lr": 0.1, "l2": 0.0, "m": 0.0}))["res"] == 32
    categorical = SearchSpace.of(opt=Choice(("sgd", "adam", "rmsprop")), lr=Float(0.1, 1.0))
    info = TaskInfo("t", "smoke", categorical, (Stage("train", ("opt", "lr")),), False, 0, "m", "max")
    for name in BO_METHODS:
        assert "categorical" in METHODS.get(name).inapplicable_reason(info)
        assert METHODS.get(name).inapplicable_reason(synthetic_info()) is None
    assert METHODS.get("tpe").inapplicable_reason(info) is None


def test_tpe_asks_and_recommends() -> None:
    info = synthetic_info()
    m = METHODS.create("tpe", info, 0, n_startup_trials=3)
    scores = []
    for i in range(6):
        spec = dataclasses.replace(m.ask(AskContext(10, 10, 0, i)), trial_id=i)
        info.space.validate(spec.config)
        scores.append(-synthetic.objective_value(spec.config))
        m.tell(spec, TrialResult(spec=spec, status="ok", cost={}, score=scores[-1]))
    assert m.recommend() == int(np.argmin(scores)) and m.validation == "selection"


# -- C-T4: cache-hit accounting through the real loop --------------------------------------------
def test_eeipu_cache_hit_accounting_end_to_end(tmp_path: Path) -> None:
    """The loop passes ``AskContext.paid_prefixes`` (and ``read_price``) to the method: EEIPU pins
    cached prefixes, and memoised trials are charged the read price per cached stage plus the rest."""
    from conftest import ledgers, write_suite

    from hpobench_elbo import api

    read = 0.1
    suite = write_suite(tmp_path / "bo.yaml", {
        "name": "bo-accounting", "clock": "counting",
        "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": read},
        "budget": 60, "refit": False, "seeds": [0], "threads": 1,
        "tasks": [{"name": "synthetic-pipeline", "scale": "smoke"}],
        "methods": [{"name": "eeipu", "options": {"n_init": 4, "max_trials": 12, **FAST}}],
    })
    api.run(suite, out=tmp_path / "out", device="cpu", progress=False)
    (records,) = ledgers(tmp_path / "out").values()
    trials = [r for r in records if r.get("type") == "trial" and r["status"] == "ok"]
    memoised = [r for r in trials[4:] if r["metrics"]["n_memoised"] > 0]
    assert memoised, "no memoised trial: is AskContext.paid_prefixes filled by the loop?"
    assert len(trials) == 12  # memoised trials are cheap: all fit in the budget
    for r in trials:  # true stage costs are recorded whatever the cache served
        true = synthetic.stage_costs(r["config"])
        assert [r["metrics"][f"cost_s{k}"] for k in (1, 2, 3)] == pytest.approx(list(true), rel=1e-9)
        d = int(r["metrics"]["n_memoised"])
        assert r["cache_hits"] >= d
        work = sum(r["cost"].get(phase, 0.0) for phase in ("train", "validate", "hyper", "cache"))
        assert work == pytest.approx(d * read + sum(true[d:]), rel=1e-6)


def test_eeipu_resumes_identically_through_the_loop(tmp_path: Path) -> None:
    """Resume = replay: a fresh method re-asked with the recorded contexts must propose the recorded
    configurations (the loop raises LedgerError otherwise) and continue as the uninterrupted run."""
    from conftest import ledgers, write_suite

    from hpobench_elbo import api

    suite = write_suite(tmp_path / "bo.yaml", {
        "name": "bo-resume", "clock": "counting",
        "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": 0.01},
        "budget": 12.0, "refit": False, "seeds": [0], "threads": 1,
        "tasks": [{"name": "digits-mlp", "scale": "smoke"}],
        "methods": [{"name": "eeipu", "options": {"n_init": 3, **FAST}}],
    })
    out = tmp_path / "out"
    api.run(suite, out=out, device="cpu", progress=False)
    (path,) = out.glob("*.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # drop the end record and the last two trials
    api.resume(out, device="cpu", progress=False)

    def trials(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["config"], r["status"], r["score"]) for r in records if r.get("type") == "trial"]

    resumed = trials(next(iter(ledgers(out).values())))
    assert resumed == trials([json.loads(line) for line in lines])
    assert len(resumed) > 5  # BO steps after the 3 warm-up trials were replayed and re-run


# -- issue 18: the acquisition at a fraction of a trial, the cache condition ---------------------
def test_cached_posterior_equals_botorchs_posterior_with_its_gradient() -> None:
    from hpobench_elbo.methods.bo.surrogates import FittedGP

    rng = np.random.default_rng(3)
    x = rng.random((20, 3))
    y = np.sin(4 * x[:, 0]) + x[:, 1] ** 2 + 0.05 * rng.standard_normal(20)
    gp = FittedGP(x, (y - y.mean()) / y.std(), maxiter=50)
    assert gp.fit_ok and gp._solve is not None
    points = torch.tensor(rng.random((7, 3)), requires_grad=True)
    mean, var = gp.predict(points)
    ref_mean, ref_var = gp.posterior(points)
    assert torch.allclose(mean, ref_mean, atol=1e-10) and torch.allclose(var, ref_var, atol=1e-10)
    (grad,) = torch.autograd.grad((mean + var).sum(), points)
    (ref_grad,) = torch.autograd.grad((ref_mean + ref_var).sum(), points)
    assert torch.allclose(grad, ref_grad, atol=1e-8)
    # at a training input the variance is about the noise level, far from the prior's
    m0, v0 = gp.predict(torch.tensor(x[:1]))
    assert float(v0.detach()) < 0.5 * float(gp.model.covar_module.outputscale.detach())
    no_reuse = FittedGP(x, (y - y.mean()) / y.std(), maxiter=50, reuse=False)
    assert no_reuse._solve is None and torch.allclose(no_reuse.predict(points)[0], ref_mean, atol=1e-8)


def test_cpu_settings_before_and_after_issue_18_propose_from_the_same_history() -> None:
    """The old cpu settings stay reachable as options; the new defaults are what a cpu task gets;
    a warm-started fit uses ``warm_fit_maxiter``; both settings propose valid new configurations."""
    from hpobench_elbo.methods.bo.method import CPU_BEFORE_ISSUE_18, SCALE_DEFAULTS

    info = synthetic_info("cpu")
    new = METHODS.create("eeipu", info, 0, n_init=3)
    assert new.options["maxiter"] == SCALE_DEFAULTS["cpu"].maxiter < CPU_BEFORE_ISSUE_18["maxiter"]
    assert new.options["warm_fit_maxiter"] < new.options["fit_maxiter"] and new.options["posterior_reuse"]
    old = METHODS.create("eeipu", info, 0, n_init=3, **CPU_BEFORE_ISSUE_18)
    assert old.options["posterior_reuse"] is False and old.options["warm_fit_maxiter"] == 100
    fits: list[int] = []
    for m in (new, old):
        sim = SimulatedCache(m, info, synthetic.stage_costs, lambda c: -synthetic.objective_value(c))
        rows = [sim.step() for _ in range(6)]
        assert all("error" not in r for r in rows[3:]) and rows[-1]["cost_models"] == 3
        assert len({json.dumps(r["config"], sort_keys=True) for r in rows}) == 6
        fits.append(m.options["warm_fit_maxiter"])
        scores = m.score_configs([r["config"] for r in rows[-2:]])
        assert scores.shape == (2,) and np.isfinite(scores).all()
    assert fits == [SCALE_DEFAULTS["cpu"].warm_fit_maxiter, 100]
    with pytest.raises(UserError, match="posterior_reuse: expected true or false"):
        METHODS.create("eeipu", info, 0, posterior_reuse="yes")
    with pytest.raises(RuntimeError):
        METHODS.create("ei", info, 0).score_configs([])


def test_only_eeipu_declares_itself_memoization_aware() -> None:
    from hpobench_elbo.contracts import Method
    from hpobench_elbo.registry import check_contract

    info = synthetic_info()
    for name in ("eeipu", "ei", "carbo", "eips", "tpe", "random", "grid"):
        m = METHODS.create(name, info, 0)
        check_contract(m, Method, name)
        assert (getattr(m, "memoization_aware", False) is True) == (name == "eeipu"), name


def test_paid_prefixes_follow_the_pipeline_order_after_a_ledger_round_trip() -> None:
    """A ledger row's ``stage_costs`` come back with sorted keys; the prefixes must not depend on
    that (image-pipeline's stages, features -> adapt -> head, do not sort in order), or a resumed
    BO cell would see no paid prefix and fail to replay."""
    from hpobench_elbo.contracts import TrialSpec
    from hpobench_elbo.engine.loop import paid_prefixes

    stages = (Stage("features", ("r",)), Stage("adapt", ("a",)), Stage("head", ("h",)))
    space = SearchSpace.of(r=Choice((32, 64)), a=Float(0.1, 1.0), h=Float(0.1, 1.0))
    info = TaskInfo("t", "cpu", space, stages, False, 10, "accuracy", "max")
    spec = TrialSpec(config={"r": 32, "a": 0.5, "h": 0.25}, trial_id=0)
    live = TrialResult(spec=spec, status="ok", cost={}, stage_costs={"features": 3.0, "adapt": 2.0, "head": 1.0})
    replayed = TrialResult.from_json(json.loads(json.dumps(live.to_json(), sort_keys=True)))
    assert list(replayed.stage_costs) == ["adapt", "features", "head"]
    expected = paid_prefixes(info, [live])
    assert [p.stages for p in expected] == [("features",), ("features", "adapt"), ("features", "adapt", "head")]
    assert paid_prefixes(info, [replayed]) == expected
    partial = dataclasses.replace(live, stage_costs={"adapt": 2.0, "head": 1.0})  # no first stage: no prefix
    assert paid_prefixes(info, [partial]) == ()
