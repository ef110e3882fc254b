"""`python -m harness.report merge` and the `--keras-baseline` gate, on reports of real runs."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_pytest, write_module

CASES = '''
import os
import time

import harness

BROKEN = os.environ.get("PARITY_BREAK") == "1"
SLOW = os.environ.get("PARITY_SLOW") == "1"


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs", "timing"])
def dense():
    if BROKEN:
        raise RuntimeError("broken on purpose")
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs", "timing"])
def sometimes_slow():
    import keras

    def f(x):
        if SLOW:
            time.sleep(0.05)
        return keras.ops.relu(x)
    return f
'''

ARGS = ("--keras-backends=jax,torch", "--keras-jit=off", "-p", "no:cacheprovider")


def run_with(path, env_flags: dict, *args):
    return run_pytest(path, *ARGS, *args, env=env_flags)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate")
    write_module(path, "test_gate_cases.py", CASES)
    run = run_with(path, {})
    assert run.returncode == 0, run.output
    shutil.copy(path / "reports" / "parity.json", path / "baseline.json")
    return path


def merge(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.report", "merge", *args],
                          cwd=cwd, capture_output=True, text=True)


def test_shards_merge_into_one_report(baseline, tmp_path):
    report = json.loads((baseline / "baseline.json").read_text())
    for backend in ("jax", "torch"):  # as a CPU job and another job would have written them
        shard = dict(report, cells=[c for c in report["cells"] if c["backend"] == backend])
        (tmp_path / f"{backend}.json").write_text(json.dumps(shard))
    result = merge("jax.json", "torch.json", "-o", "merged", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "merged" / "parity.json").read_text())
    assert sorted((c["case"], c["cell"]) for c in merged["cells"]) == \
        sorted((c["case"], c["cell"]) for c in report["cells"])
    assert merged["run"]["conflicts"] == []
    assert "| case | jax-cpu-nojit | torch-cpu-nojit |" in (tmp_path / "merged" / "parity.md").read_text()


def test_the_same_cell_with_different_results_is_flagged(baseline, tmp_path):
    broken = run_with(baseline, {"PARITY_BREAK": "1"})
    assert broken.returncode == 1
    shutil.copy(baseline / "reports" / "parity.json", tmp_path / "broken.json")
    shutil.copy(baseline / "baseline.json", tmp_path / "good.json")
    result = merge("good.json", "broken.json", "-o", "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "conflict: test_gate_cases.py::dense [jax-cpu-nojit]: pass in good.json, error in broken.json" in result.stderr
    merged = json.loads((tmp_path / "out.json").read_text())
    dense = [c for c in merged["cells"] if c["case"].endswith("::dense")]
    assert {c["status"] for c in dense} == {"error"} and all(c["conflict"] for c in dense)
    assert len(merged["run"]["conflicts"]) == 2


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ('{"junit": []}', "not a keras-parity report"),
    ('{"schema": 7, "cells": []}', "schema 7"),
    ('{"schema": 1, "cells": [{"case": "x"}]}', "cell #0 lacks"),
])
def test_a_malformed_or_foreign_file_is_refused_and_nothing_is_overwritten(baseline, tmp_path, content, message):
    shutil.copy(baseline / "baseline.json", tmp_path / "good.json")
    (tmp_path / "bad.json").write_text(content)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "parity.json").write_text("earlier")
    result = merge("good.json", "bad.json", "-o", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.json" in result.stderr and message in result.stderr and "Nothing was written" in result.stderr
    assert (tmp_path / "out" / "parity.json").read_text() == "earlier"


def test_the_gate_passes_an_unchanged_run_and_fails_a_regression(baseline):
    same = run_with(baseline, {}, "--keras-baseline=baseline.json")
    assert same.returncode == 0, same.output
    assert "no cell got worse" in same.output

    worse = run_with(baseline, {"PARITY_BREAK": "1"}, "--keras-baseline=baseline.json")
    assert worse.returncode == 1
    assert "regression: test_gate_cases.py::dense [jax-cpu-nojit]: pass -> error" in worse.output
    gate = worse.report["run"]["gate"]
    assert {(r["cell"], r["now"]) for r in gate["regressions"]} == {("jax-cpu-nojit", "error"),
                                                                  ("torch-cpu-nojit", "error")}


def test_a_slowdown_beyond_the_threshold_and_the_noise_is_reported_and_fails_when_asked(baseline):
    slow = run_with(baseline, {"PARITY_SLOW": "1"}, "--keras-baseline=baseline.json",
                    "--keras-perf-threshold=2")
    assert slow.returncode == 0, slow.output  # reported only
    slowdowns = slow.report["run"]["gate"]["slowdowns"]
    assert {(s["case"].split("::")[1], s["timing"]) for s in slowdowns} == {("sometimes_slow", "predict_median_s")}
    assert all(s["ratio"] > 2 for s in slowdowns)
    assert "slowdown: test_gate_cases.py::sometimes_slow" in slow.output

    failing = run_with(baseline, {"PARITY_SLOW": "1"}, "--keras-baseline=baseline.json",
                       "--keras-perf-threshold=2", "--keras-perf-fail=yes")
    assert failing.returncode == 1


def test_the_gate_command_judges_a_merged_report_against_a_baseline(baseline, tmp_path):
    broken = run_with(baseline, {"PARITY_BREAK": "1"})
    assert broken.returncode == 1
    shutil.copy(baseline / "reports" / "parity.json", tmp_path / "merged.json")
    shutil.copy(baseline / "baseline.json", tmp_path / "baseline.json")
    gate = subprocess.run([sys.executable, "-m", "harness.report", "gate", "merged.json",
                           "--baseline", "baseline.json"], cwd=tmp_path, capture_output=True, text=True)
    assert gate.returncode == 1
    assert "regression: test_gate_cases.py::dense [torch-cpu-nojit]: pass -> error" in gate.stdout
    same = subprocess.run([sys.executable, "-m", "harness.report", "gate", "baseline.json",
                           "--baseline", "baseline.json"], cwd=tmp_path, capture_output=True, text=True)
    assert same.returncode == 0 and "no cell got worse" in same.stdout


@pytest.mark.parametrize("args, message", [
    (["--keras-baseline=missing.json"], "cannot read it"),
    (["--keras-perf-threshold=2"], "needs --keras-baseline"),
    (["--keras-baseline=baseline.json", "--keras-perf-threshold=0.5"], "not a ratio above 1"),
])
def test_bad_gate_options_are_usage_errors(baseline, args, message):
    run = run_pytest(baseline, *ARGS, *args)
    assert run.returncode == 4 and message in run.output
