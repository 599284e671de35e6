"""``image-transfer`` and ``text-transfer`` at smoke scale, through the real loop (CountingClock).

Each task runs one cell of two grid points (same ``lr`` and ``alpha``, ``beta`` in {1e-4, 0}) with
the stage cache on disk, then one direct ``task.run`` on the same store to inspect the trained
model. Thresholds (stated, measured on 2 CPU cores):

* image-transfer (Animal-MNIST, 10 balanced classes): held-out test accuracy (500 fixed test
  images) >= 0.2 = twice chance. Measured: about 0.59 at lr 0.01.
* text-transfer (tweets, 3 classes: 42% / 39% / 18%): test accuracy >= 2/3 = twice chance; the
  text smoke scale uses N = 300 and 60 steps because 100 texts stay just under it. Measured: about
  0.71 at lr 0.03.
* The feature stage is charged once per cell: trial 0 pays the true cost (CountingClock: N = 100
  example passes + one event), trial 1 is a cache hit charged the read price (0.01).
* Test features are never charged: their 500 example passes appear in the row's ``test`` phase
  (trial 0 only), ``train`` is exactly the feature stage plus 30 steps x (16 examples + 1 event)
  x 0.001, and the meter's ``spent`` is the sum of every phase but ``test``.
* Fine-tuning moves the trainable top away from the pretrained weights; the frozen part (and the
  shared pretrained network) stays bit-identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hpobench_elbo import api  # noqa: E402
from hpobench_elbo.contracts import TrialSpec  # noqa: E402
from hpobench_elbo.engine.budget import BudgetMeter  # noqa: E402
from hpobench_elbo.engine.cache import StageCache  # noqa: E402
from hpobench_elbo.engine.clock import CountingClock  # noqa: E402
from hpobench_elbo.engine.ledger import read_ledger  # noqa: E402
from hpobench_elbo.registry import TASKS  # noqa: E402
from hpobench_elbo.engine.seeds import Seeds  # noqa: E402
from hpobench_elbo.errors import UserError  # noqa: E402
from hpobench_elbo.tasks import backbones  # noqa: E402
from hpobench_elbo.tasks.transfer import ImageTransfer, TextTransfer, TransferModel  # noqa: E402
from conftest import run_trial, write_suite  # noqa: E402

PER_EXAMPLE, PER_EVENT, CACHE_READ = 0.001, 0.001, 0.01
SMOKE_STEPS, SMOKE_BATCH, SMOKE_N = 30, 16, 100
CONFIGS = {
    "image-transfer": {"lr": [0.01], "alpha": [1e-4], "beta": [1e-4, 0.0]},
    "text-transfer": {"lr": [0.03], "alpha": [1e-4], "beta": [1e-4, 0.0]},
}
THRESHOLD = {"image-transfer": 0.2, "text-transfer": 2 / 3}
# tweets are short: 32 tokens instead of the smoke scale's 64 halves the shared cell's time (was ~34 s)
OPTIONS: dict[str, dict[str, Any]] = {"image-transfer": {}, "text-transfer": {"max_tokens": 32}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    torch.set_num_threads(1)


def run_cell(root: Path, task: str, values: dict[str, list[Any]], refit: bool = False,
             options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One cell (seed 0) of a grid over ``values`` (in order) through ``api.run``; its ledger rows."""
    suite = {
        "name": f"{task}-small", "clock": "counting",
        "clock_options": {"per_example": PER_EXAMPLE, "per_event": PER_EVENT, "cache_read": CACHE_READ},
        "budget": 1000.0, "refit": refit, "cache": True, "threads": 1, "seeds": [0],
        "tasks": [{"name": task, "scale": "smoke", "options": dict(options or {})}],
        "methods": [{"name": "grid", "options": {"values": values, "shuffle": False}}],
    }
    out = root / "results"
    api.run(write_suite(root / "suite.yaml", suite), out=out, device="cpu", progress=False)
    [ledger] = list(out.glob("*.jsonl"))
    return read_ledger(ledger).rows


@pytest.fixture(scope="module", params=["image-transfer", "text-transfer"])
def cell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, list[dict]]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    return name, root, run_cell(root, name, CONFIGS[name], options=OPTIONS[name])


def test_space_info_and_scales() -> None:
    for cls in (ImageTransfer, TextTransfer):
        space = cls.space_for("smoke")
        assert space.names == ["lr", "alpha", "beta"]
        assert len(space.grid()) == 4 * 6 * 6  # METHODS.md A.6's L2-SP grid
        assert space["alpha"].contains(0.0) and space["beta"].contains(0.0) and not space["lr"].contains(0.2)
        summary = TASKS.create(cls.name, scale="cpu").summary()
        assert set(summary["scales"]) == set(cls.SCALES) >= {"smoke", "cpu", "gpu"}
    assert "64 px" in ImageTransfer(scale="cpu").summary()["scales"]["cpu"]
    assert "full fine-tuning" in ImageTransfer(scale="gpu").summary()["scales"]["gpu"]
    info = ImageTransfer(scale="smoke").info
    assert info.has_backbone and info.n_pool == SMOKE_N and info.metric == "accuracy" and info.direction == "max"
    assert info.n_classes == 10
    with pytest.raises(UserError, match="dataset"):
        TextTransfer(dataset="boston")
    with pytest.raises(UserError, match="augment"):
        ImageTransfer(augment=True)  # cached features of frozen blocks cannot be augmented


