"""Registries: names -> factories for methods, tuners and tasks, open to the outside.

Built-ins are found by scanning packages: every module or sub-package of ``hpobench_elbo.methods``
may define ``REGISTER = {name: method factory}`` and ``TUNERS = {name: tuner factory}`` (a method
family is one folder holding its adapter and its tuner); every module of ``hpobench_elbo.tasks``
``REGISTER = {name: task factory}``; the shared plain SGD tuner lives in
``hpobench_elbo.tasks.training``. Users add their own without editing the package through the
Python entry-point groups ``hpobench_elbo.methods``, ``hpobench_elbo.tasks`` and
``hpobench_elbo.tuners``, or a ``module:Name`` reference in a suite.

This layer sits above ``methods/`` and ``tasks/``; the engine never imports it: executors build a
cell's task and method here (:func:`build_cell`) and hand the objects to the loop.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any

from hpobench_elbo.contracts import OPTIONAL_MEMBERS, REQUIRED_MEMBERS, Cell, Method, Task, Tuner, TunerSpec
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
    """Factories of one kind, keyed by name, collected from ``attr`` dicts in ``packages``."""

    def __init__(self, kind: str, packages: tuple[str, ...], group: str, attr: str = "REGISTER") -> None:
        self.kind = kind
        self.packages = packages
        self.group = group
        self.attr = attr

    @cached_property
    def _table(self) -> dict[str, Callable[..., Any]]:
        table: dict[str, Callable[..., Any]] = {}
        for package in self.packages:
            pkg = importlib.import_module(package)
            table.update(getattr(pkg, self.attr, {}))
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                module = importlib.import_module(f"{package}.{info.name}")
                table.update(getattr(module, self.attr, {}))
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


def _positional_arity(member: Any) -> tuple[int, int] | None:
    """(required, maximum) positional arguments of a callable, None when it cannot be inspected."""
    try:
        params = list(inspect.signature(member).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return (sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                    for p in params), 10**6)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return sum(p.default is p.empty for p in positional), len(positional)


def check_contract(obj: Any, protocol: type, what: str | None = None) -> None:
    """Raise RegistryError (one line) when ``obj`` does not meet ``protocol`` (Method, Tuner or Task).

    Every required member (``contracts.REQUIRED_MEMBERS``) must exist; every method declared by the
    protocol, required or optional and present, must accept the protocol's positional arguments.
    """
    label = what or type(obj).__name__
    kind = protocol.__name__
    for member in REQUIRED_MEMBERS[kind]:
        if not hasattr(obj, member):
            raise RegistryError(f"{label} does not meet the {kind} contract: missing {member!r}")
    expected_args: dict[str, int | None] = {**OPTIONAL_MEMBERS[kind]}
    for member in REQUIRED_MEMBERS[kind]:
        declared = getattr(protocol, member, None)
        arity = _positional_arity(declared) if callable(declared) and not isinstance(declared, type) else None
        expected_args[member] = None if arity is None else arity[1] - 1  # without self
    for member, expected in expected_args.items():
        if expected is None or not hasattr(obj, member):
            continue
        value = getattr(obj, member)
        have = _positional_arity(value) if callable(value) else (-1, -1)
        if have is not None and not have[0] <= expected <= have[1]:
            raise RegistryError(f"{label} does not meet the {kind} contract: {member!r} must accept "
                                f"{expected} positional argument(s)")


METHODS = Registry("method", ("hpobench_elbo.methods",), "hpobench_elbo.methods")
TASKS = Registry("task", ("hpobench_elbo.tasks",), "hpobench_elbo.tasks")
TUNERS = Registry("tuner", ("hpobench_elbo.tasks.training", "hpobench_elbo.methods"), "hpobench_elbo.tuners",
                  attr="TUNERS")


def build_tuner(spec: TunerSpec) -> Tuner:
    """The tuner a trial's ``TunerSpec`` names, checked against the Tuner contract."""
    tuner = TUNERS.create(spec.name, **dict(spec.options))
    check_contract(tuner, Tuner, f"tuner {spec.name!r}")
    return tuner


def build_task(name: str, scale: str, device: str, options: dict[str, Any]) -> Task:
    task = TASKS.create(name, scale=scale, device=device, **options)
    check_contract(task, Task, f"task {name!r}")
    return task


def build_cell(cell: Cell, device: str, sampler_seed: int) -> tuple[Task, Method]:
    """Build a cell's task and method where the cell runs (the executor's job, never the loop's)."""
    task = build_task(cell.task, cell.scale, device, dict(cell.task_options))
    method = METHODS.create(cell.method, task.info, sampler_seed, **cell.method_options)
    check_contract(method, Method, f"method {cell.method!r}")
    return task, method
