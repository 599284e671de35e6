"""Learned ELBo (METHODS.md Part A): the data-emphasized ELBo and the plain ELBo, adapter and tuner.

``method.py`` is the HPO method (the learning-rate sweep and the selection by final training
objective); ``tuner.py`` is the training step that learns the prior variances.
"""

from hpobench_elbo.methods.elbo.method import DataEmphasizedELBo, PlainELBo, PrunedDataEmphasizedELBo
from hpobench_elbo.methods.elbo.tuner import ELBoOptions, ELBoTuner

REGISTER = {DataEmphasizedELBo.name: DataEmphasizedELBo, PlainELBo.name: PlainELBo,
            PrunedDataEmphasizedELBo.name: PrunedDataEmphasizedELBo}
TUNERS = {"elbo": ELBoTuner}

__all__ = ["DataEmphasizedELBo", "ELBoOptions", "ELBoTuner", "PlainELBo", "PrunedDataEmphasizedELBo", "REGISTER",
           "TUNERS"]
