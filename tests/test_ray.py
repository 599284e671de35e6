"""``--executor ray`` (``executors.ray.run_ray``) on real local clusters, the counting clock.

One ``ray.cluster_utils.Cluster`` per module: a head with no CPUs (so cells go to the workers) and
two worker nodes of one CPU each, all on loopback. Ray is optional: without it these tests skip,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpobench_elbo.engine.loop import EXEC_LOG_ENV, RunContext
from hpobench_elbo.executors.worker import WORKER_FAULT_ENV
from hpobench_elbo.suite import suite_from_mapping

from conftest import SMALL_SUITE, assert_only_in_flight_reran, exec_counts
from golden_ledgers import differences, normalised_ledgers

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
for _key, _value in LOOPBACK.items():  # before Ray is imported: every process of these clusters needs them
    os.environ.setdefault(_key, _value)

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError as exc:  # pragma: no cover - depends on the environment
    RAY_MISSING: str | None = f"ray is not importable ({exc}); pip install -e '.[ray]'"
else:
    RAY_MISSING = None


def require_ray() -> None:
    """Skip without Ray, but fail under CI, where the Ray executor must be tested."""
    if RAY_MISSING is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {RAY_MISSING}", pytrace=False)
    pytest.skip(RAY_MISSING)


@pytest.fixture(scope="module")
def cluster():
    if RAY_MISSING is not None:
        yield None
        return
    head_args = {"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
                 "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}}
    made = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        workers = [made.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        made.wait_for_nodes()
        made.worker_nodes_ = workers  # type: ignore[attr-defined]
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        made.shutdown()


def small(**changes):
    suite = suite_from_mapping({**SMALL_SUITE, **changes})
    return suite, suite.cells()


def context(out: Path, suite) -> RunContext:
    return RunContext(out_dir=out, device="cpu", suite_hash=suite.suite_hash)


def headers(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text().splitlines()[0]) for p in sorted(out.glob("*.jsonl"))}


def assert_same_as_sequential(reference: Path, out: Path, cells, ignore: tuple[str, ...] = ()) -> None:
    def strip(found):
        return {k: [{f: v for f, v in r.items() if f not in ignore} for r in recs] for k, recs in found.items()
                if k in {c.cell_id for c in cells}}

    expected, actual = strip(normalised_ledgers(reference)), strip(normalised_ledgers(out))
    assert sorted(actual) == sorted(expected) == sorted(c.cell_id for c in cells)
    assert differences(expected, actual) == []


def test_cells_spread_over_both_nodes_and_match_the_local_executor(cluster, small_run, tmp_path: Path) -> None:
    require_ray()
    from hpobench_elbo.executors.ray import RayRun

    _, reference = small_run
    suite, cells = small()
    out, log = tmp_path / "ray", tmp_path / "exec.log"
    run = RayRun(cells, context(out, suite), progress=False, cache_dir=tmp_path / "cache")
    summaries = run.run(cluster.address, runtime_env={"env_vars": {EXEC_LOG_ENV: str(log)}})
    assert not ray.is_initialized()  # it connected, so it disconnected; the cluster stays
    assert [s.reason for s in summaries] == ["refit reserve"] * 4
    assert_same_as_sequential(reference, out, cells)
    wheres = [h["where"] for h in headers(out).values()]
    assert {w["executor"] for w in wheres} == {"ray"}
    assert {w["node_id"] for w in wheres} == {n.node_id for n in cluster.worker_nodes_}  # both, never the head
    counts = exec_counts(log)
    assert set(counts.values()) == {1} and len(counts) == sum(s.n_trials for s in summaries)


def test_joins_a_head_started_with_ray_start(small_run, tmp_path: Path) -> None:
    require_ray()
    from hpobench_elbo.executors.ray import run_ray

    _, reference = small_run
    suite, cells = small(methods=["grid"], seeds=[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **LOOPBACK}
    ray_cli = Path(sys.executable).with_name("ray")
    log = tmp_path / "head.log"
    with open(log, "w") as sink:
        head = subprocess.Popen([str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                                 "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text() and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Ray runtime started" in log.read_text(), log.read_text()
        out = tmp_path / "ray"
        summaries = run_ray(cells, context(out, suite), address=f"127.0.0.1:{port}", progress=False,
                            cache_dir=tmp_path / "cache")
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops every process it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    assert [s.reason for s in summaries] == ["refit reserve"]
    assert_same_as_sequential(reference, out, cells, ignore=("suite_hash",))  # the reference suite is larger
    assert headers(out)[cells[0].cell_id]["where"]["node_ip"] == "127.0.0.1"


def test_a_lost_node_costs_only_the_trial_in_flight(cluster, small_run, tmp_path: Path) -> None:
    """Last in the module: it removes one of the two worker nodes."""
    require_ray()
    from hpobench_elbo.executors.ray import RayRun

    _, reference = small_run
    suite, cells = small()
    victim = next(c for c in cells if c.method == "random" and c.seed == 0)
    out, log, marker = tmp_path / "ray", tmp_path / "exec.log", tmp_path / "stalled"
    fault = {"at": 2, "action": "stall", "seconds": 120, "once": str(marker), "cell": victim.cell_id}
    removed: list[str] = []

    def remove_the_node() -> None:  # once the victim is mid-trial, take its node away
        deadline = time.monotonic() + 90
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        node_id = json.loads(marker.read_text())["node_id"]
        node = next(n for n in cluster.worker_nodes_ if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)
        removed.append(node_id)

    remover = threading.Thread(target=remove_the_node, daemon=True)
    remover.start()
    run = RayRun(cells, context(out, suite), progress=False, cache_dir=tmp_path / "cache")
    summaries = run.run(cluster.address, runtime_env={"env_vars": {EXEC_LOG_ENV: str(log),
                                                                   WORKER_FAULT_ENV: json.dumps(fault)}})
    remover.join(timeout=5)
    assert removed, "the node was never removed"
    attempts = run.driver.attempts[victim.cell_id]
    assert len(attempts) == 2 and attempts[0].outcome.startswith("died") and attempts[1].outcome == "done"
    assert attempts[0].where["node_id"] == removed[0] != attempts[1].where["node_id"]
    assert attempts[0].rows == 1  # trial 0 was recorded before the node went
    assert [s.reason for s in summaries] == ["refit reserve"] * 4
    assert_same_as_sequential(reference, out, cells)
    assert_only_in_flight_reran(out, log, (victim.cell_id, 1))
