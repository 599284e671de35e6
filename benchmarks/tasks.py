"""Per task, one trial of a default configuration under the device clock.

Prints the device time of one trial (stage extraction included, as a cell pays it the first time),
the test metric of the default configuration, and for each staged pipeline the ratio of the charged
cost of a trial that changes only the last stage to that of a full trial (goal: at most 0.1).

    python benchmarks/tasks.py --scale cpu            # every task
    python benchmarks/tasks.py --scale gpu --device cuda --tasks image-transfer text-transfer
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpobench_elbo.api import resolve_device
from hpobench_elbo.contracts import TrialSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.clock import DeviceClock
from hpobench_elbo.contracts import TrialContext
from hpobench_elbo.registry import TASKS, build_tuner
from hpobench_elbo.engine.seeds import Seeds

# A sensible default configuration per task family (keys not in a task's space are dropped).
DEFAULTS: dict[str, Any] = {
    "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "alpha": 1e-4, "beta": 1e-4,
    "head_lr": 0.05, "head_l2": 1e-4, "adapt_lr": 1e-2,
}
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "uci-regression": {"dataset": "boston"},
}


def default_config(task: Any, rng: np.random.Generator) -> dict[str, Any]:
    space = task.info.space
    config = {}
    for name, param in space:
        value = DEFAULTS.get(name)
        if value is None or not param.contains(value):
            grid = param.grid_values()
            value = grid[len(grid) // 2]
        config[name] = value
    return space.validate(config)


def run_trial(task: Any, spec: TrialSpec, cache: Any, seeds: Seeds, device: str) -> tuple[float, dict[str, float], str]:
    meter = BudgetMeter(1e9, DeviceClock(device))
    cache.begin_trial()
    result = task.run(spec, TrialContext(meter, cache, seeds, build_tuner))
    metrics = task.test(result) if result.status == "ok" else {}
    return meter.spent, metrics, result.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--once", action="store_true", help="skip the second trial in the same cell")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    names = args.tasks or TASKS.names()
    seeds = Seeds.from_cell(0)
    rng = np.random.default_rng(0)
    print(f"scale {args.scale}, device {device} ({DeviceClock(device).unit}), {args.threads} threads")
    print(f"{'task':22s} {'first trial s':>13s} {'again s':>9s} {'test metric':>22s}  {'last-stage-only / full':>22s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            task = TASKS.create(name, scale=args.scale, device=device, **TASK_OPTIONS.get(name, {}))
            if args.scale not in type(task).SCALES:
                continue
            store = StageCache(Path(tmp) / name)
            cache = store.view()
            config = default_config(task, rng)
            started = time.perf_counter()
            first, metrics, status = run_trial(task, TrialSpec(config, trial_id=0), cache, seeds, device)
            again = float("nan") if args.once else run_trial(task, TrialSpec(config, trial_id=1), cache, seeds, device)[0]
            ratio = ""
            stages = task.info.stages
            if len(stages) >= 3:
                last = stages[-1].params
                changed = dict(config)
                for p in last:
                    values = [v for v in task.info.space[p].grid_values() if v != config[p]]
                    changed[p] = values[0]
                fresh = store.view()  # a new cell: pays every stage once for the full trial
                full, _, _ = run_trial(task, TrialSpec(changed, trial_id=2), fresh, seeds, device)
                only_last, _, _ = run_trial(task, TrialSpec(dict(config), trial_id=3), fresh, seeds, device)
                ratio = f"{only_last:.3g}/{full:.3g} = {only_last / full:.3f}"
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "loss") or status
            print(f"{name:22s} {first:13.3f} {again:9.3f} {shown:>22s}  {ratio:>22s}"
                  f"   ({time.perf_counter() - started:.0f} s wall)", flush=True)


if __name__ == "__main__":
    main()
