"""Small real runs of ``uci-regression`` (Boston, concrete) and checks of ``synthetic-pipeline``.

UCI thresholds: at smoke scale (200 full-batch SGD steps) a reasonable configuration must reach a
test MSE, in the ORIGINAL target units, of at most half the variance of the test targets (that is
R^2 >= 0.5; Boston's test variance is about 95, concrete's about 295). Measured: about 13 and 44.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpobench_elbo import api
from hpobench_elbo.contracts import TrialSpec, TunerSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.clock import CountingClock, DeviceClock
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.registry import TASKS
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.tasks.data import VALIDATION_FRACTION
from hpobench_elbo.tasks.data import stratified_split
from hpobench_elbo.tasks.synthetic import (
    BEST_OBJECTIVE,
    OPTIMUM,
    PARAM_NAMES,
    STAGES,
    SyntheticPipeline,
    objective_value,
    stage_costs,
)
from hpobench_elbo.tasks.uci import Standardiser, UCIRegression
from conftest import run_trial  # noqa: E402

GOOD = {"lr": 0.03, "weight_decay": 1e-4, "momentum": 0.9}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


# -- uci-regression -----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["boston", "concrete"])
def test_uci_regression_smoke_reaches_half_the_target_variance(dataset: str) -> None:
    task = UCIRegression(scale="smoke", dataset=dataset)
    assert task.info.metric == "mse" and task.info.direction == "min" and task.info.n_classes is None
    seeds = Seeds.from_cell(0)
    result = run_trial(task, TrialSpec(dict(GOOD), trial_id=0), BudgetMeter(1e9, DeviceClock()),
                      StageCache(None).view(), seeds)
    assert result.status == "ok", result.error
    assert result.steps == 200 and result.n_train == round(len(task.data.pool) * (1 - VALIDATION_FRACTION))
    test = task.test(result)
    variance = float(np.var(task.data.test.y.astype(np.float64)))
    assert test["mse"] <= 0.5 * variance, (test, variance)
    assert test["rmse"] == pytest.approx(math.sqrt(test["mse"]))
    # the standardised test loss and the original-units MSE differ by the training target variance
    std = result.artifact[2].transform
    assert test["mse"] == pytest.approx(test["loss"] * std.y_std ** 2, rel=1e-4)
    assert result.metrics["val_mse_original"] == pytest.approx(result.metrics["val_mse"] * std.y_std ** 2)
    # the statistics come from the trial's training portion only (no validation or test examples)
    y_pool = task.data.pool.y[task.pool_indices(seeds.subset)]
    train_idx, _ = stratified_split(y_pool, VALIDATION_FRACTION, np.random.default_rng(seeds.split))
    assert std.y_mean == pytest.approx(float(y_pool[train_idx].astype(np.float64).mean()), rel=1e-6)
    assert std.y_mean != pytest.approx(float(y_pool.astype(np.float64).mean()), rel=1e-6)


def test_uci_diverging_learning_rate_is_recorded_as_diverged() -> None:
    """Under the task's recipe (gradient norm clipped at 1.0) no configuration of the space diverges
    here; the implicit family's unclipped paper update at lr 1.0 does, and is recorded so."""
    task = UCIRegression(scale="smoke", dataset="boston")
    config = {"lr": 1.0, "weight_decay": 0.0, "momentum": 0.9}
    clipped = run_trial(task, TrialSpec(config, trial_id=0), BudgetMeter(1e9, DeviceClock()),
                        StageCache(None).view(), Seeds.from_cell(0))
    assert clipped.status == "ok"
    result = run_trial(task, TrialSpec(config, TunerSpec("implicit-fixed"), data="all", trial_id=1),
                       BudgetMeter(1e9, DeviceClock()), StageCache(None).view(), Seeds.from_cell(0))
    assert result.status == "diverged" and result.steps < 200


def test_uci_refit_trains_on_the_whole_pool() -> None:
    task = UCIRegression(scale="smoke", dataset="boston", steps=20)
    result = run_trial(task, TrialSpec(dict(GOOD), data="all", kind="refit", trial_id=3), BudgetMeter(1e9, DeviceClock()),
                      StageCache(None).view(), Seeds.from_cell(0))
    assert result.status == "ok" and result.n_train == len(task.data.pool)
    assert "val_mse" not in result.metrics and math.isfinite(task.test(result)["mse"])


