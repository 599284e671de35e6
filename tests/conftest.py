"""Shared helpers: write suite files, run the CLI in a subprocess, read ledgers, one shared small run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A small, deterministic suite: digits-mlp at smoke scale under the CountingClock (~1 s per cell).
SMALL_SUITE: dict[str, Any] = {
    "name": "small",
    "clock": "counting",
    "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": 0.01},
    "budget": 6.0,
    "refit": True,
    "threads": 1,
    "seeds": [0, 1],
    "tasks": [{"name": "digits-mlp", "scale": "smoke"}],
    "methods": ["random", "grid"],
}


def write_suite(path: Path, suite: Mapping[str, Any] | str) -> Path:
    """Write ``suite`` (a mapping, dumped as YAML, or raw text) to ``path``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(suite if isinstance(suite, str) else yaml.safe_dump(dict(suite), sort_keys=False))
    return path


def run_cli(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m hpobench_elbo.cli ARGS`` in a fresh process (text output captured)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "hpobench_elbo.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ledgers(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Cell id -> the records of its ledger (header, trials, end)."""
    return {p.stem: read_jsonl(p) for p in sorted(Path(out_dir).glob("*.jsonl"))}


@pytest.fixture
def suite_file(tmp_path: Path) -> Callable[..., Path]:
    """``suite_file(mapping_or_text, name="suite.yaml")`` writes a suite into ``tmp_path``."""

    def make(suite: Mapping[str, Any] | str, name: str = "suite.yaml") -> Path:
        return write_suite(tmp_path / name, suite)

    return make


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One finished run of ``SMALL_SUITE`` (in process), shared read-only: (suite file, results dir).

    Tests that change the results must copy the directory first.
    """
    from hpobench_elbo import api

    root = tmp_path_factory.mktemp("small_run")
    suite = write_suite(root / "small.yaml", SMALL_SUITE)
    out = root / "results"
    api.run(suite, out=out, device="cpu", progress=False)
    return suite, out


def run_trial(task: Any, spec: Any, meter: Any, cache: Any, seeds: Any) -> Any:
    """``task.run`` with a trial context built from a meter, a cache view and seeds (the registry's tuners)."""
    from hpobench_elbo.contracts import TrialContext
    from hpobench_elbo.registry import build_tuner

    return task.run(spec, TrialContext(meter, cache, seeds, build_tuner))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of ``suites/smoke.yaml`` per test session (counting clock), shared read-only.

    Made as the golden ledgers are: the CLI in a fresh process under portable numerics
    (``golden_ledgers.run_smoke_suite``), so its ledgers do not depend on the processor.
    """
    from golden_ledgers import run_smoke_suite

    return run_smoke_suite(tmp_path_factory.mktemp("smoke_run") / "results")


def exec_counts(log: Path) -> Counter[tuple[str, int]]:
    """(cell id, trial id) -> executions, from an ``HPOBENCH_ELBO_EXEC_LOG`` file."""
    counts: Counter[tuple[str, int]] = Counter()
    for line in log.read_text().splitlines():
        cell, trial = line.split()
        counts[(cell, int(trial))] += 1
    return counts


def assert_only_in_flight_reran(out: Path, log: Path, in_flight: tuple[str, int]) -> None:
    """Every recorded trial ran, nothing else ran, and only ``in_flight`` (cell, trial) ran twice."""
    counts = exec_counts(log)
    recorded = {(cell, r["trial_id"]) for cell, recs in ledgers(out).items() for r in recs if r["type"] == "trial"}
    assert set(counts) == recorded  # no trial lost, nothing else ran
    assert {k: n for k, n in counts.items() if n != 1} == {in_flight: 2}  # only the one in flight
