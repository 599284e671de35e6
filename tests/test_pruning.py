"""In-trial pruning, one contract for all: checkpoints in the spec, the trainer's intermediate value,
the method's answer, status ``pruned`` (charged, never recommended), and exact replay on resume."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
from conftest import SMALL_SUITE, ledgers, run_cli, write_suite
from golden_ledgers import differences, documented

from hpobench_elbo import api

PRICES = SMALL_SUITE["clock_options"]
BODY = {**SMALL_SUITE, "name": "prune", "seeds": [0], "budget": 8.0}


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prune")
    suite = write_suite(root / "s.yaml", {**BODY, "methods": ["asha", "de-elbo-pruned"]})
    api.run(suite, out=root / "out", device="cpu", progress=False)
    return root / "out"


def test_a_pruned_trial_is_charged_its_steps_and_checkpoint_passes(pruned_run: Path) -> None:
    checked = 0
    for rows in ledgers(pruned_run).values():
        header = rows[0]
        batch = header["recipe"]["batch_size"]
        for row in rows[1:]:
            if row["type"] != "trial" or row["status"] != "pruned":
                continue
            checked += 1
            k = len(row["intermediate"])
            assert k >= 1 and row["intermediate"][-1][0] == row["steps"]  # stopped at its last checkpoint
            step_price = batch * PRICES["per_example"] + PRICES["per_event"]
            assert math.isclose(row["cost"]["train"], row["steps"] * step_price, rel_tol=1e-9)
            if row["data"] == "split":  # a validation pass per checkpoint, charged to validate
                n_val = (row["cost"]["validate"] / k - PRICES["per_event"]) / PRICES["per_example"]
                assert n_val > 10 and abs(n_val - round(n_val)) < 1e-6  # k passes over the same validation split
            else:  # DE-ELBo: the mean training objective, no extra pass and no validation data
                assert "validate" not in row["cost"]
            assert math.isclose(row["cost"]["method"], (2 + k) * PRICES["per_event"], rel_tol=1e-9)  # ask, tell, k answers
    assert checked >= 3


def test_a_pruned_trial_is_never_recommended(pruned_run: Path) -> None:
    for rows in ledgers(pruned_run).values():
        status = {r["trial_id"]: r["status"] for r in rows if r["type"] == "trial"}
        assert "pruned" in status.values()
        recommended = {r["recommendation"] for r in rows if r.get("recommendation") is not None}
        assert all(status[t] == "ok" for t in recommended)


def test_sigkill_right_after_a_pruning_decision_resumes_to_the_same_ledgers(tmp_path: Path,
                                                                            pruned_run: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "methods": ["asha", "de-elbo-pruned"]})  # the same suite
    out = tmp_path / "out"
    killed = run_cli(["run", str(suite), "--out", str(out), "--quiet", "--only", "method=asha"],
                     env={"HPOBENCH_ELBO_FAULT": "prune:3"})
    assert killed.returncode == -signal.SIGKILL
    done = run_cli(["resume", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr
    reference = {c: rows for c, rows in ledgers(pruned_run).items() if "--asha--" in c}
    assert reference.keys() == ledgers(out).keys()
    assert not differences({c: [documented(r) for r in rows] for c, rows in reference.items()},
                           {c: [documented(r) for r in rows] for c, rows in ledgers(out).items()})
