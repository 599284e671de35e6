"""The smoke suite's ledgers equal the committed golden ledgers on every documented field.

A change that alters results on purpose updates ``tests/golden/smoke.json`` in the same commit
(``python tests/golden_ledgers.py``) and says why in its message. Both runs are made under portable
numerics (see ``golden_ledgers``), so the comparison does not depend on the processor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from golden_ledgers import GOLDEN, differences, normalised_ledgers, portable_numerics_env


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


def test_portable_numerics_put_torch_and_numpy_on_their_baseline_kernels() -> None:
    names = "__cpu_features__ as f, __cpu_dispatch__ as d"
    probe = ("import torch\n"
             f"try:\n from numpy._core._multiarray_umath import {names}\n"
             f"except ImportError:\n from numpy.core._multiarray_umath import {names}\n"
             "print(torch.backends.cpu.get_cpu_capability(), sorted(x for x in d if f.get(x)))")
    portable = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **portable_numerics_env()}, check=True).stdout.split(maxsplit=1)
    assert portable == ["DEFAULT", "[]\n"]