def test_uci_through_the_loop_with_random_search(tmp_path: Path) -> None:
    suite = {
        # a trial costs about 132 units (200 steps x 659 examples x 0.001)
        "name": "uci-small", "clock": "counting", "budget": 1000.0, "refit": True, "threads": 1, "seeds": [0],
        "tasks": [{"name": "uci-regression", "scale": "smoke", "options": {"dataset": "concrete"}}],
        "methods": [{"name": "random", "options": {"max_trials": 3}}],
    }
    path = tmp_path / "uci.yaml"
    path.write_text(yaml.safe_dump(suite))
    api.run(path, out=tmp_path / "out", device="cpu", progress=False)
    [ledger] = list((tmp_path / "out").glob("*.jsonl"))
    rows = read_ledger(ledger).rows
    assert [r["kind"] for r in rows] == ["trial"] * 3 + ["refit"]
    assert rows[-1]["n_train"] == 824 and all(r["n_train"] == 659 for r in rows[:3])  # concrete pool 824
    assert rows[-1]["status"] == "ok"
    for r in rows:
        if r["status"] == "ok":
            assert set(r["test"]) >= {"mse", "rmse", "loss"} and r["test"]["mse"] > 0


def test_uci_options_summary_and_space_without_loading_data() -> None:
    TASKS.check_options("uci-regression", scale="cpu", device="cpu", dataset="concrete")
    task = TASKS.create("uci-regression", scale="cpu", device="cpu", dataset="concrete")
    summary = task.summary()
    assert "data" not in task.__dict__  # nothing was loaded
    assert set(summary["scales"]) == {"smoke", "cpu", "gpu"} and "4000 steps" in summary["scales"]["cpu"]
    assert "full" in summary["scales"]["cpu"]
    assert UCIRegression.space_for("cpu").names == ["lr", "weight_decay", "momentum"]
    assert UCIRegression.space_for("cpu")["weight_decay"].contains(0.0)
    with pytest.raises(UserError, match="unknown dataset"):
        UCIRegression(dataset="iris")


def test_standardiser_round_trip() -> None:
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    y = torch.tensor([10.0, 20.0, 30.0])
    std = Standardiser.fit(x, y)
    assert torch.allclose(std.x(x).mean(0), torch.zeros(2)) and torch.all(std.x(x)[:, 1] == 0)  # constant column
    assert torch.allclose(std.y_original(std.y(y)), y)


# -- synthetic-pipeline ---------------------------------------------------------------------------
CONFIG = {"x1": -1.7, "x2": 2.2, "x3": 0.4, "x4": 0.15, "x5": 0.77, "x6": 0.3, "x7": -3.1}


def test_synthetic_objective_is_deterministic_and_known_at_the_optimum(tmp_path: Path) -> None:
    assert objective_value(OPTIMUM) == pytest.approx(BEST_OBJECTIVE, abs=1e-5)
    values = []
    for i, seed in enumerate((0, 7)):
        task = SyntheticPipeline()
        result = run_trial(task, TrialSpec(dict(CONFIG), trial_id=i), BudgetMeter(1e3, CountingClock()),
                          StageCache(tmp_path / str(i)).view(), Seeds.from_cell(seed))
        assert result.status == "ok" and result.score == pytest.approx(-result.metrics["objective"])
        assert task.test(result) == {"objective": result.metrics["objective"]}
        values.append(result.metrics["objective"])
    assert values[0] == values[1] == objective_value(CONFIG)
    assert objective_value(CONFIG) < BEST_OBJECTIVE
    # the stage values add up to minus the objective
    assert -sum(result.metrics[f"f_{s.name}"] for s in STAGES) == pytest.approx(values[0], abs=1e-12)


