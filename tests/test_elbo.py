"""The learned-ELBo tuner and the ``de-elbo`` / ``elbo`` methods (METHODS.md A.9).

Every check drives the project's own code: the KL pieces and the ``ELBoTuner`` of
``hpobench_elbo.tasks.tuners.elbo``, the ``Trainer``, and the methods through the real loop. The
references are computed independently here (``torch.distributions`` KLs, exact Gaussian
evidences, L-BFGS), never by re-typing the module's formulas.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from hpobench_elbo.contracts import TaskInfo, TrainSetup, TrialResult, TrialSpec, TunerSpec
from hpobench_elbo.engine.budget import BudgetMeter
from hpobench_elbo.engine.clock import CountingClock
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.contracts import Recipe, TrialContext
from hpobench_elbo.registry import METHODS, TUNERS, build_tuner
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.elbo import DataEmphasizedELBo
from hpobench_elbo.space import Choice, Float, Int, SearchSpace
import functools

from hpobench_elbo.tasks.training import RecipeOptimizer
from hpobench_elbo.tasks.training import Objective, TrainData, Trainer
from hpobench_elbo.methods.elbo.tuner import ELBoTuner, optimal_prior_variance, training_objective

F64 = torch.float64
LR_SPACE = SearchSpace.of(lr=Float(1e-5, 1.0, log=True))


def _info(n: int, space: SearchSpace = LR_SPACE) -> TaskInfo:
    return TaskInfo(name="test", scale="test", space=space, stages=(), has_backbone=False, n_pool=n,
                    metric="mse", direction="min")


def _setup(n_train: int, prior_mean: dict[str, torch.Tensor], loss_fn: Any = None, steps: int = 10,
           train_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainSetup:
    recipe = Recipe(steps=steps, batch_size=n_train)
    return TrainSetup(loss_fn=loss_fn or nn.functional.mse_loss, n_train=n_train, n_data=n_train,
                      total_steps=steps, batch_size=n_train, prior_mean=prior_mean,
                      generator=torch.Generator().manual_seed(0), meter=BudgetMeter(1e12, CountingClock()),
                      recipe=recipe, make_optimizer=functools.partial(RecipeOptimizer, recipe), train_data=train_data)


class TwoPart(nn.Module):
    """A "backbone" and a new head, as in fine-tuning."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# ---------------------------------------------------------------------------------------------
# A-T1: closed-form lambda* / tau* and the concentrated KL, iso and diag
# ---------------------------------------------------------------------------------------------

def _dense_argmin(m: torch.Tensor, s: torch.Tensor, mu: torch.Tensor, center: float) -> tuple[float, Any]:
    """arg min over v of sum_d KL(N(m_d, s_d^2) || N(mu_d, v)) on a dense grid around ``center``."""
    grid = center * torch.linspace(0.8, 1.25, 100_001, dtype=F64)  # relative spacing 4.5e-6
    kl = kl_divergence(Normal(m[None], s[None]), Normal(mu[None], grid.sqrt()[:, None])).sum(1)
    return float(grid[int(torch.argmin(kl))]), None


def _full_kl(m: torch.Tensor, s: torch.Tensor, mu: torch.Tensor, v: float) -> float:
    return float(kl_divergence(Normal(m, s), Normal(mu, torch.tensor(v, dtype=F64).sqrt())).sum())


