"""The basic report of a results directory: a PNG of anytime traces and a CSV table per metric."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpobench_elbo.errors import UserError
from hpobench_elbo.report.plots import plot_traces
from hpobench_elbo.report.traces import aggregate, cell_traces, final_table, load_results


@dataclass(frozen=True)
class ReportFiles:
    plots: tuple[Path, ...]
    tables: tuple[Path, ...]


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> ReportFiles:
    """Write ``traces-<metric>.png`` and ``table-<metric>.csv`` for each metric present."""
    results_dir = Path(results_dir)
    frame = load_results(results_dir)
    if frame.empty:
        raise UserError(f"{results_dir}: no completed trials to report")
    out = Path(out_dir) if out_dir else results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = sorted(c[len("test_"):] for c in frame.columns if c.startswith("test_") and c != "test_loss")
    plots, tables = [], []
    for metric in metrics:
        tasks = frame.groupby("task")[f"test_{metric}"].apply(lambda s: s.notna().any())
        rows = frame[frame["task"].isin(tasks[tasks].index)]
        traces = cell_traces(rows, metric)
        if traces.empty:
            continue
        for unit, group in traces.groupby("unit"):
            suffix = "" if traces["unit"].nunique() == 1 else "-" + "".join(c for c in unit if c.isalnum())
            plots.append(plot_traces(aggregate(group), unit, metric, out / f"traces-{metric}{suffix}.png",
                                     title=f"{frame['suite'].iloc[0]}: recommended model, median and IQR over seeds"))
        table = final_table(rows, metric)
        path = out / f"table-{metric}.csv"
        table.to_csv(path, index=False)
        tables.append(path)
    return ReportFiles(tuple(plots), tuple(tables))
