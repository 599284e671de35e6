"""Golden ledgers: the smoke suite's ledgers under the counting clock, documented fields only.

``python tests/golden_ledgers.py`` runs ``suites/smoke.yaml`` under portable numerics (below) and
rewrites ``tests/golden/smoke.json``; ``test_golden.py`` compares a fresh run, made the same way,
against it. Whenever a change alters results on purpose, the golden file changes in the same commit
and the message says why.

Portable numerics: the libraries pick kernels by processor (torch's ATen kernels by SIMD width,
MKL's BLAS/LAPACK and OpenBLAS by CPU model, numpy's ufuncs by instruction set), and kernels of
different width round differently. A Gaussian-process fit or an acquisition maximised by L-BFGS
turns a last-bit difference into another suggested configuration, so without pinning the smoke
ledgers of every GP-driven method differ between an AVX2 and an AVX-512 machine. The run is made in
a fresh process whose environment fixes each library to its baseline code path before it loads
(``portable_numerics_env``); one thread, as the suite says. This holds on x86-64; elsewhere only
the torch and numpy pins apply.

Left out (not results): timestamps, package versions, git SHA, the machine's load and the device
name; floats are compared to a relative tolerance of 1e-6.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
from pathlib import Path
from typing import Any

from hpobench_elbo.engine.ledger import UNDOCUMENTED_FIELDS as UNDOCUMENTED
from hpobench_elbo.engine.ledger import documented_fields as documented

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "smoke.json"
SMOKE_SUITE = REPO / "suites" / "smoke.yaml"


def portable_numerics_env() -> dict[str, str]:
    """The variables that put each numerical library on its processor-independent path.

    Read by the libraries when they load, so they only act on a new process. torch: ATen's
    non-SIMD kernels (``ATEN_CPU_CAPABILITY``); MKL (torch's BLAS/LAPACK): conditional numerical
    reproducibility, compatible mode (``MKL_CBWR``); oneDNN: its SSE4.1 kernels; numpy: its
    baseline kernels (every dispatched instruction-set group disabled); OpenBLAS (numpy's and
    scipy's): the Nehalem kernels, on x86-64 only.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__ as numpy_dispatched
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__ as numpy_dispatched
    env = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
           "NPY_DISABLE_CPU_FEATURES": " ".join(numpy_dispatched)}
    if platform.machine().lower() in {"x86_64", "amd64"}:
        env["OPENBLAS_CORETYPE"] = "Nehalem"
    return env


def run_smoke_suite(out: Path, timeout: float = 600) -> Path:
    """Run ``suites/smoke.yaml`` into ``out`` with the CLI in a fresh process under portable numerics."""
    from conftest import run_cli

    done = run_cli(["run", str(SMOKE_SUITE), "--out", str(out), "--device", "cpu", "--jobs", "2", "--quiet"],
                   env=portable_numerics_env(), timeout=timeout)  # counting clock: cells at once change nothing
    if done.returncode != 0:
        raise RuntimeError(f"the smoke suite exited {done.returncode}: {done.stderr[-2000:]}")
    return out


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
    with tempfile.TemporaryDirectory() as scratch:
        results = run_smoke_suite(Path(scratch) / "results")
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(normalised_ledgers(results), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
