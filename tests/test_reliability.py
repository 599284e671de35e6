"""Reliability with real processes: one writer per results directory, environment failures (exit 3)
with recovery, a failing cell stops after K failures (exit 4), a hung trial times out, plug-in
mistakes are one line, resume keeps the --only selection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import REPO, SMALL_SUITE, ledgers, read_jsonl, run_cli, write_suite

from hpobench_elbo.contracts import TrialResult
from hpobench_elbo.tasks.mlp import DigitsMLP

PLUGINS = {"PYTHONPATH": str(REPO / "tests")}  # this module, for the module:Name references
BODY = {**SMALL_SUITE, "name": "rel", "seeds": [0], "methods": ["random"], "refit": False}


class AlwaysFailing(DigitsMLP):
    """digits-mlp whose every trial raises (a broken plug-in task)."""

    name = "always-failing"

    def fit(self, trial: Any, prepared: Any, data: Any) -> TrialResult:
        raise RuntimeError("the GPU caught fire")


class Sleepy(DigitsMLP):
    """digits-mlp whose first trial hangs (sleeps far past the suite's trial_timeout)."""

    name = "sleepy"

    def fit(self, trial: Any, prepared: Any, data: Any) -> TrialResult:
        if trial.spec.trial_id == 0:
            time.sleep(60)
        return super().fit(trial, prepared, data)


class BadRecommender:
    """A method that recommends a trial that does not exist."""

    name = "bad-recommender"
    validation = "selection"

    def __init__(self, info: Any, seed: int) -> None:
        self.info = info

    def ask(self, ctx: Any) -> Any:
        from hpobench_elbo.contracts import TrialSpec

        return TrialSpec({"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9})

    def tell(self, spec: Any, result: Any) -> None: ...

    def recommend(self) -> int:
        return 99


def test_a_second_writer_is_refused_and_the_first_is_unharmed(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "budget": 40.0})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "hpobench_elbo.cli", "run", str(suite), "--out", str(out),
                              "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):  # wait until the first holds the lock
            if (out / ".lock").exists() and (out / ".lock").read_text():
                break
            time.sleep(0.05)
        second = run_cli(["run", str(suite), "--out", str(out), "--quiet"])
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and f"process {first.pid}" in second.stderr
    finally:
        out_text, err_text = first.communicate(timeout=120)
    assert first.returncode == 0, err_text
    [rows] = ledgers(out).values()
    trials = [r["trial_id"] for r in rows if r["type"] == "trial"]
    assert trials == list(range(len(trials))) and [r["type"] for r in rows].count("end") == 1


def test_a_killed_writer_leaves_a_lock_that_resume_takes_over(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", BODY)
    out = tmp_path / "out"
    killed = run_cli(["run", str(suite), "--out", str(out), "--quiet"], env={"HPOBENCH_ELBO_FAULT": "ledger-append:2"})
    assert killed.returncode == -signal.SIGKILL and (out / ".lock").exists()
    done = run_cli(["resume", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr
    [rows] = ledgers(out).values()
    assert rows[-1]["type"] == "end" and [r["trial_id"] for r in rows if r["type"] == "trial"][:2] == [0, 1]


def test_a_full_disk_is_one_line_exit_3_and_resume_recovers(tmp_path: Path) -> None:
    """An injected ENOSPC at the ledger write (a real full disk needs a small filesystem this test
    cannot mount): one line naming the path, exit 3, nothing written is lost, resume finishes."""
    suite = write_suite(tmp_path / "s.yaml", BODY)
    out = tmp_path / "out"
    env = {"HPOBENCH_ELBO_FAULT": "ledger-write:3:ENOSPC", "HPOBENCH_ELBO_FAULT_PATH": str(out / "ledger.jsonl")}
    failed = run_cli(["run", str(suite), "--out", str(out), "--quiet"], env=env)
    assert failed.returncode == 3, failed.stderr
    assert failed.stderr.count("\n") == 1 and "No space left on device" in failed.stderr
    assert str(out) in failed.stderr and "Traceback" not in failed.stderr
    [before] = ledgers(out).values()
    # the third row was in the file's buffer when the write failed; closing the file flushed it
    assert [r["type"] for r in before] == ["header", "trial", "trial", "trial"]
    done = run_cli(["resume", str(out), "--quiet"])
    assert done.returncode == 0, done.stderr
    [after] = ledgers(out).values()
    assert after[:len(before)] == before and after[-1]["type"] == "end"


def test_a_read_only_results_directory_is_exit_3(tmp_path: Path) -> None:
    """A path that is a file where the results directory should be: the OS refuses, one line, exit 3."""
    suite = write_suite(tmp_path / "s.yaml", BODY)
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    proc = run_cli(["run", str(suite), "--out", str(blocker / "sub"), "--quiet"])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(blocker) in proc.stderr and "Traceback" not in proc.stderr


def test_a_task_that_always_raises_stops_its_cell_after_k_failures(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "max_failures": 3, "methods": ["random", "grid"],
                                              "tasks": [{"name": f"{__name__}:AlwaysFailing", "scale": "smoke"}]})
    out = tmp_path / "out"
    proc = run_cli(["run", str(suite), "--out", str(out), "--quiet"], env=PLUGINS)
    assert proc.returncode == 4, proc.stderr
    assert "stopped failing" in proc.stderr and "GPU caught fire" in proc.stdout
    for rows in ledgers(out).values():
        trials = [r for r in rows if r["type"] == "trial"]
        assert len(trials) == 3 and all(r["status"] == "failed" for r in trials)
        assert rows[-1]["reason"] == "failing" and "GPU caught fire" in rows[-1]["error"]


def test_a_hung_trial_is_stopped_and_recorded_as_failed(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "trial_timeout": 1.0, "methods": [{"name": "random",
                        "options": {"max_trials": 2}}], "tasks": [{"name": f"{__name__}:Sleepy", "scale": "smoke"}]})
    out = tmp_path / "out"
    started = time.perf_counter()
    proc = run_cli(["run", str(suite), "--out", str(out), "--quiet"], env=PLUGINS)
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - started < 30
    [rows] = ledgers(out).values()
    trials = [r for r in rows if r["type"] == "trial"]
    assert trials[0]["status"] == "failed" and "timeout" in trials[0]["error"]
    assert trials[1]["status"] == "ok"


def test_a_method_that_recommends_a_missing_trial_is_one_line(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "methods": [f"{__name__}:BadRecommender"]})
    proc = run_cli(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet"], env=PLUGINS)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "BadRecommender" in proc.stderr and "trial 99" in proc.stderr


def test_resume_continues_the_only_selection(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "seeds": [0, 1], "budget": 2.0})
    out = tmp_path / "out"
    assert run_cli(["run", str(suite), "--out", str(out), "--quiet", "--only", "seed=1"]).returncode == 0
    assert [p.name for p in out.glob("*.jsonl")] and all("--s1--" in p.name for p in out.glob("*.jsonl"))
    assert run_cli(["resume", str(out), "--quiet"]).returncode == 0
    assert all("--s1--" in p.name for p in out.glob("*.jsonl"))  # seed 0 was not asked for
    status = run_cli(["status", str(out)])
    assert status.stdout.strip().splitlines()[-1].startswith("1 done")
    assert read_jsonl(next(out.glob("*.jsonl")))[-1]["type"] == "end"


class WrongLoad(DigitsMLP):
    """A plug-in task whose load() returns the wrong type."""

    name = "wrong-load"

    def load(self) -> Any:
        return {"x": [1, 2, 3]}


def test_a_task_whose_load_returns_the_wrong_type_is_one_line(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {**BODY, "tasks": [{"name": f"{__name__}:WrongLoad", "scale": "smoke"}]})
    proc = run_cli(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet"], env=PLUGINS)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "wrong-load" in proc.stderr and "load() returned dict" in proc.stderr


def test_a_read_only_filesystem_is_exit_3_and_resume_recovers(tmp_path: Path) -> None:
    """An injected EROFS at the ledger write (this test runs as root, which ignores a read-only
    permission bit, and cannot remount a filesystem): one line, exit 3, nothing lost, then resume."""
    suite = write_suite(tmp_path / "s.yaml", BODY)
    out = tmp_path / "out"
    env = {"HPOBENCH_ELBO_FAULT": "ledger-write:2:EROFS", "HPOBENCH_ELBO_FAULT_PATH": str(out)}
    failed = run_cli(["run", str(suite), "--out", str(out), "--quiet"], env=env)
    assert failed.returncode == 3, failed.stderr
    assert failed.stderr.count("\n") == 1 and "Read-only file system" in failed.stderr and str(out) in failed.stderr
    [before] = ledgers(out).values()
    assert run_cli(["resume", str(out), "--quiet"]).returncode == 0
    [after] = ledgers(out).values()
    assert after[:len(before)] == before and after[-1]["type"] == "end"
