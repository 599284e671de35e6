"""The one-pass hypergradient family (METHODS.md Part B): correctness checks B-T1..B-T4 and the methods.

The tuners' own code computes every hypergradient here; the tests hold the references: dense
Jacobians (``torch.autograd.functional.jacobian``), the implicit-function-theorem value of a ridge
problem, finite differences of the validation loss, and PyTorch's own SGD.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from hpobench_elbo.contracts import AskContext, Recipe, TaskInfo, TrainSetup, TrialSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.clock import CountingClock
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.implicit.method import REGISTER, Baydin, Implicit, Lorraine, RandomFixed
from hpobench_elbo.methods.implicit.tuner import TUNERS, FixedTuner, NeumannTuner, UnrolledTuner
from hpobench_elbo.space import Choice, Float, SearchSpace

torch.set_num_threads(1)
F64 = torch.float64
CTX = AskContext(remaining=1.0, budget=1.0, spent=0.0, n_completed=0)
SGD_SPACE = SearchSpace.of(lr=Float(1e-4, 1.0, log=True), weight_decay=Float(1e-7, 1e-2, log=True, zero=True),
                           momentum=Float(0.0, 0.99))
L2SP_SPACE = SearchSpace.of(lr=Float(1e-4, 1e-1, log=True), alpha=Float(1e-6, 1e-2, log=True, zero=True),
                            beta=Float(1e-6, 1e-2, log=True, zero=True))


def info(space: SearchSpace = SGD_SPACE) -> TaskInfo:
    return TaskInfo(name="toy", scale="smoke", space=space, stages=(), has_backbone=False, n_pool=40,
                    metric="mse", direction="min", recipe=Recipe(steps=100, batch_size=None))


def no_recipe_optimizer(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the implicit family replaces the recipe: it never asks for the recipe's optimizer")


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out.reshape(-1), y.reshape(-1))


def start(tuner: Any, model: nn.Module, config: dict[str, float], prior_mean: dict | None = None,
          steps: int = 100, recipe: Recipe | None = None, space: SearchSpace = SGD_SPACE) -> Any:
    setup = TrainSetup(loss_fn=mse, n_train=40, n_data=50, total_steps=steps, batch_size=40,
                       prior_mean=prior_mean or {}, generator=torch.Generator().manual_seed(0),
                       meter=BudgetMeter(1e12, CountingClock()), recipe=recipe or Recipe(steps=steps, batch_size=None),
                       make_optimizer=no_recipe_optimizer)
    tuner.init(model, info(space), config, setup)
    return tuner


TIGHT = Recipe(steps=12, batch_size=None, clip_norm=0.05)
"""A recipe whose clipping acts on every step of the toy problems (gradient norms are well above 0.05)."""


def data(d: int = 6, n: int = 40, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """A training and a validation (x, y) of a noisy linear target, float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=F64)
    x, xv = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n // 2, d, generator=g, dtype=F64)
    noise = 0.3 * torch.randn(n + n // 2, generator=g, dtype=F64)
    return (x, x @ w + noise[:n]), (xv, xv @ w + noise[n:])


def linear(d: int = 6) -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(d, 1, bias=False).to(F64)


def mlp(d: int = 6) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 1)).to(F64)


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view(t.shape))
        i += t.numel()
    return out


def val_loss_at(model: nn.Module, weights: dict[str, torch.Tensor], val: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return mse(torch.func.functional_call(model, weights, (val[0],)), val[1])


# ---------------------------------------------------------------------------------------------
# B-T1: the VJP Neumann series equals the dense formula
# ---------------------------------------------------------------------------------------------

def test_plain_steps_are_pytorch_sgd_with_weight_decay_and_momentum() -> None:
    (x, y), _ = data()
    ours, ref = linear(), linear()
    tuner = start(FixedTuner(), ours, {"lr": 0.05, "weight_decay": 0.01, "momentum": 0.7})
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.7, weight_decay=0.01)
    for step in range(6):
        tuner.step(ours, (x, y), step, None)
        opt.zero_grad()
        mse(ref(x), y).backward()
        opt.step()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", ["least-squares", "hdlr", "mlp", "mlp-recipe"])
