"""Device time of one training step, per task and tuner, against the plain SGD tuner of the same run.

For each task (at the chosen scale, default ``cpu``) the model, the data and the training set-up are
built through the task object exactly as a trial builds them (``task.prepare`` / ``task.transform``
on the seed's labelled pool with its 80/20 split, ``task.build_model``, the Trainer's ``TrainSetup``
with the recipe's ``RecipeOptimizer``). Every tuner then starts from the same initial weights and
takes the same minibatches (drawn once, from one seeded generator); each step runs inside the
trainer's ``train`` unit of a ``BudgetMeter`` under the ``DeviceClock``, as in a trial. Timing:
``time.perf_counter()`` around every step (after ``torch.cuda.synchronize()`` on a GPU), after
``--warmup`` untimed steps, ``--steps`` steps per tuner per round, ``--rounds`` rounds with the
tuners taking turns (other processes may share the cores). Three tables, each with the ratio to the
SGD tuner measured in the same run: the median wall time per step (robust to preemption spikes; it
hides the occasional costlier step, e.g. a trajectory row or a hypergradient every 10 steps), the
mean wall time per step, and on a CPU the mean CPU time of the stepping thread per step
(``time.thread_time()``: what the step costs the one core it runs on, however loaded the machine
is). The column ``randn(D) only`` times the ELBo tuner's per-step noise draw alone (D normals from a
generator, the same stream as before the fused step): a floor under the ELBo step's extra cost.

Tuners (``--tuners``, default all):

* ``sgd``: the plain SGD tuner (search methods' trials) at lr 0.01 with the task's other
  hyperparameters at ``benchmarks/tasks.py``-like defaults (e.g. L2-SP alpha = beta = 1e-4);
* ``de-elbo``: the ``elbo`` tuner, kappa = D / n (iso q, one sigma);
* ``de-elbo-diag``: the same with ``per_parameter_sigma`` (one sigma per weight);
* ``implicit``: the ``implicit-neumann`` tuner with its default options (a hypergradient every 10
  steps on one validation minibatch of the split);
* ``--compare FILE``: also times the ``ELBoTuner`` class of another copy of the tuner module (e.g. the
  per-tensor version before the fused step) as ``de-elbo[FILE stem]`` (and ``-diag``).

    python benchmarks/step_cost.py                         # every installed task, cpu scale
    python benchmarks/step_cost.py --tasks image-transfer --steps 30 --rounds 3
    python benchmarks/step_cost.py --device cuda --scale gpu --threads 4
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hpobench_elbo.api import resolve_device
from hpobench_elbo.contracts import TrainSetup, TrialContext, TrialSpec, TunerSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.clock import DeviceClock
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.registry import TASKS, build_tuner
from hpobench_elbo.tasks.base import Trial
from hpobench_elbo.tasks.data.splits import train_validation_split
from hpobench_elbo.tasks.training import RecipeOptimizer, minibatch_indices, seeded

TASK_NAMES = ("digits-mlp", "mnist-mlp", "uci-regression", "image-transfer", "text-transfer")
TASK_OPTIONS: dict[str, dict[str, Any]] = {"uci-regression": {"dataset": "boston"}}
TUNER_NAMES = ("sgd", "de-elbo", "de-elbo-diag", "implicit")
DEFAULTS: dict[str, Any] = {"lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "alpha": 1e-4, "beta": 1e-4}
GOAL = 1.3  # DE-ELBo at most 1.3x the SGD step on CPU (issue 11)
NOISE = "randn(D) only"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    parser.add_argument("--tuners", nargs="+", default=list(TUNER_NAMES), choices=TUNER_NAMES)
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per tuner and round (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the first round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", type=Path, help="another copy of the ELBo tuner module to time as well")
    return parser.parse_args()


def load_compare(path: Path) -> type:
    spec = importlib.util.spec_from_file_location(f"step_cost_compare_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"--compare: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.ELBoTuner


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def default_config(task: Any) -> dict[str, Any]:
    config = {}
    for name, param in task.info.space:
        value = DEFAULTS.get(name)
        if value is None or not param.contains(value):
            grid = param.grid_values()
            value = grid[len(grid) // 2]
        config[name] = value
    return task.info.space.validate(config)


class Bench:
    """One task's data and set-up; :meth:`runner` builds a tuner on a fresh model and steps it."""

    def __init__(self, name: str, args: argparse.Namespace, device: str, workdir: Path) -> None:
        self.name = name
        self.device = device
        self.task = TASKS.create(name, scale=args.scale, device=device, **TASK_OPTIONS.get(name, {}))
        self.recipe = self.task.info.recipe
        self.config = default_config(self.task)
        seeds = Seeds.from_cell(args.seed)
        meter = BudgetMeter(1e12, DeviceClock(device))
        ctx = TrialContext(meter, StageCache(workdir / name).view(), seeds, build_tuner)
        spec = TrialSpec(self.config, trial_id=0, data="split")
        pool = self.task.data.pool.subset(self.task.pool_indices(seeds.subset))
        train_idx, val_idx = train_validation_split(pool.y, "split", seeds.split)
        trial = Trial(spec, self.config, pool, train_idx, val_idx, ctx, self.task.name)
        t0 = time.perf_counter()
        with seeded(seeds.for_trial("noise", 0), device):
            prepared = self.task.prepare(trial)
            self.data = self.task.transform(trial, prepared)
        self.prepare_s = time.perf_counter() - t0
        self.n_data = len(prepared.x_pool)
        self.init_seed = seeds.for_trial("init", 0)
        self.noise_seed = seeds.for_trial("noise", 0)
        n = len(self.data.x_train)
        self.batch_size = n if self.recipe.batch_size is None else min(self.recipe.batch_size, n)
        self.total = args.warmup + args.rounds * args.steps
        gen = torch.Generator().manual_seed(self.noise_seed)
        next_train = minibatch_indices(n, self.recipe.batch_size, gen)
        next_val = minibatch_indices(len(self.data.x_val), self.recipe.batch_size, gen)
        self.train_idx = [next_train() for _ in range(self.total)]
        self.val_idx = [next_val() for _ in range(self.total)]
        self.n_params = 0
        self.n_tensors = 0

    def runner(self, tuner: Any, config: dict[str, Any]) -> Callable[[int, int], list[tuple[float, float]]]:
        """Init ``tuner`` on a fresh model (same initial weights for every tuner); return
        ``run(first, last)`` that takes steps ``first..last-1`` on the pre-drawn batches."""
        model, prior_mean = self.task.build_model(self.init_seed, config)
        model.to(self.device)
        model.train()
        self.model = model
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.n_params, self.n_tensors = sum(p.numel() for p in trainable), len(trainable)
        meter = BudgetMeter(1e12, DeviceClock(self.device))
        data = self.data
        setup = TrainSetup(loss_fn=self.task.objective.loss_fn, n_train=len(data.x_train), n_data=self.n_data,
                           total_steps=self.recipe.steps, batch_size=self.batch_size, prior_mean=prior_mean,
                           generator=torch.Generator(device="cpu").manual_seed(self.noise_seed), meter=meter,
                           recipe=self.recipe, make_optimizer=functools.partial(RecipeOptimizer, self.recipe),
                           device=self.device, train_data=(data.x_train, data.y_train))
        tuner.init(model, self.task.info, config, setup)
        position = {"val": 0}

        def val_batch() -> tuple[torch.Tensor, torch.Tensor]:
            idx = self.val_idx[position["val"] % self.total]
            position["val"] += 1
            return data.x_val[idx], data.y_val[idx]  # type: ignore[index]

        step_unit = meter.unit("train", examples=self.batch_size)
        device = self.device

        def run(first: int, last: int) -> list[tuple[float, float]]:
            """Steps first..last-1; per step (wall seconds, this thread's CPU seconds)."""
            out = []
            for step in range(first, last):
                synchronize(device)
                t0, c0 = time.perf_counter(), time.thread_time()
                with step_unit:
                    idx = self.train_idx[step]
                    tuner.step(model, (data.x_train[idx], data.y_train[idx]), step, val_batch)
                synchronize(device)
                out.append((time.perf_counter() - t0, time.thread_time() - c0))
            return out

        return run


