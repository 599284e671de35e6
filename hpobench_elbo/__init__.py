"""hpobench_elbo: compare hyperparameter-optimization methods under equal device-time budgets.

The public API: run and resume suites, read their results, and the contracts for adding a method,
a tuner or a task from outside the package (see the README, "Adding a method or a task", and
``docs/architecture.md``). Engine internals (the meter, clocks, ledger writer, cache store, loop)
are not part of it.
"""

from hpobench_elbo.api import list_registered, plan, resume, run, status
from hpobench_elbo.contracts import (
    AskContext,
    Method,
    PaidPrefix,
    Recipe,
    Stage,
    StageRun,
    StepStats,
    Task,
    TaskInfo,
    TrainSetup,
    TrialContext,
    TrialResult,
    TrialSpec,
    Tuner,
    TunerSpec,
)
from hpobench_elbo.engine.budget import BudgetExhausted
from hpobench_elbo.engine.ledger import read_ledger
from hpobench_elbo.errors import UserError
from hpobench_elbo.registry import METHODS, TASKS, TUNERS, check_contract
from hpobench_elbo.report.traces import export_parquet, load_results
from hpobench_elbo.space import Choice, Float, Int, SearchSpace
from hpobench_elbo.suite import Suite, load_suite

__version__ = "0.1.0"

__all__ = [
    "AskContext", "BudgetExhausted", "Choice", "Float", "Int", "METHODS", "Method", "PaidPrefix", "Recipe",
    "SearchSpace", "Stage", "StageRun", "StepStats", "Suite", "TASKS", "TUNERS", "Task", "TaskInfo", "TrainSetup",
    "TrialContext", "TrialResult", "TrialSpec", "Tuner", "TunerSpec", "UserError", "check_contract",
    "export_parquet", "list_registered", "load_results", "load_suite", "plan", "read_ledger", "resume", "run",
    "status",
]