@pytest.mark.parametrize("terms", [1, 5, 20])
def test_neumann_hypergradient_equals_the_dense_formula(case: str, terms: int) -> None:
    train, val = data()
    model = mlp() if case.startswith("mlp") else linear()
    recipe = case.endswith("recipe")  # the clipped, scheduled Nesterov update is differentiated as it is
    tuner = start(NeumannTuner(update_interval=3, neumann_terms=terms, per_element_lr=case == "hdlr", recipe=recipe),
                  model, {"lr": 0.03, "weight_decay": 1e-2, "momentum": 0.6}, recipe=TIGHT if recipe else None)
    for step in range(2):  # plain steps: a non-zero momentum buffer
        tuner.step(model, train, step, lambda: val)
    names = list(tuner.params)
    w0 = flat([p.detach().clone() for p in tuner.params.values()])
    phi0 = flat([leaf.detach().clone() for leaf in tuner.hp.leaves()])
    buffers = {n: b.clone() for n, b in tuner.buffers.items()}
    shapes_w, shapes_phi = list(tuner.params.values()), tuner.hp.leaves()

    def u(w: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        w = w if w.requires_grad else w.clone().requires_grad_(True)
        weights = dict(zip(names, unflat(w, shapes_w)))
        _, step_u, _ = tuner.update(weights, train, buffers, unflat(phi, shapes_phi), create_graph=True)
        return flat(list(step_u.values()))

    if recipe:  # the clipping and the schedule act at the differentiated step
        assert grad_norm(model, train) > 2 * TIGHT.clip_norm and 0.5 < TIGHT.scheduled_lr(1.0, 2) < 1.0
    tuner.step(model, train, 2, lambda: val)  # the differentiated step and its hyper-step
    got = flat(list(tuner.last_hypergradient.values()))

    j_w = jacobian(lambda w: u(w, phi0), w0)
    j_phi = jacobian(lambda phi: u(w0, phi), phi0)
    w1 = w0 - u(w0, phi0).detach()
    v = torch.autograd.functional.jacobian(lambda w: val_loss_at(model, dict(zip(names, unflat(w, shapes_w))), val), w1)
    a = torch.eye(len(w0), dtype=F64) - j_w
    series, power = torch.zeros_like(j_w), torch.eye(len(w0), dtype=F64)
    for _ in range(terms):
        series, power = series + power, power @ a
    dense = -(v @ series @ j_phi)
    assert got.shape == dense.shape == (len(phi0),)
    torch.testing.assert_close(got, dense, rtol=1e-10, atol=1e-14)
    assert dense.abs().max() > 1e-6  # a non-trivial comparison


# ---------------------------------------------------------------------------------------------
# B-T2 / B-T3: the implicit-function-theorem value of a ridge problem
# ---------------------------------------------------------------------------------------------

ETA, GAMMA = 0.2, 0.1


def ridge() -> dict[str, Any]:
    """Training and validation data, the fixed point w*(gamma) and the exact dL_V/d log10 gamma."""
    train, val = data(seed=3)
    (x, y), (xv, yv) = train, val
    n = len(x)
    h = 2 * x.T @ x / n + GAMMA * torch.eye(x.shape[1], dtype=F64)
    w_star = torch.linalg.solve(h, 2 * x.T @ y / n)
    grad_val = 2 * xv.T @ (xv @ w_star - yv) / len(xv)
    exact = float(-(grad_val @ torch.linalg.solve(h, w_star))) * GAMMA * math.log(10.0)
    assert ETA * float(torch.linalg.eigvalsh(h).max()) < 2.0  # the series converges
    return {"train": train, "val": val, "w_star": w_star, "exact": exact}


def test_neumann_converges_to_the_ifs_hypergradient_at_the_fixed_point() -> None:
    r = ridge()
    errors = []
    for terms in (5, 50, 500, 5000):
        model = linear()
        with torch.no_grad():
            model.weight.copy_(r["w_star"].view(1, -1))
        tuner = start(NeumannTuner(learn=["decay", "lr"], update_interval=1, neumann_terms=terms), model,
                      {"lr": ETA, "weight_decay": GAMMA, "momentum": 0.0})
        tuner.step(model, r["train"], 0, lambda: r["val"])
        errors.append(abs(float(tuner.last_hypergradient["weight_decay"]) - r["exact"]))
        assert abs(float(tuner.last_hypergradient["lr"])) < 1e-12  # u = 0 at w*: no LR signal
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 1e-2 * abs(r["exact"])  # five terms are far from the IFT value ...
    assert errors[-1] < 1e-9 * max(1.0, abs(r["exact"]))  # ... 5000 terms reach it


def test_unrolled_differentiation_converges_to_the_ifs_hypergradient() -> None:
    r = ridge()
    errors = {}
    for steps in (10, 1000):
        model = linear()
        with torch.no_grad():
            model.weight.zero_()
        tuner = start(UnrolledTuner(learn=["decay", "lr"], update_interval=steps, lookback=steps), model,
                      {"lr": ETA, "weight_decay": GAMMA, "momentum": 0.0}, steps=steps)
        for step in range(steps):
            tuner.step(model, r["train"], step, lambda: r["val"])
        errors[steps] = abs(float(tuner.last_hypergradient["weight_decay"]) - r["exact"])
    torch.testing.assert_close(model.weight.detach().view(-1), r["w_star"], rtol=1e-9, atol=1e-12)
    assert errors[1000] < 1e-7 * max(1.0, abs(r["exact"]))
    assert errors[10] > 1e3 * errors[1000]


# ---------------------------------------------------------------------------------------------
# B.3 / B.1: one-step hypergradients equal finite differences (L2-SP strengths, Baydin's log lr)
# ---------------------------------------------------------------------------------------------

def finite_difference(model: nn.Module, buffers: dict[str, torch.Tensor] | None, config: dict[str, float],
                      key: str, train: tuple, val: tuple, prior_mean: dict | None = None, eps: float = 1e-5) -> float:
    """d L_V(after one fixed step) / d log10(config[key]) by a central difference."""
    values = []
    for sign in (1.0, -1.0):
        copy_ = copy.deepcopy(model)
        changed = {**config, key: config[key] * 10.0 ** (sign * eps)}
        fixed = start(FixedTuner(), copy_, changed, prior_mean)
        fixed.buffers = None if buffers is None else {n: b.clone() for n, b in buffers.items()}
        fixed.step(copy_, train, 0, None)
        values.append(float(val_loss_at(copy_, dict(copy_.named_parameters()), val).detach()))
    return (values[0] - values[1]) / (2 * eps)


def test_l2sp_strength_hypergradients_equal_finite_differences() -> None:
    train, val = data(d=4, seed=5)
    model = mlp(d=4)
    prior = {n: p.detach() + 0.3 * torch.randn_like(p) for n, p in model.named_parameters() if n.startswith("0.")}
    config = {"lr": 0.1, "alpha": 1e-2, "beta": 3e-2, "momentum": 0.5}

    # the penalty convention: a plain step is gradient descent on L_T + alpha ||w_b - mu||^2 + beta ||w_h||^2
    ref, ours = copy.deepcopy(model), copy.deepcopy(model)
    start(FixedTuner(), ours, {**config, "momentum": 0.0}, prior).step(ours, train, 0, None)
    objective = mse(ref(train[0]), train[1]) + sum(
        config["alpha"] * (p - prior[n]).pow(2).sum() if n in prior else config["beta"] * p.pow(2).sum()
        for n, p in ref.named_parameters())
    grads = torch.autograd.grad(objective, list(ref.parameters()))
    for (n, p), g in zip(ref.named_parameters(), grads):
        torch.testing.assert_close(dict(ours.named_parameters())[n].detach(), p.detach() - config["lr"] * g)

    tuner = start(NeumannTuner(learn=["decay"], update_interval=3, neumann_terms=1), model, config, prior)
    for step in range(2):
        tuner.step(model, train, step, lambda: val)
    snapshot, buffers = copy.deepcopy(model), {n: b.clone() for n, b in tuner.buffers.items()}
    tuner.step(model, train, 2, lambda: val)
    for key in ("alpha", "beta"):
        fd = finite_difference(snapshot, buffers, config, key, train, val, prior)
        assert abs(fd) > 1e-6
        assert float(tuner.last_hypergradient[key]) == pytest.approx(fd, rel=1e-6)


def test_baydin_hypergradient_on_log_lr_carries_the_chain_rule_factor() -> None:
    train, val = data(seed=7)
    spec = Baydin(info(), seed=0).ask(CTX)
    assert spec.tuner.options["update_interval"] == 1 and spec.tuner.options["learn"] == ["lr"]
    config = {"lr": 0.02, "weight_decay": 1e-3, "momentum": 0.5}
    model = mlp()
    tuner = start(TUNERS[spec.tuner.name](**spec.tuner.options), model, config)
    tuner.step(model, train, 0, lambda: val)  # a first hyper-step fills the momentum buffer
    config["lr"] = tuner.hp.summary()["lr"]
    snapshot, buffers = copy.deepcopy(model), {n: b.clone() for n, b in tuner.buffers.items()}
    tuner.step(model, train, 1, lambda: val)
    fd = finite_difference(snapshot, buffers, config, "lr", train, val)
    natural = fd / (config["lr"] * math.log(10.0))  # what d L / d eta would be
    assert abs(fd - natural) > 0.5 * abs(fd)  # the factor eta ln 10 is far from 1 here
    assert float(tuner.last_hypergradient["lr"]) == pytest.approx(fd, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# The methods: draws, specs, options, applicability
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REGISTER))
@pytest.mark.parametrize("space", [SGD_SPACE, L2SP_SPACE], ids=["sgd-space", "l2sp-space"])
def test_specs_validate_replay_and_build_their_tuner(name: str, space: SearchSpace) -> None:
    import json

    method, again = REGISTER[name](info(space), seed=3), REGISTER[name](info(space), seed=3)
    specs = [method.ask(CTX) for _ in range(5)]
    assert [s.to_json() for s in specs] == [json.loads(json.dumps(s.to_json())) for s in
                                           (again.ask(CTX) for _ in range(5))]
    assert len({json.dumps(s.to_json(), sort_keys=True) for s in specs}) == 5  # a new draw per run
    for spec in specs:
        space.validate(spec.config)
        assert spec.data == ("all" if name.startswith("random-fixed") else "split")
        tuner = TUNERS[spec.tuner.name](**spec.tuner.options)
        assert ("momentum_init" in spec.tuner.options) == ("momentum" not in space.names)
        assert spec.tuner.options.get("recipe", False) is name.endswith("-recipe") is tuner.recipe
        assert hasattr(tuner, "trajectory")


