"""Suites say which methods run on which task: a task may list its own methods, and a method that
does not apply to a task (it declares why) is refused when the suite loads, naming both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli

from hpobench_elbo.errors import SuiteError
from hpobench_elbo.suite import load_suite

BASE = {"name": "pairs", "clock": "counting", "budget": 5.0, "seeds": [0]}


def test_a_task_lists_its_own_methods(suite_file: Callable[..., Path]) -> None:
    suite = load_suite(suite_file({**BASE, "methods": ["random", "de-elbo"], "tasks": [
        {"name": "digits-mlp"}, {"name": "synthetic-pipeline", "methods": ["random", "grid"]}]}))
    pairs = {(c.task, c.method) for c in suite.cells()}
    assert pairs == {("digits-mlp", "random"), ("digits-mlp", "de-elbo"),
                     ("synthetic-pipeline", "random"), ("synthetic-pipeline", "grid")}


def test_an_inapplicable_pair_is_refused_at_load_naming_both(suite_file: Callable[..., Path]) -> None:
    path = suite_file({**BASE, "methods": ["random", "de-elbo"], "tasks": ["digits-mlp", "synthetic-pipeline"]})
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "methods[1]" in message and "'de-elbo'" in message and "'synthetic-pipeline'" in message
    assert "lr" in message and "\n" not in message
    done = run_cli(["run", str(path), "--dry-run"])
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "synthetic-pipeline" in done.stderr


def test_a_task_without_methods_is_refused(suite_file: Callable[..., Path]) -> None:
    with pytest.raises(SuiteError, match="has no methods"):
        load_suite(suite_file({**BASE, "tasks": ["digits-mlp"]}))


def test_a_task_may_run_its_own_seeds_without_changing_older_hashes(suite_file: Callable[..., Path]) -> None:
    plain = {**BASE, "seeds": [0, 1, 2], "methods": ["random"], "tasks": ["digits-mlp", "synthetic-pipeline"]}
    own = {**plain, "tasks": ["digits-mlp", {"name": "synthetic-pipeline", "seeds": [0, 1]}]}
    cells = load_suite(suite_file(own)).cells()
    assert sorted((c.task, c.seed) for c in cells) == sorted(
        [("digits-mlp", s) for s in (0, 1, 2)] + [("synthetic-pipeline", s) for s in (0, 1)])
    # absent per-task seeds leave the suite hash as it was before the key existed
    assert load_suite(suite_file(plain)).suite_hash != load_suite(suite_file(own)).suite_hash
    explicit_none = {**plain, "tasks": ["digits-mlp", {"name": "synthetic-pipeline", "seeds": None}]}
    assert load_suite(suite_file(explicit_none)).suite_hash == load_suite(suite_file(plain)).suite_hash
    with pytest.raises(SuiteError, match="listed twice"):
        load_suite(suite_file({**plain, "tasks": [{"name": "digits-mlp", "seeds": [1, 1]}]}))
