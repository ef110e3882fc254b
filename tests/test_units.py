"""The pure parts, without workers: cell plans, the case API, array transport, comparisons,
status arithmetic and error classification."""

import os
import subprocess
import sys

import numpy as np
import pytest

import harness
from harness import arrays, cells, classify, compare
from harness.cells import Cell, UsageError, plan_cells, validate_pattern
from harness.statuses import worst


# -- cells -------------------------------------------------------------------------------

def test_cells_parse_and_print():
    cell = Cell.parse("torch-gpu-jit")
    assert (cell.backend, cell.device, cell.jit, cell.id) == ("torch", "gpu", True, "torch-gpu-jit")
    assert cell.worker_key == ("torch", "gpu", "")
    other = Cell.parse("torch-gpu-jit@rc")
    assert (other.env, other.id, other.base_id, other.worker_key) == ("rc", "torch-gpu-jit@rc", "torch-gpu-jit",
                                                                     ("torch", "gpu", "rc"))
    assert other.nojit == Cell("torch", "gpu", False, "rc")
    for bad in ("torch-gpu", "mxnet-cpu-jit", "torch-tpu-jit", "torch-cpu-yes"):
        with pytest.raises(UsageError, match="is not a cell"):
            Cell.parse(bad)


def test_a_pattern_with_an_environment_matches_only_its_cells_and_one_without_matches_every_environment():
    from harness.cells import matches

    assert matches("torch-cpu-jit@rc", "torch-*-*") and matches("torch-cpu-jit", "torch-*-*")
    assert matches("torch-cpu-jit@rc", "*@rc") and not matches("torch-cpu-jit", "*@rc")
    assert not matches("torch-cpu-jit@old", "*@rc") and not matches("jax-cpu-jit@rc", "torch-*-*@rc")


def test_environments_are_named_interpreters(tmp_path):
    from harness.cells import parse_envs

    assert parse_envs([f"rc={sys.executable}"], str(tmp_path)) == {"rc": sys.executable}
    for bad, message in ((["rc"], "write NAME=PYTHON"), (["r-c=python"], "write NAME=PYTHON"),
                         (["rc=missing/bin/python"], "make env ENV=rc"),
                         ([f"rc={sys.executable}", f"rc={sys.executable}"], "named twice")):
        with pytest.raises(UsageError, match=message):
            parse_envs(bad, str(tmp_path))


def test_xdist_hands_out_whole_cases():
    from harness.xdist_scheduling import CaseScheduling

    scope = CaseScheduling.__new__(CaseScheduling)._split_scope  # no xdist session needed
    assert scope("suites/ops/test_ops.py::add[torch-cpu-jit]") == "suites/ops/test_ops.py::add"
    assert scope("suites/ops/test_ops.py::add[jax-gpu-nojit]") == "suites/ops/test_ops.py::add"
    # another environment's cells go with the case's others (each xdist worker runs whole cases)
    assert scope("suites/ops/test_ops.py::add[jax-cpu-nojit@rc]") == "suites/ops/test_ops.py::add"
    assert scope("suites/examples/test_zoo.py::zoo[vit-small-jax-cpu-jit@rc]") == "suites/examples/test_zoo.py::zoo[vit-small]"
    # other tests keep `load`'s item-by-item units, and their xdist_group under loadgroup
    assert scope("tests/test_x.py::test_y[3]") == "tests/test_x.py::test_y[3]"
    assert scope("tests/test_x.py::test_y[torch-cpu-jit]@slow") == "slow"
    # a zoo: each entry of a case's params is a case of its own
    assert scope("suites/examples/test_zoo.py::zoo[vit-small-jax-cpu-jit]") == "suites/examples/test_zoo.py::zoo[vit-small]"


def test_plan_asks_for_every_combination_and_picks_the_reference():
    plan = plan_cells("all", "cpu", "both", None)
    assert [c.id for c in plan.cells] == [
        f"{b}-cpu-{j}" for b in ("tensorflow", "jax", "torch", "keras2") for j in ("nojit", "jit")]
    assert plan.reference == Cell.parse("tensorflow-cpu-nojit")
    assert plan_cells("jax,torch", "cpu", "on", None).reference == Cell.parse("jax-cpu-jit")
    assert plan_cells("jax", "cpu", "off", "torch-cpu-nojit").reference == Cell.parse("torch-cpu-nojit")


