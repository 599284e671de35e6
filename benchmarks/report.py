"""How long the HTML and PDF report take for 10,000 trial rows (goal: under 10 s on 2 cores).

Writes fake but schema-valid ledgers (the current schema version) into a temporary directory (4 tasks x 6 methods x 5 seeds =
120 cells, 10,000 trial rows in all; two gradient-based methods record hyperparameter trajectories;
statuses, refits, cache hits and one metric to minimise included), then times
``write_html_report(..., html=True, pdf=True)`` and prints the seconds.

    python benchmarks/report.py [--rows 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpobench_elbo.engine.ledger import SCHEMA_VERSION

TASKS = {"task-a": ("accuracy", "max"), "task-b": ("accuracy", "max"), "task-c": ("accuracy", "max"),
         "task-d": ("rmse", "min")}
SEARCH = ["random", "grid", "tpe", "halving"]
GRADIENT = ["de-elbo", "implicit"]
SEEDS = range(5)
STATUS_P = {"ok": 0.85, "cut": 0.02, "pruned": 0.06, "diverged": 0.04, "failed": 0.03}


def header(task: str, method: str, seed: int, budget: float) -> dict[str, Any]:
    metric, direction = TASKS[task]
    cell_id = f"{task}.cpu--{method}--s{seed}--{hashlib.sha1(f'{task}/{method}/{seed}'.encode()).hexdigest()[:8]}"
    return {"type": "header", "schema": SCHEMA_VERSION, "suite": "bench-report", "suite_hash": "0123456789abcdef",
            "cell": {"task": task, "scale": "cpu", "method": method, "label": method, "seed": seed,
                     "budget": budget, "clock": "device", "refit": method in SEARCH},
            "cell_id": cell_id, "unit": "GPU-seconds", "device": "cuda:0 (synthetic)", "clock": "device",
            "metric": metric, "direction": direction, "git_sha": "0" * 40, "threads": 1,
            "versions": {"python": "3.11", "hpobench-elbo": "0.1.0"}, "created": "2026-01-01T00:00:00+00:00",
            "recipe": {"optimizer": "SGD", "momentum": 0.9, "schedule": "cosine"},
            "seeds": {"cell_seed": seed, "init": seed + 1, "noise": seed + 2, "sampler": seed + 3},
            "validation": "selection" if method in SEARCH else "none",
            "data_use": "validation split + refit" if method in SEARCH else "none (all N)"}


def quality(rng: np.random.Generator, direction: str, spent: float, budget: float) -> float:
    level = 0.55 + 0.35 * (1 - np.exp(-3 * spent / budget)) + rng.normal(0, 0.05)
    return float(np.clip(level, 0, 1)) if direction == "max" else float(2.0 - level)


def trial_rows(rng: np.random.Generator, task: str, method: str, n: int, budget: float) -> list[dict[str, Any]]:
    """``n`` rows of one cell: trials by status, the recommendation following the best score, a refit last."""
    direction = TASKS[task][1]
    per = budget / n
    spent, best, rows = 0.0, None, []
    for trial_id in range(n):
        refit = method in SEARCH and trial_id == n - 1
        status = "ok" if refit else str(rng.choice(list(STATUS_P), p=list(STATUS_P.values())))
        cost = per * rng.uniform(0.8, 1.2)
        spent += cost
        test = {TASKS[task][0]: quality(rng, direction, spent, budget), "loss": float(rng.uniform(0.2, 2))}
        score = float(rng.uniform(0, 1))
        if status == "ok" and (refit or best is None or score < best[1]):
            best = (trial_id, score)
        steps = 40 if method in GRADIENT else 20
        rows.append({
            "type": "trial", "trial_id": trial_id, "kind": "refit" if refit else "trial", "status": status,
            "data": "split" if method in SEARCH and not refit else "all", "tuner": {"name": "sgd"},
            "config": {"lr": float(rng.uniform(1e-3, 1e-1))}, "steps": steps, "n_train": 1000, "score": score,
            "score_name": "validation loss", "spent": spent,
            "cost": {"train": cost * 0.9, "method": cost * 0.1, "test": cost * 0.05}, "overshoot": 0.0,
            "meter": {"train": spent * 0.9, "method": spent * 0.1, "test": spent * 0.05},
            "recommendation": best[0] if best else None, "cache_hits": int(rng.integers(0, 3)),
            "cost_saved": float(rng.uniform(0, per)),
            "error": "RuntimeError: synthetic" if status == "failed" else None,
            "metrics": {"train_loss": float(rng.uniform(0, 1))}, "test": test if status == "ok" else None,
            "trajectory": trajectory(rng, steps) if method in GRADIENT else [],
        })
    return rows


def trajectory(rng: np.random.Generator, steps: int) -> list[dict[str, float]]:
    start = rng.uniform(-6, -3, size=3)
    return [{"step": s, "lambda": 10 ** (start[0] + s / steps), "tau": 10 ** (start[1] + 0.5 * s / steps),
             "sigma": 10 ** (start[2] + s / steps), "kl": float(s)} for s in range(0, steps + 1, 4)]


def write_ledgers(out: Path, total_rows: int, seed: int = 0) -> int:
    """Write the synthetic results directory; returns the number of trial rows written."""
    rng = np.random.default_rng(seed)
    cells = [(t, m, s) for t in TASKS for m in SEARCH + GRADIENT for s in SEEDS]
    counts = np.full(len(cells), total_rows // len(cells))
    counts[: total_rows % len(cells)] += 1
    for (task, method, seed_), n in zip(cells, counts):
        budget = 3600.0
        head = header(task, method, seed_, budget)
        rows = trial_rows(rng, task, method, int(n), budget)
        end = {"type": "end", "reason": "budget", "spent": rows[-1]["spent"],
               "recommendation": rows[-1]["recommendation"]}
        with open(out / f"{head['cell_id']}.jsonl", "w", encoding="utf-8") as fh:
            for record in (head, *rows, end):
                fh.write(json.dumps(record, sort_keys=True) + "\n")
    return int(counts.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", help="write the ledgers and report here instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        results = root / "results"
        results.mkdir(parents=True, exist_ok=True)
        rows = write_ledgers(results, args.rows)
        start = time.perf_counter()
        from hpobench_elbo.report.html import write_html_report

        imported, cpu = time.perf_counter(), time.process_time()
        paths = write_html_report(results, root / "report", html=True, pdf=True)
        done, cpu = time.perf_counter(), time.process_time() - cpu
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in paths)
        print(f"{rows} trial rows in 120 cells: HTML + PDF in {done - imported:.2f} s wall, {cpu:.2f} s CPU "
              f"(plus {imported - start:.2f} s to import the package); {sizes}")


if __name__ == "__main__":
    main()
