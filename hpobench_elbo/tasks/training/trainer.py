"""The one Trainer: runs every training of every task, whichever tuner takes the steps.

It builds the trial's tuner from its ``TunerSpec`` (through ``TrialContext.build_tuner``), hands it
the task's recipe (``TrainSetup.make_optimizer``: schedule, clipping, momentum), feeds shuffled
minibatches, checks the meter before every step (a step is a ``train`` unit; the tuner's own extra
work nests as ``hyper``), catches divergence and errors, validates when the trial has a
validation split, and returns a ``TrialResult`` whose ``artifact`` is the model to test.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpobench_elbo.contracts import Recipe, TaskInfo, TrainSetup, TrialContext, TrialResult, TrialSpec, Tuner
from hpobench_elbo.engine.budget import BudgetExhausted
from hpobench_elbo.errors import is_environment_failure
from hpobench_elbo.tasks.training.recipe import RecipeOptimizer
from hpobench_elbo.tasks.training.sampling import minibatch_indices


@dataclass(frozen=True)
class TrainData:
    """Tensors a trial trains on: inputs of the trainable model (raw or cached features)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    transform: Any = None
    """What the task's ``transform`` hook fitted on the training examples (e.g. a standardiser),
    kept for the test evaluation."""


@dataclass(frozen=True)
class Objective:
    """The task's loss and metric. ``loss_fn(outputs, y)`` is the mean NLL (CE) or mean squared error."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric_fn: Callable[[torch.Tensor, torch.Tensor], float]
    metric: str
    divergence_threshold: float


def cross_entropy_objective(divergence_threshold: float = 1e3) -> Objective:
    def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
        return float((out.argmax(dim=1) == y).float().mean())

    return Objective(nn.functional.cross_entropy, accuracy, "accuracy", divergence_threshold)


def gaussian_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean Gaussian NLL of ``y`` under (B, 2) outputs (predictive mean, log predictive variance)."""
    mean, log_var = out[:, 0], out[:, 1]
    return (0.5 * (math.log(2 * math.pi) + log_var) + 0.5 * (y.reshape(-1) - mean) ** 2 * torch.exp(-log_var)).mean()


def gaussian_objective(divergence_threshold: float = 1e3) -> Objective:
    """A Gaussian likelihood with its variance in the model's outputs (``contracts.ClosedFormGaussianModel``):
    loss the mean NLL, metric the RMSE of the predictive mean."""
    def rmse(out: torch.Tensor, y: torch.Tensor) -> float:
        return float(torch.sqrt(torch.mean((out[:, 0] - y.reshape(-1)) ** 2)))

    return Objective(gaussian_nll, rmse, "rmse", divergence_threshold)


def mse_objective(divergence_threshold: float = 1e6) -> Objective:
    def mse(out: torch.Tensor, y: torch.Tensor) -> float:
        return float(nn.functional.mse_loss(out.reshape(-1), y.reshape(-1)))

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out.reshape(-1), y.reshape(-1))

    return Objective(loss, mse, "mse", divergence_threshold)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective,
             batch_size: int = 1024) -> dict[str, float]:
    """Mean loss and metric of ``model`` on (x, y), in eval mode, batched."""
    was_training = model.training
    model.eval()
    outs = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    out = torch.cat(outs)
    return {"loss": float(objective.loss_fn(out, y)), objective.metric: objective.metric_fn(out, y)}


