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

Measured under the DeviceClock (seed 0, resolution / max_tokens 64, adapt_lr 0.01, then a second
trial that changes only the head): image cpu scale on one CPU core, full trial 15.4 device-seconds
(features 6.9, adapt 8.2 with 200 steps, head 0.19), head-only trial 0.21 (ratio 0.014), test
accuracy 0.88; text cpu scale (100 adapt steps), 34.5 against 0.33 (ratio 0.0095), test accuracy
0.71; image gpu scale on one H100 (1,000 adapt steps), 7.7 against 0.32 GPU-seconds (ratio 0.04,
mostly the read of the cached adapted features), test accuracy 0.94.

Only the plain configuration is understood (tuner ``sgd``): the stages train with their own
code, not through a tuner; a trial asking for another tuner is recorded as failed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hpobench_elbo.contracts import Stage, TrialResult, TrialSpec
from hpobench_elbo.engine.budget import BudgetExhausted, BudgetMeter
from hpobench_elbo.engine.cache import CacheView
from hpobench_elbo.engine.seeds import Seeds
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Choice, Float, Int, SearchSpace
from hpobench_elbo.tasks.backbones import SplitBackbone, efficientnet_lite0, minilm
from hpobench_elbo.tasks.base import VALIDATION_FRACTION, Scale, SupervisedTask
from hpobench_elbo.tasks.data import DataSplits, load_dataset, stratified_split
from hpobench_elbo.tasks.trainer import Objective, cross_entropy_objective
from hpobench_elbo.tasks.transfer import (
    EVAL_BATCH,
    FeatureStage,
    TransferModel,
    fixed_test_data,
    run_stage,
    describe_test_examples,
    trial_rng,
)

__all__ = ["ImagePipeline", "PipelineTask", "TextPipeline", "STAGE_NAMES"]

