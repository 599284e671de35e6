"""The implicit-differentiation family against its baselines (METHODS.md B.5's comparison).

    python benchmarks/implicit.py [--tasks uci-regression:boston,uci-regression:concrete,mnist-mlp,image-transfer]
                                  [--inits 20] [--scale cpu] [--out DIR] [--estimate]

Every method runs ``--inits`` times on each task (one run per initialisation; every method draws the
same initial hyperparameters for the same seed, so run k of each method starts from the same point),
under the device clock, through the real loop (``hpobench_elbo.api.run``; resumable from ``--out``).
Printed per task and method: the median and mean final test loss (and accuracy where there is one),
the inter-quartile range across initialisations, diverged counts, and the ratio of the device time
of one ``implicit`` run to one run of ``random-fixed`` (the same training without hypergradients).
Goals (measured, not required): ratio at most 2; the median test loss of ``implicit`` below
``random-fixed``'s with an inter-quartile range at most a fifth of it.

    python benchmarks/implicit.py --recipe [--methods implicit,implicit-recipe] [--seeds 0,1,2]
                                  [--tasks mnist-mlp,uci-regression] [--jobs 2] [--out DIR]
                                  [--reference reports/reference-cpu]

``--recipe``: the paper's update against the variants under the task's recipe, in the reference
comparison's cells (``suites/reference-cpu.yaml``: cpu scale, device clock, its budget per task,
1 thread per cell, ``--jobs`` cells at once; the ``implicit`` cells have the reference's ids). Run
seed by seed, so a seed's cells of both methods run at the same time under the same load. One
command that resumes: cells finished in ``--out`` are kept. The grid is not rerun: its ledgers are
read from ``--reference``. Printed per task, method and seed: the recommended model's test metric
at the end, the charged time at which the recommendation first reached the grid's final metric of
the same seed ("never" if not), runs and diverged runs, and the highest 1-minute machine load; the
grid's final metric is shown as recorded and as the refit guard (``engine/loop.refit_verdict``)
would have left it (a rejected refit leaves the selected trial deployed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpobench_elbo import api, load_results  # noqa: E402
from hpobench_elbo.contracts import TrialResult  # noqa: E402
from hpobench_elbo.engine.ledger import read_ledger  # noqa: E402
from hpobench_elbo.engine.loop import refit_verdict  # noqa: E402
from hpobench_elbo.report.stats import time_to_target  # noqa: E402
from hpobench_elbo.report.traces import cell_traces  # noqa: E402

BASELINE_TASKS = "uci-regression:boston,uci-regression:concrete,mnist-mlp,image-transfer"
RECIPE_TASKS = "mnist-mlp,uci-regression"
METHODS = ("implicit", "implicit-hdlr", "lorraine", "baydin", "diff-through-opt", "random-fixed")


def task_entry(spec: str, scale: str) -> dict:
    name, _, dataset = spec.partition(":")
    return {"name": name, "scale": scale, **({"options": {"dataset": dataset}} if dataset else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=None, help=f"default {BASELINE_TASKS} (--recipe: {RECIPE_TASKS})")
    parser.add_argument("--inits", type=int, default=20)
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--recipe", action="store_true", help="the paper's update against the -recipe variants")
    parser.add_argument("--methods", default="implicit,implicit-recipe")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reference", default=str(REPO / "reports" / "reference-cpu"))
    args = parser.parse_args()
    if args.recipe:
        recipe_comparison(args)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="implicit-"))
    out.mkdir(parents=True, exist_ok=True)
    for spec in (args.tasks or BASELINE_TASKS).split(","):
        entry = {**task_entry(spec, args.scale), "budget": 1e7,  # every run completes: compared per initialisation
                 "methods": [{"name": m, "options": {"max_trials": args.inits}} for m in METHODS]}
        suite = {"name": "implicit-bench", "clock": "device", "budget": 1e7, "refit": False, "seeds": [0],
                 "threads": 1, "tasks": [entry]}
        folder = out / spec.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "implicit-bench.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        started = time.perf_counter()
        api.run(path, out=folder / "results", device=args.device, progress=True)
        report(spec, load_results(folder / "results"), time.perf_counter() - started)


def report(spec: str, frame: pd.DataFrame, wall: float) -> None:
    trials = frame[frame["kind"] == "trial"]
    print(f"\n{spec}: {len(trials)} runs, {wall:.0f} s wall", flush=True)
    for method in METHODS:
        rows = trials[trials["method"] == method]
        if rows.empty:
            continue
        loss = rows["test_loss"].dropna().to_numpy(float) if "test_loss" in rows else np.array([])
        q1, med, q3 = np.percentile(loss, [25, 50, 75]) if len(loss) else (np.nan,) * 3
        acc = rows["test_accuracy"].dropna() if "test_accuracy" in rows else None
        acc_text = f", median accuracy {acc.median():.3f}" if acc is not None and len(acc) else ""
        print(f"  {method:17s} runs {len(rows):2d}, diverged {int((rows['status'] == 'diverged').sum()):2d}, "
              f"test loss median {med:.4g} mean {np.mean(loss) if len(loss) else np.nan:.4g} IQR {q3 - q1:.4g}"
              f"{acc_text}", flush=True)
    cost = trials.groupby("method")["cost"].median()
    if {"implicit", "random-fixed"} <= set(cost.index):
        print(f"  device time of one implicit run / one random-fixed run: "
              f"{cost['implicit'] / cost['random-fixed']:.2f}", flush=True)

# ---------------------------------------------------------------------------------------------
# --recipe: the paper's update against the -recipe variants, in the reference comparison's cells
# ---------------------------------------------------------------------------------------------



def recipe_comparison(args: argparse.Namespace) -> None:
    reference = yaml.safe_load((REPO / "suites" / "reference-cpu.yaml").read_text())
    budgets = {t["name"]: t.get("budget", reference["budget"]) for t in reference["tasks"]}
    tasks = (args.tasks or RECIPE_TASKS).split(",")
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    suite = {"name": "implicit-recipe-bench", "clock": reference["clock"], "budget": reference["budget"],
             "refit": reference["refit"], "cache": reference["cache"], "threads": reference["threads"],
             "jobs": args.jobs, "seeds": seeds,
             "tasks": [{"name": t, "scale": "cpu", "budget": budgets[t], "methods": methods} for t in tasks]}
    out = Path(args.out or tempfile.mkdtemp(prefix="implicit-recipe-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "implicit-recipe-bench.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    started = time.perf_counter()
    api.run(path, out=out / "results", device=args.device, progress=True)
    print(f"\nresults in {out / 'results'}; {time.perf_counter() - started:.0f} s wall this invocation", flush=True)
    print_recipe_table(out / "results", Path(args.reference), tasks, methods, seeds)


def grid_finals(reference: Path, task: str, seed: int) -> tuple[float, float] | None:
    """The grid's final test metric on (task, seed) as recorded, and as the refit guard would leave it."""
    paths = sorted(reference.glob(f"{task}.cpu--grid--s{seed}--*.jsonl"))
    if not paths:
        return None
    contents = read_ledger(paths[0])
    metric = contents.header["metric"]
    rows = {r["trial_id"]: r for r in contents.rows}
    final = rows[contents.end["recommendation"]]
    guarded = final
    if final["kind"] == "refit":
        verdict, _ = refit_verdict(TrialResult.from_json(rows[final["refit_of"]]), TrialResult.from_json(final))
        guarded = rows[final["refit_of"]] if verdict == "rejected" else final
    return float(final["test"][metric]), float(guarded["test"][metric])


