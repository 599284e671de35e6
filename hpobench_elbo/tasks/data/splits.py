"""What a dataset is and how it is split: containers, the fixed test holdout, stratified subsets and
the one train/validation split every task uses (:func:`train_validation_split`).

Every dataset is two :class:`ArrayDataset` objects: the *pool* (from which each cell's labelled pool
N is drawn with :func:`stratified_subset`) and the fixed *test* set (the official test split, or a
stratified 20% holdout drawn with the fixed seed :data:`HOLDOUT_SEED`, never a cell seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpobench_elbo.errors import UserError

HOLDOUT_SEED = 20_240_611
"""Seed of the fixed test holdout of datasets without an official test split (never a cell seed)."""

HOLDOUT_FRACTION = 0.2
"""Fraction of a dataset without an official test split that is held out as its test set."""

VALIDATION_FRACTION = 0.2
"""Fraction of a cell's labelled pool that methods selecting on validation hold out."""


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


def train_validation_split(y: np.ndarray, data: str, split_seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The one split of a trial's labelled pool: ``(train_idx, val_idx)``.

    ``data="split"``: the stratified 80/20 split drawn from ``split_seed`` (the cell's ``split``
    seed, so every trial and every method of a seed sees the same split); ``data="all"``: every
    example trains and there is no validation part (``val_idx`` is None).
    """
    if data != "split":
        return np.arange(len(y), dtype=np.int64), None
    return stratified_split(y, VALIDATION_FRACTION, np.random.default_rng(split_seed))


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


