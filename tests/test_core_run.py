"""One real run over all three backends, jit on and off, with cases that pass and cases that
fail in every way a cell can: mismatch, error, compile_error, crash and declared failures.
Each test below reads its part of that run's report and pytest outcomes."""

import numpy as np
import pytest

from tests.conftest import requires_all_backends, run_pytest, write_module

pytestmark = requires_all_backends

CASES = '''
import ctypes
import os

import numpy as np

import harness


def backend():
    import keras
    return keras.backend.backend()


@harness.parity_case(inputs=lambda rng: rng.normal(size=(4, 16)).astype("float32"))
def small_mlp():
    import keras
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


@harness.parity_case(inputs={"a": harness.spec((2, 4)), "b": harness.spec((2, 4))})
def ops_function():
    import keras
    return lambda a, b: keras.ops.tanh(a) * 2 + keras.ops.sum(b, axis=-1, keepdims=True)


@harness.parity_case(inputs=harness.spec((2, 7, 3)))
def conv_layer():
    import keras
    return keras.layers.Conv1D(4, 3, padding="same")


def make_perturbed_dense():
    import keras

    class PerturbedDense(keras.layers.Dense):
        """Under JAX only, kernel[2, 1] is read 0.5 too high."""

        def call(self, x):
            kernel = self.kernel
            if keras.backend.backend() == "jax":
                delta = np.zeros((6, 3), "float32")
                delta[2, 1] = 0.5
                kernel = kernel + delta
            return keras.ops.matmul(x, kernel) + self.bias

    return PerturbedDense


@harness.parity_case(inputs=harness.spec((4, 6)))
def perturbed():
    import keras
    return keras.Sequential([keras.Input((6,)), make_perturbed_dense()(3)])


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def segfaults_on_torch():
    if backend() == "torch":
        ctypes.string_at(0)  # a real SIGSEGV in the worker
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def after_the_segfault():
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def killed_like_oom_on_jax():
    if backend() == "jax":
        os.kill(os.getpid(), 9)  # what the out-of-memory killer does
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=harness.spec((2, 3)))
def factory_raises():
    raise RuntimeError("boom from the factory")


@harness.parity_case(inputs=harness.spec((2, 5)))
def inputs_do_not_fit():
    import keras
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


@harness.parity_case(inputs=harness.spec((2, 3)),
                     xfail={"jax-*-jit": ("compile_error", "Python if on a traced value")})
def python_if_on_tensor():
    import keras

    def f(x):
        if keras.ops.sum(x) > 0:
            return x * 2
        return x / 2
    return f


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"],
                     xfail={"jax-*-jit": ("compile_error", "float() of a traced value")})
def float_of_a_traced_value():
    import keras
    return lambda x: x * float(keras.ops.max(x))


_torch_ops = {}


def scale_op_without_fake_impl():
    """A custom torch op as users write them around their own kernels, with no fake
    (meta) implementation: eager runs it, torch.compile cannot trace it."""
    if "scale" not in _torch_ops:
        import torch

        @torch.library.custom_op("keras_parity_tests::scale", mutates_args=())
        def scale(t: torch.Tensor) -> torch.Tensor:
            return t * 2

        _torch_ops["scale"] = scale
    return _torch_ops["scale"]


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"],
                     xfail={"torch-*-jit": ("compile_error", "custom op without a fake impl")})
def torch_custom_op():
    if backend() != "torch":
        return lambda x: x * 2
    scale = scale_op_without_fake_impl()
    return lambda x: scale(x)


@harness.parity_case(inputs=harness.spec((4, 3)), checks=["build", "outputs", "train"],
                     cell_checks={"*-*-jit": ["build", "outputs"]})
def trained_only_without_jit():
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"],
                     skip={"*-*-jit": "budget: compiled in another case"})
def run_only_without_jit():
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build"],
                     xfail={"*-*-*": ("error", "model.save to a folder", "savedmodel_via_save")})
def fails_for_another_reason_than_declared():
    raise RuntimeError("not a saving problem")


@harness.parity_case(inputs=harness.spec((2, 3)), xfail={"torch-*-*": "expected to fail, but passes"})
def declared_but_passes():
    import keras
    return keras.layers.Dense(2)


@harness.parity_case(inputs=lambda rng: rng.integers(1, 9, size=(2, 5)).astype("int32"), checks=["build", "outputs"],
                     skip={"*-*-jit": "budget: the warning is the Layer's, not the compiler's"})
def mask_dropped_by_a_layer():
    """Keras warns that a layer without masking support destroys the Embedding's mask."""
    import keras

    return keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 3, mask_zero=True),
                             keras.layers.Lambda(lambda x: x * 2.0), keras.layers.GlobalAveragePooling1D()])
'''