def smoke(name: str) -> tuple[int, int, int]:
    """(steps, batch size, N) of the task's smoke scale."""
    scale = TASKS.get(name).SCALES["smoke"]
    return scale.steps, scale.batch_size, scale.n


def test_learning_reaches_the_stated_threshold(cell: tuple[str, Path, list[dict]]) -> None:
    name, _, rows = cell
    steps, _, n = smoke(name)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    for r in rows:
        assert r["steps"] == steps and 0.78 * n <= r["n_train"] <= 0.8 * n  # 80% of N, stratified per class
        assert r["test"]["accuracy"] >= THRESHOLD[name], (name, r["test"])


def test_feature_stage_is_charged_once_per_cell(cell: tuple[str, Path, list[dict]]) -> None:
    name, _, (first, second) = cell
    n_steps, batch, n = smoke(name)
    features = n * PER_EXAMPLE + PER_EVENT
    steps = n_steps * (batch * PER_EXAMPLE + PER_EVENT)
    assert (first["cache_misses"], first["cache_hits"]) == (1, 0)
    assert (second["cache_misses"], second["cache_hits"]) == (0, 1)
    assert first["metrics"]["cost_features"] == pytest.approx(features)
    assert second["metrics"]["cost_features"] == pytest.approx(features)  # the true cost, recorded on a hit too
    assert first["cost"]["train"] == pytest.approx(features + steps)
    assert second["cost"]["train"] == pytest.approx(steps)
    assert second["cost"]["cache"] == pytest.approx(CACHE_READ) and "cache" not in first["cost"]
    assert second["cost_saved"] == pytest.approx(features - CACHE_READ)
    assert second["metrics"]["n_memoised"] == 1.0 and first["metrics"]["n_memoised"] == 0.0


def test_test_features_are_recorded_never_charged(cell: tuple[str, Path, list[dict]]) -> None:
    _, _, rows = cell
    first, second = rows
    evaluation = PER_EVENT  # the loop's test unit (one event: the loop prices no examples for it)
    # trial 0 also extracts the 500 test features (500 example passes): recorded under "test", not "train"
    assert first["cost"]["test"] == pytest.approx(500 * PER_EXAMPLE + PER_EVENT + evaluation)
    # trial 1 reuses them: only its own evaluation is recorded
    assert second["cost"]["test"] == pytest.approx(evaluation)
    # what the meter charged (``spent``) is the sum of every phase but "test"
    charged = 0.0
    for r in rows:
        charged += sum(v for k, v in r["cost"].items() if k != "test")
        assert r["spent"] == pytest.approx(charged)
        assert r["meter"]["test"] > 0 and r["spent"] == pytest.approx(
            sum(v for k, v in r["meter"].items() if k != "test"))


def test_trained_top_moves_frozen_part_does_not(cell: tuple[str, Path, list[dict]]) -> None:
    name, root, _ = cell
    task = TASKS.create(name, scale="smoke", device="cpu", **OPTIONS[name])
    shared = (backbones._efficientnet_lite0_pretrained() if name == "image-transfer"
              else backbones._minilm_pretrained()[0])
    shared_before = {k: v.clone() for k, v in shared.state_dict().items()}
    frozen_before = {k: v.clone() for k, v in task.backbone.frozen.state_dict().items()}
    meter = BudgetMeter(1000.0, CountingClock(PER_EXAMPLE, PER_EVENT, CACHE_READ))
    config = {k: v[0] for k, v in CONFIGS[name].items()}
    result = run_trial(task, TrialSpec(config, trial_id=0), meter, StageCache(root / "results" / "cache").view(),
                      Seeds.from_cell(0))
    assert result.status == "ok", result.error
    assert meter.by_phase()["test"] == 0.0  # test features came from the shared store: nothing recomputed
    model, _, _ = result.artifact
    assert isinstance(model, TransferModel)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(("backbone.", "head.")) for n in names)
    assert {n for n in names if n.startswith("backbone.")} == set(task.prior_mean)
    pretrained = task.backbone.pretrained_params()
    trained = {n[len("backbone."):]: p.detach() for n, p in model.named_parameters() if n.startswith("backbone.")}
    assert all(not torch.equal(trained[n], pretrained[n]) for n in trained)  # every trained tensor moved
    distance = torch.sqrt(sum(((trained[n] - pretrained[n]) ** 2).sum() for n in trained))
    norm = torch.sqrt(sum((pretrained[n] ** 2).sum() for n in trained))
    # by a visible amount (the recipe clips the gradient norm at 1.0, so 30 smoke steps move it ~1e-3)
    assert distance / norm >= 5e-4, float(distance / norm)
    for key, value in task.backbone.frozen.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    for key, value in shared.state_dict().items():
        assert torch.equal(value, shared_before[key]), key
    # the prior mean is the pretrained top, untouched by training
    for n, v in task.prior_mean.items():
        assert torch.equal(v, pretrained[n[len("backbone."):]])
    # a fresh model per trial: a second build starts from the pretrained values again
    fresh, _ = task.build_model(seed=1, config={})
    for n, p in fresh.named_parameters():
        if n.startswith("backbone."):
            assert torch.equal(p.detach(), pretrained[n[len("backbone."):]])
