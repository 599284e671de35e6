"""The refit guard (engine/loop.refit_verdict, budget rule in engine/budget.py).

The real case of issue 18: on uci-regression (Boston, cpu scale: 4,000 full-batch steps) the grid's
configuration lr 1.0, momentum 0.9, weight decay 1e-5 trains to a sound model on the 80% split of
seed 2's pool, and its refit on all N collapses to predicting the mean (standardised training MSE
near 1). The cell runs through the real loop and Trainer under the counting clock (deterministic);
the guard must keep the selected trial's own model deployed, record why, and keep the refit charged.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from hpobench_elbo import api
from hpobench_elbo.contracts import TrialResult, TrialSpec
from hpobench_elbo.engine.budget import REFIT_LOSS_FACTOR, REFIT_LOSS_SLACK
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.engine.loop import refit_verdict
from hpobench_elbo.report import stats
from hpobench_elbo.report.data import read_report_data
from hpobench_elbo.report.traces import cell_traces, load_results

CHOSEN = {"lr": 1.0, "momentum": 0.9, "weight_decay": 1e-05}


def test_a_collapsed_refit_is_rejected_and_the_selected_trial_stays_deployed(tmp_path: Path) -> None:
    suite = {"name": "refit-guard", "clock": "counting",
             "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": 0.01},
             "budget": 1e5, "refit": True, "cache": True, "threads": 1, "seeds": [2],
             "tasks": [{"name": "uci-regression", "scale": "cpu",
                        "methods": [{"name": "grid", "options": {"values": {k: [v] for k, v in CHOSEN.items()}}}]}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "results"
    [summary] = api.run(path, out=out, device="cpu", progress=False)
    contents = read_ledger(out / f"{summary.cell_id}.jsonl")
    trial, refit = contents.rows
    assert trial["kind"] == "trial" and trial["config"] == CHOSEN and trial["status"] == "ok"
    assert refit["kind"] == "refit" and refit["status"] == "ok" and refit["refit_of"] == trial["trial_id"]

    selected, collapsed = trial["metrics"]["train_loss"], refit["metrics"]["train_loss"]
    assert selected < 0.5 and collapsed > 0.9  # the refit predicts about the mean; its trial does not
    assert collapsed > REFIT_LOSS_FACTOR * selected + REFIT_LOSS_SLACK
    assert refit["test"]["mse"] > 2 * trial["test"]["mse"]  # what deploying the refit would have cost
    assert refit["refit_status"] == "rejected" and "training loss" in refit["refit_reason"]
    assert "refit_status" not in trial

    # the selected trial's own model is deployed: recommendation, end record, summary, trace
    assert refit["recommendation"] == trial["trial_id"] == contents.end["recommendation"] == summary.recommendation
    frame = load_results(out)
    trace = cell_traces(frame, "mse")
    assert trace["recommended"].iloc[-1] == trial["test"]["mse"]
    # the refit's cost stays charged
    refit_cost = sum(v for k, v in refit["cost"].items() if k != "test")
    assert refit_cost > 0.5 * sum(v for k, v in trial["cost"].items() if k != "test")
    assert contents.end["spent"] == refit["spent"]
    between = refit["spent"] - trial["spent"] - refit_cost  # the grid's last ask (it was done), one event
    assert 0 <= between <= 0.01
    # the report counts it
    data = read_report_data(out)
    table = stats.status_table(data)
    assert table.loc[table["method"] == "grid", "rejected_refits"].tolist() == [1]
    assert table.loc[table["method"] == "grid", "refits"].tolist() == [1]


def result(train_loss: float | None, status: str = "ok") -> TrialResult:
    return TrialResult(spec=TrialSpec(config={}), status=status, cost={},
                       metrics={} if train_loss is None else {"train_loss": train_loss})


def test_the_verdict_accepts_within_the_margin_and_rejects_non_finite_losses() -> None:
    assert refit_verdict(result(0.2), result(0.2 * REFIT_LOSS_FACTOR + REFIT_LOSS_SLACK)) == ("accepted", None)
    assert refit_verdict(result(0.001), result(0.04)) == ("accepted", None)  # the slack: noise near zero
    verdict, reason = refit_verdict(result(0.2), result(0.36))
    assert verdict == "rejected" and "0.36" in reason
    verdict, reason = refit_verdict(result(0.2), result(math.nan))
    assert verdict == "rejected" and "not finite" in reason
    assert refit_verdict(result(None), result(0.3))[0] == "unchecked"
