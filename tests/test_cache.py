"""The stage cache: hits and misses, per-cell accounting, float keys, corruption, concurrency, ledger.

Every charge here is exact: stage costs are simulated (``simulated_cost=``) or priced by the
CountingClock (``per_example`` x examples + ``per_event``; a cache read costs ``cache_read``).
"""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from hpobench_elbo import api
from hpobench_elbo.contracts import PHASES, TrialSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import StageCache, stage_key
from hpobench_elbo.engine.clock import CountingClock
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.tasks.synthetic import STAGES, SyntheticPipeline, stage_costs
from conftest import run_trial  # noqa: E402

READ = 0.1  # the cache read price (EEIPU's epsilon in C.5) used throughout
CLOCK = CountingClock(per_example=1e-3, per_event=1e-3, cache_read=READ)
UNIT = CLOCK.cache_key  # what a stage key holds: the unit and, for a counting clock, its prices


def meter(budget: float = 1e6) -> BudgetMeter:
    return BudgetMeter(budget, CLOCK)


class Counted:
    """A stage computation that counts its calls and returns a known tensor."""

    def __init__(self, value: float = 1.0, size: int = 8) -> None:
        self.calls = 0
        self.value = value
        self.size = size

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return torch.full((self.size,), self.value)


def get(view: Any, m: BudgetMeter, compute: Counted, params: dict[str, Any], cost: float | None = 5.0,
        stage: str = "s1", examples: int = 0) -> torch.Tensor:
    return view.get(m, task="t", stage=stage, data_seed=0, params=params, compute=compute,
                    simulated_cost=cost, examples=examples).output


# -- hit and miss, per-cell accounting ------------------------------------------------------------
def test_miss_pays_true_cost_then_hit_pays_read(tmp_path: Path) -> None:
    store = StageCache(tmp_path)
    view, m, compute = store.view(), meter(), Counted(3.0)
    out = get(view, m, compute, {"a": 1.0})
    assert compute.calls == 1 and torch.equal(out, torch.full((8,), 3.0))
    assert m.spent == pytest.approx(5.0, abs=1e-12)
    assert (view.stats.hits, view.stats.misses) == (0, 1)
    out = get(view, m, compute, {"a": 1.0})
    assert compute.calls == 1 and torch.equal(out, torch.full((8,), 3.0))
    assert m.spent == pytest.approx(5.0 + READ, abs=1e-12)
    assert m.by_phase()["cache"] == pytest.approx(READ, abs=1e-12)
    assert (view.stats.hits, view.stats.misses) == (1, 1)
    assert view.stats.cost_saved == pytest.approx(5.0 - READ, abs=1e-12)
    # another parameter value is another entry
    get(view, m, Counted(), {"a": 2.0})
    assert m.spent == pytest.approx(10.0 + READ, abs=1e-12)


def test_measured_cost_is_stored_and_charged_to_the_next_cell(tmp_path: Path) -> None:
    """Without ``simulated_cost`` the clock prices the computation; another cell pays that stored cost."""
    store = StageCache(tmp_path)
    m1, compute = meter(), Counted()
    get(store.view(), m1, compute, {"a": 1.0}, cost=None, examples=100)
    true_cost = 1e-3 * 100 + 1e-3
    assert m1.spent == pytest.approx(true_cost, abs=1e-12)
    m2 = meter()
    get(store.view(), m2, compute, {"a": 1.0}, cost=None, examples=100)
    assert compute.calls == 1  # served from the store ...
    assert m2.spent == pytest.approx(true_cost, abs=1e-12)  # ... but charged its true cost


def _two_cells(store: StageCache, order: tuple[str, str]) -> dict[str, float]:
    """Cells A and B each need stages s1 (cost 5) and s2 (cost 2) twice; A also needs s3 (cost 1)."""
    needs = {"A": [("s1", 5.0), ("s2", 2.0), ("s1", 5.0), ("s3", 1.0), ("s2", 2.0)],
             "B": [("s2", 2.0), ("s1", 5.0), ("s2", 2.0), ("s1", 5.0)]}
    spent = {}
    for cell in order:
        view, m = store.view(), meter()
        for stage, cost in needs[cell]:
            get(view, m, Counted(), {"a": 1.0}, cost=cost, stage=stage)
        spent[cell] = m.spent
    return spent


