"""The GP regression task (random Fourier features), the model-hyperparameter contract, the ELBo tuner
learning a kernel, and the exact-GP reference ``gp-ml`` (issue 19). Real data (the toy, Boston),
real GPyTorch; no mocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpobench_elbo.contracts import ModelHyperparameter, Recipe, TrialSpec, TunerSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.cache import StageCache
from hpobench_elbo.engine.clock import CountingClock
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.elbo.method import DataEmphasizedELBo
from hpobench_elbo.methods.elbo.tuner import concentrated_kl_iso, softplus_inverse
from hpobench_elbo.methods.gp_ml.method import ExactGPMarginalLikelihood
from hpobench_elbo.methods.gp_ml.tuner import _ExactGP, log_marginal_likelihood
from hpobench_elbo.registry import build_task
from hpobench_elbo.tasks.gp import RFFGP, TOY, GPRegression, toy_splits
from hpobench_elbo.tasks.training import RecipeOptimizer, gaussian_nll

from conftest import run_trial

CONFIG = {"lr": 0.1, "lengthscale": 0.5, "noise": 0.05, "prior_variance": 1.0}


def trial(task: GPRegression, config: dict, tuner: TunerSpec = TunerSpec("sgd"), data: str = "split",
          seed: int = 0, trial_id: int = 0, meter: BudgetMeter | None = None):
    return run_trial(task, TrialSpec(dict(config), tuner=tuner, data=data, trial_id=trial_id),  # type: ignore[arg-type]
                     meter or BudgetMeter(1e9, CountingClock()), StageCache(None).view(), Seeds.from_cell(seed))


def rff_kernel(model: RFFGP, x: torch.Tensor) -> torch.Tensor:
    phi = model.features(x)
    return phi @ phi.T


def test_rff_kernel_converges_to_the_rbf_kernel_at_one_over_sqrt_f() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    ell = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64)
    exact = torch.exp(-0.5 * (((x[:, None, :] - x[None, :, :]) / ell) ** 2).sum(-1))
    errors = {}
    for f in (64, 256, 1024, 4096):
        rms = []
        for seed in range(6):
            model = RFFGP(3, f, True, seed, 1.0, 1.0, 0.1, 1.0, weight_seed=0).double()
            with torch.no_grad():
                model.raw_lengthscale.copy_(torch.tensor([softplus_inverse(float(v)) for v in ell]))
                rms.append(float(((rff_kernel(model, x) - exact) ** 2).mean().sqrt()))
        errors[f] = float(np.mean(rms))
    scaled = [errors[f] * math.sqrt(f) for f in errors]  # about constant if the error is ~ 1/sqrt(F)
    assert max(scaled) / min(scaled) < 1.5, errors
    assert errors[4096] < errors[64] / 5, errors


def test_closed_form_expected_nll_equals_a_monte_carlo_estimate() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(25, generator=gen, dtype=torch.float64)
    model = RFFGP(2, 40, True, 3, 0.8, 1.2, 0.05, 1.0, weight_seed=4).double()
    sigma = 0.15
    with torch.no_grad():
        exact = float(model.expected_nll(x, y, torch.tensor(sigma ** 2, dtype=torch.float64)))
        m = model.weights.detach().clone()
        samples = []
        for _ in range(40):  # 40 x 1,000 samples w ~ q, each through the model's forward and the Gaussian NLL
            w = m + sigma * torch.randn(1000, 40, generator=gen, dtype=torch.float64)
            model.weights.copy_(m)
            log_var = model(x)[:, 1]
            means = model.features(x) @ w.T  # (n, samples)
            nll = 0.5 * (math.log(2 * math.pi) + log_var[:, None]) + 0.5 * (y[:, None] - means) ** 2 / log_var.exp()[:, None]
            samples += nll.mean(dim=0).tolist()
            model.weights.copy_(m + sigma * torch.randn(40, generator=gen, dtype=torch.float64))
            assert float(gaussian_nll(model(x), y)) == pytest.approx(  # the forward agrees with the vectorised one
                float((0.5 * (math.log(2 * math.pi) + log_var) + 0.5 * (y - model.features(x) @ model.weights) ** 2
                       / log_var.exp()).mean()), rel=1e-12)
        model.weights.copy_(m)
        at_mean = float(gaussian_nll(model(x), y))
    mc, se = float(np.mean(samples)), float(np.std(samples) / math.sqrt(len(samples)))
    assert abs(mc - exact) < 4 * se, (exact, mc, se)
    assert exact > at_mean  # the weight variance adds sigma^2 s^2 ||phi||^2 / (2 noise)


def test_exact_gp_log_marginal_likelihood_equals_a_direct_cholesky_computation() -> None:
    import gpytorch

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    gp = _ExactGP(x, y, gpytorch.likelihoods.GaussianLikelihood(), ard_dims=3).double()
    ell = torch.tensor([[0.5, 1.5, 3.0]], dtype=torch.float64)
    gp.covar_module.base_kernel.lengthscale = ell
    gp.covar_module.outputscale = torch.tensor(1.7, dtype=torch.float64)
    gp.likelihood.noise = torch.tensor([0.2], dtype=torch.float64)
    got = float(log_marginal_likelihood(gp, x, y).detach())
    k = 1.7 * torch.exp(-0.5 * (((x[:, None, :] - x[None, :, :]) / ell[0]) ** 2).sum(-1)) + 0.2 * torch.eye(40)
    chol = torch.linalg.cholesky(k)
    alpha = torch.cholesky_solve(y[:, None], chol)[:, 0]
    direct = float(-0.5 * y @ alpha - torch.log(torch.diagonal(chol)).sum() - 20 * math.log(2 * math.pi))
    assert got == pytest.approx(direct, rel=1e-8)  # GPyTorch adds a tiny jitter


def closed_form_objective(model: RFFGP, x: torch.Tensor, y: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """The DE-ELBo per-example objective in closed form (iso q, tau at its optimum, kappa = F / n)."""
    sigma = torch.nn.functional.softplus(rho)
    n, dim = len(x), model.n_features
    kl = concentrated_kl_iso(model.weights.square().sum(), sigma ** 2, dim)
    return model.expected_nll(x, y, sigma ** 2) + kl / (dim / n * n)


def test_stochastic_de_elbo_tuner_reaches_the_closed_form_optimum_lengthscale() -> None:
    task = build_task("gp-regression", "smoke", "cpu", {"features": 32, "steps": 3000})
    result = trial(task, {**CONFIG, "lr": 0.03, "lengthscale": 1.0, "noise": 0.1},
                   TunerSpec("elbo", {"closed_form": False}), data="all")
    assert result.status == "ok", result.error
    final = result.trajectory[-1]
    model, _, data = result.artifact
    # the exact objective's optimum, by L-BFGS in float64, from where the stochastic run ended
    ref = RFFGP(1, 32, False, 0, 1.0, 1.0, 0.1, 1.0, weight_seed=0).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    rho = torch.tensor(softplus_inverse(final["sigma"]), dtype=torch.float64, requires_grad=True)
    x, y = data.x_train.double(), data.y_train.double()
    params = [*ref.parameters(), rho]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = closed_form_objective(ref, x, y, rho)
        loss.backward()
        return loss

    with torch.no_grad():
        at_end = float(closed_form_objective(ref, x, y, rho))
    opt.step(closure)
    optimum = float(ref.lengthscale.detach())
    assert final["lengthscale"] == pytest.approx(optimum, rel=0.05), (final, optimum)
    assert final["noise"] == pytest.approx(float(ref.likelihood.noise), rel=0.15)
    # where the stochastic run ended, the exact objective is within 0.01 of its optimum (per example)
    assert 0 <= at_end - float(closed_form_objective(ref, x, y, rho)) < 0.01


def test_closed_form_and_stochastic_tuners_agree_on_the_toy() -> None:
    task = build_task("gp-regression", "smoke", "cpu", {"steps": 400})
    meters = BudgetMeter(1e9, CountingClock()), BudgetMeter(1e9, CountingClock())
    exact = trial(task, CONFIG, TunerSpec("elbo", {}), data="all", meter=meters[0])
    sampled = trial(task, CONFIG, TunerSpec("elbo", {"closed_form": False}), data="all", meter=meters[1])
    assert exact.status == sampled.status == "ok"
    a, b = exact.trajectory[-1], sampled.trajectory[-1]
    assert a["lengthscale"] == pytest.approx(b["lengthscale"], rel=0.15)
    assert a["objective"] == pytest.approx(b["objective"], abs=0.15)
    # the closed form's selection pass is one pass over the data, the sampled one 10
    assert meters[0].by_phase()["hyper"] < meters[1].by_phase()["hyper"]


def test_search_methods_set_the_model_hyperparameters_and_the_trainer_freezes_them() -> None:
    task = build_task("gp-regression", "smoke", "cpu", {})
    assert {h.name for h in task.info.model_hyperparameters} == {"lengthscale", "outputscale", "noise",
                                                                 "prior_variance"}
    result = trial(task, CONFIG)
    assert result.status == "ok", result.error
    model = result.artifact[0]
    assert float(model.lengthscale) == pytest.approx(0.5, rel=1e-6)  # the config's value, not learned
    assert float(model.likelihood.noise) == pytest.approx(0.05, rel=1e-6)
    assert float(model.outputscale) == pytest.approx(1.0, rel=1e-6)  # not in the space: its declared init
    assert not model.raw_lengthscale.requires_grad
    assert result.trajectory == ()
    test = task.test(result)
    assert set(test) == {"rmse", "mse", "nll", "loss"} and test["rmse"] < 0.5  # the toy's sin(3x) is learned


def test_the_sgd_tuner_applies_the_prior_variance_as_a_map_penalty() -> None:
    task = build_task("gp-regression", "smoke", "cpu", {"steps": 200})
    norms = {}
    for v in (1e-3, 10.0):
        result = trial(task, {**CONFIG, "prior_variance": v})
        norms[v] = float(result.artifact[0].weights.detach().square().sum())
    assert norms[1e-3] < 0.05 * norms[10.0]


def test_the_elbo_tuner_learns_the_hyperparameters_outside_the_weights() -> None:
    task = build_task("gp-regression", "smoke", "cpu", {"features": 24})
    method = DataEmphasizedELBo(task.info, 0)
    spec = method.ask(None)  # type: ignore[arg-type]
    assert spec is not None
    starts = {h.name: h.init for h in task.info.model_hyperparameters}
    assert {k: spec.config[k] for k in ("lengthscale", "noise", "prior_variance")} == \
        {k: starts[k] for k in ("lengthscale", "noise", "prior_variance")}
    result = trial(task, dict(spec.config), spec.tuner, data="all")
    assert result.status == "ok", result.error
    model = result.artifact[0]
    assert model.raw_lengthscale.requires_grad
    first, last = result.trajectory[0], result.trajectory[-1]
    assert {"lengthscale", "outputscale", "noise", "tau", "sigma"} <= set(last)
    assert last["lengthscale"] != pytest.approx(first["lengthscale"], rel=0.05)  # learned
    assert last["noise"] == pytest.approx(float(model.likelihood.noise), rel=1e-6)
    # D counts the F weights only: tau* = ||m||^2 / F + sigma^2
    tau = float(model.weights.detach().double().square().sum()) / 24 + last["sigma"] ** 2
    assert last["tau"] == pytest.approx(tau, rel=1e-5)


def test_ard_gives_one_lengthscale_per_dimension_in_the_trajectory() -> None:
    task = build_task("gp-regression", "cpu", "cpu", {"dataset": "boston", "features": 32, "steps": 30})
    result = trial(task, {**CONFIG, "lr": 0.1}, TunerSpec("elbo", {}), data="all")
    assert result.status == "ok", result.error
    last = result.trajectory[-1]
    per_dim = [last[f"lengthscale_{i}"] for i in range(13)]
    assert last["lengthscale"] == pytest.approx(math.exp(np.mean(np.log(per_dim))), rel=1e-9)
    shared = build_task("gp-regression", "cpu", "cpu", {"dataset": "boston", "features": 32, "steps": 30, "ard": False})
    assert "lengthscale_0" not in trial(shared, CONFIG, TunerSpec("elbo", {}), data="all").trajectory[-1]


def test_gp_ml_fits_the_exact_gp_without_validation_data() -> None:
    task = build_task("gp-regression", "smoke", "cpu", {})
    method = ExactGPMarginalLikelihood(task.info, 0)
    assert method.validation == "none"
    spec = method.ask(None)  # type: ignore[arg-type]
    assert spec is not None and spec.data == "all" and spec.tuner.name == "gp-ml"
    assert method.ask(None) is None  # type: ignore[arg-type]
    result = trial(task, dict(spec.config), spec.tuner, data="all")
    assert result.status == "ok", result.error
    rows = result.trajectory
    assert rows[-1]["neg_mll"] == pytest.approx(result.score) and rows[-1]["neg_mll"] < rows[0]["neg_mll"]
    test = task.test(result)
    assert test["rmse"] < 0.3 and math.isfinite(test["nll"])


def test_gp_ml_refuses_a_task_without_gp_hyperparameters() -> None:
    info = build_task("digits-mlp", "smoke", "cpu", {}).static_info()
    assert "lengthscale" in (ExactGPMarginalLikelihood.inapplicable_reason(info) or "")
    with pytest.raises(UserError, match="gp-ml"):
        ExactGPMarginalLikelihood(info, 0)


def test_the_toy_and_the_task_options() -> None:
    splits = toy_splits()
    assert len(splits.pool) == 20 and len(splits.test) == 500
    residual = splits.pool.y - np.sin(3 * splits.pool.x[:, 0])
    assert 0.03 < residual.std() < 0.2
    assert build_task("gp-regression", "smoke", "cpu", {}).dataset == TOY
    with pytest.raises(UserError, match="unknown dataset"):
        build_task("gp-regression", "smoke", "cpu", {"dataset": "nope"})
    with pytest.raises(UserError, match="features"):
        build_task("gp-regression", "smoke", "cpu", {"features": 0})


def test_model_hyperparameter_declarations_and_transforms() -> None:
    h = ModelHyperparameter("lengthscale", "model", 1.0, parameter="raw")
    for value in (1e-3, 0.5, 30.0):
        assert float(h.value(torch.tensor(h.raw(value), dtype=torch.float64))) == pytest.approx(value, rel=1e-9)
    assert float(ModelHyperparameter("a", "model", 1.0, "p", "exp").value(torch.tensor(math.log(3.0)))) == \
        pytest.approx(3.0)
    with pytest.raises(ValueError):
        ModelHyperparameter("v", "prior", 1.0, parameter="raw")
    with pytest.raises(ValueError):
        ModelHyperparameter("l", "model", 1.0)
    with pytest.raises(ValueError):
        ModelHyperparameter("l", "model", 1.0, "p", "square")


def test_the_recipe_takes_adam_steps() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ref = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    recipe = Recipe(steps=5, batch_size=None, optimizer="adam", schedule="constant", clip_norm=None)
    ours, theirs = RecipeOptimizer(recipe, [{"params": [w], "lr": 0.1}]), torch.optim.Adam([ref], lr=0.1)
    for step in range(5):
        for p, o in ((w, ours), (ref, theirs)):
            o.zero_grad()
            (p ** 2).sum().backward()
            o.step(step) if o is ours else o.step()
    assert torch.equal(w.detach(), ref.detach())
