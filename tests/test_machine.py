"""Outcomes that depend on the machine: declarations, what the report records, and the gate.

TensorFlow's oneDNN kernels are what most often makes a CPU's outcome differ from another's:
they are on by default on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, off on the
others, and `TF_ENABLE_ONEDNN_OPTS` switches them either way. With them on, TensorFlow's
softmax of a row holding inf gives `[0, ..., 0, nan]` where JAX gives a row of NaN. So the
same cases run twice, oneDNN off and on, as two kinds of machine would run them.
"""

import importlib.metadata

import numpy as np
import pytest

import harness.cells
import harness.machine
from tests.conftest import run_pytest, write_module

pytestmark = pytest.mark.skipif(
    not {"tensorflow", "jax"} <= set(harness.cells.installed_backends()), reason="needs tensorflow and jax")

CASES = '''
import numpy as np

import harness

ROW = np.array([[0.0, -0.0, 1.0, -1.0, 0.5, -2.5, np.inf]], "float32")


def softmax():
    import keras
    return lambda x: keras.ops.softmax(x)


def case(name, declaration):
    factory = lambda: softmax()
    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    globals()[name] = harness.parity_case(inputs=ROW, checks=["build", "outputs"],
                                          xfail={"jax-*-*": declaration})(factory)


case("declared_pass_or_mismatch", harness.machine_dependent(
    "TensorFlow's oneDNN softmax keeps NaN to the inf of a row", {
        "pass": "oneDNN off: a row of NaN in both", "mismatch": "oneDNN on: [0, ..., 0, nan] vs NaN"}))
case("declared_pass_or_error", harness.machine_dependent(
    "a declaration that does not name what oneDNN gives", {"pass": "oneDNN off", "error": "never seen"}))
case("declared_mismatch", ("mismatch", "a plain declared failure: strict"))
'''

ARGS = ("--keras-backends=tensorflow,jax", "--keras-jit=off", "-p", "no:cacheprovider")
JAX = "jax-cpu-nojit"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The cases with TensorFlow's oneDNN off, then on (the second judged against the first)."""
    found = {}
    for onednn in ("0", "1"):
        path = tmp_path_factory.mktemp(f"onednn{onednn}")
        write_module(path, "test_machine_cases.py", CASES)
        baseline = () if onednn == "0" else (f"--keras-baseline={found['0'].path / 'reports' / 'parity.json'}",)
        found[onednn] = run_pytest(path, *ARGS, *baseline, env={"TF_ENABLE_ONEDNN_OPTS": onednn})
    return found


def test_each_allowed_outcome_is_accepted_and_the_record_says_which_this_machine_gave(runs):
    for onednn, actual, status, outcome in (("0", "pass", "pass", "passed"), ("1", "mismatch", "xfail", "xfailed")):
        run = runs[onednn]
        record = run.cell("declared_pass_or_mismatch", JAX)
        assert record["status"] == status, run.output[-3000:]
        assert record["xfail"]["actual"] == actual and record["xfail"]["met"] is True
        assert set(record["xfail"]["outcomes"]) == {"pass", "mismatch"}
        assert run.outcomes()[f"declared_pass_or_mismatch[{JAX}]"] == outcome
        assert run.cell("declared_pass_or_mismatch", "tensorflow-cpu-nojit")["status"] == "pass"
    mismatch = runs["1"].cell("declared_pass_or_mismatch", JAX)["checks"]["outputs"]
    assert mismatch["worst_reference"] == 0 and np.isnan(mismatch["worst_value"])  # oneDNN's 0 vs JAX's NaN
    markdown = (runs["1"].path / "reports" / "parity.md").read_text()
    assert "## Machine-dependent outcomes" in markdown
    assert f"| `test_machine_cases.py::declared_pass_or_mismatch` | {JAX} mismatch | **pass**: oneDNN off" in markdown
    page = (runs["1"].path / "reports" / "parity.html").read_text()
    assert 'id="machine-dependent"' in page and f"{JAX}: <b>mismatch</b>" in page
    assert "Machine: " in markdown and "tensorflow-cpu oneDNN on" in markdown and "tensorflow-cpu oneDNN on" in page


def test_an_outcome_not_declared_fails_and_names_the_declared_ones(runs):
    assert runs["0"].outcomes()[f"declared_pass_or_error[{JAX}]"] == "passed"
    run = runs["1"]
    record = run.cell("declared_pass_or_error", JAX)
    assert record["status"] == "mismatch" and record["xfail"]["met"] is False
    assert run.outcomes()[f"declared_pass_or_error[{JAX}]"] == "failed"
    assert "declared pass or error (machine-dependent) (a declaration that does not name what oneDNN gives), " \
           "got mismatch" in run.output
    assert f"| {JAX} mismatch (not declared: fails) |" in (run.path / "reports" / "parity.md").read_text()


def test_a_plain_declared_failure_that_passes_is_still_an_unexpected_pass(runs):
    run = runs["0"]
    record = run.cell("declared_mismatch", JAX)
    assert record["status"] == "pass" and record["xfail"]["met"] is False and "outcomes" not in record["xfail"]
    assert run.outcomes()[f"declared_mismatch[{JAX}]"] == "failed"
    assert f"[XPASS(strict)] test_machine_cases.py::declared_mismatch [{JAX}] passed" in run.output
    assert runs["1"].outcomes()[f"declared_mismatch[{JAX}]"] == "xfailed"


def test_the_run_records_the_cpu_the_kernels_and_every_package(runs):
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    for onednn, enabled in (("0", False), ("1", True)):
        machine = runs[onednn].report["run"]["machine"]
        assert set(machine["cpu"]["vector_extensions"]) == flags & set(harness.machine.VECTOR_EXTENSIONS)
        assert machine["kernels"]["tensorflow-cpu"] == {"onednn": enabled}
        assert machine["overrides"]["TF_ENABLE_ONEDNN_OPTS"] == onednn
        assert machine["packages"]["keras"] == importlib.metadata.version("keras")
        assert machine["packages"]["pytest"] == importlib.metadata.version("pytest")
    assert runs["0"].report["run"]["machine"]["packages_sha256"] == runs["1"].report["run"]["machine"]["packages_sha256"]


def test_the_gate_says_the_baseline_came_from_another_set_up_and_keeps_allowed_changes_apart(runs):
    run = runs["1"]
    gate = run.report["run"]["gate"]
    assert any(line.startswith("kernels:") and "'onednn': False" in line and "'onednn': True" in line
               for line in gate["machine_changes"]), gate["machine_changes"]
    assert any(line.startswith("overrides:") for line in gate["machine_changes"])
    assert {(m["case"].split("::")[1], m["cell"], m["was"], m["now"]) for m in gate["machine_dependent"]} == {
        ("declared_pass_or_mismatch", JAX, "pass", "xfail")}
    regressions = {(r["case"].split("::")[1], r["was"], r["now"]) for r in gate["regressions"]}
    assert ("declared_pass_or_error", "pass", "mismatch") in regressions
    assert not any(case == "declared_pass_or_mismatch" for case, _, _ in regressions)
    assert "the baseline came from another machine or set-up: kernels:" in run.output
    assert "machine-dependent, not a regression: test_machine_cases.py::declared_pass_or_mismatch" in run.output
