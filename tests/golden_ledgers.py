"""Golden ledgers: the smoke suite's ledgers under the counting clock, documented fields only.

``python tests/golden_ledgers.py RESULTS_DIR`` rewrites ``tests/golden/smoke.json`` from a finished
run of ``suites/smoke.yaml``; ``test_golden.py`` compares a fresh run against it. Whenever a change
alters results on purpose, the golden file changes in the same commit and the message says why.

Left out (not results): timestamps, package versions, git SHA, the machine's load and the device
name; floats are compared to a relative tolerance of 1e-6 (CPU kernels may round differently on
another processor).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from hpobench_elbo.engine.ledger import UNDOCUMENTED_FIELDS as UNDOCUMENTED
from hpobench_elbo.engine.ledger import documented_fields as documented

GOLDEN = Path(__file__).resolve().parent / "golden" / "smoke.json"


def normalised_ledgers(results_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Cell id -> its records (header, trials, end) with undocumented fields removed."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.stem] = [documented(r) for r in lines]
    return out


def differences(expected: Any, actual: Any, where: str = "", rel: float = 1e-6) -> list[str]:
    """Paths at which ``actual`` differs from ``expected`` (floats within ``rel``)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{where}.{k}: missing" for k in expected if k not in actual]
        found += [f"{where}.{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                found += differences(expected[k], actual[k], f"{where}.{k}", rel)
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: length {len(actual)} != {len(expected)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]", rel)]
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) \
                and not isinstance(expected, bool) and not isinstance(actual, bool) \
                and math.isclose(expected, actual, rel_tol=rel, abs_tol=1e-12):
            return []
        return [f"{where}: {actual!r} != {expected!r}"]
    return [] if expected == actual else [f"{where}: {actual!r} != {expected!r}"]


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(normalised_ledgers(Path(sys.argv[1])), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