def test_per_cell_accounting_is_independent_of_cell_order(tmp_path: Path) -> None:
    ab = _two_cells(StageCache(tmp_path / "ab"), ("A", "B"))
    ba = _two_cells(StageCache(tmp_path / "ba"), ("B", "A"))
    private = {"A": _two_cells(StageCache(tmp_path / "a"), ("A",))["A"],
               "B": _two_cells(StageCache(tmp_path / "b"), ("B",))["B"]}
    assert ab == pytest.approx(ba, abs=1e-12) and ab == pytest.approx(private, abs=1e-12)
    assert ab["A"] == pytest.approx(5 + 2 + READ + 1 + READ, abs=1e-12)
    assert ab["B"] == pytest.approx(2 + 5 + READ + READ, abs=1e-12)


def test_a_second_cell_pays_the_true_cost_of_an_entry_another_cell_computed(tmp_path: Path) -> None:
    store = StageCache(tmp_path)
    compute = Counted()
    get(store.view(), meter(), compute, {"a": 1.0}, cost=7.0)
    view_b, m_b = store.view(), meter()
    get(view_b, m_b, compute, {"a": 1.0}, cost=7.0)
    assert compute.calls == 1
    assert m_b.spent == pytest.approx(7.0, abs=1e-12)  # the true cost, not the read
    assert view_b.stats.hits == 0 and view_b.stats.paid_keys  # paid, so the next use is a hit
    get(view_b, m_b, compute, {"a": 1.0}, cost=7.0)
    assert m_b.spent == pytest.approx(7.0 + READ, abs=1e-12) and view_b.stats.hits == 1


# -- keys -----------------------------------------------------------------------------------------
def test_float_round_trip_through_normalisation_hits_the_same_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inexact = []
    # min-max normalisation with the observed data's bounds (EEIPU, METHODS.md C.2) and a log scale
    lo, hi = -1.3, 2.9
    for v in rng.uniform(-4.5, 4.5, 1000):
        v = float(v)
        back = lo + (hi - lo) * ((v - lo) / (hi - lo))
        if back != v:
            inexact.append((v, back))
    llo, lhi = math.log10(1e-4), 0.0
    for v in 10.0 ** rng.uniform(-4, 0, 1000):
        v = float(v)
        back = 10.0 ** (llo + (lhi - llo) * ((math.log10(v) - llo) / (lhi - llo)))
        if back != v:
            inexact.append((v, back))
    assert len(inexact) > 100, "the round trip should be inexact for many values"
    for v, back in inexact:
        assert stage_key("t", "s1", 0, {"x": v}, UNIT) == stage_key("t", "s1", 0, {"x": back}, UNIT)
    store = StageCache(tmp_path)
    view, m, compute = store.view(), meter(), Counted()
    v, back = inexact[0]
    get(view, m, compute, {"x": v, "y": 0.25})
    get(view, m, compute, {"y": 0.25, "x": back})  # key order does not matter either
    assert compute.calls == 1 and view.stats.hits == 1
    # keys still tell different values, stages, data seeds and units apart
    base = stage_key("t", "s1", 0, {"x": v}, UNIT)
    assert base != stage_key("t", "s1", 0, {"x": v + 1e-6}, UNIT)
    assert base != stage_key("t", "s2", 0, {"x": v}, UNIT)
    assert base != stage_key("t", "s1", 1, {"x": v}, UNIT)
    assert base != stage_key("t", "s1", 0, {"x": v}, "device-seconds (CPU)")


