"""Memoization-aware BO against the cost-aware baselines on the synthetic pipeline (METHODS.md C.5-C.6).

    python benchmarks/bo.py [--seeds 5] [--budget 200] [--scale smoke|cpu|gpu] [--out DIR]
    python benchmarks/bo.py --task image-pipeline --scale cpu --budget 150 [--jobs 2] [--analyse DIR]

``eeipu``, ``ei``, ``carbo`` and ``eips`` on ``synthetic-pipeline`` under the counting clock with the
paper's setting: cache reads priced epsilon = 0.1, the method's own work priced 0 (``per_event: 0``;
stated in the output), one budget of cost units per cell, the same warm-up draws for every method of
a seed, no refit. Printed per method (medians over seeds): candidates evaluated within the budget,
best objective at the end, improvement after warm-up (best at the end minus best of the warm-up),
trials that read at least one stage from the cache, and the method's own wall time per ``ask`` after
warm-up (measured around ``ask``; 2 CPU cores shared with whatever else runs). Goals (measured, not
required): EEIPU evaluates at least twice as many candidates as EI; its median improvement after
warm-up is at least EI's.

``--task image-pipeline``: the real staged pipeline under the device clock (every charge measured,
the method's own work included, ``--jobs`` cells at once), with plain method names; the own time per
iteration is then the charged ``method`` phase of each trial after warm-up (ask and tell), read from
the ledgers. ``--analyse DIR`` prints the table of an existing results directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpobench_elbo import api, load_results  # noqa: E402
from hpobench_elbo.methods.bo import CArBO, EEIPU, EIPS, ExpectedImprovementBO  # noqa: E402

ASK_SECONDS: dict[str, list[float]] = {}
"""Own time per ask after warm-up, per method (filled by the timed subclasses below)."""


def timed(cls: type) -> type:
    class Timed(cls):  # type: ignore[misc, valid-type]
        def ask(self, ctx: Any) -> Any:
            started = time.perf_counter()
            spec = super().ask(ctx)
            if ctx.n_completed >= self.options["n_init"]:
                ASK_SECONDS.setdefault(self.name, []).append(time.perf_counter() - started)
            return spec

    Timed.__name__ = Timed.__qualname__ = f"Timed{cls.__name__}"
    return Timed


TimedEEIPU, TimedEI, TimedCArBO, TimedEIPS = (timed(c) for c in (EEIPU, ExpectedImprovementBO, CArBO, EIPS))
CLASSES = {"eeipu": "TimedEEIPU", "ei": "TimedEI", "carbo": "TimedCArBO", "eips": "TimedEIPS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=200.0)
    parser.add_argument("--scale", default="cpu", help="the BO methods' settings (QMC samples, restarts)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--task", default="synthetic-pipeline", choices=("synthetic-pipeline", "image-pipeline"))
    parser.add_argument("--jobs", type=int, default=2, help="image-pipeline: cells at once")
    parser.add_argument("--analyse", default=None, help="image-pipeline: only print the table of this results dir")
    args = parser.parse_args()
    if args.task == "image-pipeline":
        real_pipeline(args)
        return
    sys.modules.setdefault("bo_bench", sys.modules[__name__])
    out = Path(args.out or tempfile.mkdtemp(prefix="bo-"))
    out.mkdir(parents=True, exist_ok=True)
    suite = {"name": "bo-bench", "clock": "counting", "budget": args.budget, "refit": False,
             "clock_options": {"per_example": 0.001, "per_event": 0.0, "cache_read": 0.1},
             "seeds": list(range(args.seeds)), "threads": 1,
             "tasks": [{"name": "synthetic-pipeline", "scale": args.scale}],
             "methods": [{"name": f"bo_bench:{cls}", "label": name} for name, cls in CLASSES.items()]}
    path = out / "bo-bench.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    started = time.perf_counter()
    api.run(path, out=out / "results", device="cpu", progress=True)
    frame = load_results(out / "results")
    print(f"synthetic-pipeline, budget {args.budget:g} cost units, {args.seeds} seeds, scale {args.scale}; "
          f"cache read epsilon 0.1, the method's own work priced 0 (the paper's setting); "
          f"{time.perf_counter() - started:.0f} s wall")
    summary = {}
    for name in CLASSES:
        rows = frame[frame["method"] == name]
        per_seed = []
        for _, cell in rows.groupby("seed"):
            cell = cell.sort_values("trial_id")
            ok = cell[cell["status"] == "ok"]
            objective = ok["test_objective"].to_numpy(float)
            n_init = 10  # the methods' default warm-up
            warm = objective[:n_init]
            per_seed.append((len(ok), objective.max(), objective.max() - warm.max(), int((cell["cache_hits"] > 0).sum())))
        arr = np.array(per_seed, dtype=float)
        times = ASK_SECONDS.get(name, [])
        summary[name] = np.median(arr, axis=0)
        print(f"  {name:6s} candidates {summary[name][0]:5.1f}  best objective {summary[name][1]:7.3f}  "
              f"improvement after warm-up {summary[name][2]:6.3f}  trials with cache hits {summary[name][3]:4.1f}  "
              f"own time per ask {np.mean(times) if times else float('nan'):.2f} s (n={len(times)})")
    if "eeipu" in summary and "ei" in summary:
        print(f"EEIPU / EI candidates: {summary['eeipu'][0] / summary['ei'][0]:.2f} (goal >= 2); improvement "
              f"EEIPU {summary['eeipu'][2]:.3f} vs EI {summary['ei'][2]:.3f} (goal: at least EI's)")


def real_pipeline(args: argparse.Namespace) -> None:
    """EEIPU and the baselines on image-pipeline under the device clock (see the module doc)."""
    if args.analyse is None:
        out = Path(args.out or tempfile.mkdtemp(prefix="bo-image-"))
        out.mkdir(parents=True, exist_ok=True)
        suite = {"name": "bo-image", "clock": "device", "budget": args.budget, "refit": False, "threads": 1,
                 "jobs": args.jobs, "seeds": list(range(args.seeds)),
                 "tasks": [{"name": "image-pipeline", "scale": args.scale, "methods": list(CLASSES)}]}
        path = out / "bo-image.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        api.run(path, out=out / "results", device="cpu", progress=True)
        results = out / "results"
    else:
        results = Path(args.analyse)
    frame = load_results(results)
    print(f"image-pipeline ({results}), device clock, the method's own work charged like everything else")
    table = {}
    for name in CLASSES:
        per_seed = []
        for _, cell in frame[frame["method"] == name].groupby("seed"):
            cell = cell.sort_values("trial_id")
            ok = cell[cell["status"] == "ok"]
            val = ok["score"].to_numpy(float)  # validation loss, lower is better
            rec = cell["recommendation"].dropna()
            acc = float(cell.loc[cell["trial_id"] == rec.iloc[-1], "test_accuracy"].iloc[0]) if len(rec) else np.nan
            after = cell[cell["trial_id"] >= 10]
            per_seed.append((len(ok), acc, val[:10].min() - val.min() if len(val) else np.nan,
                             int((cell["cache_hits"] > 0).sum()), float(after["cost_method"].median())
                             if "cost_method" in after and len(after) else np.nan))
        if not per_seed:
            continue
        table[name] = np.nanmedian(np.array(per_seed, dtype=float), axis=0)
        c, acc, imp, hits, own = table[name]
        print(f"  {name:6s} candidates {c:5.1f}  test accuracy of the recommendation {acc:.3f}  "
              f"validation-loss improvement after warm-up {imp:.4f}  trials with cache hits {hits:4.1f}  "
              f"own time per iteration {own:.2f} s")
    if "eeipu" in table and "ei" in table:
        print(f"EEIPU / EI candidates: {table['eeipu'][0] / table['ei'][0]:.2f} (goal >= 2); own time per "
              f"iteration {table['eeipu'][4]:.2f} s (goal <= 1 s)")


if __name__ == "__main__":
    main()
