"""PBT and Optuna's CMA-ES, GP and QMC samplers against the reference methods (issue 20).

    python benchmarks/pbt_samplers.py                                   # the whole design: run or resume
    python benchmarks/pbt_samplers.py --only 'task=mnist-mlp'            # a part of it (resumable too)
    python benchmarks/pbt_samplers.py --only 'task=image-transfer,method=pbt,seed=0'
    python benchmarks/pbt_samplers.py --no-run                          # the table from what is there

Runs ``suites/pbt-samplers-cpu.yaml`` into ``reports/pbt-samplers-cpu/`` (mnist-mlp and
image-transfer at cpu scale, 3 seeds, the reference budgets, device clock, two cells at a time).
Every cell of a method that is not new (grid, random, tpe, implicit, de-elbo) has the definition of
its cell in ``suites/reference-cpu.yaml``: its finished run is taken from ``reports/reference-cpu/``
(``--reuse``), never rerun, whatever ``--only`` selects. Printed per task and method: the seeds
finished, the final test metric of the recommended model (median, min-max, mean), and the time to
the grid's final metric: per seed, the charged time at which the method's recommended model first
reaches the final test metric of the grid on that seed (``report.stats.time_to_target``), with the
number of seeds where it did; "never" where it did not within the budget.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hpobench_elbo import api
from hpobench_elbo.api import select_cells
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.errors import LedgerError
from hpobench_elbo.report.data import read_report_data
from hpobench_elbo.report.stats import all_traces, final_values, time_to_target

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "pbt-samplers-cpu.yaml"
OUT = REPO / "reports" / "pbt-samplers-cpu"
REFERENCE = REPO / "reports" / "reference-cpu"
NEW = ("pbt", "cmaes", "gp-bo", "qmc")


def finished_in(folder: Path, cell_id: str) -> bool:
    path = folder / f"{cell_id}.jsonl"
    if not path.exists():
        return False
    try:
        return read_ledger(path).end is not None
    except LedgerError:
        return False


def run(out: Path, only: str | None, device: str) -> None:
    """Run the selected new cells, taking every reference cell of the suite from REFERENCE."""
    full = api.plan(SUITE, out)
    chosen = {c.cell_id for c in select_cells(full.cells, only)} if only else {c.cell_id for c in full.cells}
    cells = [c for c in full.cells if c.cell_id in chosen or finished_in(REFERENCE, c.cell_id)]
    missing = [c.cell_id for c in cells if c.method not in NEW and not finished_in(REFERENCE, c.cell_id)]
    if missing:
        print(f"note: {len(missing)} reference cell(s) not finished in {REFERENCE}; they run here: {missing[:3]}")
    plan = api.Plan(full.suite, cells, out, only)
    for s in api.execute(plan, device=device, progress=False, reuse=REFERENCE):
        print(f"  {s.cell_id}: {s.n_trials} trials, {s.spent:.1f} {s.unit} ({s.reason})", flush=True)


def per_cell(results: Path) -> pd.DataFrame:
    """One row per finished cell: final test metric and the time to its seed's grid final."""
    data = read_report_data(results)
    traces = all_traces(data)
    finals = final_values(data, traces)
    finals["grid"] = finals["method_name"] == "grid"
    grid = finals[finals["grid"]].set_index(["task", "seed"])["final"]
    times = []
    for row in finals.itertuples():
        target = grid.get((row.task, row.seed), np.nan)
        trace = traces[traces["cell_id"] == row.cell_id].sort_values("cost")
        times.append(time_to_target(trace["cost"].to_numpy(float), trace["recommended"].to_numpy(float),
                                    float(target), row.direction) if np.isfinite(target) and len(trace) else np.nan)
    finals["grid_final"] = [grid.get((t, s), np.nan) for t, s in zip(finals["task"], finals["seed"])]
    finals["time_to_grid"] = times
    ended = data.cells.set_index("cell_id")["end_reason"]
    return finals[finals["cell_id"].map(ended).fillna("not finished") != "not finished"]


def summary(cells: pd.DataFrame) -> pd.DataFrame:
    def reached(values: pd.Series) -> str:
        hit = values[np.isfinite(values.to_numpy(float))]
        return f"{len(hit)}/{len(values)}"

    table = cells.groupby(["task", "method"]).agg(
        seeds=("seed", "nunique"), final_median=("final", "median"), final_min=("final", "min"),
        final_max=("final", "max"), final_mean=("final", "mean"), charged=("spent", "median"),
        time_to_grid_median=("time_to_grid", "median"), reached_grid=("time_to_grid", reached))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", default=None, help="run only these new cells (the --only syntax of `run`)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-run", action="store_true", help="print the table from the results directory only")
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.no_run:
        run(args.out, args.only, args.device)
    cells = per_cell(args.out)
    unit = cells["unit"].iloc[0] if len(cells) else "?"
    pd.set_option("display.width", 220)
    print(f"results: {args.out}; charged times in {unit}; metric per task: "
          + ", ".join(f"{t} {m}" for t, m in cells.groupby("task")["metric"].first().items()))
    print("\n== per task and method: final test metric of the recommended model and time to the grid's final")
    print(summary(cells).to_string(float_format=lambda v: f"{v:.4g}"))
    print("\n== per cell")
    print(cells[["task", "method", "seed", "final", "grid_final", "time_to_grid", "spent"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nthis invocation {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
