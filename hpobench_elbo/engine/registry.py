"""Registries: names -> factories for methods, tuners and tasks, open to the outside.

Built-ins are found by scanning a package: every module may define ``REGISTER = {name: factory}``,
so a new method or task is one file. Users add their own without editing the package through the
Python entry-point group (``hpobench_elbo.methods``, ``hpobench_elbo.tasks``,
``hpobench_elbo.tuners``) or a ``module:Name`` reference in a suite.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any

from hpobench_elbo.errors import RegistryError


def resolve_reference(ref: str) -> Any:
    """Import ``package.module:Name``."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"cannot import {ref!r}: {exc}") from None
    return obj


class Registry:
    """Factories of one kind, keyed by name."""

    def __init__(self, kind: str, package: str, group: str) -> None:
        self.kind = kind
        self.package = package
        self.group = group

    @cached_property
    def _table(self) -> dict[str, Callable[..., Any]]:
        table: dict[str, Callable[..., Any]] = {}
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{self.package}.{info.name}")
            table.update(getattr(module, "REGISTER", {}))
        for ep in entry_points(group=self.group):
            table.setdefault(ep.name, ep)  # loaded on first use
        return table

    def names(self) -> list[str]:
        return sorted(self._table)

    def get(self, name: str) -> Callable[..., Any]:
        if ":" in name:
            return resolve_reference(name)
        try:
            factory = self._table[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None
        if hasattr(factory, "load") and hasattr(factory, "group"):  # an entry point
            factory = factory.load()
        return factory

    def check_options(self, name: str, *positional: Any, **options: Any) -> None:
        """Raise RegistryError if ``options`` are not accepted by the factory's signature."""
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(*positional, **options)
        except TypeError as exc:
            raise RegistryError(f"{self.kind} {name!r}: {exc}") from None

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        self.check_options(name, *args, **options)
        return self.get(name)(*args, **options)


def check_contract(obj: Any, protocol: type) -> None:
    """Raise RegistryError naming the members ``obj`` lacks to meet ``protocol``."""
    members = [m for m in getattr(protocol, "__protocol_attrs__", ()) if not m.startswith("_")]
    missing = [m for m in sorted(members) if not hasattr(obj, m)]
    if missing:
        raise RegistryError(f"{obj!r} does not meet the {protocol.__name__} contract: missing {', '.join(missing)}")


METHODS = Registry("method", "hpobench_elbo.methods", "hpobench_elbo.methods")
TASKS = Registry("task", "hpobench_elbo.tasks", "hpobench_elbo.tasks")
TUNERS = Registry("tuner", "hpobench_elbo.tasks.tuners", "hpobench_elbo.tuners")
