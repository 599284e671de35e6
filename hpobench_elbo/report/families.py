"""Method families for the report's small multiples, from where each method is registered.

A family is a folder of ``hpobench_elbo.methods`` (``elbo``, ``implicit``, ``bo``, ``gp-ml`` for
``gp_ml``, ...: the layout rule "a family is one folder"); a method in a single file of that package
(grid, random, tpe, the successive-halving methods, ...) belongs to ``search``; one from outside the
package (an entry point or ``module:Name``) to ``plug-in``, and one the registry cannot find to
``unknown``. Grid and random search are the references drawn in every family's panel
(``REFERENCE_METHODS``).
"""

from __future__ import annotations

SEARCH_FAMILY = "search"  # the methods of single files of hpobench_elbo.methods
REFERENCE_METHODS = ("grid", "random")  # registry names drawn in every family panel
PACKAGE = "hpobench_elbo.methods."


def method_family(name: str) -> str:
    """The family of the method registered as ``name`` (see the module docstring)."""
    from hpobench_elbo.errors import RegistryError
    from hpobench_elbo.registry import METHODS

    try:
        factory = METHODS.get(name)
    except (RegistryError, ImportError):
        return "unknown"
    module = str(getattr(factory, "__module__", "") or "")
    if not module.startswith(PACKAGE):
        return "plug-in"
    parts = module[len(PACKAGE):].split(".")
    return parts[0].replace("_", "-") if len(parts) > 1 else SEARCH_FAMILY  # gp_ml/ reads as gp-ml


def families(method_names: dict[str, str]) -> dict[str, str]:
    """Label -> family, for ``method_names`` (label -> registry name, as in ``ReportData.cells``)."""
    return {label: method_family(name) for label, name in method_names.items()}
