"""``image-pipeline`` and ``text-pipeline`` (features -> adapt -> head) at smoke scale through the real
loop with the CountingClock (per example 0.001, per event 0.001, cache read 0.01).

Each cell runs a grid of two points that differ only in the head (``head_lr`` 1.0 then 0.1), so
trial 1 reads the features and adapt stages from the cell's cache and computes only the head.
Stated thresholds:

* learning: held-out test accuracy (500 fixed test examples) >= 0.2 = twice chance for the 10
  Animal-MNIST classes (measured about 0.57), and >= 2/3
  (twice chance for the 3 tweet classes; the text smoke pool is N = 300 for that reason);
* memoization: trial 1 is charged at most 0.25 x trial 0 (CountingClock: a full trial costs
  0.101 + 0.741 + 0.101 = 0.943 units for the three stages, the head-only one 2 x 0.01 + 0.101 =
  0.121, a ratio of 0.13; under the device clock the ratio is about 0.02, see the report);
* the true per-stage costs (``cost_features``, ``cost_adapt``, ``cost_head``) are recorded in
  every trial, hit or not, and equal the counting prices of the stages;
* the adapted test features are computed inside the adapt stage but recorded under ``test``,
  never charged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hpobench_elbo.contracts import TrialSpec, TunerSpec  # noqa: E402
from hpobench_elbo.engine.budget import BudgetMeter  # noqa: E402
from hpobench_elbo.engine.cache import StageCache  # noqa: E402
from hpobench_elbo.engine.clock import CountingClock  # noqa: E402
from hpobench_elbo.registry import TASKS  # noqa: E402
from hpobench_elbo.engine.seeds import Seeds  # noqa: E402
from hpobench_elbo.tasks.pipelines import ImagePipeline, TextPipeline  # noqa: E402
from conftest import run_trial  # noqa: E402
from test_transfer import CACHE_READ, PER_EVENT, PER_EXAMPLE, run_cell  # noqa: E402

N, BATCH, ADAPT_STEPS = 100, 16, 40
PREP = {"image-pipeline": "resolution", "text-pipeline": "max_tokens"}
THRESHOLD = {"image-pipeline": 0.2, "text-pipeline": 2 / 3}
RATIO = 0.25  # the counting clock prices a head pass like a backbone pass; device clock: about 0.02


def grid(name: str) -> dict[str, list[Any]]:
    return {PREP[name]: [32], "adapt_lr": [0.01], "adapt_steps": [ADAPT_STEPS], "head_lr": [1.0, 0.1],
            "head_l2": [1e-4]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["image-pipeline", "text-pipeline"])
def cell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, list[dict]]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    # the image cell also refits the recommended configuration on all N (a new adapt stage)
    return name, root, run_cell(root, name, grid(name), refit=name == "image-pipeline")


def stage_prices(name: str) -> dict[str, float]:
    """Counting prices of the three stages at the task's smoke scale (N pool examples)."""
    n = TASKS.get(name).SCALES["smoke"].n
    return {
        "features": n * PER_EXAMPLE + PER_EVENT,
        "adapt": (ADAPT_STEPS * BATCH + n) * PER_EXAMPLE + PER_EVENT,
        "head": n * PER_EXAMPLE + PER_EVENT,
    }


def charged(row: dict[str, Any]) -> float:
    return sum(v for k, v in row["cost"].items() if k != "test")


def test_space_stages_and_info() -> None:
    for cls in (ImagePipeline, TextPipeline):
        task = TASKS.create(cls.name, scale="smoke")
        info = task.info
        assert [s.name for s in info.stages] == ["features", "adapt", "head"]
        assert [n for s in info.stages for n in s.params] == info.space.names
        assert info.metric == "accuracy" and info.direction == "max" and info.has_backbone
        assert info.space[cls.PREP].grid_values() == [32, 48, 64]
        assert info.space["head_l2"].contains(0.0)
        assert set(task.summary()["scales"]) == set(cls.SCALES) >= {"smoke", "cpu", "gpu"}


def test_learning_reaches_the_stated_threshold(cell: tuple[str, Path, list[dict]]) -> None:
    name, _, rows = cell
    trials = [r for r in rows if r["kind"] == "trial"]
    assert [r["status"] for r in trials] == ["ok", "ok"], [r.get("error") for r in rows]
    for r in trials:
        assert r["score_name"] == "validation loss" and 0.0 <= r["metrics"]["val_accuracy"] <= 1.0
        assert r["test"]["accuracy"] >= THRESHOLD[name], (name, r["test"])


