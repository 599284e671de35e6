"""Fault-injection points for the kill-and-resume tests and ``benchmarks/faults.py``.

Set ``HPOBENCH_ELBO_FAULT=<point>:<n>`` (or ``<point>``, meaning 1) and the process kills itself
with SIGKILL the n-th time it passes ``<point>``; ``<point>:<n>:<ERRNO>`` (e.g. ``ENOSPC``, ``EROFS``,
``EACCES``) raises that ``OSError`` there instead, the n-th time and every time after (a disk that
stays full), which is how the tests inject environment failures where a real one cannot be made
(a full disk needs a small filesystem; root ignores read-only permissions). Points: ``ledger-append`` (after a trial row is
fsynced), ``ledger-write`` (a row written but not yet flushed or fsynced), ``refit`` (before a refit
starts), ``cache-write`` (a stage output written, its metadata not yet), ``prune`` (right after a
method decided to stop a trial at a checkpoint). Unset, a point costs one
dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "HPOBENCH_ELBO_FAULT"
FAULT_PATH_ENV = "HPOBENCH_ELBO_FAULT_PATH"
"""The file name an injected OSError names (default ``<point>``)."""
_passed: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process here if the environment asks for it (see the module doc)."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, rest = wanted.partition(":")
    if point != name:
        return
    count, _, error = rest.partition(":")
    _passed[name] = _passed.get(name, 0) + 1
    if error and _passed[name] >= int(count or 1):
        code = getattr(errno, error)
        raise OSError(code, os.strerror(code), os.environ.get(FAULT_PATH_ENV, f"<{name}>"))
    if not error and _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