def test_plan_skips_gpu_cells_where_there_is_no_gpu(monkeypatch):
    monkeypatch.setattr("harness.cells.machine_has_gpu", lambda: False)
    plan = plan_cells("jax", "cpu,gpu", "off", None)
    assert plan.skip_reason(Cell.parse("jax-gpu-nojit")).startswith("no GPU")
    assert plan.skip_reason(Cell.parse("jax-cpu-nojit")) is None
    assert [c.id for c in plan_cells("jax", "auto", "off", None).cells] == ["jax-cpu-nojit"]


@pytest.mark.parametrize("args, message", [
    (("tf", "cpu", "both", None), "unknown backend"),
    (("", "cpu", "both", None), "(none given)"),
    (("all", "cpu,npu", "both", None), "unknown device"),
    (("all", "cpu", "sometimes", None), "both, on, off"),
    (("all", "cpu", "both", "jax-cpu"), "is not a cell"),
    (("all", "gpu", "both", "jax-gpu-jit"), "cannot run here"),
])
def test_plan_refuses_bad_values(args, message, monkeypatch):
    monkeypatch.setattr("harness.cells.machine_has_gpu", lambda: False)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_cells(*args)


def test_patterns_must_be_able_to_match_a_cell():
    validate_pattern("torch-*-jit", "x")
    validate_pattern("*@rc", "x")  # every cell of one environment
    validate_pattern("torch-*-*@rc", "x")
    for bad in ("torch-jit", "torch-*-on", "keras-*-*", "torch-*-*@"):
        with pytest.raises(UsageError, match="matches no cell"):
            validate_pattern(bad, "xfail pattern")


# -- the case API ------------------------------------------------------------------------

def test_inputs_forms_materialize_to_the_same_arrays_for_the_same_seed():
    case = harness.parity_case(inputs={"x": harness.spec((2, 3)), "ids": harness.spec((2,), "int32"),
                                       "pair": (np.ones(2), lambda rng: rng.random(1))})(lambda: None)
    first, again = case.make_inputs(7), case.make_inputs(7)
    assert first["x"].shape == (2, 3) and first["x"].dtype == np.float32
    assert first["ids"].dtype == np.int32
    assert isinstance(first["pair"], tuple)
    np.testing.assert_array_equal(first["x"], again["x"])
    assert not np.array_equal(first["x"], case.make_inputs(8)["x"])


def test_the_seed_depends_only_on_the_case_id():
    case = harness.parity_case(inputs=harness.spec((1,)))(lambda: None)
    assert case.seed("a.py::c") == case.seed("a.py::c") != case.seed("a.py::d")


@pytest.mark.parametrize("kwargs, message", [
    ({"checks": ["outputs", "speed"]}, "unknown check"),
    ({"checks": []}, "unknown check"),
    ({"rtol": -1}, "rtol must be a number"),
    ({"xfail": ["torch-*-*"]}, "must be a dict"),
    ({"xfail": {"torch-*-*": ("slow", "why")}}, "must be one of"),
    ({"xfail": {"torch-*-*": 3}}, "reason string"),
    ({"xfail": {"torch": "why"}}, "matches no cell"),
])
def test_bad_case_declarations_are_refused_with_the_case_named(kwargs, message):
    def my_case():
        pass

    with pytest.raises(harness.CaseDefinitionError, match=message):
        harness.parity_case(inputs=harness.spec((1,)), **kwargs)(my_case)


def test_params_make_a_case_per_entry_whose_inputs_may_take_them():
    def inputs(rng, width):
        return rng.normal(size=(2, width)).astype("float32")

    def zoo(width, depth=1):
        return ("model", width, depth)

    case = harness.parity_case(inputs=inputs, params={"narrow": {"width": 2}, "deep": {"width": 3, "depth": 4}})(zoo)
    deep = case.bind("deep")
    assert deep.name == "zoo[deep]" and deep() == ("model", 3, 4)
    assert deep.make_inputs(0).shape == (2, 3) and case.bind("narrow").make_inputs(0).shape == (2, 2)


