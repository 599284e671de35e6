"""Staged transfer pipelines for memoization-aware HPO (METHODS.md C.1, C.5): ``image-pipeline`` and
``text-pipeline``.

Three stages, each served through the stage cache (``CacheView.get``: real measured cost under the
device clock, nothing simulated), each keyed by its own parameters and every upstream one::

    features   resolution | max_tokens   frozen backbone outputs of the seed's labelled pool
                                          (EfficientNet-Lite0 below its last MBConv block at
                                          32/48/64 px; MiniLM's embeddings + first 5 layers with
                                          texts cut at 32/48/64 word pieces)
    adapt      adapt_lr, adapt_steps      the top block / layer (+ a temporary linear classifier)
                                          fine-tuned on the pool's training split with SGD
                                          (Nesterov momentum 0.9, cosine schedule, batch from the
                                          scale); output: adapted features of every pool example
    head       head_lr, head_l2           a linear (multinomial logistic) head on the adapted
                                          features: full-batch SGD (momentum 0.9) on standardised
                                          features, L2 strength head_l2; output: the head and its
                                          validation loss and accuracy

The objective is validation accuracy (metric ``accuracy``, direction ``max``); the score a method
selects on (lower is better) is the validation loss. Every trial records the **true** cost of each
stage under the cell's clock in ``metrics["cost_features"]``, ``["cost_adapt"]``,
``["cost_head"]`` (whether or not the stage was read from the cache: for cost-aware BO, as
``tasks/synthetic.py`` does), ``cost_true_total`` and ``n_memoised`` (the leading stages this cell
read from its own cache). A trial that changes only the head pays two cache reads and the head: a
small fraction of a full trial.

Charging. Each stage is one indivisible unit (checked before it starts). Under the counting
clock a stage is priced by its backbone example passes: ``features`` = N, ``adapt`` =
adapt_steps x batch + N (training steps through the top block, then one pass over the pool);
``head`` = its training and validation examples once (n_train + n_val: a linear map on cached
features is orders of magnitude cheaper than a backbone pass, whatever its number of steps). The
test set is never charged: its frozen features come from ``FeatureStage.test`` (uncharged,
shared) and its adapted features are computed inside the adapt stage in a nested
``meter.unit("test")``, which is excluded from the stage's charge and from its stored true cost.

The stage outputs depend only on their keys: the adapt stage's randomness (classifier
initialisation, batch order, dropout) comes from a seed derived from the cell's subset and split
seeds, never from the trial, so the same prefix gives the same output in every trial and cell
that shares the data. ``data="all"`` (a refit) adapts and fits the head on the whole pool and
scores the head's final training loss.

Only the plain configuration is understood (tuner ``sgd``): the stages train with their own
code, not through a tuner; a trial asking for another tuner is recorded as failed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hpobench_elbo.contracts import Stage, TrialResult
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Choice, Float, Int, SearchSpace
from hpobench_elbo.tasks.backbones import SplitBackbone, efficientnet_lite0, minilm
from hpobench_elbo.tasks.base import Prepared, Scale, SupervisedTask, Trial
from hpobench_elbo.tasks.data import DataSplits, load_dataset
from hpobench_elbo.tasks.training import (
    Objective,
    RecipeOptimizer,
    TrainData,
    cross_entropy_objective,
    minibatch_indices,
    seeded,
)
from hpobench_elbo.tasks.transfer import (
    EVAL_BATCH,
    FeatureStage,
    TransferModel,
    describe_test_examples,
    fixed_test_data,
)

__all__ = ["ImagePipeline", "PipelineTask", "TextPipeline", "STAGE_NAMES"]

STAGE_NAMES = ("features", "adapt", "head")
PREP_CHOICES = (32, 48, 64)


class PipelineTask(SupervisedTask):
    """A pretrained backbone as a 3-stage pipeline: features -> adapt -> head (see the module doc)."""

    has_backbone: ClassVar[bool] = True
    PREP: ClassVar[str]  # the features stage's parameter: "resolution" or "max_tokens"
    ADAPT_STEPS: ClassVar[dict[str, tuple[int, int]]]  # per scale: adapt_steps range

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None, test_examples: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size)
        if test_examples is not None and (not isinstance(test_examples, int) or test_examples < 0):
            raise UserError(f"task {self.name!r}: test_examples must be an integer >= 0 (0: all), "
                            f"got {test_examples!r}")
        self.test_examples = test_examples if test_examples is not None else self.scale.extra.get("test_examples")
        self._backbones: dict[int, SplitBackbone] = {}
        self._feature_stages: dict[int, FeatureStage] = {}

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        lo, hi = cls.ADAPT_STEPS[scale] if scale in cls.ADAPT_STEPS else cls.ADAPT_STEPS["smoke"]
        return SearchSpace.of(**{
            cls.PREP: Choice(PREP_CHOICES),
            "adapt_lr": Float(1e-4, 1e-1, log=True, grid=(1e-2, 1e-3)),
            "adapt_steps": Int(lo, hi, log=True, grid=(lo, hi)),
            "head_lr": Float(1e-2, 10.0, log=True, grid=(10.0, 1.0, 0.1)),
            "head_l2": Float(1e-6, 1e-1, log=True, zero=True, grid=(1e-2, 1e-4, 0.0)),
        })

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("features", (self.PREP,)), Stage("adapt", ("adapt_lr", "adapt_steps")),
                Stage("head", ("head_lr", "head_l2")))

    def load(self) -> DataSplits:
        return load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return cross_entropy_objective()

    def make_backbone(self, prep: int) -> SplitBackbone:
        raise NotImplementedError

    @property
    def freeze_bn_stats(self) -> bool:
        return False

    def backbone(self, prep: int) -> SplitBackbone:
        if prep not in self._backbones:
            self._backbones[prep] = self.make_backbone(prep)
        return self._backbones[prep]

    def feature_stage(self, prep: int) -> FeatureStage:
        if prep not in self._feature_stages:
            params = {"dataset": self.dataset, "n": self.scale.n, self.PREP: prep}
            self._feature_stages[prep] = FeatureStage(self.name, self.backbone(prep), params, self.device)
        return self._feature_stages[prep]

    def test_data(self) -> tuple[Any, np.ndarray]:
        return fixed_test_data(self)

    # -- the stages -------------------------------------------------------------------------
    def _adapt(self, prep: int, z_pool: torch.Tensor, z_test: torch.Tensor, y_pool: torch.Tensor,
               train_idx: torch.Tensor, lr: float, steps: int, batch: int, seed: int,
               trial: Trial) -> dict[str, torch.Tensor]:
        """Fine-tune the top block on the training examples under the task's recipe (schedule over the
        stage's own ``steps``); adapted features of the pool (and, uncharged, of the test set)."""
        backbone = self.backbone(prep)
        with seeded(seed, self.device):
            classifier = nn.Linear(backbone.feature_dim, int(self.data.pool.n_classes or 0))
            model = TransferModel(backbone.new_trainable(), classifier, None, self.freeze_bn_stats).to(self.device)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = RecipeOptimizer(dataclasses.replace(self.recipe, steps=steps, batch_size=batch),
                                        [{"params": params, "lr": lr}])
            z_train, y_train = z_pool[train_idx].to(self.device), y_pool[train_idx].to(self.device)
            next_batch = minibatch_indices(len(train_idx), batch, torch.Generator().manual_seed(seed))
            model.train()
            for step in range(steps):
                idx = next_batch().to(self.device)
                loss = F.cross_entropy(model(z_train[idx]), y_train[idx])
                if not torch.isfinite(loss):
                    break  # the head stage sees non-finite features and records the trial as diverged
                optimizer.zero_grad()
                loss.backward()
                optimizer.step(step)
            model.eval()
            pool = self._embed(model.backbone, z_pool)
            with trial.ctx.meter.unit("test", examples=len(z_test), check=False):
                test = self._embed(model.backbone, z_test)
        return {"pool": pool, "test": test}

    @torch.no_grad()
    def _embed(self, top: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([top(z[i:i + EVAL_BATCH].to(self.device)).float().cpu()
                          for i in range(0, len(z), EVAL_BATCH)])

    def _head(self, data: TrainData, lr: float, l2: float) -> dict[str, torch.Tensor]:
        """Multinomial logistic regression on standardised features (scaled by 1/sqrt(d)) by
        full-batch SGD with Nesterov momentum at a constant rate (a convex problem: no schedule, no
        clipping); returns the head and its training / validation figures."""
        device = self.device
        x_train, y_train = data.x_train.to(device), data.y_train.to(device)
        mean = x_train.mean(0)
        std = x_train.std(0, unbiased=False).clamp_min(1e-6) * math.sqrt(x_train.shape[1])
        x_train = (x_train - mean) / std
        n_classes = int(self.data.pool.n_classes or 0)
        weight = torch.zeros(x_train.shape[1], n_classes, device=device, requires_grad=True)
        bias = torch.zeros(n_classes, device=device, requires_grad=True)
        head_recipe = dataclasses.replace(self.recipe, schedule="constant", clip_norm=None, batch_size=None)
        optimizer = RecipeOptimizer(head_recipe, [{"params": [weight, bias], "lr": lr}])
        for step in range(int(self.scale.steps)):
            optimizer.zero_grad()
            loss = F.cross_entropy(x_train @ weight + bias, y_train)
            objective = loss + l2 * weight.pow(2).sum() if l2 else loss
            objective.backward()
            optimizer.step(step)
        out = {"weight": weight.detach().cpu(), "bias": bias.detach().cpu(), "mean": mean.cpu(), "std": std.cpu()}
        with torch.no_grad():
            out["train_loss"] = F.cross_entropy(x_train @ weight + bias, y_train).cpu()
            if data.x_val is not None and data.y_val is not None:
                logits = ((data.x_val.to(device) - mean) / std) @ weight + bias
                y_val = data.y_val.to(device)
                out["val_loss"] = F.cross_entropy(logits, y_val).cpu()
                out["val_accuracy"] = (logits.argmax(1) == y_val).float().mean().cpu()
        return out

    # -- one trial --------------------------------------------------------------------------
    def _adapt_params(self, trial: Trial, stage: FeatureStage) -> dict[str, Any]:
        """Everything the adapted features depend on: the upstream key, the stage's parameters, the
        batch size and which examples it trains on (the split seed, hence its own seed)."""
        split = trial.ctx.seeds.split if trial.spec.data == "split" else 0
        n_train = len(trial.train_idx)
        return {**stage.params, "adapt_lr": float(trial.config["adapt_lr"]),
                "adapt_steps": int(trial.config["adapt_steps"]),
                "batch": min(int(self.scale.batch_size or n_train), n_train), "data": trial.spec.data, "split": split}

    def prepare(self, trial: Trial) -> Prepared:
        """Stages ``features`` and ``adapt``: the adapted features of the pool and (uncharged) the test set."""
        if trial.spec.tuner.name != "sgd":
            raise UserError(f"{self.name} trains its stages itself; tuner {trial.spec.tuner.name!r} is not "
                            "supported (plain configurations only)")
        prep = int(trial.config[self.PREP])
        stage = self.feature_stage(prep)
        y_pool = torch.tensor(np.asarray(trial.pool.y), dtype=torch.long)
        features = stage.pool(trial.pool.x, trial)
        x_test, y_test = self.test_data()
        z_test = stage.test(x_test, trial.ctx)
        params = self._adapt_params(trial, stage)
        seed = Seeds.derive(trial.ctx.seeds.subset, params["split"], 1)
        adapted = trial.stage("adapt", params, lambda: self._adapt(
            prep, features.output, z_test, y_pool, torch.as_tensor(trial.train_idx), params["adapt_lr"],
            params["adapt_steps"], params["batch"], seed, trial),
            examples=params["adapt_steps"] * params["batch"] + len(trial.pool))
        return Prepared(adapted.output["pool"], y_pool, adapted.output["test"],
                        torch.tensor(np.asarray(y_test), dtype=torch.long))

    def fit(self, trial: Trial, prepared: Prepared, data: TrainData) -> TrialResult:
        """Stage ``head`` on the adapted features; the result scores the validation loss (or, on all
        N, the final training loss)."""
        base: dict[str, Any] = {"spec": trial.spec, "cost": {}, "planned_steps": len(STAGE_NAMES),
                                "n_train": len(trial.train_idx)}
        head_lr, head_l2 = float(trial.config["head_lr"]), float(trial.config["head_l2"])
        params = {**self._adapt_params(trial, self.feature_stage(int(trial.config[self.PREP]))),
                  "head_lr": head_lr, "head_l2": head_l2, "head_steps": int(self.scale.steps)}
        out = trial.stage("head", params, lambda: self._head(data, head_lr, head_l2), examples=len(trial.pool)).output
        metrics = {"cost_true_total": float(sum(run.true_cost for run in trial.stage_runs)),
                   "train_loss": float(out["train_loss"])}
        if data.x_val is not None:
            metrics["val_loss"] = float(out["val_loss"])
            metrics["val_accuracy"] = float(out["val_accuracy"])
            score, score_name = metrics["val_loss"], "validation loss"
        else:
            score, score_name = metrics["train_loss"], "final training loss"
        if not math.isfinite(score) or not bool(torch.isfinite(out["weight"]).all()):
            return TrialResult(**base, status="diverged", steps=len(STAGE_NAMES), metrics=metrics,
                               error="non-finite head (adapt or head stage diverged)")
        return TrialResult(**base, status="ok", steps=len(STAGE_NAMES), score=float(score), score_name=score_name,
                           metrics=metrics, artifact=(out, prepared.x_test, prepared.y_test))

    @torch.no_grad()
    def test(self, result: TrialResult) -> dict[str, float]:
        """Accuracy and cross-entropy of the trial's head on the adapted test features (uncharged)."""
        head, features, y = result.artifact
        logits = ((features - head["mean"]) / head["std"]) @ head["weight"] + head["bias"]
        return {"loss": float(F.cross_entropy(logits, y)), "accuracy": float((logits.argmax(1) == y).float().mean())}

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info["scales"] = {
            name: (f"N={'all' if s.n is None else s.n}, {self.PREP} in {list(PREP_CHOICES)}, adapt_steps in "
                   f"[{self.ADAPT_STEPS[name][0]}, {self.ADAPT_STEPS[name][1]}] (batch {s.batch_size}), "
                   f"head {s.steps} full-batch steps, "
                   f"{describe_test_examples(s.extra.get('test_examples'))}")
            for name, s in self.SCALES.items()}
        info["stages"] = {s.name: list(s.params) for s in self.stages()}
        return info


class ImagePipeline(PipelineTask):
    name = "image-pipeline"
    description = ("3-stage pipeline on Animal-MNIST: EfficientNet-Lite0 features (resolution) -> top-block "
                   "adaptation (adapt_lr, adapt_steps) -> logistic head (head_lr, head_l2); memoised stages")
    PREP = "resolution"
    SCALES = {
        "smoke": Scale(n=100, steps=50, batch_size=16, extra={"test_examples": 500}),
        "demo": Scale(n=300, steps=50, batch_size=16, extra={"test_examples": 1000}),
        "cpu": Scale(n=1000, steps=100, batch_size=32, extra={"test_examples": None}),
        "gpu": Scale(n=None, steps=200, batch_size=128, extra={"test_examples": None}),
    }
    ADAPT_STEPS = {"smoke": (5, 40), "demo": (5, 60), "cpu": (20, 400), "gpu": (100, 2000)}

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None, dataset: str = "animal-mnist",
                 test_examples: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size,
                         test_examples=test_examples)
        prefix, sep, _ = dataset.partition(":")
        if dataset not in ("animal-mnist", "mnist-5k", "digits") and not (sep and prefix == "image-folder"):
            raise UserError(f"task {self.name!r}: dataset must be animal-mnist, mnist-5k, digits or "
                            f"'image-folder:/path', got {dataset!r}")
        self.dataset = dataset

    def make_backbone(self, prep: int) -> SplitBackbone:
        return efficientnet_lite0(1, resolution=prep)

    @property
    def freeze_bn_stats(self) -> bool:
        return True  # small batches: keep the pretrained BatchNorm statistics (see TransferModel)


