"""Kill runs of the smoke suite at random moments and at fault-injection points, resume each, and
count what was lost or run again.

    python benchmarks/faults.py [--kills 20] [--suite suites/smoke.yaml] [--seed 0] [--out DIR]

1. One uninterrupted run of the suite (the counting clock: deterministic) is the reference.
2. ``--kills`` runs are each stopped at a random moment of the reference's wall time, alternately by
   SIGKILL and SIGINT (Ctrl-C), then resumed (``hpobench-elbo resume``) until they finish.
3. One run per fault-injection point (``engine/faults.py``: inside a ledger append between write
   and fsync, after an append, before a refit, during a stage-cache write) is killed there and
   resumed.

Every trial execution is logged outside the ledger (``HPOBENCH_ELBO_EXEC_LOG``). Printed per run
and in total: trials lost (in the reference, missing at the end), trials rerun beyond the one in
flight when the run stopped, and whether the final ledgers equal the reference on the documented
fields (``engine/ledger.documented_fields``). Goal: 0, 0, all equal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpobench_elbo.engine.faults import FAULT_ENV  # noqa: E402
from hpobench_elbo.engine.ledger import documented_fields  # noqa: E402
from hpobench_elbo.engine.loop import EXEC_LOG_ENV  # noqa: E402

FAULT_POINTS = ("ledger-write:5", "ledger-append:9", "refit:1", "cache-write:2")


def cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "hpobench_elbo.cli", *args, "--quiet"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def ledgers(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.stem: [documented_fields(json.loads(x)) for x in p.read_text().splitlines() if x.strip()]
            for p in sorted(out.glob("*.jsonl"))}


def trial_ids(found: dict[str, list[dict[str, Any]]]) -> set[tuple[str, int]]:
    return {(cell, r["trial_id"]) for cell, rows in found.items() for r in rows if r.get("type") == "trial"}


def executions(log: Path) -> Counter[tuple[str, int]]:
    if not log.exists():
        return Counter()
    return Counter((cell, int(trial)) for cell, trial in (line.split() for line in log.read_text().splitlines()))


def finish(out: Path, log: Path) -> None:
    for _ in range(5):
        proc = cli(["resume", str(out)], {EXEC_LOG_ENV: str(log)})
        proc.wait()
        if proc.returncode == 0:
            return
    raise RuntimeError(f"{out}: resume did not finish ({proc.stderr.read() if proc.stderr else ''})")


def one_run(suite: Path, root: Path, name: str, reference: dict[str, list[dict[str, Any]]],
            stop: tuple[float, int] | None = None, fault: str | None = None) -> dict[str, Any]:
    out, log = root / name, root / f"{name}.exec"
    env = {EXEC_LOG_ENV: str(log), **({FAULT_ENV: fault} if fault else {})}
    proc = cli(["run", str(suite), "--out", str(out)], env)
    if stop is not None:
        delay, sig = stop
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
    proc.wait()
    stopped_with = proc.returncode
    before = trial_ids(ledgers(out)) if out.exists() else set()
    in_flight = set(executions(log)) - before  # started but not recorded when the run stopped
    finish(out, log)
    final = ledgers(out)
    counts = executions(log)
    rerun = sum(n - 1 for n in counts.values() if n > 1) - len(in_flight & {k for k, n in counts.items() if n > 1})
    return {"run": name, "stopped": stopped_with, "lost": len(trial_ids(reference) - trial_ids(final)),
            "rerun": max(0, rerun), "in_flight": len(in_flight), "equal": final == reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--suite", default=str(REPO / "suites" / "smoke.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.out or tempfile.mkdtemp(prefix="faults-"))
    root.mkdir(parents=True, exist_ok=True)
    suite = root / "suite.yaml"  # a copy: editing the original during the benchmark changes nothing
    shutil.copyfile(args.suite, suite)
    started = time.perf_counter()
    ref_out = root / "reference"
    proc = cli(["run", str(suite), "--out", str(ref_out)])
    proc.wait()
    wall = time.perf_counter() - started
    reference = ledgers(ref_out)
    print(f"reference: {len(trial_ids(reference))} trials in {len(reference)} cells, {wall:.1f} s wall")
    results = []
    for i in range(args.kills):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        delay = rng.uniform(0.05 * wall, 0.95 * wall)
        results.append(one_run(suite, root, f"kill{i:02d}", reference, stop=(delay, sig)))
        r = results[-1]
        print(f"{r['run']} {sig.name:7s} at {delay:5.1f} s: lost {r['lost']}, rerun {r['rerun']} "
              f"(in flight {r['in_flight']}), equal {r['equal']}", flush=True)
    for point in FAULT_POINTS:
        results.append(one_run(suite, root, f"fault-{point.replace(':', '-')}", reference, fault=point))
        r = results[-1]
        print(f"{r['run']} (exit {r['stopped']}): lost {r['lost']}, rerun {r['rerun']} "
              f"(in flight {r['in_flight']}), equal {r['equal']}", flush=True)
    print(f"total over {len(results)} interrupted runs: trials lost {sum(r['lost'] for r in results)}, "
          f"rerun beyond the one in flight {sum(r['rerun'] for r in results)}, "
          f"final ledgers equal to the uninterrupted run {sum(r['equal'] for r in results)}/{len(results)} "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