@pytest.mark.parametrize("params, message", [
    ({}, "non-empty dict"),
    ({"a b": {"width": 2}}, "without brackets"),
    ({"wide": 64}, "must be a dict of keyword arguments"),
    ({"wide": {"widht": 64}}, r"cannot take \{'widht': 64\}"),
])
def test_bad_params_are_refused_with_the_case_and_entry_named(params, message):
    def zoo(width):
        pass

    with pytest.raises(harness.CaseDefinitionError, match=f"case 'zoo': params.*{message}"):
        harness.parity_case(inputs=harness.spec((1,)), params=params)(zoo)


def test_a_params_entry_carries_its_own_declarations():
    def zoo(width):
        return width

    case = harness.parity_case(inputs=harness.spec((1,)), xfail={"torch-*-*": "the zoo's own"}, params={
        "narrow": {"width": 2}, "wide": harness.param(width=64, xfail={"jax-*-jit": ("mismatch", "wide only")})})(zoo)
    wide, narrow = case.bind("wide"), case.bind("narrow")
    assert wide() == 64 and wide.xfail_rule("jax-cpu-jit").reason == "wide only"
    assert wide.xfail_rule("torch-cpu-jit").reason == "the zoo's own"
    assert narrow.xfail_rule("jax-cpu-jit") is None and narrow.xfail_rule("torch-cpu-nojit").reason == "the zoo's own"
    with pytest.raises(harness.CaseDefinitionError, match=r"case 'zoo\[wide\]': xfail\['jax-\*-jit'\] names status 'pass'"):
        harness.parity_case(inputs=harness.spec((1,)), params={
            "wide": harness.param(width=64, xfail={"jax-*-jit": ("pass", "why")})})(zoo)


def test_bad_inputs_name_what_to_change():
    case = harness.parity_case(inputs=lambda rng: "not an array")(lambda: None)
    with pytest.raises(harness.CaseDefinitionError, match="inputs: expected an array"):
        case.make_inputs(0)


def test_cell_checks_are_validated_and_narrow_the_matching_cells_only():
    case = harness.parity_case(inputs=harness.spec((1,)), cell_checks={
        "torch-*-jit": ["build", "outputs"], "*-*-jit": ["build", "outputs", "train"]})(lambda: None)
    assert case.runs_in("train", "torch-cpu-nojit") and not case.runs_in("train", "torch-cpu-jit")
    assert case.runs_in("train", "jax-cpu-jit") and not case.runs_in("save", "jax-gpu-jit")
    assert case.runs_in("outputs", "torch-cpu-jit")
    with pytest.raises(harness.CaseDefinitionError, match=r"cell_checks\['\*-\*-jit'\]: unknown"):
        harness.parity_case(inputs=harness.spec((1,)), cell_checks={"*-*-jit": ["compile"]})(lambda: None)
    with pytest.raises(harness.CaseDefinitionError, match=r"skip=\{'torch-\*-jit': reason\}"):
        harness.parity_case(inputs=harness.spec((1,)), cell_checks={"torch-*-jit": []})(lambda: None)
    with pytest.raises(harness.CaseDefinitionError, match="cell_checks pattern"):
        harness.parity_case(inputs=harness.spec((1,)), cell_checks={"torch-jit": ["build"]})(lambda: None)


def test_skip_names_cells_by_glob_with_a_reason():
    case = harness.parity_case(inputs=harness.spec((1,)), skip={
        "torch-*-jit": "compiled in the sample case", "*-gpu-*": "CPU only"})(lambda: None)
    assert case.skip_reason("torch-cpu-jit") == "compiled in the sample case"
    assert case.skip_reason("jax-gpu-nojit") == "CPU only"
    assert case.skip_reason("torch-cpu-nojit") is None
    for bad in ({"torch-cpu": "x"}, {"torch-*-jit": ""}, ["torch-*-jit"]):
        with pytest.raises(harness.CaseDefinitionError, match="skip"):
            harness.parity_case(inputs=harness.spec((1,)), skip=bad)(lambda: None)