# ---------------------------------------------------------------------------------------------
# The -recipe variants: the paper's update with the task's recipe where nothing is learned
# ---------------------------------------------------------------------------------------------

def grad_norm(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> float:
    grads = torch.autograd.grad(mse(model(batch[0]), batch[1]), list(model.parameters()))
    return float(torch.sqrt(sum((g * g).sum() for g in grads)))


@pytest.mark.parametrize("learning", [False, True], ids=["fixed", "neumann-between-hyper-steps"])
def test_recipe_variant_follows_the_recipe_optimizer_step_by_step(learning: bool) -> None:
    from hpobench_elbo.tasks.training import RecipeOptimizer, SGDTuner

    (x, y), val = data()
    config = {"lr": 0.2, "weight_decay": 0.01, "momentum": 0.7}
    ours, ref, paper = mlp(), mlp(), mlp()
    tuner = start(NeumannTuner(update_interval=1000, recipe=True) if learning else FixedTuner(recipe=True),
                  ours, config, steps=TIGHT.steps, recipe=TIGHT)
    sgd = SGDTuner()
    sgd.init(ref, info(), config, TrainSetup(
        loss_fn=mse, n_train=40, n_data=50, total_steps=TIGHT.steps, batch_size=40, prior_mean={},
        generator=torch.Generator().manual_seed(0), meter=BudgetMeter(1e12, CountingClock()), recipe=TIGHT,
        make_optimizer=lambda groups, clip_params=None: RecipeOptimizer(TIGHT, groups, clip_params)))
    plain = start(FixedTuner(), paper, config, steps=TIGHT.steps, recipe=TIGHT)  # the paper's update ignores it
    for step in range(TIGHT.steps):
        assert grad_norm(ours, (x, y)) > 2 * TIGHT.clip_norm  # clipping acts at this step
        tuner.step(ours, (x, y), step, lambda: val)
        sgd.step(ref, (x, y), step, None)
        plain.step(paper, (x, y), step, None)
        for a, b in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert tuner.lr_scale() < 0.05  # the cosine factor near the end of the run
    assert max(float((a - b).detach().abs().max()) for a, b in zip(ours.parameters(), paper.parameters())) > 1e-3


def test_recipe_momentum_replaces_the_draw_only_where_momentum_is_neither_learned_nor_searched() -> None:
    model = mlp(d=4)
    prior = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("0.")}
    config = {"lr": 0.01, "alpha": 1e-3, "beta": 1e-3}
    recipe = Recipe(steps=10, batch_size=None, momentum=0.9)
    fixed_lr = start(NeumannTuner(learn=["decay"], momentum_init=0.3, recipe=True), copy.deepcopy(model), config,
                     prior, recipe=recipe, space=L2SP_SPACE)
    assert fixed_lr.hp.fixed["momentum"] == 0.9 and fixed_lr.nesterov  # lorraine-recipe: the recipe's
    learned = start(NeumannTuner(momentum_init=0.3, recipe=True), copy.deepcopy(model), config, prior,
                    recipe=recipe, space=L2SP_SPACE)
    assert "momentum" in learned.hp.names  # implicit-recipe: learned from its draw
    assert learned.hp.summary()["momentum"] == pytest.approx(0.3)
    paper = start(NeumannTuner(learn=["decay"], momentum_init=0.3), copy.deepcopy(model), config, prior,
                  recipe=recipe, space=L2SP_SPACE)
    assert paper.hp.fixed["momentum"] == 0.3 and not paper.nesterov and paper.clip_norm is None


