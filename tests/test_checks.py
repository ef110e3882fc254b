"""The checks beyond build and outputs, each with a case that passes and a case that must
fail it, in one real run over the three backends with jit on and off."""

import pytest

from tests.conftest import requires_all_backends, run_pytest, write_module

pytestmark = requires_all_backends

CASES = '''
import numpy as np
import keras

import harness


def backend():
    return keras.backend.backend()


# -- train ---------------------------------------------------------------------------------

@harness.parity_case(inputs=harness.spec((8, 6)), checks=["build", "outputs", "train"])
def trains_with_batchnorm():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
                             keras.layers.Dense(2)])


class DriftsWhenTrainingOnTorch(keras.layers.Layer):
    def call(self, x, training=False):
        if training and keras.backend.backend() == "torch":
            return x * 1.5
        return x


@harness.parity_case(inputs=harness.spec((8, 6)), checks=["build", "outputs", "train"])
def trains_differently_on_torch():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), DriftsWhenTrainingOnTorch(),
                             keras.layers.Dense(2)])


@harness.parity_case(inputs=harness.spec((8, 6)), checks=["build", "outputs", "train"])
def trains_with_dropout():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dropout(0.5),
                             keras.layers.Dense(2)])


@harness.parity_case(inputs=harness.spec((8, 6)), targets=harness.spec((8, 7)),
                     checks=["build", "outputs", "train"])
def targets_do_not_fit():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])


# -- rng -----------------------------------------------------------------------------------

class SeededNoise(keras.layers.Layer):
    """The guide's pattern: a SeedGenerator held by the layer, noise active at inference."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x):
        return x + keras.random.uniform(keras.ops.shape(x), seed=self.seed_generator)


@harness.parity_case(inputs=harness.spec((64, 8)), checks=["build", "outputs", "rng"])
def noise_with_seed_generator():
    return keras.Sequential([keras.Input((8,)), SeededNoise()])


class IntSeedNoise(keras.layers.Layer):
    """The guide's footgun: a Python int seed, incremented per call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = 1337

    def call(self, x):
        self.seed += 1
        return x + keras.random.uniform(keras.ops.shape(x), seed=self.seed)


@harness.parity_case(inputs=harness.spec((64, 8)), checks=["build", "outputs", "rng"])
def noise_with_int_seed():
    return keras.Sequential([keras.Input((8,)), IntSeedNoise()])


@harness.parity_case(inputs=harness.spec((1,)), checks=["build", "outputs", "rng"])
def truncated_normal_draws():
    return lambda x: keras.random.truncated_normal((2000,), seed=7)


@harness.parity_case(inputs=harness.spec((1,)), checks=["build", "outputs", "rng"])
def normal_with_wider_law_on_torch():
    scale = 1.3 if backend() == "torch" else 1.0
    return lambda x: keras.random.normal((2000,), seed=7) * scale


@harness.parity_case(inputs=harness.spec((4, 32)), checks=["build", "outputs", "rng"])
def initializer_law_differs_on_jax():
    init = "ones" if backend() != "jax" else keras.initializers.RandomUniform(0.9, 1.1)
    return keras.Sequential([keras.Input((32,)), keras.layers.Dense(16, kernel_initializer=init)])


# -- save ----------------------------------------------------------------------------------

@harness.parity_case(inputs=harness.spec((4, 6)), checks=["build", "outputs", "save"])
def saves_everywhere():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="tanh")])


class NoConfig(keras.layers.Layer):
    def __init__(self, units):
        super().__init__()
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, x):
        return keras.ops.matmul(x, self.w)


@harness.parity_case(inputs=harness.spec((4, 6)), checks=["build", "outputs", "save"])
def cannot_be_rebuilt():
    return keras.Sequential([keras.Input((6,)), NoConfig(3)])


# -- export --------------------------------------------------------------------------------

@harness.parity_case(inputs=harness.spec((4, 6)), checks=["build", "outputs", "export"])
def exports():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


class PythonIfModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        y = self.dense(x)
        if keras.ops.sum(y) > 0:
            return y * 2
        return y


@harness.parity_case(inputs=harness.spec((4, 6)), checks=["build", "outputs", "export"],
                     xfail={"tensorflow-*-*": ("error", "no autograph in call(): graph mode fails"),
                            "jax-*-jit": ("compile_error", "Python if on a traced value")})
def export_cannot_trace_python_if():
    return PythonIfModel()


# -- untracked state -----------------------------------------------------------------------

class RawArrayWeight(keras.layers.Layer):
    def build(self, input_shape):
        self.w = np.ones((input_shape[-1], 2), "float32")

    def call(self, x):
        return keras.ops.matmul(x, self.w)


@harness.parity_case(inputs=harness.spec((4, 3)), checks=["build", "outputs"])
def raw_array_attribute():
    return keras.Sequential([keras.Input((3,)), RawArrayWeight()])


class TfVariableWeight(keras.layers.Layer):
    def build(self, input_shape):
        import tensorflow as tf
        self.w = tf.Variable(tf.zeros((input_shape[-1], 2)))

    def call(self, x):
        return keras.ops.matmul(x, keras.ops.convert_to_tensor(np.zeros((3, 2), "float32")))


@harness.parity_case(inputs=harness.spec((4, 3)), checks=["build", "outputs"])
def tf_variable_attribute():
    return keras.Sequential([keras.Input((3,)), TfVariableWeight()])


class TorchParameterWeight(keras.layers.Layer):
    def build(self, input_shape):
        import torch
        self.w = torch.nn.Parameter(torch.zeros(input_shape[-1], 2))

    def call(self, x):
        return x


@harness.parity_case(inputs=harness.spec((4, 3)), checks=["build", "outputs"])
def torch_parameter_attribute():
    return keras.Sequential([keras.Input((3,)), TorchParameterWeight()])


class WeightInCall(keras.layers.Layer):
    def call(self, x):
        if not hasattr(self, "scale"):
            self.scale = self.add_weight(shape=(), initializer="ones")
        return x * self.scale


@harness.parity_case(inputs=harness.spec((4, 3)), checks=["build", "outputs"])
def weight_created_in_call():
    return WeightInCall()


class AddWeightInBuild(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2), initializer="ones")

    def call(self, x):
        return keras.ops.matmul(x, self.w)


@harness.parity_case(inputs=harness.spec((4, 3)), checks=["build", "outputs"])
def weight_added_in_build():
    return keras.Sequential([keras.Input((3,)), AddWeightInBuild()])
'''

