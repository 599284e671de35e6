"""What every method shares on the task side: the ``Trainer``, the recipe's optimizer, the seeded
minibatch order, and the plain SGD tuner that trains search methods' configurations."""

from hpobench_elbo.tasks.training.recipe import RecipeOptimizer, cosine_lr, scheduled_lr
from hpobench_elbo.tasks.training.sampling import minibatch_indices, seeded
from hpobench_elbo.tasks.training.sgd import SGDTuner, l2sp_penalty
from hpobench_elbo.tasks.training.trainer import (
    Objective,
    TrainData,
    Trainer,
    cross_entropy_objective,
    evaluate,
    freeze_model_hyperparameters,
    gaussian_nll,
    gaussian_objective,
    mse_objective,
)

TUNERS = {"sgd": SGDTuner}

__all__ = [
    "Objective", "RecipeOptimizer", "SGDTuner", "TUNERS", "TrainData", "Trainer", "cosine_lr", "cross_entropy_objective",
    "evaluate", "freeze_model_hyperparameters", "gaussian_nll", "gaussian_objective", "l2sp_penalty",
    "minibatch_indices", "mse_objective", "scheduled_lr", "seeded",
]
