"""Search spaces: sampling, the zero-admitting log float, grids, validation and canonical values."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from hpobench_elbo.engine.cache import stage_key
from hpobench_elbo.errors import SpaceError
from hpobench_elbo.space import Choice, Float, Int, SearchSpace, canonical

SPACE = SearchSpace.of(
    lr=Float(1e-4, 1.0, log=True),
    momentum=Float(0.0, 0.99),
    wd=Float(1e-7, 1e-2, log=True, zero=True),
    width=Int(8, 256, log=True),
    depth=Int(1, 4),
    act=Choice(("relu", "tanh", "gelu")),
)


def test_sampling_is_within_bounds_and_deterministic() -> None:
    rng = np.random.default_rng(123)
    draws = [SPACE.sample(rng) for _ in range(2000)]
    for config in draws:
        SPACE.validate(config)  # every draw lies in the space
        assert 1e-4 <= config["lr"] <= 1.0
        assert 0.0 <= config["momentum"] <= 0.99
        assert config["wd"] == 0.0 or 1e-7 <= config["wd"] <= 1e-2
        assert isinstance(config["width"], int) and 8 <= config["width"] <= 256
        assert isinstance(config["depth"], int) and 1 <= config["depth"] <= 4
        assert config["act"] in ("relu", "tanh", "gelu")
    # every Int value and every Choice option is reached
    assert {c["depth"] for c in draws} == {1, 2, 3, 4}
    assert {c["act"] for c in draws} == {"relu", "tanh", "gelu"}
    widths = [c["width"] for c in draws]
    assert min(widths) == 8 and max(widths) > 200
    # same seed, same draws; another seed, other draws
    assert SPACE.sample(np.random.default_rng(123)) == draws[0]
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [SPACE.sample(rng_a) for _ in range(50)] == [SPACE.sample(rng_b) for _ in range(50)]
    assert SPACE.sample(np.random.default_rng(8)) != SPACE.sample(np.random.default_rng(7))


def test_log_float_is_log_uniform() -> None:
    param = Float(1e-4, 1.0, log=True)
    rng = np.random.default_rng(0)
    logs = np.log10([param.sample(rng) for _ in range(8000)])
    counts, _ = np.histogram(logs, bins=4, range=(-4, 0))  # one bin per decade
    assert np.all(np.abs(counts / len(logs) - 0.25) < 0.03)


def test_zero_admitting_log_float_gives_zero_the_weight_of_one_decade() -> None:
    param = Float(1e-7, 1e-2, log=True, zero=True)  # five decades, plus 0 weighted as a sixth
    rng = np.random.default_rng(1)
    draws = np.array([param.sample(rng) for _ in range(12_000)])
    zeros = draws == 0.0
    assert abs(zeros.mean() - 1 / 6) < 0.02
    nonzero = draws[~zeros]
    assert nonzero.min() >= 1e-7 and nonzero.max() <= 1e-2
    per_decade, _ = np.histogram(np.log10(nonzero), bins=5, range=(-7, -2))
    assert np.all(np.abs(per_decade / len(draws) - 1 / 6) < 0.02)  # each decade weighs as much as 0
    assert param.contains(0.0) and not Float(1e-7, 1e-2, log=True).contains(0.0)
    with pytest.raises(SpaceError):
        Float(0.0, 1.0, zero=True)  # zero needs a log scale


def test_zero_admitting_float_round_trips_through_optuna() -> None:
    param = Float(1e-7, 1e-2, log=True, zero=True)
    dist = param.to_optuna()
    assert isinstance(dist, optuna.distributions.FloatDistribution)
    assert dist.low == pytest.approx(-8.0) and dist.high == pytest.approx(-2.0) and not dist.log
    assert param.from_optuna(-7.5) == 0.0
    assert param.from_optuna(-8.0) == 0.0
    assert param.from_optuna(-7.0) == pytest.approx(1e-7)
    for value in (1e-7, 3.3e-5, 1e-2):
        assert param.from_optuna(math.log10(value)) == pytest.approx(value, rel=1e-12)

    # Through a real Optuna study: every configuration is valid, and 0 appears with one decade's weight.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    distributions = SPACE.to_optuna()
    configs = []
    for _ in range(1200):
        trial = study.ask(distributions)
        config = SPACE.from_optuna(trial.params)
        SPACE.validate(config)
        configs.append(config)
        study.tell(trial, 0.0)
    share = np.mean([c["wd"] == 0.0 for c in configs])
    assert abs(share - 1 / 6) < 0.04
    assert isinstance(configs[0]["width"], int) and configs[0]["act"] in ("relu", "tanh", "gelu")


def test_grid_explicit_values_and_resolution() -> None:
    space = SearchSpace.of(
        lr=Float(1e-4, 1.0, log=True, grid=(1.0, 1e-2)),
        wd=Float(1e-6, 1e-2, log=True, zero=True),
        depth=Int(1, 4),
        act=Choice(("relu", "tanh")),
    )
    # defaults: lr's own grid (2), wd 4 log points + 0 (5), depth 4 linear points, act 2
    default = space.grid()
    assert len(default) == 2 * 5 * 4 * 2
    assert {c["lr"] for c in default} == {1.0, 1e-2}
    assert sorted({c["wd"] for c in default}) == pytest.approx([0.0, 1e-6, 10 ** (-6 + 4 / 3), 10 ** (-6 + 8 / 3), 1e-2])
    assert {c["depth"] for c in default} == {1, 2, 3, 4}
    # explicit values win over the parameter's grid; every point is distinct
    explicit = space.grid(values={"lr": [0.5, 0.05, 0.005], "act": ["tanh"]})
    assert {c["lr"] for c in explicit} == {0.5, 0.05, 0.005}
    assert {c["act"] for c in explicit} == {"tanh"}
    assert len(explicit) == 3 * 5 * 4 * 1
    assert len({tuple(sorted(c.items())) for c in explicit}) == len(explicit)
    # a resolution sets points per parameter (log-spaced, end points included)
    coarse = space.grid(resolution=3)
    lrs = sorted({c["lr"] for c in coarse})
    assert lrs == pytest.approx([1e-4, 1e-2, 1.0])
    assert sorted({c["wd"] for c in coarse}) == pytest.approx([0.0, 1e-6, 1e-4, 1e-2])
    assert sorted({c["depth"] for c in coarse}) == [1, 2, 4]  # linspace(1, 4, 3) rounded
    assert Int(8, 512, log=True).grid_values(4) == [8, 32, 128, 512]
    with pytest.raises(SpaceError, match="nope"):
        space.grid(values={"nope": [1]})


def test_validate_errors_name_the_key() -> None:
    good = {"lr": 0.1, "momentum": 0.5, "wd": 0.0, "width": 32, "depth": 2, "act": "relu"}
    assert SPACE.validate(good) == good
    cases = [
        ({**good, "lr": 10.0}, "cfg.lr"),
        ({**good, "momentum": -0.1}, "cfg.momentum"),
        ({**good, "wd": 1e-9}, "cfg.wd"),
        ({**good, "width": 3.5}, "cfg.width"),
        ({**good, "depth": True}, "cfg.depth"),
        ({**good, "act": "sigmoid"}, "cfg.act"),
        ({**good, "lr": float("nan")}, "cfg.lr"),
        ({**good, "extra": 1}, "cfg.extra"),
        ({k: v for k, v in good.items() if k != "depth"}, "'depth'"),
    ]
    for config, needle in cases:
        with pytest.raises(SpaceError) as info:
            SPACE.validate(config, where="cfg")
        assert needle in str(info.value), (config, str(info.value))
        assert "\n" not in str(info.value)
    assert SPACE.validate({"lr": 0.1}, partial=True) == {"lr": 0.1}


def _at_rounding_half(value: float) -> bool:
    """True when ``value`` sits on the half-way point between two 12-significant-digit numbers."""
    digits = f"{value:.15e}".split("e")[0].replace(".", "").lstrip("-")
    return digits[12:15] in ("499", "500")


def test_canonical_makes_a_normalised_round_trip_equal() -> None:
    param = Float(3e-5, 0.7, log=True)
    lo, hi = math.log(param.lo), math.log(param.hi)
    rng = np.random.default_rng(5)
    changed, half_way = 0, 0
    for _ in range(2000):
        value = param.sample(rng)
        u = (math.log(value) - lo) / (hi - lo)  # a method's [0, 1] coordinate (e.g. a GP's input)
        back = math.exp(lo + u * (hi - lo))
        changed += back != value
        if canonical(back) != canonical(value):
            # Known limit of any rounding key: a value within an ulp of a rounding half-way point can
            # land on either side (about 2 in 10,000 round trips). Anything else is a bug.
            assert _at_rounding_half(value) or _at_rounding_half(back), (value, back)
            half_way += 1
            continue
        assert stage_key("t", "s", 0, {"lr": back}, "u") == stage_key("t", "s", 0, {"lr": value}, "u")
    assert changed > 1000, "the round trip should change most floats in their last bits (else this is vacuous)"
    assert half_way <= 3
    # linear normalisation too, and nested containers
    lin = Float(0.0, 0.99)
    for value in (0.1, 0.3, 0.7, 0.123456789):
        u = (value - lin.lo) / (lin.hi - lin.lo)
        assert canonical(lin.lo + u * (lin.hi - lin.lo)) == canonical(value)
    assert canonical({"b": np.float32(0.5), "a": [np.int64(3), "x", None, True]}) == {"a": [3, "x", None, True], "b": 0.5}
    assert canonical(-0.0) == 0.0
    assert canonical(0.1) != canonical(0.1000001)  # distinct values stay distinct