def test_keras_parity_full_runs_what_budgets_leave_out(monkeypatch):
    declare = harness.parity_case(inputs=harness.spec((1,)), skip={"torch-*-jit": "budget"},
                                  cell_checks={"*-*-jit": ["build", "outputs"]})
    budgeted = declare(lambda: None)
    monkeypatch.setenv("KERAS_PARITY_FULL", "1")
    full = declare(lambda: None)
    assert budgeted.skip_reason("torch-cpu-jit") == "budget" and not budgeted.runs_in("train", "jax-cpu-jit")
    assert full.skip_reason("torch-cpu-jit") is None and full.runs_in("train", "jax-cpu-jit")
    with pytest.raises(harness.CaseDefinitionError, match="skip"):  # still validated
        harness.parity_case(inputs=harness.spec((1,)), skip={"torch-jit": "x"})(lambda: None)


def test_xfail_rules_match_cells_by_glob():
    case = harness.parity_case(inputs=harness.spec((1,)), xfail={
        "torch-*-jit": ("compile_error", "inductor"), "*-gpu-*": "no kernels"})(lambda: None)
    assert case.xfail_rule("torch-cpu-jit").status == "compile_error"
    assert case.xfail_rule("jax-gpu-nojit").status is None
    assert case.xfail_rule("torch-cpu-nojit") is None
    case = harness.parity_case(inputs=harness.spec((1,)), xfail={
        "*-*-*": ("error", "model.save to a folder", "savedmodel_via_save")})(lambda: None)
    assert case.xfail_rule("jax-cpu-jit").kind == "savedmodel_via_save"
    with pytest.raises(harness.CaseDefinitionError, match="triple"):
        harness.parity_case(inputs=harness.spec((1,)), xfail={"*-*-*": ("error",)})(lambda: None)


def test_a_machine_dependent_declaration_allows_its_outcomes_and_nothing_else():
    rule = harness.parity_case(inputs=harness.spec((1,)), xfail={"jax-*-*": harness.machine_dependent(
        "oneDNN's softmax", {"pass": "oneDNN off: NaN rows", "mismatch": "oneDNN on: [0, nan]"})})(
        lambda: None).xfail_rule("jax-cpu-jit")
    assert rule.expected == "pass or mismatch"
    assert rule.allows("pass", None) and rule.allows("mismatch", None)
    assert not rule.allows("error", "exception") and not rule.allows("compile_error", None)
    plain = harness.parity_case(inputs=harness.spec((1,)), xfail={"jax-*-*": ("mismatch", "why")})(
        lambda: None).xfail_rule("jax-cpu-jit")
    assert plain.allows("mismatch", None) and not plain.allows("pass", None)  # strict as before


@pytest.mark.parametrize("outcomes, message", [
    ({"pass": "AVX2"}, "two or more"),
    ({"pass": "AVX2", "slow": "AVX-512"}, "'slow' is not a status"),
    ({"pass": "AVX2", "xfail": "AVX-512"}, "'xfail' is not a status"),
    ({"pass": "AVX2", "mismatch": ""}, "what was measured"),
    ([("pass", "AVX2"), ("mismatch", "AVX-512")], "must be a dict"),
])
def test_a_machine_dependent_declaration_names_each_allowed_outcome_with_its_measure(outcomes, message):
    def my_case():
        pass

    with pytest.raises(harness.CaseDefinitionError, match=f"case 'my_case'.*{message}"):
        harness.parity_case(inputs=harness.spec((1,)),
                            xfail={"jax-*-*": harness.machine_dependent("why", outcomes)})(my_case)
    with pytest.raises(harness.CaseDefinitionError, match="give the reason"):
        harness.parity_case(inputs=harness.spec((1,)), xfail={"jax-*-*": harness.machine_dependent(
            " ", {"pass": "a", "error": "b"})})(my_case)


# -- arrays across the process boundary ---------------------------------------------------

def test_nested_structures_round_trip_through_npz(tmp_path):
    import ml_dtypes

    value = {"a": np.arange(6).reshape(2, 3), "b": [np.float32(1.5), (np.zeros(0), None)],
             "h": np.ones(3, ml_dtypes.bfloat16)}
    dtypes = arrays.save_tree(str(tmp_path / "t.npz"), value)
    back = arrays.load_tree(str(tmp_path / "t.npz"))
    np.testing.assert_array_equal(back["a"], value["a"])
    assert isinstance(back["b"], list) and isinstance(back["b"][1], tuple) and back["b"][1][1] is None
    assert dtypes == ["int64", "float32", "float64", "bfloat16"]
    assert back["h"].dtype == np.float32  # bfloat16 travels as float32, its name beside it
    skeleton, _ = arrays.load_leaves(str(tmp_path / "t.npz"))
    assert arrays.leaf_names(skeleton) == ["output['a']", "output['b'][0]", "output['b'][1][0]", "output['h']"]


