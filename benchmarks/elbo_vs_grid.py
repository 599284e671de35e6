"""DE-ELBo (4 runs, no validation) against L2-SP grid search with refit, under the device clock.

Runs two suites through the public API and reads everything back from the ledgers:

* tasks: ``image-transfer`` with N = 1000 and N = 100, ``text-transfer`` (N = 1000), at ``--scale``;
  methods: ``de-elbo``, ``elbo`` (kappa = 1) and ``grid-tied`` (learning rate x one strength shared by
  backbone and head: 4 x 6 = 24 runs, selected on a 20% validation split, refit on all N);
* ``image-transfer`` N = 1000 only, ``--full-grid-seeds`` seeds: ``grid-full`` (learning rate x alpha x
  beta, 4 x 6 x 6 = 144 runs).

It prints each method's final test accuracy, device time, and from the anytime traces the device
time each grid needs to come within 1 point of DE-ELBo's final accuracy divided by DE-ELBo's total
device time; the spread of the grid's validation and test accuracy across the strength at its best
learning rate (is the task sensitive to the strength at this scale?); and the learned lambda, tau
and sigma of every run of every DE-ELBo sweep.

    python benchmarks/elbo_vs_grid.py --scale cpu --seeds 3 --full-grid-seeds 2   # hours on 2 cores
    python benchmarks/elbo_vs_grid.py --quick                                       # minutes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

import hpobench_elbo as hb
from hpobench_elbo.report.traces import cell_traces, ledger_paths
from hpobench_elbo.engine.ledger import read_ledger

LRS = [1e-1, 1e-2, 1e-3, 1e-4]
STRENGTHS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0]
BIG_BUDGET = 1e7  # every method runs to its own end; the comparison is read off the traces


def suites(args: argparse.Namespace) -> list[dict[str, Any]]:
    extra = {} if args.trainable_blocks is None else {"trainable_blocks": args.trainable_blocks}
    tasks = [{"name": "image-transfer", "scale": args.scale, "options": {"n": n, **extra}} for n in args.pool_sizes]
    tasks.append({"name": "text-transfer", "scale": args.scale, "options": {"n": 1000}})
    if args.quick:
        tasks = tasks[-2:-1]
    elif args.tasks == "image":
        tasks = tasks[:-1]
    elif args.tasks == "text":
        tasks = tasks[-1:]
    tied = {"name": "grid", "label": "grid-tied",
            "options": {"values": {"lr": LRS, "alpha": STRENGTHS}, "tie": {"beta": "alpha"}}}
    full = {"name": "grid", "label": "grid-full",
            "options": {"values": {"lr": LRS, "alpha": STRENGTHS, "beta": STRENGTHS}}}
    common = {"clock": "device", "budget": BIG_BUDGET, "refit": True, "cache": True, "threads": args.threads}
    tag = "" if args.trainable_blocks is None else f"-top{args.trainable_blocks}"
    out = [{**common, "name": f"elbo-vs-grid{tag}", "seeds": list(range(args.seeds)), "tasks": tasks,
            "methods": ["de-elbo", "elbo", tied]}]
    if args.only_full_grid:
        out = []
    if args.full_grid_seeds > 0 and not args.quick and args.tasks != "text":
        out.append({**common, "name": f"elbo-vs-full-grid{tag}", "seeds": list(range(args.full_grid_seeds)),
                    "tasks": tasks[:1], "methods": ["de-elbo", full]})
    return out


def task_key(frame: pd.DataFrame) -> pd.Series:
    return frame["task"] + "(N=" + frame["n_pool"].astype(str) + ")"


def with_pool(frame: pd.DataFrame, results: Path) -> pd.DataFrame:
    """Add each cell's N (the task option) so N = 1000 and N = 100 are told apart."""
    pools = {}
    for path in ledger_paths(results):
        header = read_ledger(path).header
        pools[header["cell_id"]] = header["cell"]["task_options"].get("n", "all")
    frame = frame.copy()
    frame["n_pool"] = frame["cell_id"].map(pools)
    frame["task_n"] = task_key(frame)
    return frame


def final_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    traces = cell_traces(frame, "accuracy")
    rows = []
    for cell_id, cell in frame.groupby("cell_id"):
        t = traces[traces["cell_id"] == cell_id].sort_values("cost")
        rows.append({"cell_id": cell_id, "task_n": cell["task_n"].iloc[0], "method": cell["method"].iloc[0],
                     "seed": cell["seed"].iloc[0], "final_acc": t["recommended"].iloc[-1] if len(t) else np.nan,
                     "device_s": cell["spent"].max(), "trials": len(cell)})
    return pd.DataFrame(rows)


def time_to_match(frame: pd.DataFrame, finals: pd.DataFrame, grid: str) -> list[float]:
    """Per seed and task: grid's device time to reach DE-ELBo's final accuracy - 1 point / DE-ELBo's time."""
    traces = cell_traces(frame, "accuracy")
    traces["task_n"] = traces["cell_id"].map(dict(zip(frame["cell_id"], frame["task_n"])))
    ratios = []
    for (task_n, seed), ref in finals[finals["method"] == "de-elbo"].groupby(["task_n", "seed"]):
        target = ref["final_acc"].iloc[0] - 0.01
        g = traces[(traces["method"] == grid) & (traces["task_n"] == task_n) & (traces["seed"] == seed)]
        if g.empty:
            continue
        reached = g[g["recommended"] >= target].sort_values("cost")
        ratios.append(reached["cost"].iloc[0] / ref["device_s"].iloc[0] if len(reached) else np.inf)
    return ratios


