"""The fused DE-ELBo step (issue 11 item 1) computes the same maths as a per-tensor computation.

The reference here is written from the equations of METHODS.md A.2/A.3, one parameter tensor at a
time, with autograd doing every derivative: w_t = m_t + sigma_t * eps_t (eps: one flat draw of D
normals from the trial's noise generator, cut in parameter-map order), the mean minibatch NLL at w
through ``torch.func.functional_call``, and the KL of q to the prior at the closed-form variances
lambda* = (||m_b - mu||^2 + sum sigma_d^2)/D_b and tau* = (||m_h||^2 + sum sigma_d^2)/D_h as a sum of
``torch.distributions`` Normal KLs in float64; loss = NLL + KL / (kappa n), stepped by the task's
recipe optimizer. The tuner's fused step (flat buffers, closed-form KL gradient, one device
synchronisation) must give the same loss, gradients (of m and of rho) and learned variances, step
after step, on the real EfficientNet-Lite0 top block + head of ``image-transfer`` at smoke scale,
for the iso and the diag q.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call

from hpobench_elbo.contracts import Recipe, TaskInfo, TrainSetup
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.clock import CountingClock
from hpobench_elbo.methods.elbo.tuner import ELBoTuner
from hpobench_elbo.space import Float, SearchSpace
from hpobench_elbo.tasks.training import RecipeOptimizer, seeded

F64 = torch.float64
NOISE_SEED = 123
Batch = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The per-tensor reference (from the equations)
# ---------------------------------------------------------------------------------------------

def reference_loss(model: nn.Module, params: dict[str, torch.Tensor], rho: dict[str, torch.Tensor] | torch.Tensor,
                   prior_mean: dict[str, torch.Tensor], eps: torch.Tensor, batch: Batch, loss_fn: Any,
                   kappa: float, n_train: int) -> dict[str, torch.Tensor]:
    """NLL at one sample, the KL at lambda*, tau* and the loss, one tensor at a time (graph kept)."""
    sigma = {n: nn.functional.softplus(rho[n] if isinstance(rho, dict) else rho) for n in params}
    w, offset = {}, 0
    for name, p in params.items():
        w[name] = p + sigma[name] * eps[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    x, y = batch
    out: dict[str, torch.Tensor] = {"nll": loss_fn(functional_call(model, w, (x,)), y)}
    kl = torch.zeros((), dtype=F64)
    for group, key in (("backbone", "lambda"), ("head", "tau")):
        names = [n for n in params if (n in prior_mean) == (group == "backbone")]
        if not names:
            continue
        mean = {n: prior_mean[n].to(F64) if n in prior_mean else torch.zeros(params[n].shape, dtype=F64)
                for n in names}
        std = {n: sigma[n].to(F64).expand(params[n].shape) for n in names}
        dim = sum(params[n].numel() for n in names)
        sq = sum((params[n].to(F64) - mean[n]).square().sum() for n in names)
        variance = (sq + sum(std[n].square().sum() for n in names)) / dim  # the closed form
        for n in names:
            kl = kl + kl_divergence(Normal(params[n].to(F64), std[n]), Normal(mean[n], variance.sqrt())).sum()
        out[key] = variance
    out["kl"] = kl
    out["loss"] = out["nll"] + kl / (kappa * n_train)
    return out


def _flat_grads(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.grad.detach().reshape(-1).clone() for t in tensors])


def compare_with_reference(make_model: Callable[[], tuple[nn.Module, dict[str, torch.Tensor]]], batches: list[Batch],
                           loss_fn: Any, info: TaskInfo, recipe: Recipe, diag: bool, n_train: int,
                           rtol: float) -> dict[str, float]:
    """Step the fused tuner and the per-tensor reference side by side from the same moved start and
    assert they agree at every step; return the largest relative gaps seen (for the record)."""
    model, prior_mean = make_model()
    ref_model, _ = make_model()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a start away from m = mu and sigma = 1e-4: every term of the KL matters
        for (_, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
            if p.requires_grad:
                shift = 0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.add_(shift)
                q.add_(shift)
    model.train()
    ref_model.train()
    steps = len(batches)
    setup = TrainSetup(loss_fn=loss_fn, n_train=n_train, n_data=n_train, total_steps=steps,
                       batch_size=len(batches[0][0]), prior_mean=prior_mean,
                       generator=torch.Generator().manual_seed(NOISE_SEED),
                       meter=BudgetMeter(1e12, CountingClock()), recipe=recipe,
                       make_optimizer=functools.partial(RecipeOptimizer, recipe))
    tuner = ELBoTuner(per_parameter_sigma=diag)
    tuner.init(model, info, {"lr": 0.01}, setup)
    with torch.no_grad():
        if diag:
            for r in tuner.rho.values():  # sigma_d uniform in [0.005, 0.015]
                r.copy_(torch.log(torch.expm1(0.005 + 0.01 * torch.rand(r.shape, generator=gen, dtype=r.dtype))))
        else:
            tuner.rho.fill_(float(torch.log(torch.expm1(torch.tensor(0.01, dtype=F64)))))
    ref_params = {n: p for n, p in ref_model.named_parameters() if p.requires_grad}
    if diag:
        ref_rho: dict[str, torch.Tensor] | torch.Tensor = {n: r.detach().clone().requires_grad_()
                                                           for n, r in tuner.rho.items()}
        rho_list = list(ref_rho.values())
    else:
        ref_rho = tuner.rho.detach().clone().requires_grad_()
        rho_list = [ref_rho]
    ref_opt = RecipeOptimizer(recipe, [{"params": list(ref_params.values()), "lr": 0.01},
                                       {"params": rho_list, "lr": 0.01}])
    ref_noise = torch.Generator().manual_seed(NOISE_SEED)
    n_params = sum(p.numel() for p in ref_params.values())
    kappa = n_params / n_train
    assert tuner.kappa == pytest.approx(kappa)

    applied: list[dict[str, torch.Tensor]] = []  # what the tuner hands its optimizer, just before it steps
    inner = tuner.optimizer.step

    def spy(i: int) -> None:
        applied.append({"m": _flat_grads(list(tuner.params.values())),
                        "rho": _flat_grads([tuner.rho_leaf])})
        inner(i)

    tuner.optimizer.step = spy  # type: ignore[method-assign]
    gaps: dict[str, float] = {}

    def close(name: str, actual: torch.Tensor | float, expected: torch.Tensor, tol: float) -> None:
        actual = torch.as_tensor(actual, dtype=F64) if isinstance(actual, float) else actual
        scale = float(expected.abs().max())
        gap = float((actual.to(F64) - expected.to(F64)).abs().max()) / scale
        gaps[name] = max(gaps.get(name, 0.0), gap)
        assert gap <= tol, f"{name}: max |fused - reference| = {gap:.3g} x max |reference| (tolerance {tol:g})"

    for step, batch in enumerate(batches):
        with seeded(1000 + step):  # drop-connect draws from the global RNG: the same draws on both sides
            stats = tuner.step(model, batch, step, None)
        ref_opt.zero_grad()
        with seeded(1000 + step):
            ref = reference_loss(ref_model, ref_params, ref_rho, prior_mean, torch.randn(n_params, generator=ref_noise,
                                 dtype=next(iter(ref_params.values())).dtype), batch, loss_fn, kappa, n_train)
        ref["loss"].backward()
        row = tuner.trajectory()[-1]
        assert row["step"] == step
        close("nll", stats.loss, ref["nll"].detach(), rtol)
        assert stats.objective is not None
        close("objective", stats.objective, ref["loss"].detach(), rtol)  # NLL + KL / (kappa n)
        # float64 host arithmetic on the same m at step 0; later, float32 rounding has moved m a little
        exact = 1e-9 if step == 0 else max(1e-9, rtol)
        close("kl", row["kl"], ref["kl"].detach(), exact)
        for key in ("lambda", "tau"):
            if key in ref:
                close(key, row[key], ref[key].detach(), exact)
        close("grad m", applied[-1]["m"], _flat_grads(list(ref_params.values())), rtol)
        close("grad rho", applied[-1]["rho"], _flat_grads(rho_list), rtol)
        ref_opt.step(step)
    # after the steps: the same mean, sigma and learned variances
    close("m", tuner.flat_mean(), torch.cat([p.detach().reshape(-1) for p in ref_params.values()]), rtol)
    with torch.no_grad():
        sigma_ref = (torch.cat([nn.functional.softplus(r).reshape(-1) for r in ref_rho.values()]) if diag
                     else nn.functional.softplus(ref_rho))
        terms = tuner.prior_terms()
        for group, key in (("backbone", "lambda"), ("head", "tau")):
            names = [s.name for s in tuner.param_map if s.group == group]
            if not names:
                continue
            sq = sum(((ref_params[n].to(F64) - prior_mean[n].to(F64)) if n in prior_mean else ref_params[n].to(F64))
                     .square().sum() for n in names)
            dim = sum(ref_params[n].numel() for n in names)
            idx = torch.cat([torch.arange(s.start, s.stop) for s in tuner.param_map if s.group == group])
            var_sum = sigma_ref.to(F64)[idx].square().sum() if diag else dim * sigma_ref.to(F64).square()
            close(f"final {key}", terms[key], (sq + var_sum) / dim, 10 * rtol)
    summary = tuner.sigma_summary()
    close("final sigma", summary["sigma"],
          sigma_ref.to(F64).square().mean().sqrt() if diag else sigma_ref.to(F64), rtol)
    return gaps


# ---------------------------------------------------------------------------------------------
# The real backbone: image-transfer at smoke scale
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_transfer() -> dict[str, Any]:
    pytest.importorskip("efficientnet_lite_pytorch")
    from hpobench_elbo.registry import TASKS

    task = TASKS.create("image-transfer", scale="smoke", device="cpu")
    pool = task.data.pool
    idx = np.linspace(0, len(pool) - 1, 48).astype(int)  # spread over the classes
    x = task.feature_stage.compute(pool.x[idx])
    y = task.label_tensor(pool.y[idx])
    return {"task": task, "batches": [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]}


@pytest.mark.parametrize("diag", [False, True], ids=["iso", "diag"])
def test_fused_step_matches_the_per_tensor_computation_on_efficientnet(image_transfer: dict[str, Any],
                                                                        diag: bool) -> None:
    torch.set_num_threads(1)
    task = image_transfer["task"]
    recipe = task.info.recipe
    recipe = Recipe(steps=3, batch_size=16, clip_norm=recipe.clip_norm, schedule=recipe.schedule)
    gaps = compare_with_reference(lambda: task.build_model(0, {}), image_transfer["batches"], task.objective.loss_fn,
                                  task.info, recipe, diag, n_train=100, rtol=2e-5)
    assert gaps  # every comparison ran


# ---------------------------------------------------------------------------------------------
# A small float64 model whose groups interleave (head, backbone, head): several runs per group
# ---------------------------------------------------------------------------------------------

INFO = TaskInfo(name="test", scale="test", space=SearchSpace.of(lr=Float(1e-5, 1.0, log=True)), stages=(),
                has_backbone=True, n_pool=40, metric="accuracy", direction="max")


def _interleaved() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    with seeded(3):
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        prior = {n: p.detach() + 0.05 * torch.randn_like(p) for n, p in model.named_parameters() if n.startswith("2.")}
    return model, prior


def _batches(k: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(10, 4, generator=gen, dtype=F64), torch.randint(0, 3, (10,), generator=gen)) for _ in range(k)]


@pytest.mark.parametrize("diag", [False, True], ids=["iso", "diag"])
def test_fused_step_matches_the_reference_with_interleaved_groups(diag: bool) -> None:
    recipe = Recipe(steps=4, batch_size=10)
    gaps = compare_with_reference(_interleaved, _batches(4), nn.functional.cross_entropy, INFO, recipe, diag,
                                  n_train=40, rtol=1e-10)
    assert gaps


@pytest.mark.parametrize("diag", [False, True], ids=["iso", "diag"])
def test_a_step_synchronises_once_and_restores_the_mean_exactly(diag: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One host transfer per step, trajectory row included (every step records here); the model's
    parameters hold m again after the sampled forward/backward, bit for bit."""
    model, prior = _interleaved()
    recipe = Recipe(steps=3, batch_size=10)
    batches = _batches(3)
    x_all = torch.cat([b[0] for b in batches])
    y_all = torch.cat([b[1] for b in batches])
    setup = TrainSetup(loss_fn=nn.functional.cross_entropy, n_train=30, n_data=30, total_steps=3, batch_size=10,
                       prior_mean=prior, generator=torch.Generator().manual_seed(0),
                       meter=BudgetMeter(1e12, CountingClock()), recipe=recipe,
                       make_optimizer=functools.partial(RecipeOptimizer, recipe), train_data=(x_all, y_all))
    tuner = ELBoTuner(per_parameter_sigma=diag)
    tuner.init(model, INFO, {"lr": 0.1}, setup)

    class Still:  # an optimizer that does not move (and does not synchronise)
        def step(self, i: int) -> None:
            pass

    tuner.optimizer = Still()  # type: ignore[assignment]
    calls: list[str] = []
    for name in ("tolist", "item", "__float__", "__int__", "__bool__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for step, batch in enumerate(batches):
        before = [p.detach().clone() for p in model.parameters()]
        calls.clear()
        tuner.step(model, batch, step, None)
        assert calls == ["tolist"], calls
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    monkeypatch.undo()
    assert [row["step"] for row in tuner.trajectory()] == [0, 1, 2]
    before = [p.detach().clone() for p in model.parameters()]
    tuner.final_objective()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert tuner.trajectory()[-1]["step"] == 3 and "objective" in tuner.trajectory()[-1]
    if diag:
        assert {"sigma_q05", "sigma_q50", "sigma_q95"} <= set(tuner.trajectory()[0])