# -- comparisons -------------------------------------------------------------------------

def test_equal_arrays_pass_and_report_zero_error():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    result = compare.compare_arrays("out", x, x.copy(), "float32", None, None)
    assert result["status"] == "pass" and result["max_abs_err"] == 0 and result["frac_mismatched"] == 0


def test_a_difference_beyond_tolerance_reports_figures_and_place():
    ref = np.ones((2, 5), np.float32)
    got = ref.copy()
    got[1, 3] = 1.5
    got[0, 0] = 1 + 1e-6  # within float32 tolerance
    result = compare.compare_arrays("out", ref, got, "float32", None, None)
    assert result["status"] == "mismatch"
    assert result["max_abs_err"] == pytest.approx(0.5)
    assert result["max_rel_err"] == pytest.approx(0.5)
    assert result["frac_mismatched"] == pytest.approx(0.1)
    assert result["worst_index"] == [1, 3]
    assert (result["worst_value"], result["worst_reference"]) == (1.5, 1.0)
    assert "1 of 10 elements" in result["message"]


def test_tolerances_follow_the_dtype_and_the_case_overrides():
    ref = np.array([1.0, 2.0])
    assert compare.compare_arrays("o", ref, ref + 1e-4, "float32", None, None)["status"] == "mismatch"
    assert compare.compare_arrays("o", ref, ref + 1e-4, "float16", None, None)["status"] == "pass"
    assert compare.compare_arrays("o", ref, ref + 1e-4, "float32", 1e-3, None)["status"] == "pass"
    assert compare.compare_arrays("o", np.array([1, 2]), np.array([1, 3]), "int32", None, None)["status"] == "mismatch"


def test_nan_and_inf_agree_only_in_place():
    ref = np.array([np.nan, np.inf, 1.0])
    assert compare.compare_arrays("o", ref, ref.copy(), "float32", None, None)["status"] == "pass"
    got = np.array([np.nan, 1.0, 1.0])
    assert compare.compare_arrays("o", ref, got, "float32", None, None)["status"] == "mismatch"
    got = np.array([0.0, np.inf, 1.0])
    assert compare.compare_arrays("o", ref, got, "float32", None, None)["max_abs_err"] == np.inf


def test_shape_dtype_and_output_count_differences_are_mismatches():
    a = np.zeros((2, 2))
    assert "shape" in compare.compare_arrays("o", a, np.zeros((2, 3)), "float32", None, None)["message"]
    result = compare.compare_outputs(["o"], [a], [a], ["float32"], ["float64"], None, None)
    assert result["status"] == "mismatch" and "dtype float64" in result["message"]
    assert compare.compare_outputs(["o"], [a], [a, a], ["float32"], ["float32"] * 2, None, None)["status"] == "mismatch"


def test_variables_are_compared_by_path_shape_dtype_and_trainable():
    ref = [{"path": "d/kernel", "shape": [2, 3], "dtype": "float32", "trainable": True},
           {"path": "d/bias", "shape": [3], "dtype": "float32", "trainable": True}]
    assert compare.compare_variables(ref, ref)["status"] == "pass"
    got = [dict(ref[0], trainable=False), {"path": "d/b", "shape": [3], "dtype": "float32", "trainable": True}]
    result = compare.compare_variables(ref, got)
    assert result["status"] == "mismatch"
    assert result["missing"] == ["d/bias"] and result["extra"] == ["d/b"]
    assert result["differing"] == ["d/kernel: trainable False (reference True)"]


def test_a_cell_status_is_the_worst_of_its_checks():
    assert worst(["pass", "pass"]) == "pass"
    assert worst(["pass", "skip"]) == "pass"
    assert worst(["skip", "skip"]) == "skip"
    assert worst(["pass", "mismatch", "error"]) == "error"
    assert worst(["timeout", "crash"]) == "crash"


# -- classification ----------------------------------------------------------------------