def strength_sensitivity(frame: pd.DataFrame) -> pd.DataFrame:
    """Spread of validation and test accuracy across the tied strength at the grid's best learning rate."""
    rows = []
    grid = frame[(frame["method"] == "grid-tied") & (frame["kind"] == "trial") & (frame["status"] == "ok")]
    for (task_n, seed), cell in grid.groupby(["task_n", "seed"]):
        best_lr = cell.loc[cell["score"].idxmin(), "config_lr"]
        at_lr = cell[cell["config_lr"] == best_lr]
        rows.append({"task_n": task_n, "seed": seed, "best_lr": best_lr, "strengths": len(at_lr),
                     "val_acc_spread_pts": 100 * (at_lr["metric_val_accuracy"].max() - at_lr["metric_val_accuracy"].min()),
                     "test_acc_spread_pts": 100 * (at_lr["test_accuracy"].max() - at_lr["test_accuracy"].min())})
    return pd.DataFrame(rows)


def learned_values(results: Path) -> pd.DataFrame:
    rows = []
    for path in ledger_paths(results):
        contents = read_ledger(path)
        cell = contents.header["cell"]
        if cell["method"] not in ("de-elbo", "elbo"):
            continue
        for row in contents.rows:
            last = row["trajectory"][-1] if row["trajectory"] else {}
            rows.append({"task": cell["task"], "N": cell["task_options"].get("n"), "method": cell["method"],
                         "seed": cell["seed"], "lr": row["config"]["lr"], "status": row["status"],
                         "lambda": last.get("lambda"), "tau": last.get("tau"), "sigma": last.get("sigma"),
                         "objective": row["score"], "test_acc": (row["test"] or {}).get("accuracy"),
                         "chosen": row["trial_id"] == contents.end.get("recommendation") if contents.end else None})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--full-grid-seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/elbo-vs-grid")
    parser.add_argument("--quick", action="store_true", help="image-transfer N=100 only, no full grid")
    parser.add_argument("--tasks", choices=("all", "image", "text"), default="all")
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[1000, 100], help="image-transfer N values")
    parser.add_argument("--trainable-blocks", type=int, default=None, help="image-transfer trainable top blocks")
    parser.add_argument("--only-full-grid", action="store_true", help="run only the 144-point grid suite")
    parser.add_argument("--no-run", action="store_true", help="analyse existing results only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames = []
    for suite in suites(args):
        path = out / f"{suite['name']}.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        results = out / suite["name"]
        if not args.no_run:
            for summary in hb.run(path, out=results, device=args.device, progress=False):
                print(f"  {summary.cell_id}: {summary.n_trials} trials, {summary.spent:.1f} {summary.unit}", flush=True)
        if not results.exists():
            continue
        frames.append(with_pool(hb.load_results(results), results))
    wall = time.perf_counter() - started
    frame = pd.concat(frames, ignore_index=True)
    finals = final_per_cell(frame)
    unit = frame["unit"].iloc[0]
    pd.set_option("display.width", 160)
    print(f"\n== final test accuracy of the recommended model and charged device time ({unit}), median over seeds")
    summary = finals.groupby(["task_n", "method"]).agg(
        seeds=("seed", "nunique"), acc_median=("final_acc", "median"), acc_min=("final_acc", "min"),
        acc_max=("final_acc", "max"), device_s=("device_s", "median"), trials=("trials", "median"))
    print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\n== grid device time to come within 1 point of DE-ELBo's final accuracy / DE-ELBo's total device time")
    for grid in ("grid-tied", "grid-full"):
        ratios = time_to_match(frame, finals, grid)
        if ratios:
            shown = ", ".join("never" if not np.isfinite(r) else f"{r:.2f}" for r in ratios)
            print(f"{grid}: per task and seed [{shown}]; median {np.median(ratios):.2f}")
    for grid in ("grid-tied", "grid-full"):
        for task_n, g in finals[finals["method"] == grid].groupby("task_n"):
            de = finals[(finals["method"] == "de-elbo") & (finals["task_n"] == task_n)]
            if len(de):
                print(f"{task_n}: DE-ELBo total device time / {grid} total = "
                      f"{de['device_s'].median() / g['device_s'].median():.3f}; accuracy gap (DE-ELBo - grid) = "
                      f"{100 * (de['final_acc'].median() - g['final_acc'].median()):+.2f} points")
    print("\n== strength sensitivity: spread across the tied strength at the grid's best learning rate (points)")
    sens = strength_sensitivity(frame)
    print(sens.to_string(index=False, float_format=lambda v: f"{v:.3g}") if len(sens) else "(no grid-tied cells)")
    print("\n== learned hyperparameters of every DE-ELBo / ELBo run (end of training)")
    learned = pd.concat([learned_values(out / s["name"]) for s in suites(args) if (out / s["name"]).exists()],
                        ignore_index=True)
    print(learned.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(learned) else "(none)")
    print(f"\nwall time of the benchmark: {wall / 3600:.2f} h; results under {out}")
    (out / "summary.json").write_text(json.dumps({"wall_s": wall, "unit": unit}, indent=1))


if __name__ == "__main__":
    main()
