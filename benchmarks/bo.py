"""Memoization-aware BO against the cost-aware baselines (METHODS.md C.5-C.6), and EEIPU's own time per ask.

    python benchmarks/bo.py [--seeds 5] [--budget 200] [--scale smoke|cpu|gpu] [--out DIR]
    python benchmarks/bo.py --task image-pipeline --out DIR [--seeds 5] [--run-seeds 0 1] [--jobs 2]
    python benchmarks/bo.py --task image-pipeline --analyse DIR
    python benchmarks/bo.py --ask-time [LEDGER ...]

**Synthetic** (default): ``eeipu``, ``ei``, ``carbo`` and ``eips`` on ``synthetic-pipeline`` under
the counting clock with the paper's setting: cache reads priced epsilon = 0.1, the method's own work
priced 0 (``per_event: 0``; stated in the output), one budget of cost units per cell, the same
warm-up draws for every method of a seed, no refit. Printed per method (medians over seeds):
candidates evaluated within the budget, best objective at the end, improvement after warm-up (best
at the end minus best of the warm-up), trials that read at least one stage from the cache, and the
method's own wall time per ``ask`` after warm-up (measured around ``ask``; 2 CPU cores shared with
whatever else runs). Goals (measured, not required): EEIPU evaluates at least twice as many
candidates as EI; its median improvement after warm-up is at least EI's.

**Real pipeline** (``--task image-pipeline``, issue 18 item 3): the four methods on
``image-pipeline`` under the device clock (every charge measured, the method's own work included),
150 device-seconds per cell, no refit, in **both cache conditions** of one suite: ``cache_access:
all`` (the stage cache open to every method, the suite's default) and ``cache_access:
memoization-aware`` (EEIPU's paper's condition: only EEIPU, which declares itself memoization-aware,
reads the cache; the others compute every stage at its true cost). The full design is 5 seeds x 4
methods x 2 conditions = 40 cells in one results directory ``--out``; ``--run-seeds`` runs only
those seeds now, and running the command again with the same ``--out`` keeps finished cells and
resumes interrupted ones (cells go seed by seed). Printed per condition and method, medians over
the seeds whose cells finished (the seeds are listed): post-warm-up candidates (``ok`` trials after
the 10 warm-up trials, within the budget), the best validation loss, the test accuracy of the
recommended trial, the improvement over the warm-up's best validation loss (the paper's measure:
from the end of the warm-up), trials that read a cached stage, and the method's own time per
iteration (the charged ``method`` phase of each post-warm-up trial). ``--analyse DIR`` prints the
tables of an existing results directory.

**Ask time** (``--ask-time``, issue 18 item 4): replays recorded EEIPU histories (by default the
image-pipeline EEIPU ledgers of ``reports/reference-cpu``, cpu scale) into two fresh EEIPU methods,
one with the acquisition settings before issue 18 (``CPU_BEFORE_ISSUE_18``: 30 L-BFGS-B iterations
per acquisition optimisation, 100 per GP fit even when warm-started, BoTorch's posterior object
built at every call) and one with today's cpu defaults (10 iterations, 20 per warm-started fit, the
cached training-side solve). At every post-warm-up trial both are asked with the same context, in
alternating order, timed in wall and process-CPU seconds, then told the recorded result. The
quality check: each step's proposal of the new settings is scored under the *old* settings'
acquisition (its log value), against the old settings' own proposal; a gap near 0 means the faster
optimiser finds as good a candidate by the old, more thorough, acquisition's own measure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
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

N_INIT = 10
"""The methods' default warm-up (C.5)."""
CONDITIONS = ("all", "memoization-aware")
REAL_METHODS = ("eeipu", "ei", "carbo", "eips")


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
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the design (0 .. N-1)")
    parser.add_argument("--run-seeds", type=int, nargs="+", default=None,
                        help="image-pipeline: run only these seeds of the design now (default: all)")
    parser.add_argument("--budget", type=float, default=None,
                        help="per cell (default: 200 cost units synthetic, 150 device-seconds image-pipeline)")
    parser.add_argument("--scale", default="cpu", help="the task's (and so the BO methods' settings') scale")
    parser.add_argument("--out", default=None)
    parser.add_argument("--task", default="synthetic-pipeline", choices=("synthetic-pipeline", "image-pipeline"))
    parser.add_argument("--jobs", type=int, default=2, help="image-pipeline: cells at once")
    parser.add_argument("--analyse", default=None, help="image-pipeline: only print the tables of this results dir")
    parser.add_argument("--ask-time", nargs="*", default=None, metavar="LEDGER",
                        help="time EEIPU's ask before and after issue 18 on recorded histories")
    args = parser.parse_args()
    if args.ask_time is not None:
        ask_time(args.ask_time)
    elif args.task == "image-pipeline":
        real_pipeline(args)
    else:
        synthetic(args)


