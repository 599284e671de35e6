"""hpobench_elbo: compare hyperparameter-optimization methods under equal device-time budgets.

The public API: run and resume suites, read their results, and the contracts for adding a method,
a tuner or a task from outside the package.
"""

from hpobench_elbo.api import list_registered, plan, resume, run, status
from hpobench_elbo.contracts import (
    AskContext,
    Method,
    Stage,
    Task,
    TaskInfo,
    TrialResult,
    TrialSpec,
    Tuner,
    TunerSpec,
)
from hpobench_elbo.engine.budget import BudgetExhausted, BudgetMeter
from hpobench_elbo.engine.clock import CountingClock, DeviceClock
from hpobench_elbo.engine.ledger import Ledger, read_ledger
from hpobench_elbo.engine.registry import METHODS, TASKS, TUNERS, check_contract
from hpobench_elbo.errors import UserError
from hpobench_elbo.report.traces import export_parquet, load_results
from hpobench_elbo.space import Choice, Float, Int, SearchSpace
from hpobench_elbo.suite import Suite, load_suite

__version__ = "0.1.0"

__all__ = [
    "AskContext", "BudgetExhausted", "BudgetMeter", "Choice", "CountingClock", "DeviceClock", "Float", "Int",
    "Ledger", "METHODS", "Method", "SearchSpace", "Stage", "Suite", "TASKS", "TUNERS", "Task", "TaskInfo",
    "TrialResult", "TrialSpec", "Tuner", "TunerSpec", "UserError", "check_contract", "export_parquet",
    "list_registered", "load_results", "load_suite", "plan", "read_ledger", "resume", "run", "status",
]
