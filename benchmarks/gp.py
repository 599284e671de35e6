"""DE-ELBo learning a GP's kernel against plain ELBo, search with refit and the exact GP (issue 19).

    python benchmarks/gp.py              # budgets (grid, seed 0, per data set), then the design: runs or resumes
    python benchmarks/gp.py --no-run     # the tables from what is in the results directory

Task ``gp-regression`` (the random-Fourier-feature GP of ``tasks/gp.py``) at cpu scale (F = 256
features, 500 full-batch Adam steps, ARD lengthscales) on UCI Boston and concrete, 5 seeds, device
clock, one torch thread per cell, two cells at a time, results in ``reports/gp-cpu/``. Methods:
``de-elbo`` and ``elbo`` (learn lengthscales, output scale, noise and prior variance with the
posterior over the weights, on all N, no validation split), ``grid``, ``random`` and ``tpe``
(search one shared lengthscale, noise and prior variance on the 80/20 split, refit on all N) and
``gp-ml`` (the exact GP, type-II maximum likelihood on all N; the reference).

**Budget.** One per data set for every competing method: the charged time the grid needs to finish
on seed 0 (run first, into ``grid-budget/``, under a budget it cannot reach) plus 10%, rounded up
to the second. The reference ``gp-ml`` runs in its own entry with ``REFERENCE_BUDGET`` (its charged
time is printed). The suite the design runs is written to ``gp-cpu.yaml`` in the results directory with
those budgets.

Printed per data set and method (medians over the finished seeds, min-max beside): test RMSE and
NLL (original units) of the deployed model, the charged time, the time to the grid's final RMSE
(per seed, the charged time at which the method's recommended model first reaches the grid's final
test RMSE on that seed, ``report.stats.time_to_target``; the number of seeds where it does), the
learned lengthscales (geometric mean over input dimensions) and, for the methods that learn one
per dimension, the correlation of their log-lengthscales with ``gp-ml``'s on the same seed, and
the learned noise variance (standardised targets). Goals (measured, not required): DE-ELBo within
5% of ``gp-ml``'s test RMSE and at or below the grid's, in at most a fifth of the grid's time.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hpobench_elbo import api
from hpobench_elbo.engine.ledger import LedgerError, read_ledger
from hpobench_elbo.report.data import read_report_data
from hpobench_elbo.report.stats import all_traces, cell_times_to_target, final_values, grid_references

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "reports" / "gp-cpu"
DATASETS = ("boston", "concrete")
METHODS = ("de-elbo", "elbo", "gp-ml", "grid", "random", "tpe")
LEARNS_ARD = ("de-elbo", "elbo", "gp-ml")
BUDGET_PROBE = 3600.0
"""The grid's budget in the budget run: far more than it needs, so it finishes on its own."""
REFERENCE = "gp-ml"
REFERENCE_BUDGET = 120.0
"""``gp-ml`` is the reference, not a competitor: it runs in its own task entry with this budget
(the exact GP's O(N^3) fit on concrete's 824 examples takes longer than the grid's time; the first
run, with ``gp-ml`` under the grid's budget, is kept in ``gp-ml-grid-budget/``)."""


def base_suite(name: str, seeds: list[int]) -> dict[str, Any]:
    return {"name": name, "clock": "device", "refit": True, "threads": 1, "jobs": 2, "seeds": seeds}


def task_entry(dataset: str, budget: float, methods: list[str]) -> dict[str, Any]:
    return {"name": "gp-regression", "scale": "cpu", "options": {"dataset": dataset}, "budget": budget,
            "methods": methods}


def finished(path: Path) -> dict[str, Any] | None:
    try:
        contents = read_ledger(path)
    except (LedgerError, OSError):
        return None
    return contents.end


def budgets(out: Path, device: str, run: bool) -> dict[str, float]:
    """Per data set: the grid's finishing charged time on seed 0, plus 10%, rounded up (runs it if asked)."""
    probe = out / "grid-budget"
    if run:
        probe.mkdir(parents=True, exist_ok=True)
        suite = {**base_suite("gp-cpu-grid-budget", [0]), "budget": BUDGET_PROBE,
                 "tasks": [task_entry(d, BUDGET_PROBE, ["grid"]) for d in DATASETS]}
        path = probe / "gp-cpu-grid-budget.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        api.run(path, out=probe / "results", device=device, progress=False)
    found: dict[str, float] = {}
    for ledger in sorted((probe / "results").glob("*.jsonl")):
        end = finished(ledger)
        if end is None:
            continue
        dataset = read_ledger(ledger).header["cell"]["task_options"]["dataset"]
        found[dataset] = float(math.ceil(1.1 * float(end["spent"])))
        print(f"budget {dataset}: the grid finished seed 0 in {float(end['spent']):.1f} device-seconds "
              f"({end['reason']}); budget {found[dataset]:g} (+10%, rounded up)")
    return found


def run_design(out: Path, per_dataset: dict[str, float], seeds: int, device: str, force: bool = False) -> None:
    competitors = [m for m in METHODS if m != REFERENCE]
    tasks = []
    for d in DATASETS:
        if d in per_dataset:
            tasks += [task_entry(d, per_dataset[d], competitors), task_entry(d, REFERENCE_BUDGET, [REFERENCE])]
    suite = {**base_suite("gp-cpu", list(range(seeds))), "budget": max(per_dataset.values()), "tasks": tasks}
    path = out / "gp-cpu.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    api.run(path, out=out / "results", device=device, progress=True, force=force)


