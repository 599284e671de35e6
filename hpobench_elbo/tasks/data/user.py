"""The user's own data: ``image-folder:/path``, ``text-csv:/path``, ``tabular-csv:/path``.

``image-folder``: one subfolder per class, or ``train/`` and ``test/`` folders that each hold one
subfolder per class (used as the official split); ``text-csv``: columns ``text`` and ``label``;
``tabular-csv``: numeric feature columns and a ``target`` column. Without an official split the
test set is the fixed stratified holdout of ``splits.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpobench_elbo.errors import UserError
from hpobench_elbo.tasks.data.packages import _import, _require
from hpobench_elbo.tasks.data.splits import ArrayDataset, DataSplits, _check, _classification, _encode_labels, _holdout

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})




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

