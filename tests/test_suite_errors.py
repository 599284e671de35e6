"""Bad input stops a run with exit code 2 and one line naming the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpobench_elbo import cli

from conftest import run_cli

GOOD = """\
name: good
clock: counting
budget: 5
seeds: [0, 1]
tasks:
  - {name: digits-mlp, scale: smoke}
methods:
  - random
  - grid
"""


def edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


# (id, suite text, what the message must name besides the file)
MALFORMED = [
    ("invalid-yaml", GOOD + "methods: [random\n", ["invalid YAML"]),
    ("tab-indented-yaml", edit("  - random", "\t- random"), ["invalid YAML"]),
    ("not-a-mapping", "- random\n- grid\n", ["mapping"]),
    ("unknown-top-level-key", GOOD + "budgett: 3\n", ["budgett"]),
    ("budget-wrong-type", edit("budget: 5", 'budget: "lots"'), ["budget"]),
    ("budget-zero", edit("budget: 5", "budget: 0"), ["budget"]),
    ("budget-negative", edit("budget: 5", "budget: -2"), ["budget"]),
    ("seeds-empty", edit("seeds: [0, 1]", "seeds: []"), ["seeds"]),
    ("seeds-not-ints", edit("seeds: [0, 1]", "seeds: [zero]"), ["seeds[0]"]),
    ("tasks-missing", edit("tasks:\n  - {name: digits-mlp, scale: smoke}\n", ""), ["tasks"]),
    ("unknown-task", edit("name: digits-mlp", "name: imagenet-resnet"), ["tasks[0].name", "imagenet-resnet"]),
    ("unknown-scale", edit("scale: smoke", "scale: huge"), ["tasks[0].scale", "huge"]),
    ("unknown-task-key", edit("scale: smoke}", "scale: smoke, epochs: 3}"), ["tasks[0].epochs"]),
    ("unknown-task-option", edit("scale: smoke}", "scale: smoke, options: {dropout: 0.5}}"),
     ["tasks[0].options", "dropout"]),
    ("unknown-method", edit("  - grid", "  - bohb"), ["methods[1]", "bohb"]),
    ("unknown-method-option", edit("  - grid", "  - {name: grid, options: {bogus: 1}}"), ["methods[1]", "bogus"]),
    ("unknown-method-key", edit("  - grid", "  - {name: grid, budget: 3}"), ["methods[1].budget"]),
    ("grid-value-outside-space", edit("  - grid", "  - {name: grid, options: {values: {lr: [10.0]}}}"),
     ["methods[1].options", "values.lr[0]", "10.0"]),
    ("grid-unknown-hyperparameter", edit("  - grid", "  - {name: grid, options: {values: {dropout: [0.1]}}}"),
     ["methods[1].options", "dropout"]),
    ("bad-clock", edit("clock: counting", "clock: sundial"), ["clock"]),
    ("bad-clock-option", edit("clock: counting", "clock: counting\nclock_options: {per_example: -1}"),
     ["clock_options.per_example"]),
    ("bad-executor", GOOD + "executor: slurm\n", ["executor"]),
    ("threads-zero", GOOD + "threads: 0\n", ["threads"]),
    ("grid-values-not-a-mapping", edit("  - grid", "  - {name: grid, options: {values: [1, 2]}}"),
     ["methods[1].options", "values"]),
    ("grid-tie-chain", edit("  - grid", "  - {name: grid, options: {tie: {lr: momentum, momentum: weight_decay}}}"),
     ["methods[1].options", "tie"]),
    ("grid-bad-resolution", edit("  - grid", "  - {name: grid, options: {resolution: 1.5}}"),
     ["methods[1].options", "resolution"]),
    ("random-bad-max-trials", edit("  - random", '  - {name: random, options: {max_trials: "x"}}'),
     ["methods[0].options", "max_trials"]),
    ("task-option-wrong-type", edit("scale: smoke}", "scale: smoke, options: {steps: abc}}"),
     ["tasks[0].options", "steps"]),
    ("task-batch-size-zero", edit("scale: smoke}", "scale: smoke, options: {batch_size: 0}}"),
     ["tasks[0].options", "batch_size"]),
    # added with the reliability issue
    ("duplicate-top-level-key", GOOD + "budget: 7\n", ["duplicate key 'budget'"]),
    ("duplicate-task-key", edit("scale: smoke}", "scale: smoke, scale: cpu}"), ["duplicate key 'scale'"]),
    ("seed-negative", edit("seeds: [0, 1]", "seeds: [-1]"), ["seeds[0]"]),
    ("seed-repeated", edit("seeds: [0, 1]", "seeds: [3, 3]"), ["seeds", "3 is listed twice"]),
    ("seed-boolean", edit("seeds: [0, 1]", "seeds: [true]"), ["seeds[0]"]),
    ("seed-float", edit("seeds: [0, 1]", "seeds: [1.5]"), ["seeds[0]"]),
    ("budget-boolean", edit("budget: 5", "budget: true"), ["budget"]),
    ("budget-infinite", edit("budget: 5", "budget: .inf"), ["budget"]),
    ("budget-absurd", edit("budget: 5", "budget: 1.0e+12"), ["budget", "10000000"]),
    ("task-budget-nan", edit("scale: smoke}", "scale: smoke, budget: .nan}"), ["tasks[0].budget"]),
    ("refit-string", GOOD + "refit: \"yes\"\n", ["refit"]),
    ("cache-number", GOOD + "cache: 1\n", ["cache"]),
    ("threads-boolean", GOOD + "threads: true\n", ["threads"]),
    ("name-is-a-path", edit("name: good", "name: ../elsewhere/good"), ["name"]),
    ("method-reference-not-a-method", edit("  - grid", "  - hpobench_elbo.space:Float"),
     ["methods[1]", "hpobench_elbo.space:Float", "is not a method"]),
    ("task-reference-not-a-task", edit("name: digits-mlp", "name: hpobench_elbo.space:SearchSpace"),
     ["tasks[0]", "is not a task"]),
    ("method-option-wrong-type", edit("  - grid", "  - {name: de-elbo, options: {per_parameter_sigma: 1}}"),
     ["methods[1].options", "per_parameter_sigma"]),
    ("method-option-string-for-list", edit("  - grid", "  - {name: de-elbo, options: {lrs: \"0.1\"}}"),
     ["methods[1]", "lrs"]),
    ("grid-shuffle-string", edit("  - grid", "  - {name: grid, options: {shuffle: \"no\"}}"),
     ["methods[1].options", "shuffle"]),
    ("task-option-boolean-for-int", edit("scale: smoke}", "scale: smoke, options: {steps: true}}"),
     ["tasks[0].options", "steps"]),
    ("max-failures-zero", GOOD + "max_failures: 0\n", ["max_failures"]),
    ("trial-timeout-negative", GOOD + "trial_timeout: -5\n", ["trial_timeout"]),
    ("clock-option-boolean", edit("clock: counting", "clock: counting\nclock_options: {cache_read: true}"),
     ["clock_options.cache_read"]),
    # added with reliability round three (issue 21): duplicate cells name both places
    ("duplicate-method", edit("  - grid", "  - random"), ["methods[1]", "same cell as", "methods[0]"]),
    ("duplicate-method-by-label", edit("  - grid", "  - {name: random, label: random}"),
     ["tasks[0] x methods[1]", "same cell as tasks[0] x methods[0]"]),
    ("duplicate-method-empty-options", edit("  - grid", "  - {name: random, options: {}}"),
     ["methods[1]", "same cell as", "methods[0]"]),
    ("duplicate-task", edit("  - {name: digits-mlp, scale: smoke}", "  - {name: digits-mlp, scale: smoke}\n"
                            "  - {name: digits-mlp}"), ["tasks[1] x methods[0]", "same cell as tasks[0] x methods[0]"]),
    ("duplicate-task-method", edit("  - {name: digits-mlp, scale: smoke}",
                                   "  - {name: digits-mlp, scale: smoke, methods: [grid, random, grid]}"),
     ["tasks[0].methods[2]", "same cell as tasks[0].methods[0]"]),
    ("clock-options-under-device-clock", edit("clock: counting", "clock: device\nclock_options: {per_example: 1.0}"),
     ["clock_options", "clock: device"]),
    ("address-without-ray", GOOD + "address: 127.0.0.1:6379\n", ["address", "executor ray"]),
    ("max-trials-per-cell-zero", GOOD + "max_trials_per_cell: 0\n", ["max_trials_per_cell"]),
    ("task-n-absurd", edit("scale: smoke}", "scale: smoke, options: {n: 1000000000000}}"),
     ["tasks[0].options", "option n", "1,000,000,000,000"]),
    ("task-steps-absurd", edit("scale: smoke}", "scale: smoke, options: {steps: 1.0e+12}}"), ["tasks[0].options", "steps"]),
]


@pytest.mark.parametrize(("text", "needles"), [pytest.param(t, n, id=i) for i, t, n in MALFORMED])
@pytest.mark.parametrize("mode", ["dry-run", "run"])
def test_malformed_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str],
                         mode: str) -> None:
    """``--dry-run`` refuses everything the real run would, and the real run refuses it before it
    writes anything."""
    path = tmp_path / "bad-suite.yaml"
    path.write_text(text)
    out_dir = tmp_path / "out"
    args = ["--dry-run"] if mode == "dry-run" else ["--out", str(out_dir), "--quiet"]
    code = cli.main(["run", str(path), *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert "Traceback" not in err and out == ""
    assert str(path) in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out_dir.exists()


def test_a_file_that_is_not_utf8_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("name: good", "name: g\u00f6od").encode("latin-1"))
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err and str(path) in err


def test_the_good_suite_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    assert "4 cells" in capsys.readouterr().out


def test_missing_suite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.yaml"
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


@pytest.mark.parametrize(("args", "needles"), [
    (["--set", "budget=-1"], ["budget"]),
    (["--set", "tasks.0.scale=huge"], ["tasks[0].scale", "huge"]),
    (["--set", "tasks.7.scale=cpu"], ["tasks", "7"]),
    (["--set", "budget"], ["budget", "KEY=VALUE"]),
    (["--set", "budget=[1"], ["--set", "invalid YAML"]),
    (["--only", "method=nope"], ["method=nope"]),
    (["--only", "colour=red"], ["colour=red"]),
    (["--only", ""], ["--only ''", "empty selection"]),
    (["--only", "  "], ["--only '  '", "empty selection"]),
    (["--address", "127.0.0.1:6379"], ["address", "--executor ray"]),
    (["--set", "methods.1=random"], ["methods[1]", "same cell as", "methods[0]"]),
], ids=["set-negative-budget", "set-bad-scale", "set-no-such-item", "set-no-value", "set-bad-yaml", "only-no-match",
       "only-bad-key", "only-empty", "only-blank", "address-without-executor-ray", "set-duplicate-cell"])
def test_bad_command_line_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                    needles: list[str]) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    code = cli.main(["run", str(path), "--dry-run", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    out = tmp_path / "out"
    code = cli.main(["run", str(path), "--out", str(out), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cuda" in err.lower() and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    """The same contract end to end: a fresh interpreter, exit status 2, one line, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text(edit("budget: 5", 'budget: "lots"'))
    proc = run_cli(["run", str(path), "--dry-run"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "budget" in proc.stderr
    assert proc.stdout == ""


def test_the_same_cell_twice_is_refused_not_counted_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 21 item 3: ``--dry-run`` used to list the cell twice and count its budget twice."""
    path = tmp_path / "twice.yaml"
    path.write_text(edit("  - grid", "  - {name: random, label: random}"))
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "same cell" in err
    path.write_text(edit("  - grid", "  - {name: random, label: random-2}"))  # another label: another cell
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(set(listed[:-1])) == len(listed[:-1]) == 4 and "4 cells" in listed[-1]


def test_a_task_n_above_its_pool_is_one_line_before_any_trial(tmp_path: Path) -> None:
    """digits-mlp's labelled pool is 1,438 examples: an n of 5,000 is refused when the data loads."""
    path = tmp_path / "big.yaml"
    path.write_text(edit("scale: smoke}", "scale: smoke, options: {n: 5000}}"))
    out = tmp_path / "out"
    proc = run_cli(["run", str(path), "--out", str(out), "--quiet"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "option n = 5,000 is larger than the labelled pool" in proc.stderr
    assert not any(p.read_text().count("\n") > 1 for p in out.glob("*.jsonl"))  # no trial recorded