class TextPipeline(PipelineTask):
    name = "text-pipeline"
    description = ("3-stage pipeline on tweets (dataset: tweets | amazon-reviews): MiniLM features (max_tokens) "
                   "-> top-layer adaptation (adapt_lr, adapt_steps) -> logistic head (head_lr, head_l2)")
    PREP = "max_tokens"
    SCALES = {
        "smoke": Scale(n=300, steps=50, batch_size=16, extra={"test_examples": 500}),
        "cpu": Scale(n=1000, steps=100, batch_size=32, extra={"test_examples": 1000}),
        "gpu": Scale(n=8000, steps=200, batch_size=64, extra={"test_examples": None}),
    }
    ADAPT_STEPS = {"smoke": (5, 40), "cpu": (20, 200), "gpu": (100, 2000)}

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None, dataset: str = "tweets", test_examples: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size,
                         test_examples=test_examples)
        prefix, sep, _ = dataset.partition(":")
        if dataset not in ("tweets", "amazon-reviews") and not (sep and prefix == "text-csv"):
            raise UserError(f"task {self.name!r}: dataset must be tweets, amazon-reviews or 'text-csv:/path', "
                            f"got {dataset!r}")
        self.dataset = dataset

    def make_backbone(self, prep: int) -> SplitBackbone:
        return minilm(1, max_tokens=prep)


REGISTER = {ImagePipeline.name: ImagePipeline, TextPipeline.name: TextPipeline}