@pytest.mark.parametrize("diag", [False, True], ids=["iso", "diag"])
def test_closed_form_prior_variances_minimise_the_kl(diag: bool) -> None:
    torch.manual_seed(1)
    model = TwoPart(nn.Linear(5, 5), nn.Linear(5, 4)).double()  # D_b = 30, D_h = 24
    prior_mean = {n: p.detach() + 0.3 * torch.randn_like(p) for n, p in model.backbone.named_parameters()}
    prior_mean = {f"backbone.{n}": v for n, v in prior_mean.items()}
    tuner = ELBoTuner(per_parameter_sigma=diag)
    tuner.init(model, _info(20), {"lr": 0.1}, _setup(20, prior_mean))
    with torch.no_grad():  # move sigma away from its initial value (random per weight for diag)
        if diag:
            for r in tuner.rho.values():
                r.copy_(torch.log(torch.expm1(0.05 + 0.2 * torch.rand_like(r))))
        else:
            tuner.rho.fill_(math.log(math.expm1(0.07)))
    with torch.no_grad():
        terms = tuner.prior_terms()
    sig = {n: (nn.functional.softplus(tuner.rho[n]) if diag else nn.functional.softplus(tuner.rho).expand_as(p))
           for n, p in tuner.params.items()}
    for group, key in (("backbone", "lambda"), ("head", "tau")):
        names = [s.name for s in tuner.param_map if s.group == group]
        m = torch.cat([tuner.params[n].detach().reshape(-1) for n in names])
        s = torch.cat([sig[n].detach().reshape(-1) for n in names])
        mu = torch.cat([prior_mean[n].reshape(-1) if n in prior_mean else torch.zeros(tuner.params[n].numel(), dtype=F64)
                        for n in names])
        closed = float(terms[key])
        best, _ = _dense_argmin(m, s, mu, closed)
        assert abs(best / closed - 1) < 1e-5, (group, best, closed)
        assert float(terms[f"kl_{group}"]) == pytest.approx(_full_kl(m, s, mu, closed), rel=1e-12, abs=1e-12)
        # a neighbouring variance is worse: the concentrated KL is the minimum
        assert _full_kl(m, s, mu, closed * 1.01) > float(terms[f"kl_{group}"])
    assert float(terms["kl"]) == pytest.approx(float(terms["kl_backbone"] + terms["kl_head"]), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# A-T2: the kappa-weighted objective is the ELBo of the kappa-times replicated data
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kappa", [1, 3])
def test_kappa_objective_selects_type2_ml_prior_variance_of_replicated_data(kappa: int) -> None:
    gen = torch.Generator().manual_seed(7)
    n, r, s = 15, 40, 0.4
    x = torch.randn(n, r, generator=gen, dtype=F64)
    y = x @ (0.3 * torch.randn(r, generator=gen, dtype=F64)) + s * torch.randn(n, generator=gen, dtype=F64)
    taus = torch.logspace(-2.5, 0.5, 151, dtype=F64)
    elbo, evidence = [], []
    for tau in taus.tolist():
        # the optimal full-covariance q of L_kappa at this tau (a Gaussian posterior with precision kappa/s^2)
        cov = torch.linalg.inv(kappa * x.T @ x / s**2 + torch.eye(r, dtype=F64) / tau)
        m = kappa * cov @ x.T @ y / s**2
        mean_enll = 0.5 * math.log(2 * math.pi * s**2) + (
            (y - x @ m).square().sum() + torch.trace(x @ cov @ x.T)) / (2 * s**2 * n)
        kl = kl_divergence(MultivariateNormal(m, cov, validate_args=False),
                           MultivariateNormal(torch.zeros(r, dtype=F64), tau * torch.eye(r, dtype=F64),
                                              validate_args=False))
        objective = training_objective(mean_enll, kl, float(kappa), n)  # = -L_kappa / (kappa n)
        elbo.append(float(-kappa * n * objective))
        xt, yt = x.repeat(kappa, 1), y.repeat(kappa)
        evidence.append(float(MultivariateNormal(torch.zeros(kappa * n, dtype=F64),
                                                 tau * xt @ xt.T + s**2 * torch.eye(kappa * n, dtype=F64),
                                                 validate_args=False).log_prob(yt)))
    elbo_t, evidence_t = torch.tensor(elbo), torch.tensor(evidence)
    assert float((elbo_t - evidence_t).abs().max()) < 1e-8
    best = int(torch.argmax(elbo_t))
    assert best == int(torch.argmax(evidence_t))
    assert 0 < best < len(taus) - 1  # an interior optimum


# ---------------------------------------------------------------------------------------------
# A-T3 / A-T4: iso q on a linear-Gaussian model, closed form vs L-BFGS vs the stochastic tuner
# ---------------------------------------------------------------------------------------------

N_LIN, R_LIN, NOISE = 100, 20, 1.0


def _linear_problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_LIN, R_LIN, generator=gen, dtype=F64)
    y = x @ (0.3 * torch.randn(R_LIN, generator=gen, dtype=F64)) + NOISE * torch.randn(N_LIN, generator=gen, dtype=F64)
    return x, y


def _gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (0.5 * math.log(2 * math.pi * NOISE**2) + (out.reshape(-1) - y) ** 2 / (2 * NOISE**2)).mean()


