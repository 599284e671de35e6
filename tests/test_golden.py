"""The smoke suite's ledgers equal the committed golden ledgers on every documented field.

A change that alters results on purpose updates ``tests/golden/smoke.json`` in the same commit
(``python tests/golden_ledgers.py RESULTS_DIR`` after ``hpobench-elbo run suites/smoke.yaml --out
RESULTS_DIR``) and says why in its message.
"""

from __future__ import annotations

import json
from pathlib import Path

from golden_ledgers import GOLDEN, differences, normalised_ledgers


def test_smoke_ledgers_equal_the_golden_ledgers(smoke_run: Path) -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = normalised_ledgers(smoke_run)
    found = differences(expected, actual)
    assert not found, f"{len(found)} differences from {GOLDEN.name}, first: {found[:5]}"


def test_the_comparison_can_fail(smoke_run: Path) -> None:
    actual = normalised_ledgers(smoke_run)
    cell = next(iter(actual))
    changed = json.loads(json.dumps(actual))
    changed[cell][1]["spent"] = changed[cell][1]["spent"] * (1 + 1e-4)
    assert differences(actual, changed)