def test_head_only_trial_is_charged_a_fraction(cell: tuple[str, Path, list[dict]]) -> None:
    name, _, rows = cell
    first, second = rows[:2]
    price = stage_prices(name)
    assert (first["cache_misses"], first["cache_hits"]) == (3, 0)
    assert (second["cache_misses"], second["cache_hits"]) == (1, 2)
    assert second["metrics"]["n_memoised"] == 2.0 and first["metrics"]["n_memoised"] == 0.0
    for r in (first, second):  # true stage costs, recorded whether or not the stage was a hit
        for stage, value in price.items():
            assert r["metrics"][f"cost_{stage}"] == pytest.approx(value), stage
        assert r["metrics"]["cost_true_total"] == pytest.approx(sum(price.values()))
    assert first["cost"]["train"] == pytest.approx(sum(price.values()))
    assert second["cost"]["train"] == pytest.approx(price["head"])
    assert second["cost"]["cache"] == pytest.approx(2 * CACHE_READ)
    ratio = charged(second) / charged(first)
    assert ratio <= RATIO, ratio
    assert second["cost_saved"] == pytest.approx(price["features"] + price["adapt"] - 2 * CACHE_READ)


def test_test_features_are_never_charged(cell: tuple[str, Path, list[dict]]) -> None:
    _, _, rows = cell
    first, second = rows[:2]
    # trial 0: frozen test features (500) + adapted test features (500) + the loop's test unit
    assert first["cost"]["test"] == pytest.approx(2 * (500 * PER_EXAMPLE + PER_EVENT) + PER_EVENT)
    assert second["cost"]["test"] == pytest.approx(PER_EVENT)
    total = 0.0
    for r in (first, second):  # (the refit row follows an unrecorded final ask of the method)
        total += sum(v for k, v in r["cost"].items() if k != "test")
        assert r["spent"] == pytest.approx(total)


@pytest.mark.parametrize("cell", ["image-pipeline"], indirect=True)
def test_refit_uses_the_whole_pool(cell: tuple[str, Path, list[dict]]) -> None:
    name, _, rows = cell
    refit = rows[-1]
    assert refit["kind"] == "refit" and refit["status"] == "ok", refit.get("error")
    assert refit["n_train"] == N and refit["score_name"] == "final training loss"
    assert refit["cache_hits"] == 1 and refit["metrics"]["n_memoised"] == 1.0  # features read, new adapt
    assert refit["test"]["accuracy"] >= THRESHOLD[name]


@pytest.mark.parametrize("cell", ["image-pipeline"], indirect=True)
def test_budget_cut_and_unsupported_tuner(cell: tuple[str, Path, list[dict]]) -> None:
    name, root, _ = cell
    task = TASKS.create(name, scale="smoke")
    config = {k: v[0] for k, v in grid(name).items()}
    clock = CountingClock(PER_EXAMPLE, PER_EVENT, CACHE_READ)
    # the feature stage (0.101) is started within a budget of 0.05 and overshoots; the adapt stage is refused
    meter = BudgetMeter(0.05, clock)
    result = run_trial(task, TrialSpec(config, trial_id=0), meter, StageCache(root / "results" / "cache").view(),
                      Seeds.from_cell(0))
    assert result.status == "cut" and result.steps == 1 and "cost_features" in result.metrics
    assert meter.overshoot == pytest.approx(0.101 - 0.05)
    failed = run_trial(task, TrialSpec(config, tuner=TunerSpec("elbo"), trial_id=1), BudgetMeter(10.0, clock),
                      StageCache(None).view(), Seeds.from_cell(0))
    assert failed.status == "failed" and "tuner" in (failed.error or "")


def test_resume_on_a_staged_pipeline_equals_the_uninterrupted_run(cell: tuple[str, Path, list[dict]],
                                                                  tmp_path: Path) -> None:
    """The same cell killed (SIGKILL, a fault-injection point) right after its first trial, then
    resumed in a fresh process: the ledger equals the uninterrupted one on every documented field,
    and no stage cost is NaN (a cache read reports the stage's recorded true cost)."""
    import json
    import math

    from conftest import run_cli
    from golden_ledgers import differences, documented

    name, root, rows = cell
    out = tmp_path / "results"
    killed = run_cli(["run", str(root / "suite.yaml"), "--out", str(out), "--device", "cpu", "--quiet"],
                     env={"HPOBENCH_ELBO_FAULT": "ledger-append:1"})
    assert killed.returncode == -9, killed.stderr
    [ledger] = list(out.glob("*.jsonl"))
    assert len(ledger.read_text().splitlines()) == 2  # header and the first trial
    done = run_cli(["resume", str(out), "--device", "cpu", "--quiet"])
    assert done.returncode == 0, done.stderr
    resumed = [json.loads(line) for line in ledger.read_text().splitlines()]
    original = [json.loads(line) for line in (root / "results" / ledger.name).read_text().splitlines()]
    assert not differences([documented(r) for r in original], [documented(r) for r in resumed])
    costs = [v for r in resumed if r["type"] == "trial" for k, v in r["metrics"].items() if k.startswith("cost_")]
    assert costs and all(v is not None and math.isfinite(v) for v in costs)
    assert any(r.get("cache_hits") for r in resumed if r["type"] == "trial")