STAGE_NAMES = ("features", "adapt", "head")
PREP_CHOICES = (32, 48, 64)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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
        self._stage_costs: dict[str, float] = {}

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
               meter: BudgetMeter) -> dict[str, torch.Tensor]:
        """Fine-tune the top block on the training examples; adapted features of the pool (and, uncharged,
        of the test set)."""
        backbone = self.backbone(prep)
        with trial_rng(seed, self.device):
            classifier = nn.Linear(backbone.feature_dim, int(self.data.pool.n_classes or 0))
            model = TransferModel(backbone.new_trainable(), classifier, None, self.freeze_bn_stats).to(self.device)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
            z_train, y_train = z_pool[train_idx].to(self.device), y_pool[train_idx].to(self.device)
            generator = torch.Generator().manual_seed(seed)
            order, pos = torch.randperm(len(train_idx), generator=generator), 0
            model.train()
            for step in range(steps):
                if pos + batch > len(order):
                    order, pos = torch.randperm(len(train_idx), generator=generator), 0
                idx = order[pos:pos + batch].to(self.device)
                pos += batch
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
                loss = F.cross_entropy(model(z_train[idx]), y_train[idx])
                if not torch.isfinite(loss):
                    break  # the head stage sees non-finite features and records the trial as diverged
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            model.eval()
            pool = self._embed(model.backbone, z_pool)
            with meter.unit("test", examples=len(z_test), check=False):
                test = self._embed(model.backbone, z_test)
        return {"pool": pool, "test": test}

    @torch.no_grad()
    def _embed(self, top: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([top(z[i:i + EVAL_BATCH].to(self.device)).float().cpu()
                          for i in range(0, len(z), EVAL_BATCH)])

    def _head(self, features: torch.Tensor, y: torch.Tensor, train_idx: torch.Tensor, val_idx: torch.Tensor | None,
              lr: float, l2: float) -> dict[str, torch.Tensor]:
        """Multinomial logistic regression on standardised features (scaled by 1/sqrt(d)) by
        full-batch SGD with momentum; returns the head and its training / validation figures."""
        device = self.device
        x_train = features[train_idx].to(device)
        y_train = y[train_idx].to(device)
        mean = x_train.mean(0)
        std = x_train.std(0, unbiased=False).clamp_min(1e-6) * math.sqrt(x_train.shape[1])
        x_train = (x_train - mean) / std
        n_classes = int(self.data.pool.n_classes or 0)
        weight = torch.zeros(x_train.shape[1], n_classes, device=device, requires_grad=True)
        bias = torch.zeros(n_classes, device=device, requires_grad=True)
        optimizer = torch.optim.SGD([weight, bias], lr=lr, momentum=0.9, nesterov=True)
        loss = torch.tensor(float("nan"))
        for _ in range(int(self.scale.steps)):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(x_train @ weight + bias, y_train)
            objective = loss + l2 * weight.pow(2).sum() if l2 else loss
            objective.backward()
            optimizer.step()
        out = {"weight": weight.detach().cpu(), "bias": bias.detach().cpu(), "mean": mean.cpu(), "std": std.cpu()}
        with torch.no_grad():
            out["train_loss"] = F.cross_entropy(x_train @ weight + bias, y_train).cpu()
            if val_idx is not None:
                logits = ((features[val_idx].to(device) - mean) / std) @ weight + bias
                y_val = y[val_idx].to(device)
                out["val_loss"] = F.cross_entropy(logits, y_val).cpu()
                out["val_accuracy"] = (logits.argmax(1) == y_val).float().mean().cpu()
        return out

    # -- one trial --------------------------------------------------------------------------
    def run(self, spec: TrialSpec, meter: BudgetMeter, cache: CacheView, seeds: Seeds) -> TrialResult:
        config = self.info.space.validate(spec.config, where=f"trial {spec.trial_id} config")
        base: dict[str, Any] = {"spec": spec, "cost": {}, "planned_steps": len(STAGE_NAMES)}
        if spec.tuner.name != "sgd":
            return TrialResult(**base, status="failed", error=f"{self.name} trains its stages itself; "
                               f"tuner {spec.tuner.name!r} is not supported (plain configurations only)")
        prep = int(config[self.PREP])
        adapt_lr, adapt_steps = float(config["adapt_lr"]), int(config["adapt_steps"])
        head_lr, head_l2 = float(config["head_lr"]), float(config["head_l2"])
        pool = self.data.pool.subset(self.pool_indices(seeds))
        y_pool = torch.tensor(np.asarray(pool.y), dtype=torch.long)
        if spec.data == "split":
            tr, va = stratified_split(pool.y, VALIDATION_FRACTION, np.random.default_rng(seeds.split))
            train_idx, val_idx = torch.as_tensor(tr), torch.as_tensor(va)
        else:
            train_idx, val_idx = torch.arange(len(pool)), None
        n_train = len(train_idx)
        base["n_train"] = n_train
        stage = self.feature_stage(prep)
        x_test, y_test = self.test_data()
        runs = []
        try:
            features = stage.pool(pool.x, meter, cache, seeds, self._stage_costs)
            runs.append(features)
            z_test = stage.test(x_test, meter, cache)
            # everything the adapted features depend on: upstream key, the stage's parameters, the batch
            # size, which examples it trains on (split seed) and hence its own seed
            split = seeds.split if spec.data == "split" else 0
            batch = min(int(self.scale.batch_size or n_train), n_train)
            upstream = {**stage.params, "adapt_lr": adapt_lr, "adapt_steps": adapt_steps, "batch": batch,
                        "data": spec.data, "split": split}
            adapted = run_stage(
                cache, meter, task=self.name, stage="adapt", data_seed=seeds.subset, params=upstream,
                compute=lambda: self._adapt(prep, features.output, z_test, y_pool, train_idx, adapt_lr, adapt_steps,
                                            batch, _seed(seeds.subset, split, 1), meter),
                examples=adapt_steps * batch + len(pool), known_costs=self._stage_costs)
            runs.append(adapted)
            head = run_stage(
                cache, meter, task=self.name, stage="head", data_seed=seeds.subset,
                params={**upstream, "head_lr": head_lr, "head_l2": head_l2, "head_steps": int(self.scale.steps)},
                compute=lambda: self._head(adapted.output["pool"], y_pool, train_idx, val_idx, head_lr, head_l2),
                examples=len(pool), known_costs=self._stage_costs)
            runs.append(head)
        except BudgetExhausted:
            return TrialResult(**base, status="cut", steps=len(runs), metrics=self._cost_metrics(runs))
        metrics = self._cost_metrics(runs)
        out = head.output
        metrics["train_loss"] = float(out["train_loss"])
        if val_idx is not None:
            metrics["val_loss"] = float(out["val_loss"])
            metrics["val_accuracy"] = float(out["val_accuracy"])
            score, score_name = metrics["val_loss"], "validation loss"
        else:
            score, score_name = metrics["train_loss"], "final training loss"
        if not math.isfinite(score) or not bool(torch.isfinite(out["weight"]).all()):
            return TrialResult(**base, status="diverged", steps=len(runs), metrics=metrics,
                               error="non-finite head (adapt or head stage diverged)")
        artifact = (out, adapted.output["test"], torch.tensor(np.asarray(y_test), dtype=torch.long))
        return TrialResult(**base, status="ok", steps=len(runs), score=float(score), score_name=score_name,
                           metrics=metrics, artifact=artifact)

    @staticmethod
    def _cost_metrics(runs: list[Any]) -> dict[str, float]:
        metrics = {f"cost_{name}": run.true_cost for name, run in zip(STAGE_NAMES, runs)}
        if len(runs) == len(STAGE_NAMES):
            metrics["cost_true_total"] = float(sum(run.true_cost for run in runs))
        memoised = 0
        for run in runs:
            if not run.hit:
                break
            memoised += 1
        metrics["n_memoised"] = float(memoised)
        return metrics

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
        "cpu": Scale(n=1000, steps=100, batch_size=32, extra={"test_examples": None}),
        "gpu": Scale(n=None, steps=200, batch_size=128, extra={"test_examples": None}),
    }
    ADAPT_STEPS = {"smoke": (5, 40), "cpu": (20, 400), "gpu": (100, 2000)}

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
