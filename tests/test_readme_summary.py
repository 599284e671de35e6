"""The README's reference table is generated from the committed reference ledgers, never typed:
this test regenerates it and compares; `hpobench-elbo report DIR --readme FILE` writes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from hpobench_elbo import cli
from hpobench_elbo.errors import UserError
from hpobench_elbo.report import stats
from hpobench_elbo.report.data import read_report_data
from hpobench_elbo.report.summary import END, START, readme_block, summary_frame, summary_markdown, write_summary

REFERENCE = "reports/reference-v2-cpu/run"


def test_the_readme_table_is_the_one_the_reference_ledgers_give() -> None:
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block is not None, "README.md has no generated summary block"
    assert block == summary_markdown(REPO / REFERENCE, REFERENCE), (
        f"README.md's table is stale: run `hpobench-elbo report {REFERENCE} --readme README.md`")


def test_the_summary_holds_the_report_numbers_and_replaces_only_its_block(small_run: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    _, results = small_run
    data = read_report_data(results)
    traces = stats.all_traces(data)
    final = stats.final_table(stats.final_values(data, traces)).set_index(["task", "method"])
    frame = summary_frame(results).set_index(["task", "method"])
    assert set(frame.index) == set(final.index)
    assert np.allclose(frame["mean"].to_numpy(float), final.loc[frame.index, "mean"].to_numpy(float), equal_nan=True)
    assert frame.loc[("digits-mlp", "grid"), "grid"] and not frame.loc[("digits-mlp", "random"), "grid"]
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n\n" + START.format(source="old") + "\nold\n" + END + "\n\nafter\n")
    assert cli.main(["report", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "\nold\n" not in text
    assert readme_block(text) == summary_markdown(results, str(results))
    for method in ("grid", "random"):
        mean = final.loc[("digits-mlp", method), "mean"]
        assert f"| digits-mlp | {method} |" in text and f"accuracy {mean:.3g}" in text
    assert write_summary(readme, results, str(results)) is False  # already fresh: unchanged
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(UserError, match="no summary block"):
        write_summary(bare, results)