def print_recipe_table(results: Path, reference: Path, tasks: list[str], methods: list[str], seeds: list[int]) -> None:
    frame = load_results(results)
    for task in tasks:
        rows = frame[frame["task"] == task]
        if rows.empty:
            continue
        metric, direction = rows["metric"].iloc[0], rows["direction"].iloc[0]
        fmt = (lambda v: f"{v:.4f}") if direction == "max" else (lambda v: f"{v:.2f}")
        print(f"\n{task} (test {metric}, {'higher' if direction == 'max' else 'lower'} is better; "
              f"budget {rows['budget'].iloc[0]:g} device-seconds per cell)")
        finals = {s: grid_finals(reference, task, s) for s in seeds}
        for s, f in finals.items():
            if f is not None:
                print(f"  grid seed {s}: final {fmt(f[0])} as recorded, {fmt(f[1])} with the refit guard")
        traces = cell_traces(rows, metric)
        for method in methods:
            finals_m, times = [], []
            for seed in seeds:
                cell = rows[(rows["method"] == method) & (rows["seed"] == seed)]
                if cell.empty:
                    print(f"  {method:24s} seed {seed}: not run")
                    continue
                cid = cell["cell_id"].iloc[0]
                trace = traces[traces["cell_id"] == cid].sort_values("cost")
                final = float(trace["recommended"].iloc[-1]) if len(trace) else np.nan
                grid = finals[seed]
                reach = [time_to_target(trace["cost"].to_numpy(float), trace["recommended"].to_numpy(float), g,
                                        direction) if len(trace) else np.nan for g in (grid or (np.nan, np.nan))]
                load = cell_load(results, cid)
                finals_m.append(final)
                times.append(reach)
                reached = " / ".join("never" if not np.isfinite(t) else f"{t:.1f} s" for t in reach)
                print(f"  {method:24s} seed {seed}: final {fmt(final)}, to the grid's final (recorded / guarded) "
                      f"{reached}; runs {int((cell['kind'] == 'trial').sum())}, diverged "
                      f"{int((cell['status'] == 'diverged').sum())}, load max {load}")
            if finals_m:
                hit = [sum(np.isfinite(t[i]) for t in times) for i in (0, 1)]
                print(f"  {method:24s} mean final {fmt(float(np.mean(finals_m)))}; reached the grid's final on "
                      f"{hit[0]}/{len(times)} seeds (recorded), {hit[1]}/{len(times)} (guarded)")


def cell_load(results: Path, cell_id: str) -> str:
    """The highest 1-minute load average recorded while the cell ran (ledger schema >= 4)."""
    contents = read_ledger(results / f"{cell_id}.jsonl")
    loads = [r.get("machine", {}).get("load") for r in [contents.header, *contents.rows]]
    loads = [v if isinstance(v, (int, float)) else max(v) for v in loads if v is not None]
    return f"{max(loads):.1f}" if loads else "not recorded"


if __name__ == "__main__":
    main()