def synthetic(args: argparse.Namespace) -> None:
    sys.modules.setdefault("bo_bench", sys.modules[__name__])
    budget = 200.0 if args.budget is None else args.budget
    out = Path(args.out or tempfile.mkdtemp(prefix="bo-"))
    out.mkdir(parents=True, exist_ok=True)
    suite = {"name": "bo-bench", "clock": "counting", "budget": budget, "refit": False,
             "clock_options": {"per_example": 0.001, "per_event": 0.0, "cache_read": 0.1},
             "seeds": list(range(args.seeds)), "threads": 1,
             "tasks": [{"name": "synthetic-pipeline", "scale": args.scale}],
             "methods": [{"name": f"bo_bench:{cls}", "label": name} for name, cls in CLASSES.items()]}
    path = out / "bo-bench.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    started = time.perf_counter()
    api.run(path, out=out / "results", device="cpu", progress=True)
    frame = load_results(out / "results")
    print(f"synthetic-pipeline, budget {budget:g} cost units, {args.seeds} seeds, scale {args.scale}; "
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
            warm = objective[:N_INIT]
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


# -- the real pipeline in both cache conditions ------------------------------------------------
def image_suite(seeds: int, budget: float, scale: str, jobs: int) -> dict[str, Any]:
    """The full design: one task entry per cache condition, the four methods, ``seeds`` seeds."""
    return {"name": "bo-image", "clock": "device", "budget": budget, "refit": False, "threads": 1, "jobs": jobs,
            "seeds": list(range(seeds)),
            "tasks": [{"name": "image-pipeline", "scale": scale, "cache_access": access,
                       "methods": list(REAL_METHODS)} for access in CONDITIONS]}


def real_pipeline(args: argparse.Namespace) -> None:
    """EEIPU and the baselines on image-pipeline in both cache conditions (see the module doc)."""
    if args.analyse is None:
        out = Path(args.out or "results/bo-image")
        out.mkdir(parents=True, exist_ok=True)
        budget = 150.0 if args.budget is None else args.budget
        path = out / "bo-image.yaml"
        path.write_text(yaml.safe_dump(image_suite(args.seeds, budget, args.scale, args.jobs), sort_keys=False))
        only = None if args.run_seeds is None else ",".join(f"seed={s}" for s in args.run_seeds)
        started = time.perf_counter()
        api.run(path, out=out / "results", device="cpu", progress=True, only=only)
        print(f"ran seeds {args.run_seeds if args.run_seeds is not None else list(range(args.seeds))} of "
              f"0..{args.seeds - 1} in {time.perf_counter() - started:.0f} s wall")
        results = out / "results"
    else:
        results = Path(args.analyse)
    analyse_real(results)


def cell_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One finished cell's figures from its trial rows (see the module doc)."""
    trials = sorted((r for r in rows if r["kind"] == "trial"), key=lambda r: r["trial_id"])
    ok = [r for r in trials if r["status"] == "ok" and r.get("score") is not None]
    warm = [r["score"] for r in ok if r["trial_id"] < N_INIT]
    best = min((r["score"] for r in ok), default=np.nan)
    after = [r for r in trials if r["trial_id"] >= N_INIT]
    rec = rows[-1].get("recommendation") if rows else None
    by_id = {r["trial_id"]: r for r in rows}
    test = (by_id[rec].get("test") or {}).get("accuracy", np.nan) if rec in by_id else np.nan
    return {"candidates": float(sum(r["trial_id"] >= N_INIT for r in ok)), "trials": float(len(ok)),
            "best_val": float(best), "test": float(test if test is not None else np.nan),
            "improvement": float(min(warm) - best) if warm else np.nan,
            "hits": float(sum(r.get("cache_hits", 0) > 0 for r in trials)),
            "own": float(np.median([r["cost"].get("method", 0.0) for r in after])) if after else np.nan}


def analyse_real(results: Path) -> None:
    from hpobench_elbo.engine.ledger import LedgerError, read_ledger

    cells: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    loads: list[float] = []
    for path in sorted(results.glob("*.jsonl")):
        try:
            contents = read_ledger(path)
        except LedgerError:
            continue
        if contents.end is None:
            continue  # not finished: left out (the seeds listed are the finished ones)
        h = contents.header
        access = (h.get("stage_cache") or {}).get("access", "all")
        cells[(access, h["cell"]["method"])][int(h["cell"]["seed"])] = cell_figures(contents.rows)
        loads += [r["machine"]["load"] for r in contents.rows if isinstance((r.get("machine") or {}).get("load"), float)]
    print(f"image-pipeline ({results}), device clock, the method's own work charged like everything else; "
          f"1-minute load while the cells ran: median {np.median(loads) if loads else np.nan:.2f}, "
          f"highest {max(loads) if loads else np.nan:.2f} (2 CPU cores)")
    for access in CONDITIONS:
        table = {}
        print(f"cache_access: {access}" + (" (the stage cache open to every method)" if access == "all" else
                                           " (only EEIPU reads the cache; the paper's condition)"))
        for name in REAL_METHODS:
            per_seed = cells.get((access, name), {})
            if not per_seed:
                continue
            keys = ("candidates", "best_val", "test", "improvement", "hits", "own")
            med = {k: float(np.nanmedian([f[k] for f in per_seed.values()])) for k in keys}
            table[name] = med
            print(f"  {name:6s} seeds {sorted(per_seed)}  post-warm-up candidates {med['candidates']:5.1f}  "
                  f"best val loss {med['best_val']:.4f}  test accuracy {med['test']:.3f}  "
                  f"improvement over warm-up {med['improvement']:.4f}  trials reading the cache {med['hits']:4.1f}  "
                  f"own time per iteration {med['own']:.2f} s")
        if "eeipu" in table:
            for other in ("ei", "carbo", "eips"):
                if other in table and table[other]["candidates"] > 0:
                    c = table["eeipu"]["candidates"] / table[other]["candidates"] - 1.0
                    imp = table[other]["improvement"]
                    i = table["eeipu"]["improvement"] / imp - 1.0 if imp > 0 else np.nan
                    print(f"    EEIPU vs {other}: {100 * c:+.0f}% post-warm-up candidates, {100 * i:+.0f}% "
                          f"improvement over warm-up")


# -- EEIPU's time per ask, before and after issue 18 --------------------------------------------
def ask_time(ledgers: list[str]) -> None:
    import torch

    from hpobench_elbo.contracts import AskContext, TrialResult
    from hpobench_elbo.engine.ledger import read_ledger
    from hpobench_elbo.engine.loop import paid_prefixes
    from hpobench_elbo.methods.bo.method import CPU_BEFORE_ISSUE_18
    from hpobench_elbo.registry import TASKS

    torch.set_num_threads(1)
    paths = [Path(p) for p in ledgers] or sorted((REPO / "reports" / "reference-cpu").glob("image-pipeline.*--eeipu--*.jsonl"))
    if not paths:
        raise SystemExit("no EEIPU ledger to replay")
    settings = {"before": dict(CPU_BEFORE_ISSUE_18), "after": {}}
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    gaps: list[float] = []
    started = time.perf_counter()
    for path in paths:
        contents = read_ledger(path)
        cell = contents.header["cell"]
        task = TASKS.create(cell["task"], scale=cell["scale"], device="cpu", **cell["task_options"])
        info = task.static_info() if hasattr(task, "static_info") else task.info
        methods = {k: EEIPU(info, contents.header["seeds"]["sampler"], **{**cell["method_options"], **v})
                   for k, v in settings.items()}
        told: list[TrialResult] = []
        spent = reads = read_cost = 0.0
        for step, row in enumerate(r for r in contents.rows if r["kind"] == "trial"):
            result = TrialResult.from_json(row).without_test()
            ctx = AskContext(remaining=cell["budget"] - spent, budget=cell["budget"], spent=spent,
                             n_completed=sum(r.status == "ok" for r in told), paid_prefixes=paid_prefixes(info, told),
                             read_price=read_cost / reads if reads else 0.0)
            order = list(settings) if step % 2 == 0 else list(settings)[::-1]
            proposals = {}
            for key in order:
                w, c = time.perf_counter(), time.process_time()
                spec = methods[key].ask(ctx)
                if methods[key].asked > N_INIT:
                    wall[key].append(time.perf_counter() - w)
                    cpu[key].append(time.process_time() - c)
                proposals[key] = None if spec is None else spec.config
            if methods["before"].asked > N_INIT and all(p is not None for p in proposals.values()):
                try:
                    old, new = methods["before"].score_configs([proposals["before"], proposals["after"]])
                    if np.isfinite(old) and np.isfinite(new):
                        gaps.append(float(old - new))
                except RuntimeError:
                    pass  # the old settings fell back to a random draw: nothing to compare
            for m in methods.values():
                m.tell(result.spec, result)
            told.append(result)
            spent = float(row["spent"])
            reads += row.get("cache_hits", 0)
            read_cost += row["cost"].get("cache", 0.0)
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"EEIPU's own time per ask after warm-up, {len(paths)} recorded image-pipeline histories "
          f"({', '.join(p.name for p in paths)}), one torch thread, {time.perf_counter() - started:.0f} s wall, "
          f"1-minute load at the end {load:.2f} on {os.cpu_count()} CPUs")
    for key, opts in settings.items():
        print(f"  {key:6s} {opts or 'the cpu defaults'}: median {np.median(wall[key]):.3f} s wall "
              f"(mean {np.mean(wall[key]):.3f}, 90th percentile {np.percentile(wall[key], 90):.3f}), "
              f"median {np.median(cpu[key]):.3f} s CPU, n={len(wall[key])}")
    print(f"  speed-up of the median (wall): {np.median(wall['before']) / np.median(wall['after']):.2f}x; "
          f"goal: at most 0.25 s median")
    g = np.array(gaps)
    print(f"  quality: log acquisition of the old settings' proposal minus the new settings' proposal, "
          f"scored by the old settings' acquisition, over {len(g)} steps: median {np.median(g):.4f}, "
          f"90th percentile {np.percentile(g, 90):.3f}, share within 0.05 (5%) {np.mean(g < 0.05):.2f}, "
          f"share where the new proposal scores higher {np.mean(g < 0):.2f}")


if __name__ == "__main__":
    main()
