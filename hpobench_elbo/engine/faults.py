"""Fault-injection points for the kill-and-resume tests and ``benchmarks/faults.py``.

Set ``HPOBENCH_ELBO_FAULT=<point>:<n>`` (or ``<point>``, meaning 1) and the process kills itself
with SIGKILL the n-th time it passes ``<point>``. Points: ``ledger-append`` (after a trial row is
fsynced), ``ledger-write`` (a row written but not yet flushed or fsynced), ``refit`` (before a refit
starts), ``cache-write`` (a stage output written, its metadata not yet). Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "HPOBENCH_ELBO_FAULT"
_passed: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process here if the environment asks for it (see the module doc)."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