def test_synthetic_known_costs_are_charged(tmp_path: Path) -> None:
    task = SyntheticPipeline()
    m = BudgetMeter(1e3, CountingClock())
    result = run_trial(task, TrialSpec(dict(CONFIG), trial_id=0), m, StageCache(tmp_path).view(), Seeds.from_cell(0))
    costs = stage_costs(CONFIG)
    assert m.spent == pytest.approx(sum(costs), abs=1e-12)
    assert m.by_phase()["train"] == pytest.approx(sum(costs), abs=1e-12)
    assert [result.metrics[f"cost_{s.name}"] for s in STAGES] == pytest.approx(list(costs), abs=1e-12)
    # the documented cost law: sum of squared scaled terms / (500 d), each term in [0.5, 1.5] x scale
    for k, (cost, scale) in enumerate(zip(costs, (40.0, 30.0, 20.0))):
        assert (0.5 * scale) ** 2 / 500 - 1e-9 <= cost <= (1.5 * scale) ** 2 / 500 + 1e-9
    # a full pipeline costs a few units on average: a budget of 200 buys tens of evaluations
    rng = np.random.default_rng(0)
    totals = [sum(stage_costs(task.info.space.sample(rng))) for _ in range(2000)]
    assert 3.0 < float(np.mean(totals)) < 10.0
    assert SyntheticPipeline(cost_scales=(20, 15, 10)).stage_costs(CONFIG) == pytest.approx(
        tuple(c / 4 for c in costs))


def test_synthetic_info_space_and_summary() -> None:
    task = TASKS.create("synthetic-pipeline", scale="cpu", device="cpu")
    info = task.info
    assert info.metric == "objective" and info.direction == "max" and info.n_pool == 0
    assert [(s.name, s.params) for s in info.stages] == [("s1", ("x1", "x2")), ("s2", ("x3", "x4", "x5")),
                                                         ("s3", ("x6", "x7"))]
    assert info.space.names == list(PARAM_NAMES)
    assert set(SyntheticPipeline.SCALES) == {"smoke", "cpu", "gpu"}
    summary = task.summary()
    assert summary["name"] == "synthetic-pipeline" and summary["space"] and summary["scales"]
    with pytest.raises(UserError):
        SyntheticPipeline(scale="huge")
    with pytest.raises(UserError):
        SyntheticPipeline(cost_scales=(1.0, 2.0))


# --- the MLP classification tasks and the per-parameter learning-rate option --------------------

def _mlp_trial(name: str, config: dict, **options):
    from hpobench_elbo.contracts import TrialSpec
    from hpobench_elbo.engine.budget import BudgetMeter
    from hpobench_elbo.engine.cache import StageCache
    from hpobench_elbo.engine.clock import CountingClock
    from hpobench_elbo.registry import TASKS
    from hpobench_elbo.engine.seeds import Seeds

    task = TASKS.create(name, scale="smoke", **options)
    result = run_trial(task, TrialSpec(config, data="split", trial_id=0), BudgetMeter(1e9, CountingClock()),
                      StageCache(None).view(), Seeds.from_cell(0))
    return task, result


@pytest.mark.parametrize("name", ["digits-mlp", "mnist-mlp"])
def test_mlp_tasks_learn_at_smoke_scale(name: str) -> None:
    """Held-out test accuracy at least twice chance (10 classes: >= 0.2); measured about 0.8."""
    task, result = _mlp_trial(name, {"lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9})
    assert result.status == "ok"
    assert task.test(result)["accuracy"] >= 0.2


def test_uci_regression_runs_on_the_users_own_table(tmp_path: Path) -> None:
    """Clarke et al.'s Energy, Kin8nm and Power are shipped by no PyPI package: a user with a copy
    runs them as ``dataset: tabular-csv:/path``. Here a small table this test writes (150 rows,
    4 features, a noisy linear target with an integer-looking column to check it stays regression)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=150) + 20.0
    lines = ["a,b,c,d,target"] + [",".join(f"{v:.6f}" for v in row) + f",{t:.6f}" for row, t in zip(x, y)]
    csv = tmp_path / "energy.csv"
    csv.write_text("\n".join(lines) + "\n")
    task = UCIRegression(scale="smoke", dataset=f"tabular-csv:{csv}")
    assert len(task.data.pool) == 120 and len(task.data.test) == 30 and task.data.pool.x.shape[1] == 4
    assert task.data.pool.n_classes is None
    result = run_trial(task, TrialSpec(dict(GOOD), trial_id=0), BudgetMeter(1e9, DeviceClock()),
                       StageCache(None).view(), Seeds.from_cell(0))
    assert result.status == "ok", result.error
    variance = float(np.var(task.data.test.y.astype(np.float64)))
    assert task.test(result)["mse"] <= 0.1 * variance  # a linear target: the MLP fits it
    with pytest.raises(UserError, match="unknown dataset"):
        UCIRegression(dataset="tabular-csv:")
