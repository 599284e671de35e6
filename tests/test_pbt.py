"""Population-based training: exploit copies exactly, explore stays in the space, every member is
charged, a SIGKILL mid-population resumes to the uninterrupted ledgers, and the report draws members."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from hpobench_elbo import api
from hpobench_elbo.contracts import Recipe, TrainSetup
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.clock import CountingClock
from hpobench_elbo.engine.loop import EXEC_LOG_ENV
from hpobench_elbo.errors import SuiteError, UserError
from hpobench_elbo.methods.pbt.tuner import PBTTuner, perturb, quantile_size
from hpobench_elbo.report.data import read_report_data
from hpobench_elbo.space import Float, SearchSpace
from hpobench_elbo.suite import load_suite
from hpobench_elbo.tasks.mlp import DigitsMLP, optimizer_space
from hpobench_elbo.tasks.training.recipe import RecipeOptimizer

from conftest import REPO, ledgers, write_suite
from test_resume import exec_counts, snapshot, stable

SPACE = optimizer_space()  # lr, weight_decay (or 0), momentum: the MLP tasks' space


def digits_batches(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    idx = np.random.default_rng(seed).permutation(len(data.target))[:n]
    return torch.tensor(data.data[idx] / 16.0, dtype=torch.float32), torch.tensor(data.target[idx])


def small_model() -> nn.Module:
    """With a BatchNorm layer, so buffers (running statistics) must be copied too."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def started_tuner(population: list[dict[str, Any]], steps: int = 12, interval: int = 6,
                  resample_probability: float = 0.0) -> tuple[PBTTuner, Any, Any, BudgetMeter]:
    """A pbt tuner set up on real digits data under a counting meter: (tuner, batch fn, val fn, meter)."""
    x, y = digits_batches()
    recipe = Recipe(steps=steps, batch_size=16)
    meter = BudgetMeter(1e9, CountingClock(per_example=0.001, per_event=0.001))
    setup = TrainSetup(loss_fn=nn.functional.cross_entropy, n_train=300, n_data=400, total_steps=steps,
                       batch_size=16, prior_mean={}, generator=torch.Generator().manual_seed(0), meter=meter,
                       recipe=recipe, make_optimizer=functools.partial(RecipeOptimizer, recipe))
    info = DigitsMLP(scale="smoke").static_info()
    tuner = PBTTuner(population=population, seed=3, interval=interval, quantile=0.25,
                     resample_probability=resample_probability, val_batches=2)
    tuner.init(small_model(), info, population[0], setup)
    rng = np.random.default_rng(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(rng.choice(300, 16, replace=False))
        return x[i], y[i]

    def val() -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(300 + rng.choice(100, 16, replace=False))
        return x[i], y[i]

    return tuner, batch, val, meter


POPULATION = [{"lr": 0.5, "weight_decay": 1e-4, "momentum": 0.9}, {"lr": 1e-4, "weight_decay": 0.0, "momentum": 0.3},
              {"lr": 0.05, "weight_decay": 1e-3, "momentum": 0.5}, {"lr": 2e-4, "weight_decay": 1e-6, "momentum": 0.2}]


def momentum_buffers(member: Any) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for s in member.optimizer.parameter_state().values()
            if s.get("momentum_buffer") is not None]


