"""Suites: a YAML file -> a validated ``Suite`` -> its cells.

A suite is tasks x methods x seeds under one budget per cell and one clock. Validation happens on
load: an unknown key, a wrong type, an unknown task, scale or method, a budget that is not
positive or a hyperparameter outside its space raises ``SuiteError`` with one line naming the file
and the key path (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpobench_elbo.contracts import Cell
from hpobench_elbo.registry import METHODS, TASKS
from hpobench_elbo.errors import SuiteError, UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def display(self) -> str:
        return self.label or self.name


class TaskEntry(_Strict):
    """A task of the suite; ``methods`` (optional) replaces the suite's method list for this task."""

    name: str
    scale: str = "smoke"
    options: dict[str, Any] = Field(default_factory=dict)
    budget: float | None = Field(default=None, gt=0)
    methods: list[MethodEntry] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class CountingOptions(_Strict):
    per_example: float = Field(default=1e-3, gt=0)
    per_event: float = Field(default=1e-3, ge=0)
    cache_read: float = Field(default=1e-2, ge=0)


class Suite(_Strict):
    """A validated suite file."""

    name: str
    budget: float = Field(gt=0)
    clock: Literal["device", "counting"] = "device"
    clock_options: CountingOptions = Field(default_factory=CountingOptions)
    executor: Literal["local", "ray"] = "local"
    output: str | None = None
    refit: bool = True
    cache: bool = True
    threads: int = Field(default=1, ge=1)
    seeds: list[int] = Field(min_length=1)
    tasks: list[TaskEntry] = Field(min_length=1)
    methods: list[MethodEntry] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="after")
    def _every_task_has_methods(self) -> Suite:
        for i, task in enumerate(self.tasks):
            if task.methods is None and not self.methods:
                raise ValueError(f"tasks[{i}] ({task.name}) has no methods: list them under the task or at the top")
        return self

    def pairs(self) -> list[tuple[int, TaskEntry, int, MethodEntry]]:
        """(task index, task, method index, method) for every pair the suite runs."""
        return [(i, task, j, method) for i, task in enumerate(self.tasks)
                for j, method in enumerate(task.methods if task.methods is not None else self.methods)]

    @property
    def suite_hash(self) -> str:
        """Hash of everything that defines the results (not where they go or how cells are spread)."""
        body = self.model_dump(exclude={"output", "executor", "description"})
        for task in body["tasks"]:  # a key added later: absent from the hash when unused
            if task.get("methods") is None:
                task.pop("methods", None)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def cells(self) -> list[Cell]:
        cells = []
        for _, task, _, method in self.pairs():
            for seed in self.seeds:
                definition = {
                    "task": task.name, "scale": task.scale, "task_options": task.options,
                    "method": method.name, "method_options": method.options, "label": method.display,
                    "seed": seed, "budget": task.budget or self.budget, "clock": self.clock,
                    "clock_options": self.clock_options.model_dump() if self.clock == "counting" else {},
                    "refit": self.refit, "cache": self.cache,
                }
                digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:8]
                safe = lambda s: "".join(c if c.isalnum() or c in "-_" else "_" for c in s)  # noqa: E731
                cells.append(Cell(
                    cell_id=f"{safe(task.name)}.{task.scale}--{safe(method.display)}--s{seed}--{digest}",
                    suite=self.name, task=task.name, scale=task.scale, task_options=dict(task.options),
                    method=method.name, method_options=dict(method.options), seed=seed,
                    budget=float(task.budget or self.budget), clock=self.clock,
                    clock_options=definition["clock_options"], refit=self.refit, cache=self.cache,
                    threads=self.threads, label=method.display,
                ))
        return cells


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before", "function-after") or str(part).startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], where: str) -> dict[str, Any]:
    """Apply ``--set key.path=value`` overrides (values parsed as YAML) to the raw suite mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SuiteError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SuiteError(f"{where}: --set {item!r}: invalid YAML value") from None
        node: Any = raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SuiteError(f"{where}: --set {key}: no list item {part!r}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise SuiteError(f"{where}: --set {key}: {'.'.join(parts[:i])} is not a mapping or list")
    return raw


def _method_place(suite: Suite, i: int, task: TaskEntry, j: int) -> str:
    return f"tasks[{i}].methods[{j}]" if task.methods is not None else f"methods[{j}]"


def _check_registries(suite: Suite, where: str) -> None:
    """Names, scales, options and method-task pairs that only the registries can judge."""
    infos: dict[int, Any] = {}
    for i, task in enumerate(suite.tasks):
        try:
            task_cls = TASKS.get(task.name)
        except UserError as exc:
            raise SuiteError(f"{where}: tasks[{i}].name: {exc}") from None
        scales = getattr(task_cls, "SCALES", None)
        if scales is not None and task.scale not in scales:
            raise SuiteError(f"{where}: tasks[{i}].scale: unknown scale {task.scale!r} for task "
                             f"{task.name!r}; known: {', '.join(scales)}")
        try:
            TASKS.check_options(task.name, scale=task.scale, device="cpu", **task.options)
            built = TASKS.create(task.name, scale=task.scale, device="cpu", **task.options)  # cheap: no data loads
            infos[i] = built.static_info() if hasattr(built, "static_info") else built.info
        except UserError as exc:
            raise SuiteError(f"{where}: tasks[{i}].options: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"{where}: tasks[{i}].options: {exc}") from None
    for i, task, j, method in suite.pairs():
        place = _method_place(suite, i, task, j)
        try:
            factory = METHODS.get(method.name)
            METHODS.check_options(method.name, None, 0, **method.options)
        except UserError as exc:
            raise SuiteError(f"{where}: {place}: {exc}") from None
        reason = getattr(factory, "inapplicable_reason", None)
        why = reason(infos[i]) if reason is not None else None
        if why:
            raise SuiteError(f"{where}: {place}: method {method.name!r} does not apply to task {task.name!r}: {why}")
        validate_options = getattr(factory, "validate_options", None)
        if validate_options is not None:
            try:
                validate_options(infos[i].space, method.options)
            except UserError as exc:
                raise SuiteError(f"{where}: {place}.options: {exc} (task {task.name!r})") from None


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    """Read, override and validate a suite file; raise SuiteError (one line) on bad input."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{where}: cannot read suite file ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{where}{line}: invalid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a suite must be a YAML mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides, where)
    raw.setdefault("name", path.stem)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SuiteError(f"{where}: {_loc(err['loc'])}: {err['msg']}") from None
    _check_registries(suite, where)
    return suite


def suite_from_mapping(raw: Mapping[str, Any], where: str = "<suite>") -> Suite:
    """Validate an in-memory suite (used by the API and tests)."""
    try:
        suite = Suite.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SuiteError(f"{where}: {_loc(err['loc'])}: {err['msg']}") from None
    _check_registries(suite, where)
    return suite