BACKENDS = ("tensorflow", "jax", "torch")
CELLS = [f"{b}-cpu-{j}" for b in BACKENDS for j in ("nojit", "jit")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("checks")
    write_module(path, "test_checks_cases.py", CASES)
    return run_pytest(path, "--keras-backends=all", "--keras-devices=cpu")


def test_training_compares_losses_and_weights_including_moving_statistics(run):
    for cell in CELLS[1:]:
        train = run.cell("trains_with_batchnorm", cell)["checks"]["train"]
        assert train["status"] == "pass", (cell, train)
        assert len(train["losses"]) == 4 and train["losses"] == pytest.approx(train["reference_losses"], rel=1e-4)
        assert train["max_abs_err"] < 1e-5
    for cell in ("torch-cpu-nojit", "torch-cpu-jit"):
        record = run.cell("trains_differently_on_torch", cell)
        assert record["checks"]["outputs"]["status"] == "pass"
        assert record["checks"]["train"]["status"] == "mismatch"
        assert "after training" in record["checks"]["train"]["message"]
    assert run.cell("trains_differently_on_torch", "jax-cpu-jit")["checks"]["train"]["status"] == "pass"


def test_training_that_draws_random_numbers_is_not_compared_across_backends(run):
    # Dropout is inactive at inference, so outputs still match by value; training draws masks.
    for cell in ("jax-cpu-nojit", "torch-cpu-jit"):
        record = run.cell("trains_with_dropout", cell)
        assert record["checks"]["outputs"]["status"] == "pass"
        train = record["checks"]["train"]
        assert train["status"] == "skip" and "random" in train["reason"], train
        assert record["status"] == "pass"


def test_targets_that_do_not_fit_are_an_error_naming_the_case(run):
    record = run.cell("targets_do_not_fit", "jax-cpu-nojit")
    assert record["status"] == "error"
    assert record["checks"]["outputs"]["status"] == "pass"
    failure = record["failure"]
    assert failure["check"] == "train" and failure["hint"] and "targets=" in failure["hint"]
    assert record["case"].endswith("::targets_do_not_fit")


def test_inference_noise_is_compared_by_distribution_not_value(run):
    for cell in CELLS:
        record = run.cell("noise_with_seed_generator", cell)
        assert record["status"] == "pass", (cell, record["checks"], record.get("failure"))
        assert record["checks"]["rng"]["reproducible"] is True
    record = run.cell("noise_with_seed_generator", "jax-cpu-nojit")
    assert record["checks"]["outputs"]["compared"] == "distribution"
    assert any("by distribution" in note for note in record["notes"])


def test_a_python_int_seed_is_caught_where_compiled_calls_repeat(run):
    # TensorFlow's nojit cell is a tf.function graph: compiled too, so it repeats as well.
    for cell in ("tensorflow-cpu-nojit", "tensorflow-cpu-jit", "jax-cpu-jit"):
        record = run.cell("noise_with_int_seed", cell)
        assert record["checks"]["rng"]["status"] == "mismatch", (cell, record["checks"]["rng"])
        assert record["checks"]["rng"]["seed_footgun"] is True
        assert "SeedGenerator" in record["failure"]["hint"]
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit"):
        assert run.cell("noise_with_int_seed", cell)["checks"]["rng"]["status"] == "pass"


def test_laws_of_draws_are_compared_across_backends(run):
    for cell in CELLS:
        assert run.cell("truncated_normal_draws", cell)["status"] == "pass", cell
    for cell in ("torch-cpu-nojit", "torch-cpu-jit"):
        outputs = run.cell("normal_with_wider_law_on_torch", cell)["checks"]["outputs"]
        assert outputs["status"] == "mismatch" and outputs["compared"] == "distribution"
        assert outputs["outputs"][0]["ks_pvalue"] < 1e-3
        assert outputs["outputs"][0]["std"] == pytest.approx(1.3, rel=0.1)
    assert run.cell("normal_with_wider_law_on_torch", "jax-cpu-jit")["status"] == "pass"


def test_initializers_with_another_law_are_caught(run):
    rng = run.cell("initializer_law_differs_on_jax", "jax-cpu-nojit")["checks"]["rng"]
    assert rng["status"] == "mismatch"
    assert "kernel" in rng["message"]
    assert run.cell("initializer_law_differs_on_jax", "torch-cpu-nojit")["checks"]["rng"]["status"] == "pass"


def test_save_round_trips_and_loads_across_backends(run):
    for backend in BACKENDS:
        save = run.cell("saves_everywhere", f"{backend}-cpu-nojit")["checks"]["save"]
        assert save["status"] == "pass", save
        assert save["round_trips"] == {"keras": True, "weights_h5": True}
        others = {f"{b}-cpu-nojit" for b in BACKENDS if b != backend}
        assert set(save["loaded_from"]) == others
        assert all(r["status"] == "pass" for r in save["loaded_from"].values())
        # the loads ran in this cell's worker after the cells, and count on this cell
        assert run.cell("saves_everywhere", f"{backend}-cpu-nojit")["timings"]["load_others_s"] > 0
        assert "load_others_s" not in run.cell("saves_everywhere", f"{backend}-cpu-jit")["timings"]
        jit_save = run.cell("saves_everywhere", f"{backend}-cpu-jit")["checks"]["save"]
        assert jit_save["status"] == "skip" and "once" in jit_save["reason"]


def test_a_layer_that_cannot_be_rebuilt_fails_save_and_the_other_checks_still_run(run):
    record = run.cell("cannot_be_rebuilt", "jax-cpu-nojit")
    assert record["checks"]["save"]["status"] == "error"
    assert record["checks"]["outputs"]["status"] == "pass"
    assert record["failure"]["check"] == "save"
    assert "get_config" in record["failure"]["hint"]
    assert record["status"] == "error"


def test_export_reloads_through_tfsmlayer_and_onnxruntime_and_matches(run):
    for backend in ("tensorflow", "jax"):
        export = run.cell("exports", f"{backend}-cpu-nojit")["checks"]["export"]
        assert export["status"] == "pass", export
        assert export["saved_model"]["max_abs_err"] < 1e-5
        assert "TFSMLayer" in export["saved_model"]["reloaded_with"]
        assert run.cell("exports", f"{backend}-cpu-nojit")["timings"]["saved_model_reload_s"] > 0
    torch_export = run.cell("exports", "torch-cpu-nojit")["checks"]["export"]
    assert "torch_xla" in torch_export["saved_model"]["reason"]
    for backend in ("tensorflow", "torch"):  # tf2onnx and onnxscript are installed by make .venv
        export = run.cell("exports", f"{backend}-cpu-nojit")["checks"]["export"]
        assert export["onnx"]["status"] == "pass" and export["onnx"]["max_abs_err"] < 1e-5, export
        assert export["onnx"]["run_with"] == "onnxruntime"
    jax_onnx = run.cell("exports", "jax-cpu-nojit")["checks"]["export"]["onnx"]
    assert jax_onnx["status"] == "skip" and "jax2onnx" in jax_onnx["reason"]


def test_an_export_failure_is_a_failed_export_check_not_a_crash(run):
    # JAX runs the model eagerly, but jax2tf must trace it for the SavedModel.
    record = run.cell("export_cannot_trace_python_if", "jax-cpu-nojit")
    assert record["checks"]["export"]["status"] == "error"
    assert record["checks"]["outputs"]["status"] == "skip"  # the reference cell failed
    assert record["failure"]["check"] == "export" and record["failure"]["phase"] == "export"
    assert "TracerBoolConversionError" in record["failure"]["message"]  # the cause is named
    assert "keras.ops.cond" in record["failure"]["hint"]


@pytest.mark.parametrize("case, text, fix", [
    ("raw_array_attribute", "raw numpy array", "add_weight"),
    ("tf_variable_attribute", "tf.Variable", "add_weight"),
    ("torch_parameter_attribute", "torch.nn.Parameter", "add_weight"),
    ("weight_created_in_call", "add new elements of state", "build(self, input_shape)"),
])
def test_state_keras_does_not_track_fails_build_with_the_guides_fix(run, case, text, fix):
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit", "tensorflow-cpu-nojit"):
        record = run.cell(case, cell)
        assert record["status"] == "error", (cell, record.get("failure"))
        failure = record["failure"]
        assert failure["check"] == "build" and text in failure["message"]
        assert fix in failure["hint"]


def test_weights_added_in_build_pass(run):
    for cell in CELLS:
        assert run.cell("weight_added_in_build", cell)["status"] == "pass"
