"""Plots: test metric of the recommended model versus charged device time, per task."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HOURS_UNITS = {"GPU-seconds": "GPU-hours", "device-seconds (CPU)": "device-hours (CPU)"}


def display_unit(unit: str) -> tuple[float, str]:
    """Scale factor and display unit: device-seconds become hours; cost units stay as they are."""
    if unit in HOURS_UNITS:
        return 1 / 3600.0, HOURS_UNITS[unit]
    return 1.0, unit


def x_axis(unit: str) -> tuple[float, str]:
    """Scale factor and axis label of charged cost."""
    scale, shown = display_unit(unit)
    return scale, f"charged {shown}"


def plot_traces(agg: pd.DataFrame, unit: str, metric: str, out: Path, title: str = "") -> Path:
    """One panel per task: median line and inter-quartile band over seeds, one line per method."""
    tasks = sorted(agg["task"].unique())
    scale, label = x_axis(unit)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, group in agg[agg["task"] == task].groupby("method", sort=True):
            x = group["cost"].to_numpy() * scale
            line, = ax.plot(x, group["median"], label=method, drawstyle="steps-post")
            ax.fill_between(x, group["q25"], group["q75"], alpha=0.2, color=line.get_color(), step="post")
        ax.set_title(task)
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {metric} of recommended model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