def test_options_and_applicability_are_checked() -> None:
    with pytest.raises(UserError, match="neumann_terms"):
        Implicit(info(), 0, neumann_terms=0)
    with pytest.raises(UserError, match="unknown option"):
        Implicit(info(), 0, lookback=3)
    with pytest.raises(UserError, match="lr_range"):
        Implicit(info(), 0, lr_range=[-1, -6])
    with pytest.raises(UserError, match="learn"):
        NeumannTuner(learn=["lr", "dropout"])
    with pytest.raises(UserError, match="lookback"):
        UnrolledTuner(update_interval=3, lookback=5)
    assert Implicit.inapplicable_reason(info()) is None
    assert "lr" in Implicit.inapplicable_reason(info(SearchSpace.of(x=Float(0.0, 1.0))))
    mixed = SearchSpace.of(lr=Float(1e-3, 1.0, log=True), depth=Choice((1, 2)))
    assert "depth" in Implicit.inapplicable_reason(info(mixed))
    no_decay = SearchSpace.of(lr=Float(1e-3, 1.0, log=True), momentum=Float(0.0, 0.99))
    assert Implicit.inapplicable_reason(info(no_decay)) is None
    assert "nothing to learn" in Lorraine.inapplicable_reason(info(no_decay))
    with pytest.raises(UserError, match="not applicable"):
        Lorraine(info(no_decay), 0)


