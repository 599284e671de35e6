"""One writer per results directory: an exclusive ``flock`` on ``DIR/.lock``.

The driver (the only process that writes a results directory) holds the lock for as long as it
runs; the file holds its process id, host and start time, so a second writer is refused with one
line naming the holder. ``flock`` is released by the kernel when its holder dies, so a lock left by
a killed process is simply taken over. Readers (``status``, ``report``) never take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from hpobench_elbo.errors import EnvironmentFailure, UserError

LOCK_NAME = ".lock"


class ResultsLock:
    """``with ResultsLock(dir): ...`` holds the directory's writer lock (see the module doc)."""

    def __init__(self, results_dir: Path) -> None:
        self.path = Path(results_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EnvironmentFailure.from_os_error(exc, self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise UserError(f"{self.path.parent}: another run is writing here ({holder}); wait for it, "
                            "or stop it first") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass  # the lock holds without its description (e.g. a full disk)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"process {info['pid']} on {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError):
            return "a process that has not described itself yet"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultsLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def writer_active(results_dir: Path) -> str | None:
    """Who holds the directory's writer lock, or None (tested without taking it: a shared lock
    that is released at once; the file is neither created nor changed)."""
    path = Path(results_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return ResultsLock._holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
