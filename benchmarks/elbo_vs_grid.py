"""DE-ELBo and its pruned sweep against the tied L2-SP grid and the search baselines, under one
training recipe and one budget per task (issue 11's comparison).

Runs (or resumes) ``suites/elbo-vs-grid.yaml`` through the public API and reads everything back
from the ledgers: ``image-transfer`` (N = 1000, 3 seeds) and ``text-transfer`` (N = 1000, 1 seed)
at cpu scale with the scale's default trainable blocks; methods ``de-elbo`` (4-run sweep, no
validation), ``de-elbo-pruned``, ``elbo`` (kappa = 1), the tied grid (4 learning rates x 6 shared
strengths = 24 runs on a 20% validation split, refit on all N), ``random`` and ``asha`` (validation
and refit); every cell of a task gets that task's budget (the suite says how it was set).

It prints, per task, the tied grid's charged time on seed 0 and how its cells ended, then, as
medians over seeds: the final test accuracy of the recommended model, the charged time, the
time-to-target (``hpobench_elbo.report.stats``: the charged time at which the recommendation first
comes within 1 point of the best final accuracy any method reached on that task and seed) and its
ratio to DE-ELBo's; the goals (DE-ELBo within 1 point of the grid at no more than a third of its
time; the pruned sweep within 0.5 points of DE-ELBo at no more than half its time) with met/missed;
and the learned lambda, tau and sigma of every ELBo run.

    python benchmarks/elbo_vs_grid.py                      # about 2 hours on 2 cores; resumable
    python benchmarks/elbo_vs_grid.py --no-run             # analyse what is there
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import hpobench_elbo as hb
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.report.data import read_report_data
from hpobench_elbo.report.stats import all_traces, cell_times_to_target, final_values
from hpobench_elbo.report.traces import ledger_paths

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "elbo-vs-grid.yaml"
OUT = REPO / "reports" / "elbo-vs-grid-cpu" / "run"
REFERENCE, PRUNED, GRID = "de-elbo", "de-elbo-pruned", "grid-tied"


def per_cell(results: Path) -> pd.DataFrame:
    """One row per cell: final test accuracy, charged time, time-to-target, how it ended."""
    data = read_report_data(results)
    traces = all_traces(data)
    cells = cell_times_to_target(final_values(data, traces), traces)
    info = data.cells.set_index("cell_id")
    cells["spent"] = cells["cell_id"].map(info["spent"])
    cells["end_reason"] = cells["cell_id"].map(info["end_reason"])
    cells["trials"] = cells["cell_id"].map(info["n_rows"])
    return cells


def with_ratio(cells: pd.DataFrame) -> pd.DataFrame:
    """Add each cell's time-to-target divided by DE-ELBo's on the same task and seed."""
    ref = cells[cells["method"] == REFERENCE].set_index(["task", "seed"])["time_to_target"]
    keys = list(zip(cells["task"], cells["seed"]))
    return cells.assign(ttt_ratio=[t / ref.get(k, np.nan) for t, k in zip(cells["time_to_target"], keys)])


def summary(cells: pd.DataFrame) -> pd.DataFrame:
    return cells.groupby(["task", "method"]).agg(
        seeds=("seed", "nunique"), acc=("final", "median"), acc_min=("final", "min"), acc_max=("final", "max"),
        charged_s=("spent", "median"), trials=("trials", "median"), ttt_s=("time_to_target", "median"),
        ttt_vs_de_elbo=("ttt_ratio", "median"))


def goals(table: pd.DataFrame) -> list[str]:
    lines = []
    for task, rows in table.groupby(level="task"):
        rows = rows.droplevel("task")
        if REFERENCE not in rows.index:
            continue
        de = rows.loc[REFERENCE]
        if GRID in rows.index:
            grid = rows.loc[GRID]
            gap, share = 100 * (de["acc"] - grid["acc"]), de["charged_s"] / grid["charged_s"]
            met = gap >= -1.0 and share <= 1 / 3
            lines.append(f"{task}: DE-ELBo - grid = {gap:+.2f} points (goal >= -1) at {share:.2f} of the grid's "
                         f"charged time (goal <= 0.33): {'met' if met else 'missed'}")
        if PRUNED in rows.index:
            pruned = rows.loc[PRUNED]
            gap, share = 100 * (pruned["acc"] - de["acc"]), pruned["charged_s"] / de["charged_s"]
            met = gap >= -0.5 and share <= 0.5
            lines.append(f"{task}: pruned - DE-ELBo = {gap:+.2f} points (goal >= -0.5) at {share:.2f} of DE-ELBo's "
                         f"charged time (goal <= 0.5): {'met' if met else 'missed'}")
    return lines


def learned_values(results: Path) -> pd.DataFrame:
    """The last lambda, tau, sigma of every ELBo run, with its objective and test accuracy."""
    rows = []
    for path in ledger_paths(results):
        contents = read_ledger(path)
        cell = contents.header["cell"]
        if cell["method"] not in ("de-elbo", "elbo", "de-elbo-pruned"):
            continue
        for row in contents.rows:
            last = row["trajectory"][-1] if row["trajectory"] else {}
            rows.append({"task": cell["task"], "method": cell["method"], "seed": cell["seed"],
                         "lr": row["config"]["lr"], "status": row["status"], "steps": row.get("steps"),
                         "lambda": last.get("lambda"), "tau": last.get("tau"), "sigma": last.get("sigma"),
                         "objective": row["score"], "test_acc": (row["test"] or {}).get("accuracy"),
                         "chosen": row["trial_id"] == (contents.end or {}).get("recommendation")})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"results directory (default {OUT.relative_to(REPO)})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-run", action="store_true", help="analyse the results directory only")
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.no_run:
        for s in hb.run(SUITE, out=args.out, device=args.device, progress=False):
            print(f"  {s.cell_id}: {s.n_trials} trials, {s.spent:.1f} {s.unit} ({s.reason})", flush=True)
    cells = with_ratio(per_cell(args.out))
    unit = cells["unit"].iloc[0]
    pd.set_option("display.width", 200)
    print(f"results: {args.out}; charged times in {unit}")
    for task, group in cells.groupby("task"):
        grid = group[group["method"] == GRID].sort_values("seed")
        budget = group["budget"].iloc[0]
        if len(grid):
            first = grid.iloc[0]
            print(f"{task}: budget {budget:g} per cell; the tied grid on seed {first['seed']} charged "
                  f"{first['spent']:.1f} and ended '{first['end_reason']}' ({first['trials']} rows); grid cells ended: "
                  + ", ".join(f"s{r.seed} {r.end_reason} at {r.spent:.0f}" for r in grid.itertuples()))
    table = summary(cells)
    print("\n== medians over seeds: final test accuracy, charged time, time-to-target and its ratio to DE-ELBo's")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\n== goals (measured, not required)")
    for line in goals(table):
        print(line)
    print("\n== learned hyperparameters of every ELBo run (end of training)")
    learned = learned_values(args.out)
    print(learned.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(learned) else "(none)")
    first, last = [], []
    for path in ledger_paths(args.out):
        contents = read_ledger(path)
        first.append(contents.header["created"])
        if contents.end:
            last.append(contents.end["time"])
    if first and last:
        span = pd.Timestamp(max(last)) - pd.Timestamp(min(first))
        print(f"\nfirst cell started {min(first)}, last ended {max(last)} ({span.total_seconds() / 3600:.2f} h, "
              f"in parts if resumed); this invocation {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
