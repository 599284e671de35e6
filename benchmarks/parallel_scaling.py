"""Parallel cells: wall-time speedup of two cells at a time over one, and the driver's cost per row.

A suite of fixed work per cell (digits-mlp at smoke scale, random search, the CountingClock, so
every cell runs the same trials whatever the machine's speed; one torch thread per cell) runs:

* through ``run_parallel`` with ``jobs=1`` and ``jobs=2`` (worker processes), and
* through ``run_ray`` on a local Ray started with 1 CPU and with 2 CPUs (one CPU per cell).

It prints the wall time of each (worker start-up included; Ray's own start is not), the CPU time
of the ``--jobs`` worker processes (equal for one and two at a time when parallel cells add no
work: then the speedup is bounded only by the free cores), the speedup
(goal >= 1.7x on two cores) and the driver's own CPU time per ledger row it handled
(``time.process_time()`` in the driver over the whole run: receiving, appending, fsync, progress,
starting workers; and the part spent inside the driver's append alone). Goal <= 10 ms per row.
The ledgers of every run are compared with the first on documented fields.

    python benchmarks/parallel_scaling.py [--budget 40] [--cells 4] [--no-ray] [--out DIR]

The numbers depend on what else runs on the machine: run ``uptime`` beside it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpobench_elbo.engine.loop import RunContext
from hpobench_elbo.executors.parallel import ParallelRun
from hpobench_elbo.suite import suite_from_mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from golden_ledgers import differences, normalised_ledgers  # noqa: E402

GOAL_SPEEDUP = 1.7
GOAL_ROW_MS = 10.0


def suite(budget: float, cells: int) -> Any:
    return suite_from_mapping({
        "name": "scaling", "clock": "counting", "budget": budget, "refit": False, "threads": 1,
        "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": 0.01},
        "seeds": list(range(cells)), "tasks": [{"name": "digits-mlp", "scale": "smoke"}], "methods": ["random"],
    })


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, run: Any, out: Path) -> dict[str, Any]:
    cpu, wall, workers = time.process_time(), time.perf_counter(), children_cpu()
    summaries = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    workers = children_cpu() - workers  # worker processes (reaped); not Ray's, whose workers are not our children
    driver = getattr(run, "__self__").driver
    rows = driver.rows_handled
    return {"label": label, "wall": wall, "rows": rows, "trials": sum(s.n_trials for s in summaries),
            "workers_cpu": workers, "cpu_per_row_ms": 1000 * cpu / max(1, rows), "append_per_row_ms": 1000 * driver.handling_cpu / max(1, rows),
            "out": out}


def ray_runs(s: Any, root: Path) -> list[dict[str, Any]]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from hpobench_elbo.executors.ray import RayRun

    found = []
    for cpus in (1, 2):
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=cpus, log_to_driver=False)
        try:
            out = root / f"ray-{cpus}cpu"
            run = RayRun(s.cells(), RunContext(out, "cpu", s.suite_hash), progress=False, cache_dir=root / "cache")
            found.append(measure(f"ray, {cpus} at a time", run.run, out))
        finally:
            ray.shutdown()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=40.0, help="cost units per cell (fixed work)")
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="parallel-scaling-"))
    s = suite(args.budget, args.cells)
    print(f"{args.cells} cells x budget {args.budget:g} (digits-mlp smoke, random, counting clock); "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; results under {root}")
    results = []
    for jobs in (1, 2):
        out = root / f"jobs-{jobs}"
        run = ParallelRun(s.cells(), RunContext(out, "cpu", s.suite_hash), jobs=jobs, progress=False,
                          cache_dir=root / "cache")
        results.append(measure(f"--jobs {jobs}", run.run, out))
    if not args.no_ray:
        results += ray_runs(s, root)
    reference = normalised_ledgers(results[0]["out"])
    print(f"{'run':22s} {'wall s':>8s} {'workers CPU s':>14s} {'rows':>6s} {'driver CPU/row':>15s} "
          f"{'append/row':>11s}  same ledgers")
    for r in results:
        same = differences(reference, normalised_ledgers(r["out"])) == []
        workers = f"{r['workers_cpu']:14.2f}" if r["label"].startswith("--jobs") else f"{'-':>14s}"
        print(f"{r['label']:22s} {r['wall']:8.2f} {workers} {r['rows']:6d} {r['cpu_per_row_ms']:12.2f} ms "
              f"{r['append_per_row_ms']:8.2f} ms  {same}")
    for one, two in ((results[0], results[1]), *(((results[2], results[3]),) if len(results) > 2 else ())):
        speedup = one["wall"] / two["wall"]
        print(f"speedup {two['label']} over {one['label']}: {speedup:.2f}x (goal >= {GOAL_SPEEDUP}x)")
    worst = max(r["cpu_per_row_ms"] for r in results)
    print(f"driver CPU per row, worst run: {worst:.2f} ms (goal <= {GOAL_ROW_MS} ms); load now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