# -- corruption -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_corrupted_entry_is_recomputed(tmp_path: Path, damage: str) -> None:
    store = StageCache(tmp_path)
    compute = Counted(2.5, size=1000)
    get(store.view(), meter(), compute, {"a": 1.0})
    key = stage_key("t", "s1", 0, {"a": 1.0}, UNIT)
    [data_path] = list(tmp_path.rglob(f"{key}.pt"))
    [meta_path] = list(tmp_path.rglob(f"{key}.json"))
    if damage == "truncate":
        raw = data_path.read_bytes()
        data_path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        raw = bytearray(data_path.read_bytes())
        for i in range(len(raw) // 3, len(raw) // 3 + 16):
            raw[i] ^= 0xFF
        data_path.write_bytes(bytes(raw))  # same length, different bytes
    else:
        meta_path.write_text(meta_path.read_text()[:10])
    assert store.load(key) is None
    m = meter()
    out = get(store.view(), m, compute, {"a": 1.0})
    assert compute.calls == 2 and torch.equal(out, torch.full((1000,), 2.5))
    assert m.spent == pytest.approx(5.0, abs=1e-12)  # recomputed: the true cost
    entry = store.load(key)  # repaired
    assert entry is not None and torch.equal(entry[0], out) and entry[1] == pytest.approx(5.0)
    # a cell that had already paid for the entry recomputes it too (and gets the right value), and is
    # charged only the read it would have paid: per-cell accounting does not depend on the store
    view, m = store.view(), meter()
    get(view, m, compute, {"a": 1.0})
    data_path.write_bytes(data_path.read_bytes()[:100])
    out = get(view, m, compute, {"a": 1.0})
    assert compute.calls == 3 and torch.equal(out, torch.full((1000,), 2.5))
    assert m.spent == pytest.approx(5.0 + READ, abs=1e-12) and view.stats.recomputed == 1


# -- two processes --------------------------------------------------------------------------------
MP_KEYS = 4
MP_ROUNDS = 25


def _payload(i: int) -> torch.Tensor:
    return torch.arange(200_000, dtype=torch.float32) * (i + 1)  # 800 KB: writes are not instant


def _hammer(root: str, worker: int, queue: Any, barrier: Any) -> None:
    """Compute and read the same keys as the other worker, rewriting entries every other round."""
    torch.set_num_threads(1)
    store = StageCache(root)
    barrier.wait(timeout=120)  # both workers start their loops together
    bad, absent, computed = 0, 0, 0
    for r in range(MP_ROUNDS):
        for j in range(MP_KEYS):
            i = (j + worker) % MP_KEYS  # the two workers walk the keys in different orders
            expected = _payload(i)

            def compute(i: int = i) -> torch.Tensor:
                nonlocal computed
                computed += 1
                return _payload(i)

            out = store.view().get(BudgetMeter(1e9, CLOCK), task="mp", stage="s", data_seed=0,
                                   params={"i": i}, compute=compute, simulated_cost=1.0 + i).output
            bad += not torch.equal(out, expected)
            key = stage_key("mp", "s", 0, {"i": i}, UNIT)
            if r % 2 == worker % 2:
                store.store(key, expected, 1.0 + i, {"task": "mp", "stage": "s", "params": {"i": i}})
            entry = store.load(key)
            if entry is None:
                absent += 1
            elif not torch.equal(entry[0], expected) or entry[1] != 1.0 + i:
                bad += 1
    queue.put((worker, bad, absent, computed))


def test_two_processes_at_once_never_see_a_corrupted_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, queue, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for worker, bad, absent, computed in reports:
        assert bad == 0, f"worker {worker} saw {bad} wrong values"
        assert absent == 0, f"worker {worker} found a written entry unreadable {absent} times"
        assert computed <= MP_KEYS  # after the first round every key is served from the store
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert not leftovers


# -- the synthetic pipeline: C-T4 ------------------------------------------------------------------
X = {"x1": 1.2345678901, "x2": -0.4321, "x3": 0.3, "x4": 0.61803398875, "x5": 0.2071, "x6": 2.0, "x7": 0.5}
HULL = {"x1": (-1.3, 2.9), "x2": (-1.3, 2.9), "x3": (0.1, 0.7), "x4": (0.1, 0.7), "x5": (0.1, 0.7)}
"""Observed-data bounds a method normalises with (EEIPU's data hull, METHODS.md C.2)."""


def _normalise_round_trip(config: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in config.items():
        lo, hi = HULL[name]
        out[name] = lo + (hi - lo) * ((value - lo) / (hi - lo))
    return out


def test_ct4_memoised_prefix_is_not_re_executed_and_costs_two_reads(tmp_path: Path) -> None:
    task = SyntheticPipeline()
    view, m = StageCache(tmp_path).view(), meter()
    seeds = Seeds.from_cell(0)
    first = run_trial(task, TrialSpec(dict(X), trial_id=0), m, view, seeds)
    c = stage_costs(X)
    assert first.status == "ok" and m.spent == pytest.approx(sum(c), abs=1e-12)
    assert dict(task.stage_calls) == {"s1": 1, "s2": 1, "s3": 1}
    # x' shares x's first two stage-blocks (after a normalise/unnormalise round trip) and changes stage 3
    shared = _normalise_round_trip({k: X[k] for k in ("x1", "x2", "x3", "x4", "x5")})
    assert any(shared[k] != X[k] for k in shared), "pick values whose round trip is inexact"
    x_new = {**shared, "x6": -1.0, "x7": 1.5}
    spent = m.spent
    second = run_trial(task, TrialSpec(x_new, trial_id=1), m, view, seeds)
    c_new = stage_costs(x_new)
    assert dict(task.stage_calls) == {"s1": 1, "s2": 1, "s3": 2}  # stages 1-2 not re-executed
    assert m.spent - spent == pytest.approx(2 * READ + c_new[2], abs=1e-12)
    assert second.metrics["n_memoised"] == 2
    # the result carries the TRUE stage costs (for cost models), not what was charged
    assert [second.metrics[f"cost_{s.name}"] for s in STAGES] == pytest.approx(list(c_new), abs=1e-12)
    assert second.metrics["cost_s1"] > 2 * READ
    assert task.test(second)["objective"] == pytest.approx(second.metrics["objective"], abs=1e-12)


def test_synthetic_run_stops_as_cut_when_the_budget_ends_mid_pipeline(tmp_path: Path) -> None:
    task = SyntheticPipeline()
    c = stage_costs(X)
    m = BudgetMeter(c[0] + 0.5 * c[1], CLOCK)  # stage 2 starts within budget, stage 3 cannot
    result = run_trial(task, TrialSpec(dict(X), trial_id=0), m, StageCache(tmp_path).view(), Seeds.from_cell(0))
    assert result.status == "cut" and result.steps == 2
    assert m.spent == pytest.approx(c[0] + c[1], abs=1e-12)  # the started unit overshoots, recorded
    assert m.overshoot == pytest.approx(0.5 * c[1], abs=1e-12)


# -- the ledger, end to end -------------------------------------------------------------------------
GRID_VALUES = {"x1": [4.5], "x2": [-2.25], "x3": [0.9], "x4": [0.9], "x5": [0.95, 0.5],
               "x6": [2.25, 3.0], "x7": [-4.5, 0.5]}
"""Eight configurations sharing stage 1; the expensive first stages, a cheap last stage."""


def _suite(tmp_path: Path, cache: bool, name: str) -> Path:
    suite = {
        "name": name,
        "clock": "counting",
        "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": READ},
        "budget": 200.0,
        "refit": False,
        "cache": cache,
        "threads": 1,
        "seeds": [0, 1],
        "tasks": [{"name": "synthetic-pipeline", "scale": "smoke"}],
        "methods": [{"name": "grid", "options": {"values": GRID_VALUES, "shuffle": False}}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _trial_rows(out: Path) -> dict[int, list[dict[str, Any]]]:
    rows = {}
    for path in sorted(out.glob("*.jsonl")):
        contents = read_ledger(path)
        rows[int(contents.header["cell"]["seed"])] = contents.rows
    return rows


def _charged(row: dict[str, Any]) -> float:
    return sum(row["cost"].get(p, 0.0) for p in PHASES)


def _expected_costs(configs: list[dict[str, float]], cache: bool) -> list[float]:
    """Per trial: each stage costs the read if this cell computed its prefix before, else its true cost."""
    seen: set[tuple[float, ...]] = set()
    costs = []
    for config in configs:
        c = stage_costs(config)
        total = 2 * 1e-3  # the loop charges one event for ask and one for tell
        for k, stage in enumerate(STAGES):
            prefix = tuple(config[n] for s in STAGES[:k + 1] for n in s.params)
            total += READ if (cache and prefix in seen) else c[k]
            seen.add(prefix)
        costs.append(total)
    return costs


def test_ledger_records_hits_and_cost_saved(tmp_path: Path) -> None:
    out = tmp_path / "out"
    api.run(_suite(tmp_path, cache=True, name="memo"), out=out, device="cpu", progress=False)
    rows = _trial_rows(out)
    assert set(rows) == {0, 1}
    trials = rows[0]
    assert len(trials) == 8 and all(r["status"] == "ok" for r in trials)
    configs = [r["config"] for r in trials]
    assert all(c["x1"] == 4.5 and c["x2"] == -2.25 for c in configs)
    expected = _expected_costs(configs, cache=True)
    assert [_charged(r) for r in trials] == pytest.approx(expected, abs=1e-9)
    first, later = trials[0], trials[1:]
    assert first["cache_hits"] == 0 and first["cost_saved"] == 0.0
    assert all(r["cache_hits"] > 0 and r["cost_saved"] > 0 for r in later)
    # trial 1 changes only the last stage (x7): two reads and stage 3
    assert {k for k in configs[0] if configs[0][k] != configs[1][k]} == {"x7"}
    assert trials[1]["cache_hits"] == 2 and trials[1]["metrics"]["n_memoised"] == 2
    full, last_only = _charged(first), _charged(trials[1])
    assert last_only == pytest.approx(2 * READ + trials[1]["metrics"]["cost_s3"] + 2e-3, abs=1e-9)
    assert last_only < 0.2 * full
    assert trials[1]["cost_saved"] == pytest.approx(
        trials[1]["metrics"]["cost_s1"] + trials[1]["metrics"]["cost_s2"] - 2 * READ, abs=1e-9)
    # the test value is the deterministic objective; the recommendation is the best objective
    for r in trials:
        assert r["test"]["objective"] == pytest.approx(r["metrics"]["objective"], abs=1e-12)
        assert r["score"] == pytest.approx(-r["metrics"]["objective"], abs=1e-12)
    best = max(trials, key=lambda r: r["metrics"]["objective"])
    assert trials[-1]["recommendation"] == best["trial_id"]
    # seed 1 ran second on a warm store, yet pays exactly what seed 0 paid (per-cell accounting)
    assert [_charged(r) for r in rows[1]] == pytest.approx([_charged(r) for r in trials], abs=1e-12)
    assert rows[1][0]["cache_hits"] == 0


def test_a_suite_with_cache_off_never_hits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    api.run(_suite(tmp_path, cache=False, name="nomemo"), out=out, device="cpu", progress=False)
    assert not (out / "cache").exists() or not any((out / "cache").rglob("*.pt"))
    for trials in _trial_rows(out).values():
        assert len(trials) == 8
        assert all(r["cache_hits"] == 0 and r["cost_saved"] == 0.0 for r in trials)
        configs = [r["config"] for r in trials]
        assert [_charged(r) for r in trials] == pytest.approx(_expected_costs(configs, cache=False), abs=1e-9)
        assert all(r["metrics"]["n_memoised"] == 0 for r in trials)


def test_stage_entries_are_plain_tensors_with_a_checksum(tmp_path: Path) -> None:
    store = StageCache(tmp_path)
    get(store.view(), meter(), Counted(), {"a": 1.0})
    [meta] = list(tmp_path.rglob("*.json"))
    record = json.loads(meta.read_text())
    assert record["cost"] == 5.0 and len(record["sha256"]) == 64
    [data] = list(tmp_path.rglob("*.pt"))
    assert torch.equal(torch.load(data, weights_only=True), torch.full((8,), 1.0))


# -- the cache condition of EEIPU's paper (issue 18, item 3) ------------------------------------------
def test_a_closed_view_computes_and_charges_every_stage_and_never_touches_the_store(tmp_path: Path) -> None:
    store = StageCache(tmp_path)
    loads: list[str] = []
    store.load = lambda key: loads.append(key)  # type: ignore[method-assign]  # a spy: a closed view never reads
    view, m, compute = store.view(closed=True), meter(), Counted()
    for _ in range(3):
        run = view.get(m, task="t", stage="s1", data_seed=0, params={"a": 1.0}, compute=compute, simulated_cost=5.0)
        assert run.true_cost == 5.0 and not run.hit
    assert compute.calls == 3 and loads == [] and not list(tmp_path.rglob("*.pt"))
    assert m.by_phase()["train"] == pytest.approx(15.0) and view.stats.hits == 0 and view.stats.misses == 3
    # an open view of the same store, same calls: one computation, then two reads
    open_view, m2, compute2 = StageCache(tmp_path).view(), meter(), Counted()
    for _ in range(3):
        get(open_view, m2, compute2, {"a": 1.0})
    assert compute2.calls == 1 and m2.spent == pytest.approx(5.0 + 2 * READ, abs=1e-12)


def _condition_suite(tmp_path: Path, access: str | None) -> Path:
    suite = {
        "name": f"condition-{access}", "clock": "counting",
        "clock_options": {"per_example": 0.001, "per_event": 0.001, "cache_read": READ},
        "budget": 200.0, "refit": False, "threads": 1, "seeds": [0],
        "tasks": [{"name": "synthetic-pipeline", "scale": "smoke"}],
        "methods": [{"name": "grid", "options": {"values": GRID_VALUES, "shuffle": False}},
                    {"name": "eeipu", "options": {"n_init": 3, "max_trials": 5, "raw_samples": 16,
                                                  "num_restarts": 1, "maxiter": 5, "fit_maxiter": 20}}],
    }
    if access is not None:
        suite["cache_access"] = access
    path = tmp_path / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_paper_condition_charges_a_non_aware_method_every_stage_and_opens_the_cache_to_eeipu(tmp_path: Path) -> None:
    """``cache_access: memoization-aware``: grid (not memoization-aware) reads nothing from the cache
    and pays every stage's true cost in every trial; EEIPU (which declares it) still reads; the
    ledger header records the condition; under the default both read."""
    out = tmp_path / "paper"
    api.run(_condition_suite(tmp_path, "memoization-aware"), out=out, device="cpu", progress=False)
    by_method = {read_ledger(p).header["cell"]["method"]: read_ledger(p) for p in out.glob("*.jsonl")}
    grid, eeipu = by_method["grid"], by_method["eeipu"]
    assert grid.header["stage_cache"] == {"access": "memoization-aware", "open": False, "memoization_aware": False}
    assert eeipu.header["stage_cache"] == {"access": "memoization-aware", "open": True, "memoization_aware": True}
    assert grid.header["cell"]["cache_access"] == "memoization-aware"
    configs = [r["config"] for r in grid.rows]
    assert len(configs) == 8 and all(c["x1"] == 4.5 for c in configs)  # every trial shares stage 1
    assert [_charged(r) for r in grid.rows] == pytest.approx(_expected_costs(configs, cache=False), abs=1e-9)
    assert all(r["cache_hits"] == 0 and r["cost_saved"] == 0.0 and r["metrics"]["n_memoised"] == 0
               for r in grid.rows)
    for r in grid.rows:  # the true stage costs are still recorded (the cost models' data)
        assert list(r["stage_costs"].values()) == pytest.approx(sorted_costs(r["config"]), rel=1e-9)
    assert any(r["cache_hits"] > 0 for r in eeipu.rows)
    # the default condition: the same grid reads its cached stages, at other cell ids
    default = tmp_path / "default"
    api.run(_condition_suite(tmp_path, None), out=default, device="cpu", progress=False)
    grid_default = next(read_ledger(p) for p in default.glob("*--grid--*.jsonl"))
    assert grid_default.header["stage_cache"] == {"access": "all", "open": True, "memoization_aware": False}
    assert "cache_access" not in grid_default.header["cell"]
    assert grid_default.header["cell_id"] != grid.header["cell_id"]
    assert sum(r["cache_hits"] for r in grid_default.rows) > 0
    assert sum(map(_charged, grid_default.rows)) < 0.5 * sum(map(_charged, grid.rows))


def sorted_costs(config: dict[str, float]) -> list[float]:
    """The true stage costs in the order a ledger row lists them (keys sorted)."""
    return [c for _, c in sorted(zip([s.name for s in STAGES], stage_costs(config)))]


def test_cache_access_keeps_old_cell_ids_at_its_default_and_is_part_of_the_definition_otherwise() -> None:
    from hpobench_elbo.errors import SuiteError
    from hpobench_elbo.suite import load_suite, suite_from_mapping

    repo = Path(__file__).resolve().parents[1]
    reference = load_suite(repo / "suites" / "reference-cpu.yaml")
    ids = {c.cell_id for c in reference.cells()}
    committed = {p.stem for p in (repo / "reports" / "reference-cpu").glob("*.jsonl")}
    assert committed and committed <= ids  # the committed ledgers are still these cells
    raw = {"name": "ids", "budget": 5.0, "clock": "counting", "seeds": [0],
           "tasks": [{"name": "synthetic-pipeline", "scale": "smoke"}], "methods": ["ei", "eeipu"]}
    base = suite_from_mapping(raw)
    same = suite_from_mapping({**raw, "cache_access": "all"})
    assert [c.cell_id for c in same.cells()] == [c.cell_id for c in base.cells()]
    assert same.suite_hash == base.suite_hash
    paper = suite_from_mapping({**raw, "cache_access": "memoization-aware"})
    assert paper.suite_hash != base.suite_hash
    assert not {c.cell_id for c in paper.cells()} & {c.cell_id for c in base.cells()}
    assert all(c.cache_access == "memoization-aware" and c.definition()["cache_access"] == "memoization-aware"
               for c in paper.cells())
    # per task: one suite holds both conditions (the benchmark's design)
    both = suite_from_mapping({**raw, "tasks": [{"name": "synthetic-pipeline", "scale": "smoke"},
                                                {"name": "synthetic-pipeline", "scale": "smoke",
                                                 "cache_access": "memoization-aware"}]})
    cells = both.cells()
    assert [c.cache_access for c in cells] == ["all", "all", "memoization-aware", "memoization-aware"]
    assert [c.cell_id for c in cells[:2]] == [c.cell_id for c in base.cells()]
    assert {c.cell_id for c in cells[2:]} == {c.cell_id for c in paper.cells()}
    with pytest.raises(SuiteError, match="cache_access"):
        suite_from_mapping({**raw, "cache_access": "eeipu-only"})


def test_the_report_shows_each_cache_condition_as_its_own_task_with_the_cache_open_or_closed(tmp_path: Path) -> None:
    """One suite holding both conditions of synthetic-pipeline: the report keeps them apart (the
    paper's condition under ``TASK [cache: memoization-aware]``), its data-use table says for whom
    the stage cache was open, and ``load_results`` keeps the registry name beside the label."""
    from hpobench_elbo.report.html import build_report, render_html
    from hpobench_elbo.report.traces import load_results

    raw = yaml.safe_load(_condition_suite(tmp_path, None).read_text())
    raw["tasks"] = [{"name": "synthetic-pipeline", "scale": "smoke"},
                    {"name": "synthetic-pipeline", "scale": "smoke", "cache_access": "memoization-aware"}]
    suite = tmp_path / "both.yaml"
    suite.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "both"
    api.run(suite, out=out, device="cpu", progress=False)
    paper = "synthetic-pipeline [cache: memoization-aware]"
    frame = load_results(out)
    assert set(frame["task"]) == {"synthetic-pipeline", paper}
    assert set(frame["task_name"]) == {"synthetic-pipeline"}
    assert set(zip(frame["task"], frame["cache_access"])) == {("synthetic-pipeline", "all"), (paper, "memoization-aware")}
    report = build_report(out)
    status = report.tables["status"].set_index(["task", "method"])["stage_cache"].to_dict()
    assert status == {("synthetic-pipeline", "eeipu"): "open", ("synthetic-pipeline", "grid"): "open",
                      (paper, "eeipu"): "open", (paper, "grid"): "closed"}
    # the paper condition's grid paid every stage; the default's read its cached stages
    hits = frame.groupby(["task", "method"])["cache_hits"].sum()
    assert hits[(paper, "grid")] == 0 and hits[("synthetic-pipeline", "grid")] > 0
    html = render_html(report)
    table = html[html.index('id="table-data-use"'):]
    table = table[:table.index("</table>")]
    assert "synthetic-pipeline [cache: memoization-aware]" in table and table.count(">closed<") == 1


def test_task_labels_keep_task_entries_with_their_own_options_apart() -> None:
    """Two entries of one task that differ by a task option (two UCI data sets) or by the cache
    condition are labelled apart; an entry with neither keeps the bare task name (the reference's
    labels are unchanged)."""
    from hpobench_elbo.report.traces import task_label

    def header(options: dict, access: str | None = None) -> dict:
        h = {"cell": {"task": "uci-regression", "task_options": options}}
        if access is not None:
            h["stage_cache"] = {"access": access, "open": False, "memoization_aware": False}
        return h

    assert task_label(header({})) == "uci-regression"
    assert task_label(header({}, "all")) == "uci-regression"
    assert task_label(header({"dataset": "concrete"})) == "uci-regression [dataset=concrete]"
    assert task_label(header({"n": 100, "dataset": "boston"}, "memoization-aware")) == \
        "uci-regression [dataset=boston; n=100; cache: memoization-aware]"
