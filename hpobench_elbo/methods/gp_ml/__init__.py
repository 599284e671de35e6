"""The exact-GP reference (``gp-ml``): type-II maximum likelihood on GPyTorch, adapter and tuner.

``method.py`` is the HPO method (one trial per learning rate on all N, selection by the marginal
likelihood); ``tuner.py`` fits the exact GP inside the task's Trainer.
"""

from hpobench_elbo.methods.gp_ml.method import ExactGPMarginalLikelihood
from hpobench_elbo.methods.gp_ml.tuner import ExactGPTuner

REGISTER = {ExactGPMarginalLikelihood.name: ExactGPMarginalLikelihood}
TUNERS = {"gp-ml": ExactGPTuner}

__all__ = ["REGISTER", "TUNERS", "ExactGPMarginalLikelihood", "ExactGPTuner"]