def test_exploit_copies_weights_buffers_optimizer_state_and_hyperparameters_exactly() -> None:
    tuner, batch, val, _ = started_tuner(POPULATION, interval=6)
    for step in range(5):
        tuner.step(tuner.members[0].model, batch(), step, val)
    before = [{k: v.clone() for k, v in m.model.state_dict().items()} for m in tuner.members]
    buffers_before = [[b.clone() for b in momentum_buffers(m)] for m in tuner.members]
    configs_before = [dict(m.config) for m in tuner.members]
    tuner.step(tuner.members[0].model, batch(), 5, val)  # step 6: train, then rank, exploit, explore
    losses = [m.val_loss for m in tuner.members]
    copied = {k: m.copied_from for k, m in enumerate(tuner.members) if m.copied_from >= 0}
    n = quantile_size(4, 0.25)
    order = sorted(range(4), key=lambda k: (losses[k], k))
    assert n == 1 and set(copied) == set(order[-n:]) and set(copied.values()) <= set(order[:n])
    for loser, winner in copied.items():
        lose, win = tuner.members[loser], tuner.members[winner]
        assert lose.model is not win.model
        for key, value in win.model.state_dict().items():  # weights and BatchNorm statistics
            assert torch.equal(lose.model.state_dict()[key], value), key
        assert any(not torch.equal(before[loser][k], v) for k, v in win.model.state_dict().items())
        win_buffers, lose_buffers = momentum_buffers(win), momentum_buffers(lose)
        n_params = len(list(win.model.parameters()))
        assert len(win_buffers) == n_params and len(lose_buffers) == n_params  # every member has momentum
        assert all(torch.equal(a, b) for a, b in zip(lose_buffers, win_buffers))
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(lose_buffers, win_buffers))  # a copy
        for name, value in win.config.items():  # explored from the winner's values: x0.8 or x1.2, clipped
            param = SPACE[name]
            allowed = {0.0} if value == 0.0 and param.zero else {
                min(max(value * f, param.lo), param.hi) for f in (0.8, 1.2)}
            assert any(np.isclose(lose.config[name], a, rtol=1e-12, atol=0) for a in allowed), (name, lose.config)
        # the rebuilt optimizer steps at the loser's new rates, not the winner's
        assert lose.optimizer.base_lrs == [lose.config["lr"]]
        assert lose.optimizer.optimizer.param_groups[0]["momentum"] == lose.config["momentum"]
    for k in set(range(4)) - set(copied):  # the others keep their own hyperparameters and buffers
        assert tuner.members[k].config == configs_before[k]
        assert len(momentum_buffers(tuner.members[k])) == len(buffers_before[k])
    rows = [r for r in tuner.trajectory() if r["step"] == 6.0]
    assert [r["member"] for r in rows] == [0, 1, 2, 3]
    assert {r["member"]: r["copied_from"] for r in rows if r["copied_from"] >= 0} == copied


def test_explore_stays_inside_the_space_and_perturbs_by_the_factors() -> None:
    rng = np.random.default_rng(0)
    space = SearchSpace.of(lr=Float(1e-4, 1.0, log=True), weight_decay=Float(1e-7, 1e-2, log=True, zero=True),
                           momentum=Float(0.0, 0.99))
    edges = [{"lr": 1.0, "weight_decay": 1e-2, "momentum": 0.99}, {"lr": 1e-4, "weight_decay": 1e-7, "momentum": 0.0},
             {"lr": 0.01, "weight_decay": 0.0, "momentum": 0.5}]
    resampled = 0
    for probability in (0.0, 0.25, 1.0):
        for config in edges:
            for _ in range(200):
                new = perturb(space, config, rng, (0.8, 1.2), probability)
                space.validate(new)  # raises outside the space
                factored = all(new[k] == 0.0 if config[k] == 0.0 else any(
                    np.isclose(new[k], min(max(config[k] * f, space[k].lo), space[k].hi)) for f in (0.8, 1.2))
                    for k in config)
                if probability == 0.0:
                    assert factored, (config, new)
                    assert config["weight_decay"] != 0.0 or new["weight_decay"] == 0.0  # 0 stays 0
                resampled += not factored
    assert resampled > 300  # resampling happens (and lands inside the space)


def test_every_member_step_and_ranking_is_charged() -> None:
    tuner, batch, val, meter = started_tuner(POPULATION, steps=12, interval=6)
    for step in range(12):
        with meter.unit("train", examples=16):  # what the Trainer wraps each step in
            tuner.step(tuner.members[0].model, batch(), step, val)
    by_phase = meter.by_phase()
    assert by_phase["train"] == pytest.approx(12 * 4 * (16 * 0.001 + 0.001))  # 4 members x 12 steps
    assert by_phase["hyper"] == pytest.approx(2 * (4 * 2 * 16 * 0.001 + 0.001))  # 2 rankings (step 6, end)
    assert tuner.eval_model(None) is tuner.members[tuner.best].model
    assert tuner.best == min(range(4), key=lambda k: (tuner.members[k].val_loss, k))