def _lbfgs_reference(x: torch.Tensor, y: torch.Tensor, kappa: float) -> dict[str, Any]:
    """Joint L-BFGS over (m, sigma, tau) of the exact iso objective (analytic expected NLL, full KL)."""
    n, r = x.shape
    m = torch.zeros(r, dtype=F64, requires_grad=True)
    log_sigma = torch.tensor(math.log(0.1), dtype=F64, requires_grad=True)
    log_tau = torch.tensor(0.0, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([m, log_sigma, log_tau], max_iter=1000, tolerance_grad=1e-13, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        sigma, tau = log_sigma.exp(), log_tau.exp()
        enll = 0.5 * math.log(2 * math.pi * NOISE**2) + (
            (y - x @ m).square().sum() + sigma**2 * x.square().sum()) / (2 * NOISE**2 * n)
        kl = kl_divergence(Normal(m, sigma.expand(r)), Normal(torch.zeros(r, dtype=F64), tau.sqrt().expand(r))).sum()
        return enll + kl / (kappa * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    for _ in range(4):
        opt.step(closure)
    with torch.no_grad():
        return {"m": m.detach().clone(), "sigma": float(log_sigma.exp()), "tau": float(log_tau.exp()),
                "objective": float(objective())}


def test_lbfgs_optimum_satisfies_the_closed_form_tau_and_the_tuner_profile() -> None:
    x, y = _linear_problem()
    ref = _lbfgs_reference(x, y, kappa=R_LIN / N_LIN)
    closed = optimal_prior_variance(float(ref["m"].square().sum()), R_LIN * ref["sigma"] ** 2, R_LIN)
    assert closed == pytest.approx(ref["tau"], rel=1e-6)
    # the tuner's own profile at that (m, sigma) gives the same tau and the same objective value
    model = nn.Linear(R_LIN, 1, bias=False).double()
    tuner = ELBoTuner()
    tuner.init(model, _info(N_LIN), {"lr": 0.1}, _setup(N_LIN, {}, _gaussian_nll))
    with torch.no_grad():
        model.weight.copy_(ref["m"].reshape(1, -1))
        tuner.rho.fill_(math.log(math.expm1(ref["sigma"])))
    with torch.no_grad():
        terms = tuner.prior_terms()
    assert tuner.kappa == pytest.approx(R_LIN / N_LIN)
    assert set(terms) >= {"tau", "kl"} and "lambda" not in terms  # no backbone: one head group
    assert float(terms["tau"]) == pytest.approx(ref["tau"], rel=1e-6)
    enll = 0.5 * math.log(2 * math.pi * NOISE**2) + float(
        (y - x @ ref["m"]).square().sum() + ref["sigma"] ** 2 * x.square().sum()) / (2 * NOISE**2 * N_LIN)
    assert float(training_objective(enll, terms["kl"], tuner.kappa, N_LIN)) == pytest.approx(ref["objective"], rel=1e-9)


def test_stochastic_tuner_through_the_trainer_reaches_the_closed_form_optimum() -> None:
    """Single-sample reparameterised SGD (the tuner's defaults: Nesterov 0.9, clip 1.0, cosine) on
    the A-T3 problem with kappa = D/N: 3,000 full-batch steps reach the L-BFGS optimum within 5%.

    ``sigma_init=0.01`` (instead of 1e-4) keeps this 20-weight problem clear of the degenerate
    m -> 0, sigma -> 0 mode that a start far below the optimal sigma can fall into at some seeds.
    """
    x, y = _linear_problem()
    ref = _lbfgs_reference(x, y, kappa=R_LIN / N_LIN)
    model = nn.Linear(R_LIN, 1, bias=False).double()
    spec = TrialSpec(config={"lr": 0.05}, tuner=TunerSpec("elbo", {"sigma_init": 0.01, "selection_samples": 200}),
                     data="all")
    objective = Objective(_gaussian_nll, lambda o, t: float((o.reshape(-1) - t).square().mean()), "mse", 1e9)
    meter = BudgetMeter(1e12, CountingClock())
    ctx = TrialContext(meter, None, None, build_tuner)  # type: ignore[arg-type]
    result = Trainer(Recipe(steps=3000, batch_size=None), objective).fit(
        spec, _info(N_LIN), model, TrainData(x, y), ctx, torch.Generator().manual_seed(1), {}, n_data=N_LIN)
    assert result.status == "ok", result.error
    final = result.trajectory[-1]
    assert final["step"] == 3000
    assert final["tau"] == pytest.approx(ref["tau"], rel=0.05)
    assert final["sigma"] == pytest.approx(ref["sigma"], rel=0.05)
    # the exact objective at the learned (m, sigma) is the optimum's (the trained model holds m)
    m = result.artifact.weight.detach().reshape(-1)
    enll = 0.5 * math.log(2 * math.pi * NOISE**2) + float(
        (y - x @ m).square().sum() + final["sigma"] ** 2 * x.square().sum()) / (2 * NOISE**2 * N_LIN)
    kl = kl_divergence(Normal(m, torch.full_like(m, final["sigma"])),
                       Normal(torch.zeros_like(m), torch.full_like(m, math.sqrt(final["tau"])))).sum()
    assert final["kl"] == pytest.approx(float(kl), rel=1e-9)
    assert enll + float(kl) / (R_LIN / N_LIN * N_LIN) == pytest.approx(ref["objective"], rel=2e-3)
    # the selection score is the final training objective, a Monte Carlo estimate (200 posterior samples
    # over the training set here; its standard error is about 0.012 on this problem)
    assert result.score_name == "final training objective"
    assert result.score == pytest.approx(final["objective"])
    assert result.score == pytest.approx(ref["objective"], abs=0.05)
    assert meter.by_phase()["hyper"] > 0
    # trajectory: every max(1, steps // 50) steps and at the end, scalars only
    steps = [row["step"] for row in result.trajectory]
    assert steps[:3] == [0, 60, 120] and steps[-2:] == [2999, 3000]
    assert all(isinstance(v, (int, float)) for row in result.trajectory for v in row.values())


# ---------------------------------------------------------------------------------------------
# The parameter map (pitfall A.8-2) on a real pretrained backbone
# ---------------------------------------------------------------------------------------------

def _pretrained_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    try:
        from hpobench_elbo.tasks.backbones import efficientnet_lite0

        backbone = efficientnet_lite0(1)
        body, prior = backbone.new_trainable(), backbone.pretrained_params()
        head = nn.Linear(backbone.feature_dim, 3)
    except (ImportError, UserError):  # the backbone's packages are missing: a pretrained-like stand-in
        body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        prior = {n: p.detach().clone() for n, p in body.named_parameters()}
        head = nn.Linear(4, 3)
    return TwoPart(body, head), {f"backbone.{n}": v for n, v in prior.items()}


def test_parameter_map_aligns_with_the_pretrained_prior_mean() -> None:
    model, prior_mean = _pretrained_model()
    names_before = [n for n, _ in model.named_parameters()]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    tuner = ELBoTuner()
    tuner.init(model, _info(20), {"lr": 0.01}, _setup(20, prior_mean))
    table = tuner.param_map
    assert [s.name for s in table] == list(trainable)  # module order, every trainable parameter
    assert [s.name for s in table if s.group == "backbone"] == list(prior_mean)  # same names, same order
    assert all(s.group == "head" for s in table if s.name.startswith("head."))
    for s in table:
        assert s.shape == tuple(trainable[s.name].shape)
        if s.group == "backbone":
            assert s.shape == tuple(prior_mean[s.name].shape)
    assert [s.start for s in table[1:]] == [s.stop for s in table[:-1]] and table[0].start == 0
    # D counts every trainable network parameter and nothing else; sigma (rho) is not a module parameter
    assert tuner.n_params == sum(p.numel() for p in trainable.values())
    assert tuner.n_backbone == sum(v.numel() for v in prior_mean.values())
    assert tuner.n_head == sum(p.numel() for p in model.head.parameters())
    assert [n for n, _ in model.named_parameters()] == names_before
    assert all(tuner.rho is not p for p in model.parameters())
    assert tuner.kappa == pytest.approx(tuner.n_params / 20)
    # the flat prior mean lines up with the flat mean, slice by slice (m starts at the pretrained values)
    flat_m, flat_mu = tuner.flat_mean(), tuner.flat_prior_mean()
    for s in table:
        if s.group == "backbone":
            assert torch.equal(flat_mu[s.start:s.stop], prior_mean[s.name].reshape(-1))
            assert torch.equal(flat_m[s.start:s.stop], flat_mu[s.start:s.stop])
    with torch.no_grad():
        terms = tuner.prior_terms()
    assert float(terms["lambda"]) == pytest.approx(1e-4**2, rel=1e-6)  # ||m_b - mu|| = 0 exactly at init
    assert float(terms["tau"]) > 1e-4**2
    # prior "l2-zero" keeps the backbone group but centres it at 0
    zero = ELBoTuner(prior="l2-zero")
    zero.init(model, _info(20), {"lr": 0.01}, _setup(20, prior_mean))
    assert zero.n_backbone == tuner.n_backbone and float(zero.prior_terms()["lambda"].detach()) > 1e-4


def test_misaligned_prior_mean_is_refused() -> None:
    model = TwoPart(nn.Linear(3, 4), nn.Linear(4, 2))
    prior = {f"backbone.{n}": p.detach().clone() for n, p in model.backbone.named_parameters()}
    bad_shape = {**prior, "backbone.weight": torch.zeros(3, 4)}
    with pytest.raises(ValueError, match="shape"):
        ELBoTuner().init(model, _info(10), {"lr": 0.1}, _setup(10, bad_shape))
    with pytest.raises(ValueError, match="not parameters"):
        ELBoTuner().init(model, _info(10), {"lr": 0.1}, _setup(10, {"weight": torch.zeros(4, 3)}))


def test_tuner_options_are_validated() -> None:
    for bad in ({"kappa": "huge"}, {"kappa": 0}, {"sigma_init": -1.0}, {"prior": "ptyl"}, {"selection_samples": 0}):
        with pytest.raises(UserError):
            TUNERS.create("elbo", **bad)
    assert isinstance(TUNERS.create("elbo", kappa=1.0, per_parameter_sigma=True), ELBoTuner)


# ---------------------------------------------------------------------------------------------
# The methods through the real loop
# ---------------------------------------------------------------------------------------------

def test_method_config_fills_the_space_and_needs_lr() -> None:
    space = SearchSpace.of(lr=Float(1e-4, 1.0, log=True), weight_decay=Float(1e-7, 1e-2, log=True, zero=True),
                           momentum=Float(0.0, 0.99), width=Int(8, 64), act=Choice(("relu", "tanh")))
    method = METHODS.create("de-elbo", _info(100, space), 0)
    specs = []
    while (spec := method.ask(None)) is not None:  # type: ignore[arg-type]
        specs.append(spec)
    assert [s.config["lr"] for s in specs] == [1e-1, 1e-2, 1e-3, 1e-4]
    for s in specs:
        assert space.validate(s.config) == s.config
        assert {k: v for k, v in s.config.items() if k != "lr"} == {
            "weight_decay": 0.0, "momentum": 0.0, "width": 8, "act": "relu"}
        assert s.data == "all" and s.tuner.name == "elbo" and s.tuner.options["kappa"] == "data-emphasized"
    with pytest.raises(UserError, match="lr"):
        METHODS.create("elbo", _info(100, SearchSpace.of(eta=Float(1e-3, 1.0, log=True))), 0)
    with pytest.raises(UserError, match="outside"):
        METHODS.create("de-elbo", _info(100, space), 0, lrs=[3.0])
    assert METHODS.get("de-elbo").validation == METHODS.get("elbo").validation == "none"


def test_de_elbo_and_elbo_run_through_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpobench_elbo import api

    told: list[TrialResult] = []
    original_tell = DataEmphasizedELBo.tell

    def spy_tell(self: DataEmphasizedELBo, spec: TrialSpec, result: TrialResult) -> None:
        told.append(result)
        original_tell(self, spec, result)

    monkeypatch.setattr(DataEmphasizedELBo, "tell", spy_tell)
    suite = tmp_path / "elbo.yaml"
    suite.write_text(
        "name: elbo-test\nclock: counting\nbudget: 1000\nrefit: true\ncache: false\nthreads: 1\nseeds: [0]\n"
        "tasks:\n  - {name: digits-mlp, scale: smoke}\nmethods:\n  - de-elbo\n  - elbo\n")
    out = tmp_path / "results"
    summaries = api.run(suite, out=out, device="cpu", progress=False)
    assert len(summaries) == 2
    assert len(told) == 8 and all(r.test is None for r in told)  # the methods never see test values
    for summary in summaries:
        contents = read_ledger(out / f"{summary.cell_id}.jsonl")
        rows = contents.rows
        assert len(rows) == 4 and summary.reason == "method done"
        kappa = "data-emphasized" if "--de-elbo--" in summary.cell_id else 1.0
        assert [r["config"]["lr"] for r in rows] == [1e-1, 1e-2, 1e-3, 1e-4]
        for row in rows:
            assert row["data"] == "all" and row["kind"] == "trial" and row["status"] == "ok"
            assert row["tuner"]["name"] == "elbo" and row["tuner"]["options"]["kappa"] == kappa
            assert row["score_name"] == "final training objective"
            assert row["cost"]["hyper"] > 0 and row["test"] is not None  # tested by the loop, uncharged
            last = row["trajectory"][-1]
            assert {"tau", "sigma", "kl", "nll", "objective"} <= set(last)
            assert "lambda" not in last  # digits-mlp has no backbone: every weight is a head weight
            assert last["objective"] == pytest.approx(row["score"])
        best = min(rows, key=lambda r: (r["score"], r["trial_id"]))
        assert summary.recommendation == best["trial_id"] == rows[-1]["recommendation"]
        assert contents.end is not None and contents.end["recommendation"] == best["trial_id"]
