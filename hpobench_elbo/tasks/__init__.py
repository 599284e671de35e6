"""Tasks: one file per task family; the staged-task base and what a task author uses.

``SupervisedTask`` (hooks, never ``run``), ``Scale``, ``Trial``, ``Prepared`` come from ``base.py``;
data from ``tasks.data``; the Trainer, objectives and ``seeded`` from ``tasks.training``.
"""

from hpobench_elbo.tasks.base import Prepared, Scale, SupervisedTask, Trial
from hpobench_elbo.tasks.data import ArrayDataset, DataSplits, load_dataset
from hpobench_elbo.tasks.training import TrainData, cross_entropy_objective, mse_objective, seeded

__all__ = ["ArrayDataset", "DataSplits", "Prepared", "Scale", "SupervisedTask", "TrainData", "Trial",
           "cross_entropy_objective", "load_dataset", "mse_objective", "seeded"]
