"""Optuna's CMA-ES, GP and quasi-random samplers and a generic Optuna-sampler method: ``cmaes``,
``gp-bo``, ``qmc``, ``optuna`` (``method.py``). See docs/methods/samplers.md.
"""

from hpobench_elbo.methods.samplers.method import REGISTER

__all__ = ["REGISTER"]