class Trainer:
    """Trains one model under a task's recipe (``recipe.steps`` minibatch steps of ``recipe.batch_size``)."""

    def __init__(self, recipe: Recipe, objective: Objective, device: str = "cpu") -> None:
        self.recipe = recipe
        self.steps = recipe.steps
        self.batch_size = recipe.batch_size
        self.objective = objective
        self.device = device

    def _checkpoint_value(self, tuner: Tuner, model: nn.Module, data: TrainData, meter: Any,
                          since: list[float]) -> float:
        """What a checkpoint reports, lower is better: the validation loss when the trial has a
        validation split (one pass, charged to ``validate``), else the mean training objective over
        the steps since the previous checkpoint (no extra pass, no validation data)."""
        if data.x_val is None or data.y_val is None:
            return _mean(since)
        with meter.unit("validate", examples=len(data.x_val)):
            return evaluate(tuner.eval_model(model), data.x_val, data.y_val, self.objective)["loss"]

    def fit(self, spec: TrialSpec, info: TaskInfo, model: nn.Module, data: TrainData, ctx: TrialContext,
            generator: torch.Generator, prior_mean: Mapping[str, torch.Tensor], n_data: int) -> TrialResult:
        """Train, validate if there is a validation split, and return the result (never raises for a bad trial)."""
        meter = ctx.meter
        n = len(data.x_train)
        base = {"spec": spec, "cost": {}, "planned_steps": self.steps, "n_train": n}
        step = 0
        try:
            tuner: Tuner = ctx.build_tuner(spec.tuner)
            freeze_model_hyperparameters(model, info, bool(getattr(tuner, "learns_model_hyperparameters", False)))
            model.to(self.device)
            model.train()
            batch_size = n if self.batch_size is None else min(self.batch_size, n)
            setup = TrainSetup(loss_fn=self.objective.loss_fn, n_train=n, n_data=n_data, total_steps=self.steps,
                               batch_size=batch_size, prior_mean=prior_mean, generator=generator, meter=meter,
                               recipe=self.recipe, make_optimizer=functools.partial(RecipeOptimizer, self.recipe),
                               device=self.device, train_data=(data.x_train, data.y_train))
            tuner.init(model, info, spec.config, setup)
            next_train = minibatch_indices(n, self.batch_size, generator)
            val_batch = None
            if data.x_val is not None and data.y_val is not None:
                next_val = minibatch_indices(len(data.x_val), self.batch_size, generator)

                def val_batch() -> tuple[torch.Tensor, torch.Tensor]:
                    idx = next_val()
                    return data.x_val[idx], data.y_val[idx]  # type: ignore[index]

            last_losses: collections.deque[float] = collections.deque(maxlen=10)
            threshold = self.objective.divergence_threshold
            checkpoints = set(spec.checkpoints)
            since_checkpoint: list[float] = []
            intermediate: list[tuple[int, float]] = []
            step_unit = meter.unit("train", examples=batch_size)  # one unit object, entered once per step
            for step in range(self.steps):
                with step_unit:  # the batch draw and the divergence check belong to the step
                    idx = next_train()
                    stats = tuner.step(model, (data.x_train[idx], data.y_train[idx]), step, val_batch)
                    loss = stats.loss
                    diverged = not math.isfinite(loss) or abs(loss) > threshold
                    last_losses.append(loss)
                if diverged:
                    return TrialResult(**base, status="diverged", steps=step + 1,
                                       metrics={"train_loss": loss}, trajectory=tuple(tuner.trajectory()),
                                       error=f"loss {loss:.4g} at step {step + 1}")
                since_checkpoint.append(loss if stats.objective is None else stats.objective)
                if step + 1 in checkpoints:
                    value = self._checkpoint_value(tuner, model, data, meter, since_checkpoint)
                    since_checkpoint = []
                    intermediate.append((step + 1, value))
                    base["intermediate"] = tuple(intermediate)  # every later result carries them
                    if not ctx.checkpoint(spec.trial_id, step + 1, value):
                        return TrialResult(**base, status="pruned", steps=step + 1,
                                           metrics={"train_loss": float(sum(last_losses) / len(last_losses))},
                                           trajectory=tuple(tuner.trajectory()))
            step = self.steps
            eval_model = tuner.eval_model(model)
            metrics = {"train_loss": float(sum(last_losses) / max(1, len(last_losses)))}
            score, score_name = tuner.selection_score(), getattr(tuner, "score_name", "training objective")
            if data.x_val is not None and data.y_val is not None:
                with meter.unit("validate", examples=len(data.x_val)):
                    val = evaluate(eval_model, data.x_val, data.y_val, self.objective)
                metrics.update({f"val_{k}": v for k, v in val.items()})
                if score is None:
                    score, score_name = val["loss"], "validation loss"
            if score is None:
                score, score_name = metrics["train_loss"], "final training loss"
            if not math.isfinite(score):
                return TrialResult(**base, status="diverged", steps=step, metrics=metrics,
                                   trajectory=tuple(tuner.trajectory()), error="non-finite selection score")
            return TrialResult(**base, status="ok", steps=step, score=float(score), score_name=score_name,
                               metrics=metrics, trajectory=tuple(tuner.trajectory()), artifact=eval_model)
        except BudgetExhausted:
            return TrialResult(**base, status="cut", steps=step)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            return TrialResult(**base, status="failed", steps=step, error=f"OutOfMemoryError: {str(exc)[:300]}")
        except Exception as exc:  # noqa: BLE001 - recorded; the cell goes on
            if is_environment_failure(exc):  # disk full, read-only...: the run stops (exit 3)
                raise
            return TrialResult(**base, status="failed", steps=step, error=f"{type(exc).__name__}: {str(exc)[:400]}")


def freeze_model_hyperparameters(model: nn.Module, info: TaskInfo, learns: bool) -> None:
    """Leave the task's declared model/likelihood hyperparameters trainable when the tuner learns them
    (``learns``), else freeze them at the config's values (``contracts.ModelHyperparameter``)."""
    names = {h.parameter for h in info.model_hyperparameters if h.parameter is not None}
    params = dict(model.named_parameters())
    missing = sorted(names - set(params))
    if missing:
        raise ValueError(f"the task declares model hyperparameters {missing} that are not parameters of its model")
    for name in names:
        params[name].requires_grad_(learns)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Named trainable parameters in module order (the one parameter map tuners align to)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def clone_values(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}
