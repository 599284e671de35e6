"""Kill runs of the smoke suite at random moments and at fault-injection points, resume each, and
count what was lost or run again.

    python benchmarks/faults.py [--kills 20] [--suite suites/smoke.yaml] [--seed 0] [--out DIR] [--no-disk-full]

1. One uninterrupted run of the suite (the counting clock: deterministic) is the reference.
2. ``--kills`` runs are each stopped at a random moment of the reference's wall time, alternately by
   SIGKILL and SIGINT (Ctrl-C), then resumed (``hpobench-elbo resume``) until they finish.
3. One run per fault-injection point (``engine/faults.py``: inside a ledger append between write
   and fsync, after an append, before a refit, during a stage-cache write) is killed there and
   resumed.
4. **A full disk** (issue 21): runs whose disk fills up, each of which must stop by itself with
   exit 3 and record nothing it did not finish (no ``failed`` trial that the reference does not
   have), then resume to the uninterrupted result: ENOSPC injected at the second stage-cache write
   and at the fifth ledger write (``engine/faults.py``, ``<point>:<n>:ENOSPC``: every write from
   there on fails, a disk that stays full), and, where this process may mount one (root), a real
   tmpfs of ``--disk-kib`` KiB as the results directory, copied to a disk with space before the
   resume (the user's recovery). Printed per run: the exit code, failed trials recorded that the
   reference lacks, and the same three counts.

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

from hpobench_elbo.engine.faults import FAULT_ENV, FAULT_PATH_ENV  # noqa: E402
from hpobench_elbo.engine.ledger import documented_fields  # noqa: E402
from hpobench_elbo.engine.loop import EXEC_LOG_ENV  # noqa: E402

FAULT_POINTS = ("ledger-write:5", "ledger-append:9", "refit:1", "cache-write:2")
DISK_FULL_POINTS = ("cache-write:2:ENOSPC", "ledger-write:5:ENOSPC")


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


def failed_trials(found: dict[str, list[dict[str, Any]]]) -> set[tuple[str, int]]:
    return {(cell, r["trial_id"]) for cell, rows in found.items() for r in rows
            if r.get("type") == "trial" and r.get("status") == "failed"}


def one_run(suite: Path, root: Path, name: str, reference: dict[str, list[dict[str, Any]]],
            stop: tuple[float, int] | None = None, fault: str | None = None,
            small_disk: Path | None = None) -> dict[str, Any]:
    """One interrupted run, resumed to the end. ``small_disk``: the run writes there (a mounted
    small filesystem) and is copied to ``root`` before the resume."""
    out, log = root / name, root / f"{name}.exec"
    target = small_disk / name if small_disk is not None else out
    env = {EXEC_LOG_ENV: str(log), **({FAULT_ENV: fault} if fault else {})}
    if fault and fault.count(":") == 2:
        env[FAULT_PATH_ENV] = str(target / ("cache" if fault.startswith("cache") else "ledger.jsonl"))
    proc = cli(["run", str(suite), "--out", str(target)], env)
    if stop is not None:
        delay, sig = stop
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
    proc.wait()
    stopped_with = proc.returncode
    message = proc.stderr.read().strip() if proc.stderr else ""
    if small_disk is not None:
        shutil.copytree(target, out, ignore=shutil.ignore_patterns(".lock"))
    stopped = ledgers(out) if out.exists() else {}
    before = trial_ids(stopped)
    new_failed = len(failed_trials(stopped) - failed_trials(reference))
    in_flight = set(executions(log)) - before  # started but not recorded when the run stopped
    finish(out, log)
    final = ledgers(out)
    counts = executions(log)
    rerun = sum(n - 1 for n in counts.values() if n > 1) - len(in_flight & {k for k, n in counts.items() if n > 1})
    return {"run": name, "stopped": stopped_with, "lost": len(trial_ids(reference) - trial_ids(final)),
            "rerun": max(0, rerun), "in_flight": len(in_flight), "equal": final == reference,
            "recorded": len(before), "new_failed": new_failed, "message": message.splitlines()[-1] if message else ""}


def mount_small_disk(where: Path, kib: int) -> str | None:
    """Mount a real tmpfs of ``kib`` KiB at ``where``; None, or why it cannot be mounted here."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else f"mount failed: {proc.stderr.strip() or proc.returncode}"


def disk_full_runs(suite: Path, root: Path, reference: dict[str, list[dict[str, Any]]], kib: int) -> list[dict[str, Any]]:
    results = [one_run(suite, root, f"disk-full-{p.split(':')[0]}", reference, fault=p) for p in DISK_FULL_POINTS]
    small = root / "small-disk"
    why = mount_small_disk(small, kib)
    if why is None:
        try:
            results.append(one_run(suite, root, f"disk-full-tmpfs-{kib}k", reference, small_disk=small))
        finally:
            subprocess.run(["umount", str(small)], check=False)
    else:
        print(f"real small filesystem: not run ({why}); the injected ENOSPC runs cover the same code paths")
    for r in results:
        print(f"{r['run']} (exit {r['stopped']}, {r['recorded']} trials recorded, failed trials the reference "
              f"lacks {r['new_failed']}): lost {r['lost']}, rerun {r['rerun']} (in flight {r['in_flight']}), "
              f"equal {r['equal']}; message: {r['message'][:160]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--suite", default=str(REPO / "suites" / "smoke.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--no-disk-full", action="store_true", help="leave out the full-disk runs")
    parser.add_argument("--disk-kib", type=int, default=160, help="size of the real small filesystem (root only)")
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
    disk = [] if args.no_disk_full else disk_full_runs(suite, root, reference, args.disk_kib)
    if disk:
        print(f"full disk: {len(disk)} runs, exit 3 in {sum(r['stopped'] == 3 for r in disk)}, failed trials "
              f"recorded that the reference lacks {sum(r['new_failed'] for r in disk)}, trials lost "
              f"{sum(r['lost'] for r in disk)}, rerun beyond the one in flight {sum(r['rerun'] for r in disk)}, "
              f"final ledgers equal {sum(r['equal'] for r in disk)}/{len(disk)}")
    results += disk
    print(f"total over {len(results)} interrupted runs: trials lost {sum(r['lost'] for r in results)}, "
          f"rerun beyond the one in flight {sum(r['rerun'] for r in results)}, "
          f"final ledgers equal to the uninterrupted run {sum(r['equal'] for r in results)}/{len(results)} "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
