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

METHODS = ("implicit", "implicit-hdlr", "lorraine", "baydin", "diff-through-opt", "random-fixed")


def task_entry(spec: str, scale: str) -> dict:
    name, _, dataset = spec.partition(":")
    return {"name": name, "scale": scale, **({"options": {"dataset": dataset}} if dataset else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="uci-regression:boston,uci-regression:concrete,mnist-mlp,image-transfer")
    parser.add_argument("--inits", type=int, default=20)
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="implicit-"))
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.tasks.split(","):
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

if __name__ == "__main__":
    main()