def test_random_fixed_recommends_its_latest_completed_run() -> None:
    from hpobench_elbo.contracts import TrialResult

    method = RandomFixed(info(), 0)
    for tid, status, score in ((0, "ok", 0.1), (1, "ok", 5.0), (2, "diverged", None)):
        spec = TrialSpec(config={}, trial_id=tid)
        method.tell(spec, TrialResult(spec=spec, status=status, cost={}, score=score))
    assert method.recommend() == 1


# ---------------------------------------------------------------------------------------------
# B-T4 end to end: uci-regression through the real loop and Trainer (api.run, CountingClock)
# ---------------------------------------------------------------------------------------------

RUNS, STEPS = 10, 300


def test_implicit_beats_random_fixed_on_a_small_regression(tmp_path: Path) -> None:
    import yaml

    from hpobench_elbo import api
    from hpobench_elbo.engine.ledger import read_ledger

    suite = {"name": "implicit-e2e", "clock": "counting", "budget": 1e6, "refit": False, "cache": False,
             "threads": 1, "seeds": [0],
             "tasks": [{"name": "uci-regression", "scale": "smoke", "options": {"steps": STEPS}}],
             "methods": [{"name": name, "options": {"max_trials": RUNS}} for name in ("implicit", "random-fixed")]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    summaries = api.run(path, out=tmp_path / "results", device="cpu", progress=False)
    medians = {}
    for summary in summaries:
        rows = read_ledger(tmp_path / "results" / f"{summary.cell_id}.jsonl").rows
        assert len(rows) == RUNS and {r["status"] for r in rows} <= {"ok", "diverged"}
        method = "random-fixed" if "random-fixed" in summary.cell_id else "implicit"
        ok = [r for r in rows if r["status"] == "ok"]
        if method == "implicit":
            assert all(r["data"] == "split" and r["cost"]["hyper"] > 0 for r in rows)
            assert all(1 < len(r["trajectory"]) <= 51 for r in ok)
            assert {"lr", "momentum", "weight_decay", "val_loss"} <= set(ok[0]["trajectory"][-1])
            assert summary.recommendation == min(ok, key=lambda r: r["score"])["trial_id"]
        else:
            assert all(r["data"] == "all" and "hyper" not in r["cost"] for r in rows)
            assert summary.recommendation == ok[-1]["trial_id"]
        medians[method] = statistics.median(r["test"]["mse"] if r["status"] == "ok" else math.inf for r in rows)
    # B.5: "several times lower"; with nothing learned (hyper_lr ~ 0) the two medians are within 1%
    assert medians["implicit"] < 0.6 * medians["random-fixed"], medians