def tuner_factories(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """Label -> tuner factory: the tuners this run times, SGD first."""
    table: dict[str, Callable[[], Any]] = {}
    elbo = {"de-elbo": {}, "de-elbo-diag": {"per_parameter_sigma": True}}
    for name in args.tuners:
        if name == "sgd":
            table[name] = functools.partial(build_tuner, TunerSpec("sgd"))
        elif name == "implicit":
            table[name] = functools.partial(build_tuner, TunerSpec("implicit-neumann", {}))
        else:
            table[name] = functools.partial(build_tuner, TunerSpec("elbo", dict(elbo[name])))
    if args.compare is not None:
        other = load_compare(args.compare)
        for name in args.tuners:
            if name in elbo:
                table[f"{name}[{args.compare.stem}]"] = functools.partial(other, **elbo[name])
    if "sgd" not in table:
        raise UserError("--tuners must include sgd (the baseline of the ratios)")
    return dict(sorted(table.items(), key=lambda kv: kv[0] != "sgd"))


def measure(bench: Bench, args: argparse.Namespace,
            factories: dict[str, Callable[[], Any]]) -> dict[str, list[tuple[float, float]]]:
    """Label -> (wall, CPU) seconds of every timed step; the tuners take turns, ``--steps`` at a time."""
    runs = {}
    for label, factory in factories.items():
        runs[label] = bench.runner(factory(), dict(bench.config))
        runs[label](0, args.warmup)
    if any(label.startswith("de-elbo") for label in runs):
        runs[NOISE] = noise_draw(bench)  # what the ELBo step cannot avoid: the same draw as before
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
    for r in range(args.rounds):
        first = args.warmup + r * args.steps
        for label, run in runs.items():
            times[label] += run(first, first + args.steps)
    return times


def noise_draw(bench: Bench) -> Callable[[int, int], list[tuple[float, float]]]:
    """Times ``torch.randn(D)`` alone, the per-step noise draw of the ELBo tuner (D of the last model)."""
    n = bench.n_params
    dtype = next(p for p in bench.model.parameters() if p.requires_grad).dtype
    out = torch.empty(n, dtype=dtype, device=bench.device)
    gen = torch.Generator(device=bench.device).manual_seed(0)

    def run(first: int, last: int) -> list[tuple[float, float]]:
        times = []
        for _ in range(first, last):
            synchronize(bench.device)
            t0, c0 = time.perf_counter(), time.thread_time()
            torch.randn(n, generator=gen, out=out)
            synchronize(bench.device)
            times.append((time.perf_counter() - t0, time.thread_time() - c0))
        return times

    return run


def load_average() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    factories = tuner_factories(args)
    cpu = not device.startswith("cuda")
    where = platform.processor() or platform.machine() if cpu else torch.cuda.get_device_name(device)
    print(f"step cost at {args.scale} scale on {device} ({where}), torch {torch.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} cores; {args.warmup} warm-up + {args.rounds} x {args.steps} "
          "timed steps per tuner")
    print(f"load average before: {load_average()}")
    labels = list(factories) + ([NOISE] if any(label.startswith("de-elbo") for label in factories) else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpobench-step-cost-") as tmp:
        for name in args.tasks:
            try:
                bench = Bench(name, args, device, Path(tmp))
            except (UserError, ImportError, OSError) as exc:
                print(f"{name}: skipped ({type(exc).__name__}: {str(exc)[:160]})", flush=True)
                continue
            times = measure(bench, args, factories)
            stats = {label: {"median": statistics.median(w for w, _ in v), "mean": statistics.fmean(w for w, _ in v),
                             "cpu": statistics.fmean(c for _, c in v)} for label, v in times.items()}
            rows.append((name, bench, stats))
            print(f"  {name}: D = {bench.n_params} in {bench.n_tensors} tensors, batch {bench.batch_size}; data "
                  f"{bench.prepare_s:.1f} s; load {load_average()}", flush=True)
    head = f"{'task':16s} " + " ".join(f"{label:>24s}" for label in labels)
    tables = [("median", "median wall ms per step (perf_counter)"), ("mean", "mean wall ms per step")]
    if cpu:
        tables.append(("cpu", "mean CPU ms per step of the stepping thread (thread_time: not inflated by "
                              "other processes' load)"))
    for key, title in tables:
        print(f"\n{title}, ratio to sgd")
        print(head)
        print("-" * len(head))
        for name, _, stats in rows:
            base = stats["sgd"][key]
            print(f"{name:16s} " + " ".join(f"{1e3 * stats[label][key]:11.3f} ms ({stats[label][key] / base:5.2f}x)"
                                           for label in labels))
    print(f"\nload average after: {load_average()}")
    if "de-elbo" in labels and rows:
        for key, _ in tables:
            worst = max(stats["de-elbo"][key] / stats["sgd"][key] for _, _, stats in rows)
            verdict = "meets" if worst <= GOAL else "misses"
            print(f"de-elbo / sgd ({key}): at most {worst:.2f}x over these tasks; {verdict} the goal "
                  f"(<= {GOAL}x on CPU)")

if __name__ == "__main__":
    main()
