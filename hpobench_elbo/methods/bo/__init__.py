"""Cost-aware Bayesian optimisation for multi-stage pipelines: EEIPU and its baselines.

``eeipu`` (memoisation-aware, cost-aware EI with cost cooling), ``ei``, ``carbo`` and ``eips``;
METHODS.md Part C, docs/methods/bo.md. BoTorch is imported only when a method first fits a GP.
"""

from hpobench_elbo.methods.bo.method import CArBO, EEIPU, EIPS, ExpectedImprovementBO

REGISTER = {cls.name: cls for cls in (EEIPU, ExpectedImprovementBO, CArBO, EIPS)}

__all__ = ["CArBO", "EEIPU", "EIPS", "ExpectedImprovementBO", "REGISTER"]
