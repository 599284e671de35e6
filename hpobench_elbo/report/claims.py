"""The seed papers' headline claims against this report's ledgers, met or not (METHODS.md A-C).

Each claim is computed from the ledgers alone, one row per task on which its method ran beside
what it is compared with:

* **DE-ELBo** (Harvey et al., arXiv 2502.01861: "reduces the 88+ hour grid search ... to under 3
  hours while delivering comparable accuracy"): on each seed, DE-ELBo's time to match the grid
  (``stats.TARGET_GRID``: the grid's own final value on that seed) against the grid's own time to
  reach that value. Met when DE-ELBo matched the grid on more than half of the seeds and the
  geometric mean of its time over the grid's time (seeds where both got there) is below 1.
* **Implicit differentiation** (Clarke, Oldewage and Hernández-Lobato, ICLR 2022: "overall the
  method is 2-3x vanilla training"): the median charged cost of an ``implicit`` trial over the
  median charged cost of one plain training run, a trial of the default SGD tuner
  (``PLAIN_TUNER``) on the same number of examples, task and seed; the median of that ratio over
  seeds. Met when it is at most ``IMPLICIT_MAX_RATIO``.
* **EEIPU** (Essofi et al., arXiv 2411.03731: "an average of 103% more hyperparameter candidates
  (within the same budget), and increases the validation metric by an average of 108% more than
  other algorithms (where the increase is measured starting from the end of warm-up
  iterations)"): against the other methods of its family on the task (``families.method_family``),
  per seed, (a) its completed candidates (trials not cut) over their mean, minus 1; (b) its
  improvement of the best validation score after the warm-up (the first ``n_init`` trials) over
  their mean improvement, minus 1; each the mean over seeds, in percent. Met when at least the
  paper's figure.

A row with nothing to compare says so (``met`` is None).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from hpobench_elbo.report import stats
from hpobench_elbo.report.data import ReportData
from hpobench_elbo.report.families import method_family

PLAIN_TUNER = "sgd"  # the tuner of one plain training run (the search methods' configurations)
IMPLICIT_MAX_RATIO = 3.0  # "2-3x vanilla training": met when at most this many training runs
EEIPU_CANDIDATES = 103.0  # percent more candidates within the same budget
EEIPU_IMPROVEMENT = 108.0  # percent more improvement of the validation metric after warm-up
COLUMNS = ["paper", "method", "task", "claim", "measured", "value", "claimed", "met", "seeds"]


@dataclass(frozen=True)
class ClaimRow:
    """One claim on one task: ``claim`` the paper's words, ``measured`` this reference's figure in
    words, ``value`` and ``claimed`` the two numbers compared, ``met`` True/False (None: nothing to
    compare), ``seeds`` the seeds that entered the figure."""

    paper: str
    method: str
    task: str
    claim: str
    measured: str
    value: float
    claimed: float
    met: bool | None
    seeds: int


def claims_table(data: ReportData, finals: pd.DataFrame, traces: pd.DataFrame,
                 references: dict[str, str]) -> pd.DataFrame:
    """Every claim of the module docstring on every task where it can be read (rows in that order)."""
    rows = [*deelbo_claims(finals, traces, references), *implicit_claims(data), *eeipu_claims(data)]
    return pd.DataFrame.from_records([asdict(r) for r in rows], columns=COLUMNS)


def _labels(cells: pd.DataFrame, task: str, name: str) -> list[str]:
    """The labels of the cells of registry method ``name`` on ``task``."""
    mine = cells[(cells["task"] == task) & (cells["method_name"] == name)]
    return sorted(mine["method"].unique())


def deelbo_claims(finals: pd.DataFrame, traces: pd.DataFrame, references: dict[str, str]) -> list[ClaimRow]:
    """DE-ELBo's time to match the grid against the grid's own, per task with both."""
    times = stats.cell_times_to_target(finals, traces, "grid", references)
    out = []
    for task, grid in sorted(references.items()):
        ref = times[(times["task"] == task) & (times["method"] == grid)].set_index("seed")["time_to_target"]
        for label in _labels(finals, task, "de-elbo"):
            mine = times[(times["task"] == task) & (times["method"] == label)]
            matched = int(np.isfinite(mine["time_to_target"]).sum())
            ratios = [t / ref.get(s, np.nan) for s, t in zip(mine["seed"], mine["time_to_target"])
                      if np.isfinite(t) and t > 0 and np.isfinite(ref.get(s, np.nan)) and ref.get(s, np.nan) > 0]
            fraction = stats.geometric_mean(ratios)
            n = len(mine)
            met = None if not n else bool(matched * 2 > n and np.isfinite(fraction) and fraction < 1)
            measured = (f"matched {grid}'s final value on {matched} of {n} seeds"
                        + (f", in {fraction:.2g}x its time (geometric mean over {len(ratios)} seeds)"
                           if np.isfinite(fraction) else ""))
            out.append(ClaimRow("DE-ELBo (2502.01861)", label, task,
                                "grid search's accuracy at a fraction of its time", measured, fraction, 1.0, met,
                                len(ratios)))
    return out


def implicit_claims(data: ReportData) -> list[ClaimRow]:
    """The cost of an ``implicit`` trial in plain training runs, per task with both."""
    rows = data.rows
    if rows.empty:
        return []
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == "trial")]
    out = []
    for task in sorted(data.cells["task"].unique()):
        for label in _labels(data.cells, task, "implicit"):
            ratios = []
            for seed, mine in ok[(ok["task"] == task) & (ok["method"] == label)].groupby("seed", sort=True):
                plain = ok[(ok["task"] == task) & (ok["seed"] == seed) & (ok["tuner"] == PLAIN_TUNER)
                           & ok["n_train"].isin(mine["n_train"].unique())]
                if len(plain):
                    ratios.append(float(mine["cost"].median() / plain["cost"].median()))
            value = float(np.median(ratios)) if ratios else np.nan
            measured = (f"{value:.2g}x one plain training run (median over {len(ratios)} seeds)" if ratios
                        else "no plain training run on the same data to compare with")
            out.append(ClaimRow("implicit (Clarke et al. 2022)", label, task, "2-3x one training run", measured,
                                value, IMPLICIT_MAX_RATIO, bool(value <= IMPLICIT_MAX_RATIO) if ratios else None,
                                len(ratios)))
    return out


def eeipu_warmup(header: dict[str, Any]) -> int:
    """The number of warm-up trials of a BO cell: its ``n_init`` option, else the family's default."""
    from hpobench_elbo.methods.bo.method import OPTION_SPECS

    options = (header.get("cell") or {}).get("method_options") or {}
    return int(options.get("n_init", OPTION_SPECS["n_init"][1]))