def test_pbt_options_and_applicability_are_checked_at_load(tmp_path: Path) -> None:
    def suite(task: dict[str, Any], options: dict[str, Any]) -> Path:
        return write_suite(tmp_path / "s.yaml", {"name": "s", "clock": "counting", "budget": 5, "seeds": [0],
                                                 "tasks": [task], "methods": [{"name": "pbt", "options": options}]})

    digits = {"name": "digits-mlp", "scale": "smoke"}
    for options, words in (({"population": 1}, "population must be an integer >= 2"),
                           ({"quantile": 0.7}, "quantile must be a number in (0, 0.5]"),
                           ({"factors": []}, "factors must be a non-empty list"),
                           ({"speed": 2}, "unknown option(s) speed")):
        with pytest.raises(SuiteError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_suite(suite(digits, options))
    with pytest.raises(SuiteError, match="does not apply to task 'synthetic-pipeline'"):
        load_suite(suite({"name": "synthetic-pipeline", "scale": "smoke"}, {}))
    with pytest.raises(UserError, match="population must be a list of at least 2"):
        PBTTuner(population=[{"lr": 0.1}], seed=0)


KILL_SUITE: dict[str, Any] = {
    "name": "pbt-kill", "clock": "counting", "clock_options": {"per_example": 0.001, "per_event": 0.001},
    "budget": 160, "refit": True, "threads": 1, "seeds": [0],
    "tasks": [{"name": "digits-mlp", "scale": "smoke", "options": {"steps": 240}}],
    "methods": [{"name": "pbt", "options": {"population": 4, "max_trials": 3, "interval": 10, "val_batches": 2}}],
}


def kill_during_a_trial(suite: Path, out: Path, log: Path) -> tuple[int, int] | None:
    """SIGKILL the run while a population trial is in flight (after at least one finished trial)."""
    env = {**os.environ, EXEC_LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "hpobench_elbo.cli", "run", str(suite), "--out", str(out),
                             "--quiet"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            rows, finished = snapshot(out) if out.exists() else (0, 0)
            started = sum(exec_counts(log, strict=False).values()) if log.exists() else 0
            if rows >= 1 and finished == 0 and started > rows:
                # the exec log names a trial the ledger has not finished: it is in flight now (a
                # population of 4 x 240 steps takes far longer than this poll's 2 ms)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return snapshot(out)
            time.sleep(0.002)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_during_a_population_resumes_to_the_uninterrupted_ledgers(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "pbt-kill.yaml", KILL_SUITE)
    killed, log = tmp_path / "killed", tmp_path / "exec.log"
    at_kill = kill_during_a_trial(suite, killed, log)
    assert at_kill is not None, "the run ended before a trial could be killed"
    rows_at_kill, finished = at_kill
    assert 1 <= rows_at_kill < 3 and finished == 0
    os.environ[EXEC_LOG_ENV] = str(log)
    try:
        api.resume(killed, device="cpu", progress=False)
    finally:
        del os.environ[EXEC_LOG_ENV]
    reference = tmp_path / "reference"
    api.run(suite, out=reference, device="cpu", progress=False)
    ref, got = ledgers(reference), ledgers(killed)
    assert sorted(ref) == sorted(got) and len(ref) == 1
    (cell_id, records), = ref.items()
    trials = [r for r in records if r["type"] == "trial"]
    assert [r["status"] for r in trials] == ["ok"] * 3 and records[-1]["type"] == "end"
    assert stable(got[cell_id]) == stable(records)
    runs = exec_counts(log)
    assert sorted(runs.values()) == [1, 1, 2] and runs[(cell_id, rows_at_kill)] == 2  # only the one in flight
    # every member's steps were charged: 4 members x 240 steps of 32 examples, plus one event each
    assert trials[0]["cost"]["train"] == pytest.approx(4 * 240 * (32 * 0.001 + 0.001))
    assert len(trials[0]["tuner"]["options"]["population"]) == 4
    assert records[0]["data_use"] == "validation minibatches" and records[0]["validation"] == "hypergradient"
    # the report draws one trajectory line per member
    paths = read_report_data(reference).trajectories
    assert sorted(paths["member"].unique()) == [0, 1, 2, 3]
    assert {"lr", "weight_decay", "momentum"} <= set(paths["param"])