XLA_MESSAGE = """Detected unsupported operations when trying to compile graph __inference_one_step_on_data_125[] on XLA_CPU_JIT: AsString (No registered 'AsString' OpKernel for XLA_CPU_JIT devices compatible with node {{node my_model_1/AsString}}){{node my_model_1/AsString}}
StringToNumber (No registered 'StringToNumber' OpKernel for XLA_CPU_JIT devices compatible with node {{node my_model_1/StringToNumber}}){{node my_model_1/StringToNumber}}"""


def test_xla_unsupported_ops_are_a_compile_error_with_op_names():
    status, failure = classify.describe(ValueError(XLA_MESSAGE), check="outputs", phase="predict", jit=True)
    assert status == "compile_error"
    assert failure.kind == "xla_unsupported_ops"
    assert failure.to_json()["unsupported_ops"] == ["AsString", "StringToNumber"]
    assert "jit_compile=False" in failure.hint


def test_a_failure_that_also_fails_without_jit_is_an_error():
    status, _ = classify.describe(ValueError(XLA_MESSAGE), check="outputs", phase="predict", jit=True,
                                  jit_only=False)
    assert status == "error"
    status, failure = classify.describe(RuntimeError("odd"), check="outputs", phase="predict", jit=True,
                                        jit_only=True)
    assert status == "compile_error" and "only with jit on" in failure.hint


@pytest.mark.parametrize("message, kind", [
    ("A KerasTensor cannot be used as input to a TensorFlow function.", "keras_tensor_in_tf_op"),
    ("Invalid filepath extension for saving. Please add either a `.keras` extension", "savedmodel_via_save"),
    ("File format not supported: filepath=saved_model. Keras 3 only supports V3", "load_savedmodel"),
    ("Layer 'pos' looks like it has unbuilt state, but Keras is not able to trace", "unbuilt_state"),
    ("module 'keras.layers' has no attribute 'ThresholdedReLU'", "removed_api"),
    ("\x1b[1mInput 0 of layer 'dense' is incompatible with the layer\x1b[0m", "inputs_do_not_fit"),
])
def test_the_guides_errors_get_the_guides_hints(message, kind):
    status, failure = classify.describe(ValueError(message), check="build", phase="factory", jit=False)
    assert status == "error" and failure.kind == kind and failure.hint
    assert "\x1b" not in failure.message


def test_the_root_cause_is_the_innermost_error_of_the_chain_in_full():
    # As Keras' deserialization raises it: each level wraps the one below in its own words.
    try:
        try:
            try:
                raise TypeError("Patches.__init__() got an unexpected keyword argument 'name'")
            except TypeError as inner:
                raise TypeError(f"Error when deserializing class 'Patches' using config={{...}}.\n\n"
                                f"Exception encountered: {inner}") from None
        except TypeError as middle:
            raise TypeError("<class 'Functional'> could not be deserialized properly. " + "x" * 5000) from middle
    except TypeError as exc:
        status, failure = classify.describe(exc, check="save", phase="load_keras", jit=False)
    assert failure.root_cause == "TypeError: Error when deserializing class 'Patches' using config={...}.\n\n" \
                                 "Exception encountered: Patches.__init__() got an unexpected keyword argument 'name'"
    assert failure.kind == "init_without_kwargs"  # matched on the chain, not the outer message only
    assert "'name'" in failure.hint and "**kwargs" in failure.hint


def test_arrays_in_messages_are_summarised_not_printed_whole():
    printed = str(np.arange(400, dtype=np.float32).reshape(20, 20) / 7)
    _, failure = classify.describe(ValueError(f"Can not cast {printed} to float64"), check="export",
                                   phase="reload_tfsmlayer", jit=False)
    assert len(failure.message) < 200
    assert "[2-d array, 400 values printed: 0., 0.14285715, 0.2857143, 0.42857143, ...]" in failure.message
    assert classify.summarize_arrays("shape [2, 3] and [[1 2] [3 4]]") == "shape [2, 3] and [[1 2] [3 4]]"


