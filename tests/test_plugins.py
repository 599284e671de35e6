"""Plug-ins from outside the package (``tests/plugins/``, written from the README only) run through a
real suite: a method with its own tuner and a staged task with a cached stage."""

from __future__ import annotations

from pathlib import Path

from conftest import ledgers, write_suite

from hpobench_elbo import api


def test_plugin_method_and_staged_task_run_through_a_suite(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "plugins.yaml", {
        "name": "plugins", "clock": "counting", "budget": 5.0, "refit": False, "seeds": [0],
        "tasks": [{"name": "plugins.projected_digits:ProjectedDigits", "scale": "smoke"}],
        "methods": [{"name": "plugins.polyak:PolyakSearch", "options": {"trials": 3}}, "random"],
    })
    api.run(suite, out=tmp_path / "out", device="cpu", progress=False)
    found = ledgers(tmp_path / "out")
    polyak = next(rows for cell, rows in found.items() if "PolyakSearch" in cell)
    trials = [r for r in polyak if r["type"] == "trial"]
    assert len(trials) == 3 and all(r["status"] == "ok" for r in trials)
    assert all(r["tuner"]["name"] == "plugins.polyak:PolyakTuner" for r in trials)
    assert all(r["trajectory"][-1]["averaged_steps"] > 1 and r["cost"]["hyper"] > 0 for r in trials)
    best = max(r["test"]["accuracy"] for r in trials)
    assert best > 0.3, [r["test"]["accuracy"] for r in trials]  # chance is 0.1 on 10 classes
    random_trials = [r for cell, rows in found.items() if "random" in cell for r in rows if r["type"] == "trial"]
    dims = [r["config"]["proj_dim"] for r in random_trials]
    # a projection this cell already computed is read from its cache, charged the read price
    repeated = [r for i, r in enumerate(random_trials) if dims[i] in dims[:i]]
    assert repeated and all(r["cache_hits"] == 1 and r["metrics"]["n_memoised"] == 1.0 for r in repeated)
    assert all(r["metrics"]["cost_project"] > 0 for r in random_trials)
