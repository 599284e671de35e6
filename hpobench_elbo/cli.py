"""The command line: a thin layer over ``hpobench_elbo.api``.

    hpobench-elbo run SUITE [--out DIR] [--device auto|cpu|cuda] [--set KEY=VALUE ...]
                            [--only task=...,method=...,seed=...] [--reuse DIR] [--dry-run] [--force]
                            [--executor local|ray] [--jobs N] [--address HOST:PORT|auto] ...
    hpobench-elbo resume DIR [--force] [--jobs N] ...
    hpobench-elbo status DIR
    hpobench-elbo report DIR [--html] [--pdf] [--png] [--log-time] [--readme FILE] [--out DIR]
    hpobench-elbo list

Exit codes: 0 done; 2 bad input or another writer; 3 environment failure (disk full, read-only,
permissions); 4 a cell ended ``failing`` or ran out of attempts; 130 interrupted (Ctrl-C, or
SIGTERM, which stops a run as Ctrl-C does); when several apply, the highest wins. Every error is one
line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from collections.abc import Iterator, Sequence

from hpobench_elbo import api
from hpobench_elbo.errors import (
    EXIT_BAD_INPUT,
    EXIT_CELL_FAILED,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EnvironmentFailure,
    UserError,
)

FAILED_REASONS = ("failing", "attempts exhausted")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own code for usage errors)
        sys.stderr.write(f"hpobench-elbo: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpobench-elbo", description="Compare HPO methods under equal device-time budgets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a suite (finished cells are kept, interrupted ones resume)")
    run.add_argument("suite")
    run.add_argument("--out", help="results directory (wins over the suite's output)")
    run.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a suite key, e.g. --set budget=30 --set tasks.0.scale=cpu")
    run.add_argument("--only", help="run a subset: task=...,method=...,seed=... (';' between alternatives: "
                                    "'task=a;task=b,seed=0')")
    run.add_argument("--reuse", metavar="DIR", action="append",
                     help="take finished runs of this suite's cells from another results directory instead of "
                          "rerunning them (repeat for several, searched in order)")
    run.add_argument("--dry-run", action="store_true", help="list the cells with their budgets; run nothing")
    run.add_argument("--force", action="store_true", help="continue even if the suite changed")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _spread_arguments(run)
    resume = sub.add_parser("resume", help="continue an interrupted run")
    resume.add_argument("dir")
    _spread_arguments(resume)
    resume.add_argument("--device", default="auto")
    resume.add_argument("--force", action="store_true")
    resume.add_argument("--only")
    resume.add_argument("--quiet", action="store_true")
    status = sub.add_parser("status", help="cells done, running and remaining, with charged cost")
    status.add_argument("dir")
    report = sub.add_parser("report", help="an HTML (and PDF) report of a results directory, from its ledgers")
    report.add_argument("dir")
    report.add_argument("--out", help="where to write (default DIR/report)")
    report.add_argument("--html", action="store_true", help="the self-contained HTML report (the default)")
    report.add_argument("--pdf", action="store_true", help="the same report as PDF (WeasyPrint)")
    report.add_argument("--png", action="store_true", help="also the anytime PNG and CSV table per metric")
    report.add_argument("--log-time", action="store_true", help="log-scaled cost axes")
    report.add_argument("--readme", metavar="FILE", help="also write the summary table (final metric, "
                                                         "time-to-target, speedup vs grid) into FILE's marked block")
    sub.add_parser("list", help="tasks (scales, data sizes, search spaces) and methods")
    return parser


SPREAD_FLAGS = {"executor": "executor", "jobs": "jobs", "address": "address", "max_attempts": "max_attempts",
                "gpus_per_cell": "num_gpus"}
"""Flags that choose how cells are spread (suite keys outside the suite's hash) -> suite keys."""


def _spread_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), help="where cells run (default: the suite's)")
    parser.add_argument("--jobs", type=int, help="local executor: cells at once in worker processes")
    parser.add_argument("--address", help="ray: HOST:PORT or auto (default: start a local Ray)")
    parser.add_argument("--max-attempts", type=int, help="parallel and ray: attempts per cell after a worker dies")
    parser.add_argument("--gpus-per-cell", type=float, help="ray: GPUs per cell")
    parser.add_argument("--oversubscribe", action="store_true",
                        help="allow more threads in all than cores under the device clock (recorded in the ledgers)")


def _spread_overrides(args: argparse.Namespace) -> list[str]:
    """The spread flags as suite overrides (``--jobs 2`` is ``--set jobs=2``)."""
    out = [f"{key}={getattr(args, flag)}" for flag, key in SPREAD_FLAGS.items() if getattr(args, flag) is not None]
    return out + (["oversubscribe=true"] if args.oversubscribe else [])


