"""One training recipe per task: on image-transfer the plain SGD tuner (search methods) and the ELBo
tuner (DE-ELBo) clip the same total gradient norm and follow the same schedule, observed on what
each tuner's optimizer actually does, not only on the ledger header."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")

from conftest import run_trial  # noqa: E402

from hpobench_elbo.contracts import TrialSpec, TunerSpec  # noqa: E402
from hpobench_elbo.engine.budget import BudgetMeter  # noqa: E402
from hpobench_elbo.engine.cache import StageCache  # noqa: E402
from hpobench_elbo.engine.clock import CountingClock  # noqa: E402
from hpobench_elbo.engine.seeds import Seeds  # noqa: E402
from hpobench_elbo.registry import TASKS  # noqa: E402
from hpobench_elbo.tasks.training import RecipeOptimizer, cosine_lr  # noqa: E402


def observed_steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every RecipeOptimizer step: its owner, scheduled rate, norm before and after clipping."""
    seen: list[dict[str, Any]] = []
    original = RecipeOptimizer.step

    def step(self: RecipeOptimizer, i: int) -> None:
        def norm() -> float:
            grads = [p.grad.detach().reshape(-1) for p in self.clip_params if p.grad is not None]
            return float(torch.cat(grads).norm())

        before = norm()
        self.optimizer.step = lambda: None  # type: ignore[method-assign]  # look, do not move
        original(self, i)
        del self.optimizer.step
        seen.append({"owner": id(self), "step": i, "lr": self.optimizer.param_groups[0]["lr"],
                     "before": before, "after": norm(), "recipe": self.recipe})
        self.optimizer.step()

    monkeypatch.setattr(RecipeOptimizer, "step", step)
    return seen


def test_sgd_and_elbo_tuners_clip_and_schedule_alike_on_image_transfer(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Any) -> None:
    torch.set_num_threads(1)
    task = TASKS.create("image-transfer", scale="smoke", device="cpu")
    recipe = task.info.recipe
    assert recipe.clip_norm == 1.0 and recipe.schedule == "cosine" and recipe.nesterov and recipe.momentum == 0.9
    seen = observed_steps(monkeypatch)
    lr = 0.1
    specs = {
        "sgd": TrialSpec({"lr": lr, "alpha": 0.0, "beta": 0.0}, TunerSpec("sgd"), trial_id=0),
        "elbo": TrialSpec({"lr": lr, "alpha": 0.0, "beta": 0.0}, TunerSpec("elbo"), data="all", trial_id=1),
    }
    by_tuner = {}
    for name, spec in specs.items():
        start = len(seen)
        result = run_trial(task, spec, BudgetMeter(1e9, CountingClock()), StageCache(tmp_path).view(),
                           Seeds.from_cell(0))
        assert result.status == "ok", result.error
        by_tuner[name] = seen[start:]
    for name, steps in by_tuner.items():
        assert len(steps) == recipe.steps and len({s["owner"] for s in steps}) == 1, name
        assert all(s["recipe"] == recipe for s in steps)
        assert [s["lr"] for s in steps] == pytest.approx([cosine_lr(lr, i, recipe.steps) for i in range(recipe.steps)])
        assert all(s["after"] <= recipe.clip_norm * (1 + 1e-5) for s in steps), name
        clipped = [s for s in steps if s["before"] > recipe.clip_norm]
        assert clipped, f"{name}: no step exceeded the clip norm, the check would prove nothing"
        assert all(math.isclose(s["after"], recipe.clip_norm, rel_tol=1e-4) for s in clipped), name
