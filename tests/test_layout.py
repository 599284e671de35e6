"""The layering of the package, read from every module's imports (AST, including importlib strings).

Layers (docs/architecture.md): ``contracts``/``space``/``errors`` -> ``engine`` -> ``methods``,
``tasks`` (never each other) -> ``registry`` -> ``suite`` -> ``executors`` -> ``api`` -> ``cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpobench_elbo"


def imported_names(path: Path) -> list[tuple[str, bool]]:
    """(module name, imported at run time) for every import and every string handed to importlib."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_checking_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                type_checking_lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        runtime = getattr(node, "lineno", 0) not in type_checking_lines
        if isinstance(node, ast.Import):
            found += [(alias.name, runtime) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, runtime))
            found += [(f"{node.module}.{alias.name}", runtime) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("hpobench_elbo"):
            found.append((node.value.split(":")[0], True))  # importlib / registry strings
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py")) if folder else [PACKAGE / "contracts.py"]


def violations(folder: str, forbidden: tuple[str, ...], runtime_only: bool = False) -> list[str]:
    out = []
    for path in modules_under(folder):
        for name, runtime in imported_names(path):
            if runtime_only and not runtime:
                continue
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(PACKAGE.parent)} names {name}")
    return out


def test_engine_names_no_method_task_or_registry() -> None:
    assert not violations("engine", ("hpobench_elbo.methods", "hpobench_elbo.tasks", "hpobench_elbo.registry",
                                     "hpobench_elbo.suite", "hpobench_elbo.api"))


def test_methods_and_tasks_never_import_each_other() -> None:
    assert not violations("methods", ("hpobench_elbo.tasks", "hpobench_elbo.registry"))
    assert not violations("tasks", ("hpobench_elbo.methods", "hpobench_elbo.registry"))


def test_contracts_import_nothing_from_the_engine_at_run_time() -> None:
    assert not violations("", ("hpobench_elbo.engine", "hpobench_elbo.methods", "hpobench_elbo.tasks"),
                          runtime_only=True)


def test_the_check_sees_imports_and_importlib_strings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import importlib\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from hpobench_elbo.engine.budget import BudgetMeter\n"
                      "importlib.import_module('hpobench_elbo.methods.random')\n")
    names = dict(imported_names(module))
    assert names["hpobench_elbo.engine.budget"] is False
    assert names["hpobench_elbo.methods.random"] is True


def test_a_method_with_its_own_step_is_one_folder() -> None:
    assert (PACKAGE / "methods" / "elbo" / "tuner.py").exists()
    assert not (PACKAGE / "tasks" / "tuners").exists()
