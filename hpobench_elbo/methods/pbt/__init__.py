"""Population-based training (Jaderberg et al. 2017): the ``pbt`` method (``method.py``) and its
tuner ``pbt`` (``tuner.py``), which trains, exploits and explores a population inside one trial.
See docs/methods/pbt.md.
"""

from hpobench_elbo.methods.pbt.method import REGISTER
from hpobench_elbo.methods.pbt.tuner import TUNERS

__all__ = ["REGISTER", "TUNERS"]