def _print_summaries(summaries: Sequence[api.CellSummary]) -> int:
    """Print one line per cell; the exit code (4 when a cell ended failing or ran out of attempts)."""
    code = EXIT_OK
    for s in summaries:
        rec = "-" if s.recommendation is None else str(s.recommendation)
        print(f"{s.cell_id}: {s.n_trials} trials, spent {s.spent:.4g}/{s.budget:g} {s.unit}, "
              f"recommended trial {rec} ({s.reason})")
        if s.reason.startswith(FAILED_REASONS):
            code = EXIT_CELL_FAILED
    failing = [s for s in summaries if s.reason.startswith(FAILED_REASONS)]
    if failing:
        sys.stderr.write(f"hpobench-elbo: {len(failing)} cell(s) stopped failing: "
                         f"{', '.join(s.cell_id for s in failing)}\n")
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (exit 130, finished trials kept, ``resume``
    continues): ``kill PID``, ``timeout`` and batch schedulers send SIGTERM, and a background job
    started by a non-interactive shell ignores SIGINT, so SIGTERM is how a script stops a run. Only
    the main thread can set a handler; elsewhere (a caller's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _sigterm_as_interrupt():
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    """Run the parsed command; map its errors to one line and an exit code."""
    try:
        if args.command == "run":
            plan = api.plan(args.suite, args.out, [*args.overrides, *_spread_overrides(args)], args.only)
            if args.dry_run:
                api.resolve_device(args.device)
                unit = "cost units" if plan.suite.clock == "counting" else "device-seconds"
                total = 0.0
                for cell in plan.cells:
                    total += cell.budget
                    print(f"{cell.cell_id}  budget {cell.budget:g} {unit}")
                print(f"{len(plan.cells)} cells -> {plan.out_dir}; estimated charged cost at most "
                      f"{total:g} {unit} plus overshoot (each cell runs to its budget or its method's end)")
                return 0
            return _print_summaries(api.execute(plan, args.device, args.force, progress=not args.quiet,
                                                reuse=args.reuse))
        elif args.command == "resume":
            return _print_summaries(api.resume(args.dir, args.device, args.force, progress=not args.quiet,
                                               only=args.only, overrides=_spread_overrides(args)))
        elif args.command == "status":
            rows = api.status(args.dir)
            for row in rows:
                where = f"  on {row['where']}" if row["where"] and row["state"] == "running" else ""
                print(f"{row['state']:11s} {row['cell']}  {row['trials']} trials  "
                      f"{row['spent']:.4g}/{row['budget']:g}{where}" + (f"  ({row['problem']})" if row["problem"] else ""))
            if rows:
                unit = "cost units" if rows[0]["clock"] == "counting" else "device-seconds"
                print(f"charged so far: {sum(r['spent'] for r in rows):.4g} {unit}")
            states = ("done", "running", "interrupted", "remaining", "damaged")
            counts = {s: sum(r["state"] == s for r in rows) for s in states}
            print(", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("done", "remaining")))
        elif args.command == "report":
            from hpobench_elbo.report.html import write_html_report

            html = args.html or not (args.pdf or args.png or args.readme)
            paths = write_html_report(args.dir, args.out, html=html, pdf=args.pdf, log_time=args.log_time) \
                if (html or args.pdf) else []
            if args.png:
                from hpobench_elbo.report.basic import write_report

                files = write_report(args.dir, args.out)
                paths = [*paths, *files.plots, *files.tables]
            if args.readme:
                from hpobench_elbo.report.summary import write_summary

                write_summary(args.readme, args.dir, source=args.dir)
                paths = [*paths, Path(args.readme)]
            for path in paths:
                print(path)
        elif args.command == "list":
            listing = api.list_registered()
            print("tasks:")
            for name, info in listing["tasks"].items():
                print(f"  {name}: {info.get('description', '')}")
                print(f"      data: {info.get('data', '')}")
                for scale, text in info.get("scales", {}).items():
                    print(f"      scale {scale}: {text}")
                if info.get("space"):
                    print(f"      space: {info['space']}")
            print("methods:")
            for name, info in listing["methods"].items():
                print(f"  {name} (validation: {info['validation']}): {info['doc']}")
    except UserError as exc:
        sys.stderr.write(f"hpobench-elbo: error: {exc}\n")
        return EXIT_BAD_INPUT
    except (EnvironmentFailure, OSError) as exc:
        failure = exc if isinstance(exc, EnvironmentFailure) else EnvironmentFailure.from_os_error(exc)
        sys.stderr.write(f"hpobench-elbo: environment error: {failure}; {_after_environment_error(args)}\n")
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        where = _results_dir(args)
        sys.stderr.write("hpobench-elbo: interrupted; every finished trial is in the ledger; "
                         f"continue with 'hpobench-elbo resume {where}'\n")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _after_environment_error(args: argparse.Namespace) -> str:
    """What to do after an environment failure (exit 3): a run or resume continues with ``resume``;
    a report, status or list changed no ledger, so the user runs the same command again."""
    if args.command in ("run", "resume"):
        return ("nothing written was lost: fix the cause and run "
                f"'hpobench-elbo resume {_results_dir(args)}'")
    what = "the report" if args.command == "report" else f"'hpobench-elbo {args.command}'"
    return f"no ledger was changed: fix the cause and run {what} again"


def _results_dir(args: argparse.Namespace) -> str:
    """The results directory a run or resume writes (for messages)."""
    if args.command == "resume":
        return str(args.dir)
    try:
        return str(api.plan(args.suite, args.out, args.overrides, args.only).out_dir)
    except (UserError, OSError):
        return args.out or "RESULTS_DIR"


def entry() -> None:
    warnings.filterwarnings("default")
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