def improvement_after_warmup(rows: pd.DataFrame, warmup: int) -> float:
    """Best validation score (lower is better) at the end of the warm-up minus the best at the end."""
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == "trial")].sort_values("trial_id")
    scores = pd.to_numeric(ok["score"], errors="coerce").to_numpy(float)
    warm = scores[ok["trial_id"].to_numpy() < warmup]
    if not np.isfinite(warm).any() or not np.isfinite(scores).any():
        return np.nan
    return float(np.nanmin(warm) - np.nanmin(scores))


def eeipu_claims(data: ReportData) -> list[ClaimRow]:
    """EEIPU's candidates and improvement after warm-up against the rest of its family, per task."""
    cells, rows = data.cells, data.rows
    out = []
    for task in sorted(cells["task"].unique()):
        here = cells[cells["task"] == task]
        others = sorted({m for m, n in zip(here["method"], here["method_name"])
                         if n != "eeipu" and method_family(n) == method_family("eeipu")})
        for label in _labels(cells, task, "eeipu"):
            more, better = [], []
            for seed in sorted(here.loc[here["method"] == label, "seed"].unique()):
                def cell_rows(method: str) -> tuple[pd.DataFrame, dict[str, Any]]:
                    cell = here[(here["method"] == method) & (here["seed"] == seed)]
                    cid = cell["cell_id"].iloc[0] if len(cell) else None
                    return (rows[rows["cell_id"] == cid] if cid is not None and not rows.empty else rows.iloc[:0],
                            data.headers.get(cid, {}) if cid is not None else {})

                mine, header = cell_rows(label)
                theirs = [cell_rows(m) for m in others if ((here["method"] == m) & (here["seed"] == seed)).any()]
                if not theirs:
                    continue
                count = lambda r: int(((r["kind"] == "trial") & (r["status"] != "cut")).sum())  # noqa: E731
                mean_count = np.mean([count(r) for r, _ in theirs])
                if mean_count > 0:
                    more.append(100.0 * (count(mine) / mean_count - 1.0))
                gain = improvement_after_warmup(mine, eeipu_warmup(header))
                gains = [improvement_after_warmup(r, eeipu_warmup(h)) for r, h in theirs]
                mean_gain = float(np.nanmean(gains)) if np.isfinite(gains).any() else np.nan
                if np.isfinite(gain) and np.isfinite(mean_gain) and mean_gain > 0:
                    better.append(100.0 * (gain / mean_gain - 1.0))
            against = ", ".join(others) or "no other method of its family"
            for claim, values, claimed in (("+103% candidates within the same budget", more, EEIPU_CANDIDATES),
                                           ("+108% improvement of the validation metric after warm-up", better,
                                            EEIPU_IMPROVEMENT)):
                value = float(np.mean(values)) if values else np.nan
                measured = (f"{value:+.0f}% against {against} (mean over {len(values)} seeds)" if values
                            else f"not computable against {against}")
                out.append(ClaimRow("EEIPU (2411.03731)", label, task, claim, measured, value, claimed,
                                    bool(value >= claimed) if values else None, len(values)))
    return out
