"""Suites: a YAML file -> a validated ``Suite`` -> its cells.

A suite is tasks x methods x seeds under one budget per cell and one clock. Validation happens on
load: an unknown key, a wrong type, an unknown task, scale or method, a budget that is not
positive or a hyperparameter outside its space raises ``SuiteError`` with one line naming the file
and the key path (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from hpobench_elbo.contracts import REQUIRED_MEMBERS, Cell, Method, Task
from hpobench_elbo.registry import METHODS, TASKS
from hpobench_elbo.errors import SuiteError, UserError


MAX_BUDGET = 1e7
"""The largest budget a cell may have (device-seconds: about 2,800 device-hours; cost units): far
above every shipped suite and benchmark, low enough that an absurd value is caught."""

PLAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""A suite name is a plain file name: it names the default results directory."""

MAX_TRIALS_PER_CELL = 10_000
"""The default cap on the trials of one cell (suite key ``max_trials_per_cell``): a cell whose
trials cost next to nothing (counting-clock prices near 0) still ends, with stop reason ``trial
cap``. Every shipped suite stays far below it (the smoke suite's largest cell runs about 40)."""

LATER_KEYS = {"max_failures": 5, "trial_timeout": None, "jobs": 1, "address": None, "max_attempts": 3,
              "num_gpus": 0.0, "oversubscribe": False, "cache_access": "all",
              "max_trials_per_cell": MAX_TRIALS_PER_CELL}
"""Top-level keys added after the first suites, with their defaults: left out of the suite hash
while at their default, so the hash of an older suite does not change."""