def learned(path: Path) -> dict[str, Any]:
    """The deployed model's kernel hyperparameters: learned (its trajectory's last entry) or set (config)."""
    contents = read_ledger(path)
    rows = {r["trial_id"]: r for r in contents.rows}
    rec = (contents.end or {}).get("recommendation")
    row = rows.get(rec)
    if row is None:
        return {}
    last = row["trajectory"][-1] if row.get("trajectory") else {}
    if "lengthscale" in last:
        dims = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in last.items() if k.startswith("lengthscale_"))
        return {"lengthscale": float(last["lengthscale"]), "lengthscales": [v for _, v in dims] or None,
                "noise": float(last.get("noise", np.nan)), "nll": float((row.get("test") or {}).get("nll", np.nan))}
    return {"lengthscale": float(row["config"].get("lengthscale", np.nan)), "lengthscales": None,
            "noise": float(row["config"].get("noise", np.nan)), "nll": float((row.get("test") or {}).get("nll", np.nan))}


def per_cell(results: Path) -> pd.DataFrame:
    """One row per finished cell: final test RMSE, its seed's grid final and the time to it
    (``report.stats.cell_times_to_target``, target ``grid``), and the deployed model's kernel."""
    data = read_report_data(results)
    traces = all_traces(data)
    finals = final_values(data, traces)
    ended = data.cells.set_index("cell_id")["end_reason"]
    finals = finals[finals["cell_id"].map(ended).fillna("not finished") != "not finished"]
    cells = cell_times_to_target(finals, traces, "grid", grid_references(data.cells))
    cells = cells.rename(columns={"target": "grid_final", "time_to_target": "time_to_grid"})
    extra = [learned(results / f"{cell_id}.jsonl") for cell_id in cells["cell_id"]]
    for key in ("lengthscale", "noise", "nll"):
        cells[key] = [float(e.get(key, np.nan)) for e in extra]
    cells["lengthscales"] = [e.get("lengthscales") for e in extra]
    ml = cells[cells["method_name"] == REFERENCE].set_index(["task", "seed"])["lengthscales"]
    corr = []
    for row in cells.itertuples():
        mine, ref = row.lengthscales, ml.get((row.task, row.seed))
        ok = mine is not None and ref is not None and len(mine) == len(ref) and len(mine) > 1
        corr.append(float(np.corrcoef(np.log(mine), np.log(ref))[0, 1]) if ok else np.nan)
    cells["log_ls_corr_ml"] = corr
    return cells


def summary(cells: pd.DataFrame) -> pd.DataFrame:
    def reached(values: pd.Series) -> str:
        return f"{int(np.isfinite(values.to_numpy(float)).sum())}/{len(values)}"

    return cells.groupby(["task", "method"]).agg(
        seeds=("seed", "nunique"), rmse_median=("final", "median"), rmse_min=("final", "min"),
        rmse_max=("final", "max"), nll_median=("nll", "median"), charged=("spent", "median"),
        time_to_grid=("time_to_grid", "median"), reached_grid=("time_to_grid", reached),
        lengthscale=("lengthscale", "median"), corr_with_gp_ml=("log_ls_corr_ml", "median"),
        noise=("noise", "median"))


def goals(cells: pd.DataFrame) -> None:
    for task, here in cells.groupby("task"):
        med = here.groupby("method_name")[["final", "spent"]].median()
        if not {"de-elbo", "gp-ml", "grid"} <= set(med.index):
            continue
        de, ml, grid = med.loc["de-elbo"], med.loc["gp-ml"], med.loc["grid"]
        print(f"  {task}: DE-ELBo RMSE {de['final']:.3f} vs gp-ml {ml['final']:.3f} "
              f"({100 * (de['final'] / ml['final'] - 1):+.1f}%, goal within 5%), vs grid {grid['final']:.3f} "
              f"(goal at or below); charged {de['spent']:.1f} s vs the grid's {grid['spent']:.1f} s "
              f"({de['spent'] / grid['spent']:.2f}x, goal at most 0.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-run", action="store_true", help="print the tables from the results directory only")
    parser.add_argument("--force", action="store_true", help="continue a results directory of an earlier design")
    args = parser.parse_args()
    started = time.perf_counter()
    per_dataset = budgets(args.out, args.device, run=not args.no_run)  # a finished budget run is kept, not rerun
    if not args.no_run:
        run_design(args.out, per_dataset, args.seeds, args.device, args.force)
    cells = per_cell(args.out / "results")
    pd.set_option("display.width", 240)
    print(f"\nresults: {args.out / 'results'}; charged times in device-seconds ({args.device}); test RMSE and NLL "
          f"in the targets' units; lengthscale: geometric mean over input dimensions (standardised inputs); "
          f"noise: variance on standardised targets")
    print(summary(cells).to_string(float_format=lambda v: f"{v:.4g}"))
    print("\ngoals (measured, not required):")
    goals(cells)
    print("\n== per cell")
    print(cells[["task", "method", "seed", "final", "nll", "grid_final", "time_to_grid", "spent", "lengthscale",
                 "log_ls_corr_ml", "noise"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nthis invocation {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
