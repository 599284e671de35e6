"""Harness overhead under the DeviceClock: how much of a cell's wall time is *not* charged.

Runs ``suites/cpu.yaml``-like work (by default mnist-mlp at cpu scale, random search, one seed,
90 device-seconds) cell by cell through the real loop (``CellRunner``), timing each cell's wall
clock, and reads the charged cost and the (uncharged) test time back from the ledgers:

    uncharged = wall - charged - test          (the harness: ask/tell plumbing outside units,
                                                data preparation per trial, ledger writes, ...)
    overhead  = uncharged / (wall - test)      goal: < 1 %
    per trial = uncharged / trials             the bookkeeping time of one trial

Setting a cell up (constructing the task, loading its data, opening the ledger) happens once per
cell and is shown separately ("setup"); it is not part of the loop's overhead.

    python benchmarks/overhead.py [--budget 90] [--task mnist-mlp] [--scale cpu]
                                  [--method random] [--seeds 0] [--out DIR] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpobench_elbo.api import resolve_device
from hpobench_elbo.contracts import PHASES
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.engine.loop import CellRunner, RunContext
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.registry import build_cell, build_tuner
from hpobench_elbo.suite import suite_from_mapping

GOAL = 0.01


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="device-seconds per cell (default 90)")
    parser.add_argument("--task", default="mnist-mlp")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--method", action="append", help="repeatable (default: random)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="results directory (default: a fresh temporary one)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the gaps between charged units (adds a few microseconds per unit, "
                             "so the headline numbers then include the instrumentation)")
    return parser.parse_args()


def warm_up(device: str) -> float:
    """One-time process costs, kept out of the cells' numbers: the first ``torch.optim`` optimizer of a
    process imports ``torch._dynamo`` (seconds), and the first autograd pass initialises the engine."""
    import torch

    t0 = time.perf_counter()
    w = torch.zeros(4, 4, device=device, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    (w @ torch.ones(4, 1, device=device)).sum().backward()
    opt.step()
    return time.perf_counter() - t0


class GapRecorder:
    """Times the uncharged gaps between consecutive outermost units, keyed by (previous, next) phase.

    It wraps ``BudgetMeter.unit`` (two time stamps and a generator per unit) and tracks nesting so
    only the gaps *outside* every unit are counted: train->train is the per-step loop, method->train
    a trial's set-up (task.run before its first step), method->method the ledger write and the ask.
    """

    def __init__(self) -> None:
        self.gaps: dict[tuple[str, str], list[float]] = {}
        self._depth = 0
        self._last: tuple[str, float] | None = None

    def install(self) -> None:
        from hpobench_elbo.engine import budget

        recorder, original_unit = self, budget.BudgetMeter.unit

        @contextmanager
        def unit(meter: Any, phase: str, examples: int = 0, check: bool = True) -> Any:
            outer = recorder._depth == 0
            if outer and recorder._last is not None:
                prev, t_end = recorder._last
                recorder.gaps.setdefault((prev, phase), []).append(time.perf_counter() - t_end)
            recorder._depth += 1
            try:
                with original_unit(meter, phase, examples, check):
                    yield
            finally:
                recorder._depth -= 1
                if outer:
                    recorder._last = (phase, time.perf_counter())

        budget.BudgetMeter.unit = unit  # type: ignore[method-assign]

    def cut(self) -> None:
        """A cell ended: the next gap belongs to no cell."""
        self._last = None

    def summary(self) -> list[tuple[str, int, float, float]]:
        rows = [(f"{a} -> {b}", len(v), sum(v), 1e6 * sum(v) / len(v)) for (a, b), v in self.gaps.items()]
        return sorted(rows, key=lambda r: -r[2])


def measure_cell(runner_args: tuple[Any, ...]) -> dict[str, Any]:
    cell, ctx, cache = runner_args
    t0 = time.perf_counter()
    task, method = build_cell(cell, ctx.device, Seeds.from_cell(cell.seed).sampler)
    runner = CellRunner(cell, task, method, build_tuner, ctx, cache)
    t1 = time.perf_counter()
    runner.run()
    t2 = time.perf_counter()
    contents = read_ledger(ctx.out_dir / f"{cell.cell_id}.jsonl")
    rows = contents.rows
    charged = float(contents.end["spent"]) if contents.end else float(rows[-1]["spent"])
    test = sum(float(r["cost"].get("test", 0.0)) for r in rows)
    by_phase = {p: sum(float(r["cost"].get(p, 0.0)) for r in rows) for p in PHASES}
    wall = t2 - t1
    uncharged = wall - charged - test
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "cell": cell.cell_id, "trials": len(rows), "statuses": statuses, "setup_s": t1 - t0, "wall_s": wall,
        "test_s": test, "charged_s": charged, "wall_in_units_s": runner.meter.wall_charged,
        "uncharged_s": uncharged, "overhead": uncharged / (wall - test),
        "per_trial_ms": 1e3 * uncharged / max(1, len(rows)), "by_phase": by_phase,
        "overshoot_s": float(contents.end.get("overshoot", 0.0)) if contents.end else 0.0,
        "budget_s": cell.budget, "unit": contents.header["unit"],
    }


def main() -> None:
    args = parse_args()
    methods = args.method or ["random"]
    device = resolve_device(args.device)
    suite = suite_from_mapping({
        "name": "overhead", "clock": "device", "budget": args.budget, "refit": True, "threads": args.threads,
        "seeds": args.seeds, "tasks": [{"name": args.task, "scale": args.scale}], "methods": methods,
    }, where="benchmarks/overhead.py")
    warmup = warm_up(device)
    recorder = None
    if args.breakdown:
        recorder = GapRecorder()
        recorder.install()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hpobench-overhead-"))
    ctx = RunContext(out_dir=out, device=device, suite_hash=suite.suite_hash)
    cache = StageCache(out / "cache", enabled=suite.cache)
    print(f"{args.task} at {args.scale} scale, {', '.join(methods)}, seeds {args.seeds}, "
          f"{args.budget:g} device-seconds per cell, DeviceClock on {device}, {args.threads} thread(s); out {out}")
    print(f"process warm-up (first optimizer imports torch._dynamo; not in the table): {warmup:.2f} s")
    results = []
    for cell in suite.cells():
        results.append(measure_cell((cell, ctx, cache)))
        if recorder is not None:
            recorder.cut()
        r = results[-1]
        print(f"  done {r['cell']}: {r['trials']} trials in {r['wall_s']:.1f} s", flush=True)

    head = (f"{'cell':44s} {'trials':>6s} {'setup s':>8s} {'wall s':>8s} {'test s':>7s} {'charged s':>10s} "
            f"{'uncharged s':>11s} {'overhead':>9s} {'per trial':>10s}")
    print()
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['cell']:44s} {r['trials']:6d} {r['setup_s']:8.2f} {r['wall_s']:8.2f} {r['test_s']:7.2f} "
              f"{r['charged_s']:10.2f} {r['uncharged_s']:11.3f} {100 * r['overhead']:8.3f}% "
              f"{r['per_trial_ms']:8.1f}ms")
    tot = {k: sum(r[k] for r in results) for k in ("trials", "setup_s", "wall_s", "test_s", "charged_s",
                                                    "uncharged_s")}
    overall = tot["uncharged_s"] / (tot["wall_s"] - tot["test_s"])
    per_trial = 1e3 * tot["uncharged_s"] / max(1, tot["trials"])
    print("-" * len(head))
    print(f"{'all cells':44s} {tot['trials']:6d} {tot['setup_s']:8.2f} {tot['wall_s']:8.2f} {tot['test_s']:7.2f} "
          f"{tot['charged_s']:10.2f} {tot['uncharged_s']:11.3f} {100 * overall:8.3f}% {per_trial:8.1f}ms")
    print()
    for r in results:
        phases = ", ".join(f"{p} {v:.2f}" for p, v in r["by_phase"].items() if v)
        print(f"{r['cell']}: statuses {r['statuses']}; charged by phase (s): {phases}; "
              f"overshoot {r['overshoot_s']:.3f} s; wall inside charged units {r['wall_in_units_s']:.2f} s")
    if recorder is not None:
        print("\nwhere the uncharged time goes (gaps between charged units, all cells; test is a unit too):")
        print(f"  {'previous -> next unit':28s} {'count':>7s} {'total s':>9s} {'mean us':>10s}")
        for name, count, total, mean in recorder.summary()[:8]:
            print(f"  {name:28s} {count:7d} {total:9.3f} {mean:10.1f}")
        rest = tot["uncharged_s"] - sum(r[2] for r in recorder.summary())
        print(f"  {'rest (unit entry/exit outside the clock, cell start and end)':60s} {rest:.3f} s")
    verdict = "meets" if overall < GOAL else "MISSES"
    print(f"\nharness overhead {100 * overall:.3f}% of wall time (test excluded) {verdict} the goal "
          f"(< {100 * GOAL:g}%); bookkeeping {per_trial:.1f} ms per trial; unit: {results[0]['unit']}")
    (out / "overhead.json").write_text(json.dumps({"cells": results, "overall": overall,
                                                   "per_trial_ms": per_trial}, indent=2))


if __name__ == "__main__":
    main()