Budget = Annotated[StrictFloat, Field(gt=0, le=MAX_BUDGET, allow_inf_nan=False)]
CacheAccessKey = Literal["all", "memoization-aware"]
"""``cache_access``: who may read the stage cache (``contracts.Cell.cache_access``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodEntry(_Strict):
    name: StrictStr
    options: dict[str, Any] = Field(default_factory=dict)
    label: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def display(self) -> str:
        return self.label or self.name


def _distinct(seeds: list[int]) -> list[int]:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed {repeated[0]} is listed twice")
    return seeds


class TaskEntry(_Strict):
    """A task of the suite; ``methods`` and ``seeds`` (optional) replace the suite's method list and
    seeds for this task (a costly task may run fewer seeds), ``cache_access`` the suite's (so one
    suite can hold a task under both cache conditions)."""

    name: StrictStr
    scale: StrictStr = "smoke"
    options: dict[str, Any] = Field(default_factory=dict)
    budget: Budget | None = None
    methods: list[MethodEntry] | None = Field(default=None, min_length=1)
    seeds: list[Annotated[StrictInt, Field(ge=0, lt=2**32)]] | None = Field(default=None, min_length=1)
    cache_access: CacheAccessKey | None = None

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return None if seeds is None else _distinct(seeds)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class CountingOptions(_Strict):
    per_example: StrictFloat = Field(default=1e-3, gt=0, allow_inf_nan=False)
    per_event: StrictFloat = Field(default=1e-3, ge=0, allow_inf_nan=False)
    cache_read: StrictFloat = Field(default=1e-2, ge=0, allow_inf_nan=False)


class Suite(_Strict):
    """A validated suite file.

    ``max_failures``: a cell stops (reason ``failing``) after this many consecutive failed trials.
    ``trial_timeout``: seconds after which a trial is stopped and recorded as failed (``timeout``);
    None: the engine's default (a generous multiple of the cell's longest trial, never below a
    floor, see ``engine/loop.py``). ``jobs``: cells at once with the local executor; ``address``,
    ``max_attempts``, ``num_gpus`` (per cell): the Ray executor (``threads`` is the CPUs per cell);
    ``oversubscribe``: allow more threads in all than cores under the device clock (recorded).
    ``cache_access``: ``all`` (default) opens the stage cache to every method; ``memoization-aware``
    only to methods that declare ``memoization_aware`` (EEIPU's paper's condition), the others then
    compute every stage at its true cost. Part of each cell's definition when not ``all``.
    ``max_trials_per_cell``: a cell stops asking (reason ``trial cap``) after this many trials
    (default :data:`MAX_TRIALS_PER_CELL`), so prices that cannot exhaust the budget still end.
    ``clock_options`` price the counting clock only: given with ``clock: device`` (other than
    the defaults, which a stored ``suite.yaml`` carries) they are refused; so is an ``address``
    without ``executor: ray``.
    """

    name: StrictStr = Field(pattern=PLAIN_NAME)
    budget: Budget
    clock: Literal["device", "counting"] = "device"
    clock_options: CountingOptions = Field(default_factory=CountingOptions)
    executor: Literal["local", "ray"] = "local"
    output: StrictStr | None = None
    refit: StrictBool = True
    cache: StrictBool = True
    threads: StrictInt = Field(default=1, ge=1, le=1024)
    seeds: list[Annotated[StrictInt, Field(ge=0, lt=2**32)]] = Field(min_length=1)
    tasks: list[TaskEntry] = Field(min_length=1)
    methods: list[MethodEntry] = Field(default_factory=list)
    description: StrictStr = ""
    max_failures: StrictInt = Field(default=5, ge=1)
    trial_timeout: StrictFloat | None = Field(default=None, gt=0, allow_inf_nan=False)
    jobs: StrictInt = Field(default=1, ge=1)
    address: StrictStr | None = None
    max_attempts: StrictInt = Field(default=3, ge=1)
    num_gpus: StrictFloat = Field(default=0.0, ge=0)
    oversubscribe: StrictBool = False
    cache_access: CacheAccessKey = "all"
    max_trials_per_cell: StrictInt = Field(default=MAX_TRIALS_PER_CELL, ge=1, le=10**7)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return _distinct(seeds)

    @model_validator(mode="after")
    def _every_task_has_methods(self) -> Suite:
        for i, task in enumerate(self.tasks):
            if task.methods is None and not self.methods:
                raise ValueError(f"tasks[{i}] ({task.name}) has no methods: list them under the task or at the top")
        return self

    @model_validator(mode="after")
    def _keys_that_apply(self) -> Suite:
        if self.clock == "device" and self.clock_options != CountingOptions():
            raise ValueError("clock_options: they price the counting clock; this suite has clock: device "
                             "(remove clock_options or use clock: counting)")
        if self.address is not None and self.executor != "ray":
            raise ValueError(f"address: {self.address!r} is for the Ray executor; this run's executor is "
                             f"{self.executor} (add --executor ray, or drop --address)")
        return self

    def pairs(self) -> list[tuple[int, TaskEntry, int, MethodEntry]]:
        """(task index, task, method index, method) for every pair the suite runs."""
        return [(i, task, j, method) for i, task in enumerate(self.tasks)
                for j, method in enumerate(task.methods if task.methods is not None else self.methods)]

    @property
    def suite_hash(self) -> str:
        """Hash of everything that defines the results (not where they go or how cells are spread)."""
        body = self.model_dump(exclude={"output", "executor", "description", "jobs", "address", "max_attempts",
                                        "num_gpus", "oversubscribe"})
        for key, default in LATER_KEYS.items():
            if key in body and body[key] == default:
                del body[key]
        for task in body["tasks"]:  # a key added later: absent from the hash when unused
            for key in ("methods", "seeds", "cache_access"):
                if task.get(key) is None:
                    task.pop(key, None)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def cells(self) -> list[Cell]:
        cells = []
        for _, task, _, method in self.pairs():
            access = task.cache_access or self.cache_access
            for seed in task.seeds if task.seeds is not None else self.seeds:
                definition = {
                    "task": task.name, "scale": task.scale, "task_options": task.options,
                    "method": method.name, "method_options": method.options, "label": method.display,
                    "seed": seed, "budget": task.budget or self.budget, "clock": self.clock,
                    "clock_options": self.clock_options.model_dump() if self.clock == "counting" else {},
                    "refit": self.refit, "cache": self.cache,
                    **({"cache_access": access} if access != "all" else {}),  # the default keeps old ids
                }
                digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:8]
                safe = lambda s: "".join(c if c.isalnum() or c in "-_" else "_" for c in s)  # noqa: E731
                cells.append(Cell(
                    cell_id=f"{safe(task.name)}.{task.scale}--{safe(method.display)}--s{seed}--{digest}",
                    suite=self.name, task=task.name, scale=task.scale, task_options=dict(task.options),
                    method=method.name, method_options=dict(method.options), seed=seed,
                    budget=float(task.budget or self.budget), clock=self.clock,
                    clock_options=definition["clock_options"], refit=self.refit, cache=self.cache,
                    threads=self.threads, label=method.display, max_failures=self.max_failures,
                    trial_timeout=self.trial_timeout, cache_access=access,
                    max_trials=self.max_trials_per_cell,
                ))
        return cells

    def cell_places(self) -> list[tuple[Cell, str]]:
        """Every cell with the place in the suite that defines it (``tasks[0] x methods[1], seed 0``),
        in :meth:`cells` order."""
        places = []
        for i, task, j, method in self.pairs():
            pair = f"tasks[{i}].methods[{j}]" if task.methods is not None else f"tasks[{i}] x methods[{j}]"
            for seed in task.seeds if task.seeds is not None else self.seeds:
                places.append(f"{pair} ({task.name} x {method.display}), seed {seed}")
        return list(zip(self.cells(), places))


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


def _validation_line(exc: ValidationError) -> str:
    """The first validation error as ``key.path: message`` (a whole-suite check names its keys itself)."""
    err = exc.errors()[0]
    msg = str(err["msg"])
    if not err["loc"] and err.get("type") == "value_error":
        return msg.removeprefix("Value error, ")
    return f"{_loc(err['loc'])}: {msg}"


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_factory(factory: Any, kind: str, protocol: type, name: str) -> None:
    """A ``module:Name`` reference must name a class that meets its contract (checked on the class)."""
    if ":" not in name:
        return
    if not isinstance(factory, type):
        raise UserError(f"{name!r} is not a {kind} class")
    instance_only = {"info"}  # a task's info is built by its constructor
    missing = [m for m in REQUIRED_MEMBERS[protocol.__name__] if m not in instance_only and not hasattr(factory, m)]
    if missing:
        raise UserError(f"{name!r} is not a {kind}: it lacks {', '.join(repr(m) for m in missing)}")


def _check_option_types(factory: Any, options: Mapping[str, Any], skip: int) -> None:
    """Every option's value against the type its factory declares (strict: a boolean is never a
    number, a number never a string); parameters without a resolvable annotation are not checked."""
    params = list(inspect.signature(factory).parameters.values())[skip:]
    module = sys.modules.get(getattr(factory, "__module__", ""), None)
    namespace = {**vars(typing), **(vars(module) if module else {})}
    for param in params:
        if param.name not in options or param.annotation is inspect.Parameter.empty:
            continue
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the factory's own annotation text
            except Exception:  # noqa: BLE001 - an annotation this check cannot resolve is not checked
                continue
        try:
            TypeAdapter(annotation).validate_python(options[param.name], strict=True)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"option {param.name}{'.' + where if where else ''}: {err['msg']} "
                            f"(got {options[param.name]!r})") from None
        except Exception:  # noqa: BLE001 - a type pydantic cannot check is not checked
            continue


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
            _check_factory(task_cls, "task", Task, task.name)
            TASKS.check_options(task.name, scale=task.scale, device="cpu", **task.options)
            _check_option_types(task_cls, task.options, skip=0)
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
            _check_factory(factory, "method", Method, method.name)
            METHODS.check_options(method.name, None, 0, **method.options)
        except UserError as exc:
            raise SuiteError(f"{where}: {place}: {exc}") from None
        try:
            _check_option_types(factory, method.options, skip=2)
        except UserError as exc:
            raise SuiteError(f"{where}: {place}.options: {exc}") from None
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


def _check_distinct_cells(suite: Suite, where: str) -> None:
    """Refuse a suite that defines one cell twice (``methods: [random, random]``, ``random`` beside
    ``{name: random, label: random}``, a task listed twice): a cell is its definition, so both
    would be counted and only one run. The line names both places."""
    first: dict[str, str] = {}
    for cell, place in suite.cell_places():
        if cell.cell_id in first:
            raise SuiteError(f"{where}: {place} is the same cell as {first[cell.cell_id]}: remove one, or give "
                             "one a different label or options")
        first[cell.cell_id] = place


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    """Read, override and validate a suite file; raise SuiteError (one line) on bad input."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{where}: cannot read suite file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
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
        raise SuiteError(f"{where}: {_validation_line(exc)}") from None
    _check_distinct_cells(suite, where)
    _check_registries(suite, where)
    return suite


def suite_from_mapping(raw: Mapping[str, Any], where: str = "<suite>") -> Suite:
    """Validate an in-memory suite (used by the API and tests)."""
    try:
        suite = Suite.model_validate(dict(raw))
    except ValidationError as exc:
        raise SuiteError(f"{where}: {_validation_line(exc)}") from None
    _check_distinct_cells(suite, where)
    _check_registries(suite, where)
    return suite
