"""One-pass implicit-differentiation hypergradients (Clarke, Oldewage, Hernandez-Lobato, ICLR 2022).

Methods: ``implicit``, ``implicit-hdlr``, ``lorraine``, ``baydin``, ``diff-through-opt``,
``random-fixed`` and their ``-recipe`` variants under the task's recipe (``method.py``); tuners: ``implicit-neumann``, ``implicit-unrolled``,
``implicit-fixed`` (``tuner.py``); the equations in ``hypergrad.py``. See docs/methods/implicit.md.
"""

from hpobench_elbo.methods.implicit.method import REGISTER
from hpobench_elbo.methods.implicit.tuner import TUNERS

__all__ = ["REGISTER", "TUNERS"]