PRINT_A_TENSOR = """
import sys
import numpy as np
import keras
from harness import classify
values = np.random.default_rng(0).normal(size=(30, 40)).astype("float32")
for tensor in (keras.ops.convert_to_tensor(values), keras.ops.convert_to_tensor(values) > 0):
    try:
        raise ValueError(f"the layer got {tensor} where it wanted a scalar")
    except ValueError as exc:
        _, failure = classify.describe(exc, check="outputs", phase="predict", jit=False)
    print(len(str(tensor)), repr(failure.message))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_tensors_each_backend_prints_are_summarised(backend):
    """torch prints `tensor([[...]])` over many lines, TensorFlow `tf.Tensor(...)`, JAX `Array(...)`,
    booleans as True/False: every one of them is summarised in a failure's message."""
    if backend not in cells.installed_backends():
        pytest.skip(f"{backend} is not installed")
    done = subprocess.run([sys.executable, "-c", PRINT_A_TENSOR], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()[-2:]
    for line, first in zip(lines, ("0.1257", "True")):
        printed, message = line.split(" ", 1)
        assert int(printed) > 250 and len(message) < 200, line
        assert "2-d array" in message and "more left out by the printer" in message and first in message, line
        assert "\\n" not in message, line


def test_the_mapped_npz_reader_agrees_with_numpy(tmp_path):
    values = {"a/b/kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
              "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
              "scalar": np.array(3.5), "empty": np.zeros((0, 2), np.int8), "flags": np.array([True, False])}
    np.savez(tmp_path / "w.npz", **values)
    np.savez_compressed(tmp_path / "c.npz", **values)
    for name in ("w.npz", "c.npz"):
        read = arrays.read_npz(str(tmp_path / name))
        assert set(read) == set(values)
        for key, value in values.items():
            assert read[key].dtype == value.dtype and read[key].shape == value.shape
            np.testing.assert_array_equal(read[key], value)


def test_dict_leaves_travel_in_key_order_whatever_order_a_backend_returns():
    a = {"b": np.zeros(2), "a": np.ones(3)}
    b = {"a": np.ones(3), "b": np.zeros(2)}
    assert arrays.leaf_names(arrays.flatten(a)[0]) == arrays.leaf_names(arrays.flatten(b)[0]) == [
        "output['a']", "output['b']"]


def test_keras2_cells_belong_to_cases_with_keras2_code_and_are_their_reference():
    assert Cell.parse("keras2-cpu-nojit").backend == "keras2"
    validate_pattern("keras2-*-jit", "test")
    # `*` declares what the Keras 3 backends do: a keras2 cell is matched only where it is named.
    assert not cells.matches("keras2-cpu-nojit", "*-*-*")
    assert cells.matches("keras2-cpu-jit", "keras2-*-*") and cells.matches("torch-cpu-jit", "*-*-*")
    plan = plan_cells("all", "cpu", "both", None)
    assert plan.reference.id == "tensorflow-cpu-nojit"  # never a keras2 cell by default

    without = harness.parity_case(inputs=harness.spec((1, 2)))(lambda: None)
    with_keras2 = harness.parity_case(inputs=harness.spec((1, 2)), keras2=lambda: None)(lambda: None)
    assert all(c.backend != "keras2" for c in cells.case_plan(plan, without).cells)
    assert "legacy_load" not in without.wanted_checks() and "legacy_load" in with_keras2.wanted_checks()
    keras2_plan = cells.case_plan(plan, with_keras2)
    assert {c.id for c in keras2_plan.cells} >= {"keras2-cpu-nojit", "keras2-cpu-jit", "jax-cpu-nojit"}
    if "keras2" in cells.installed_backends():
        assert keras2_plan.reference.id == "keras2-cpu-nojit"
    else:
        assert keras2_plan.skip_reason(Cell.parse("keras2-cpu-nojit")).startswith("Keras 2 is not installed")
    with pytest.raises(UsageError, match="keras2 cell is the reference of the cases that give Keras 2 code"):
        plan_cells("all", "cpu", "both", "keras2-cpu-nojit")


def test_keras2_must_be_a_factory_or_an_existing_h5_file(tmp_path):
    with pytest.raises(harness.CaseDefinitionError, match="must be a Keras 2 .h5 file that exists"):
        harness.parity_case(inputs=harness.spec((1, 2)), keras2=str(tmp_path / "missing.h5"))(lambda: None)
    with pytest.raises(harness.CaseDefinitionError, match="zero-argument factory written against tf.keras"):
        harness.parity_case(inputs=harness.spec((1, 2)), keras2=3)(lambda: None)