BROKEN_ON_TORCH = '''
import os

import harness

if os.environ.get("KERAS_BACKEND") == "torch":
    import a_module_that_does_not_exist  # noqa: F401


@harness.parity_case(inputs=harness.spec((2, 3)))
def imported_case():
    import keras
    return keras.layers.Dense(2)
'''

CELLS = [f"{b}-cpu-{j}" for b in ("tensorflow", "jax", "torch") for j in ("nojit", "jit")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("core")
    write_module(path, "test_cases.py", CASES)
    write_module(path, "test_broken_on_torch.py", BROKEN_ON_TORCH)
    return run_pytest(path, "--keras-backends=all", "--keras-devices=cpu")


def test_every_case_gets_one_item_and_one_record_per_cell(run):
    items = run.outcomes()
    assert len(items) == 18 * 6, run.output[-3000:]
    assert {n.split("[")[1].rstrip("]") for n in items} == set(CELLS)
    report = run.report
    assert report["schema"] == 1
    assert len(report["cells"]) == 18 * 6
    assert report["run"]["reference"] == "tensorflow-cpu-nojit"
    assert {"keras", "tensorflow", "jax", "torch"} <= set(report["run"]["versions"])
    lines = (run.path / "reports" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 18 * 6
    matrix = (run.path / "reports" / "parity.md").read_text()
    assert "| case | tensorflow-cpu-nojit | tensorflow-cpu-jit | jax-cpu-nojit" in matrix
    assert "`test_cases.py::perturbed`" in matrix


@pytest.mark.parametrize("case", ["small_mlp", "ops_function", "conv_layer", "after_the_segfault"])
def test_correct_models_pass_every_cell_with_small_errors(run, case):
    for cell in CELLS:
        record = run.cell(case, cell)
        assert record["status"] == "pass", record
        assert run.outcomes()[f"{case}[{cell}]"] == "passed"
        outputs = record["checks"]["outputs"]
        assert outputs["status"] == "pass"
        if cell != "tensorflow-cpu-nojit":
            assert outputs["max_abs_err"] < 1e-5
        assert record["checks"]["build"]["status"] == "pass"


def test_a_one_weight_perturbation_is_a_mismatch_with_exact_figures(run):
    # Recompute the case's inputs (seeded by the case id) to know the exact expected error.
    import importlib.util
    import zlib

    spec = importlib.util.spec_from_file_location("cases_for_inputs", run.path / "test_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = module.perturbed.make_inputs(zlib.crc32(b"test_cases.py::perturbed"))
    expected_err = 0.5 * np.abs(x[:, 2])

    for cell in ("jax-cpu-nojit", "jax-cpu-jit"):
        record = run.cell("perturbed", cell)
        outputs = record["checks"]["outputs"]
        assert record["status"] == "mismatch"
        assert outputs["status"] == "mismatch"
        assert outputs["max_abs_err"] == pytest.approx(expected_err.max(), rel=1e-5)
        assert outputs["frac_mismatched"] == pytest.approx(4 / 12)
        assert outputs["worst_index"] == [int(np.argmax(expected_err)), 1]
        assert outputs["worst_value"] - outputs["worst_reference"] == pytest.approx(
            0.5 * x[np.argmax(expected_err), 2], rel=1e-5)
        assert run.outcomes()[f"perturbed[{cell}]"] == "failed"
    for cell in ("torch-cpu-nojit", "torch-cpu-jit", "tensorflow-cpu-jit"):
        assert run.cell("perturbed", cell)["status"] == "pass"
    assert "perturbed[jax-cpu-nojit]" in run.output and "max abs err" in run.output


def test_a_segfault_is_a_crash_and_the_next_cell_runs_in_a_fresh_worker(run):
    for cell in ("torch-cpu-nojit", "torch-cpu-jit"):
        record = run.cell("segfaults_on_torch", cell)
        assert record["status"] == "crash"
        assert "SIGSEGV" in record["failure"]["message"]
        assert "segfaults_on_torch" in record["failure"]["log_tail"]  # faulthandler's stack
        assert run.cell("after_the_segfault", cell)["status"] == "pass"
    assert run.cell("segfaults_on_torch", "jax-cpu-jit")["status"] == "pass"
    logs = sorted(p.name for p in (run.path / "reports" / "workers").iterdir())
    assert "torch-cpu.3.log" in logs  # two crashed workers were replaced


def test_a_sigkill_like_the_oom_killer_is_a_crash(run):
    record = run.cell("killed_like_oom_on_jax", "jax-cpu-nojit")
    assert record["status"] == "crash"
    assert "SIGKILL" in record["failure"]["message"] and "out-of-memory" in record["failure"]["message"]


def test_user_errors_are_errors_naming_the_case_with_hint(run):
    record = run.cell("factory_raises", "jax-cpu-nojit")
    assert record["status"] == "error"
    failure = record["failure"]
    assert (failure["check"], failure["phase"]) == ("build", "factory")
    assert failure["exception"] == "builtins.RuntimeError"
    assert failure["message"] == "boom from the factory"
    assert "factory_raises" in failure["traceback"]

    record = run.cell("inputs_do_not_fit", "torch-cpu-nojit")
    assert record["status"] == "error"
    assert "incompatible" in record["failure"]["message"]
    assert "inputs=" in record["failure"]["hint"]
    assert "\x1b[" not in record["failure"]["message"]


def test_a_module_that_fails_to_import_in_a_worker_is_an_error_for_that_backend(run):
    for cell in ("torch-cpu-nojit", "torch-cpu-jit"):
        record = run.cell("imported_case", cell)
        assert record["status"] == "error"
        assert record["failure"]["phase"] == "import"
        assert "a_module_that_does_not_exist" in record["failure"]["message"]
        assert record["case"] == "test_broken_on_torch.py::imported_case"
    assert run.cell("imported_case", "jax-cpu-jit")["status"] == "pass"


def test_a_jit_only_failure_is_a_compile_error_and_declared_xfail_holds(run):
    record = run.cell("python_if_on_tensor", "jax-cpu-jit")
    assert record["status"] == "xfail"
    assert record["xfail"]["actual"] == "compile_error" and record["xfail"]["met"]
    assert record["failure"]["kind"] == "python_bool_on_tensor"
    assert "keras.ops.cond" in record["failure"]["hint"]
    assert run.outcomes()["python_if_on_tensor[jax-cpu-jit]"] == "xfailed"
    assert run.cell("python_if_on_tensor", "jax-cpu-nojit")["status"] == "pass"


def test_a_declared_failure_that_passes_fails_strictly(run):
    record = run.cell("declared_but_passes", "torch-cpu-nojit")
    assert record["status"] == "pass" and record["xfail"]["met"] is False
    assert run.outcomes()["declared_but_passes[torch-cpu-nojit]"] == "failed"
    assert "XPASS(strict)" in run.output
    assert run.outcomes()["declared_but_passes[jax-cpu-nojit]"] == "passed"


def test_a_jax_tracing_failure_is_a_compile_error_naming_the_tracer(run):
    record = run.cell("float_of_a_traced_value", "jax-cpu-jit")
    assert record["status"] == "xfail" and record["xfail"]["actual"] == "compile_error"
    failure = record["failure"]
    assert failure["kind"] == "jax_tracer_leak"
    assert failure["exception"] == "jax.errors.ConcretizationTypeError"
    assert "jit_compile=False" in failure["hint"]
    for cell in ("jax-cpu-nojit", "tensorflow-cpu-nojit", "torch-cpu-nojit"):
        assert run.cell("float_of_a_traced_value", cell)["status"] == "pass"


def test_a_torch_compile_failure_is_a_compile_error_naming_the_fix(run):
    record = run.cell("torch_custom_op", "torch-cpu-jit")
    assert record["status"] == "xfail" and record["xfail"]["actual"] == "compile_error"
    failure = record["failure"]
    assert failure["kind"] == "torch_custom_op_without_fake"
    assert "TorchRuntimeError" in failure["exception"]
    assert "register_fake" in failure["hint"]
    assert run.cell("torch_custom_op", "torch-cpu-nojit")["status"] == "pass"


@pytest.mark.parametrize("cell", CELLS)
def test_timings_are_measured_and_a_jit_cells_first_call_pays_its_compile(run, cell):
    timings = run.cell("small_mlp", cell)["timings"]
    for phase in ("predict", "train"):
        first, low, median, high = (timings[f"{phase}_{k}_s"] for k in ("first", "min", "median", "max"))
        assert 0 < low <= median <= high
        if cell.endswith("-jit"):
            assert first > median, (phase, timings)
    assert timings["build_s"] > 0
    assert 0 < timings["cpu_s"] < 600
    assert 100 < timings["worker_peak_rss_mb"] < 20000
    assert 0 < timings["worker_rss_mb"] <= timings["worker_peak_rss_mb"]
    assert "gpu_peak_mb" not in timings
    # torch jit cells count the graphs torch.compile made: zero would mean dynamo ran eagerly
    assert (timings.get("compiled_graphs", 0) >= 1) == (cell == "torch-cpu-jit"), timings
    # JAX and torch keep compiled programs on disk, and say how many compiles it served
    assert ("compile_cache_hits" in timings) == (not cell.startswith("tensorflow")), timings


def test_a_declared_failure_of_another_kind_fails_naming_both_kinds(run):
    record = run.cell("fails_for_another_reason_than_declared", "jax-cpu-nojit")
    assert record["status"] == "error" and record["xfail"]["met"] is False
    assert (record["xfail"]["expected_kind"], record["xfail"]["actual_kind"]) == ("savedmodel_via_save", "exception")
    assert run.outcomes()["fails_for_another_reason_than_declared[jax-cpu-nojit]"] == "failed"
    assert "declared error of kind savedmodel_via_save (model.save to a folder), got error of kind exception" in run.output


def test_cell_checks_narrow_and_skip_removes_what_cells_run(run):
    for cell in CELLS:
        record = run.cell("trained_only_without_jit", cell)
        assert record["status"] == "pass"
        train = record["checks"]["train"]
        if cell.endswith("-jit"):
            assert train == {"status": "skip", "reason": "not run in this cell: the case's cell_checks"}
            assert "train_first_s" not in record["timings"]
        else:
            assert train["status"] == "pass"

    for cell in CELLS:
        record = run.cell("run_only_without_jit", cell)
        if cell.endswith("-jit"):
            assert record["status"] == "skip"
            assert record["skip_reason"] == "budget: compiled in another case"
            assert run.outcomes()[f"run_only_without_jit[{cell}]"] == "skipped"
        else:
            assert record["status"] == "pass"


def test_what_the_library_warns_is_recorded_per_cell_and_reported(run):
    for backend in ("tensorflow", "jax", "torch"):
        warned = run.cell("mask_dropped_by_a_layer", f"{backend}-cpu-nojit")["warnings"]
        mask = [w for w in warned if "destroy the mask information" in w["message"]]
        assert len(mask) == 1 and mask[0]["category"] == "UserWarning" and mask[0]["count"] >= 1, warned
        assert mask[0]["where"].startswith("layer.py:")
    for backend in ("tensorflow", "jax", "torch"):  # no mask there: no mask warning
        quiet = run.cell("small_mlp", f"{backend}-cpu-nojit").get("warnings", [])
        assert not [w for w in quiet if "mask" in w["message"]], quiet
    page = (run.path / "reports" / "parity.md").read_text()
    section = page[page.index("## Warnings"):]
    row = next(line for line in section.splitlines() if "was passed an input with a mask" in line)
    assert row.startswith("| Layer 'lambda' (of type Lambda) was passed an input with a mask"), row
    assert "| UserWarning | 1: test_cases.py::mask_dropped_by_a_layer |" in row, row
