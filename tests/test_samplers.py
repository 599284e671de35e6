"""Optuna sampler methods: trials reproducible from the seed (and on replay), options checked at load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from hpobench_elbo.contracts import AskContext, TrialResult
from hpobench_elbo.errors import SuiteError
from hpobench_elbo.methods.samplers.method import REGISTER, sampler_classes
from hpobench_elbo.suite import load_suite
from hpobench_elbo.tasks.mlp import DigitsMLP

from conftest import run_cli, write_suite

INFO = DigitsMLP(scale="smoke").static_info()
CTX = AskContext(remaining=1.0, budget=1.0, spent=0.0, n_completed=0)
CASES: dict[str, dict[str, Any]] = {
    "cmaes": {},
    "gp-bo": {"n_startup_trials": 3},
    "qmc": {},
    "optuna": {"sampler": "NSGAIISampler", "sampler_options": {"population_size": 4}},
}


def score(config: dict[str, Any]) -> float:
    """A smooth stand-in for a validation loss (a real function of the configuration, not a mock)."""
    return (math.log10(config["lr"]) + 1.5) ** 2 + (config["momentum"] - 0.6) ** 2 \
        + 0.1 * (config["weight_decay"] > 1e-4)


def drive(name: str, seed: int, n: int, told: list[TrialResult] | None = None) -> tuple[list[dict], list[TrialResult]]:
    """Ask/tell ``n`` trials; with ``told``, replay those results first (what resume does)."""
    method = REGISTER[name](INFO, seed, **CASES[name])
    configs, results = [], []
    for i in range(n):
        spec = method.ask(CTX)
        assert spec is not None
        spec = dataclasses.replace(spec, trial_id=i)
        INFO.space.validate(spec.config)
        if told is not None and i < len(told):
            result = told[i]
            assert result.spec.config == spec.config, (name, i)  # the replayed ask matches
        else:
            status = "failed" if i == 2 else "ok"  # one failed trial is told as failed
            result = TrialResult(spec=spec, status=status, cost={"train": 1.0},
                                 score=None if status == "failed" else score(spec.config))
        method.tell(spec, result)
        configs.append(spec.config)
        results.append(result)
    return configs, results


@pytest.mark.parametrize("name", sorted(CASES))
def test_trials_are_reproducible_from_the_seed_and_replay(name: str) -> None:
    n = 8
    first, results = drive(name, seed=5, n=n)
    again, _ = drive(name, seed=5, n=n)
    other, _ = drive(name, seed=6, n=n)
    assert first == again
    assert first != other
    assert len({tuple(sorted(c.items())) for c in first}) == n  # every trial a new configuration
    replayed, _ = drive(name, seed=5, n=n, told=results[:5])  # resume after 5 trials, then continue
    assert replayed == first


def test_qmc_is_scrambled_by_the_seed_and_gp_bo_models_after_its_startup() -> None:
    a, _ = drive("qmc", seed=0, n=4)
    b, _ = drive("qmc", seed=1, n=4)
    assert a[1:] != b[1:]  # Sobol points after the random first trial differ with the seed (scrambled)
    method = REGISTER["gp-bo"](INFO, 0, **CASES["gp-bo"])
    assert type(method.study.sampler).__name__ == "GPSampler" and method.validation == "selection"


def suite_with(tmp_path: Path, method: dict[str, Any]) -> Path:
    return write_suite(tmp_path / "s.yaml", {"name": "s", "clock": "counting", "budget": 5, "seeds": [0],
                                             "tasks": [{"name": "digits-mlp", "scale": "smoke"}], "methods": [method]})


@pytest.mark.parametrize("method, words", [
    ({"name": "optuna", "options": {"sampler": "NoSuchSampler"}}, "unknown sampler 'NoSuchSampler'; known: "),
    ({"name": "optuna", "options": {}}, "option 'sampler' (an optuna.samplers class name) is required"),
    ({"name": "optuna", "options": {"sampler": "TPESampler", "sampler_options": {"n_startup": 3}}},
     "TPESampler has no option 'n_startup'; its options: "),
    ({"name": "cmaes", "options": {"sigma": 0.1}}, "CmaEsSampler has no option 'sigma'"),
    ({"name": "qmc", "options": {"seed": 3}}, "argument 'seed'"),
    ({"name": "qmc", "options": {"qmc_type": "lattice"}}, "QMCSampler(qmc_type='lattice', scramble=True) refused"),
    ({"name": "gp-bo", "options": {"independent_sampler": "random"}}, "takes a Python object"),
])
def test_bad_sampler_options_are_one_line_at_load(tmp_path: Path, method: dict[str, Any], words: str) -> None:
    with pytest.raises(SuiteError) as err:
        load_suite(suite_with(tmp_path, method))
    message = str(err.value)
    assert words in message and "\n" not in message and "s.yaml" in message


def test_the_cli_refuses_an_unknown_sampler_with_exit_2_and_one_line(tmp_path: Path) -> None:
    suite = suite_with(tmp_path, {"name": "optuna", "options": {"sampler": "Nope"}})
    done = run_cli(["run", str(suite), "--out", str(tmp_path / "out"), "--dry-run"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown sampler 'Nope'" in lines[0] and "CmaEsSampler" in lines[0]


def test_the_known_samplers_are_optunas_seeded_concrete_ones() -> None:
    known = sampler_classes()
    assert {"CmaEsSampler", "GPSampler", "QMCSampler", "RandomSampler", "TPESampler", "NSGAIISampler"} <= set(known)
    assert "BaseSampler" not in known and "PartialFixedSampler" not in known
