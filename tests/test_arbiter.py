"""The float64 arbiter and the verdicts it guards, on real backends: round-off beyond the plain
tolerance passes with its float64 figures; torch's one-pass batch variance (Keras computes
BatchNormalization's variance as E[x^2] - E[x]^2 under torch) departs beyond the round-off band,
is named, localized in training mode and reproduced; the reference that is itself far from
float64 is said so; variables at one path are compared; tiny values are compared at their own
scale; too few draws are not a pass.

Each divergence named here is confirmed by a plain script in the case's docstring."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import requires_all_backends, run_pytest, write_module

CASES = '''
import numpy as np
import keras
from keras import layers

import harness


def raw_features(rng):
    """Unscaled tabular features: a year, a temperature in kelvin, a pressure in hPa."""
    return np.stack([rng.integers(1990, 2025, size=16), rng.normal(290, 5, size=16),
                     rng.normal(1013, 8, size=16)], axis=1).astype("float32")


@harness.parity_case(inputs=raw_features, targets=lambda rng: rng.normal(size=(16, 1)).astype("float32"),
                     checks=["build", "outputs", "train"])
def tabular_batchnorm():
    """BatchNormalization on a Dense of raw features, as a tabular model without a
    Normalization layer has it: the batch's activations are large (about 1e3) and their spread
    small, and torch computes their variance in one pass. A plain script (16 such rows, one step
    of SGD(0.01) on mse, the same weights in each backend): the loss is 1.028844 under torch
    against 1.029306 under TensorFlow and JAX and 1.029307 in float64 (TensorFlow); torch with a
    two-pass variance patched into keras.src.backend.torch.nn.moments gives 1.029305."""
    x = keras.Input((3,))
    h = layers.Activation("relu")(layers.BatchNormalization()(layers.Dense(8)(x)))
    return keras.Model(x, layers.Dense(1)(h))


def cancelling(rng):
    """Pairs that cancel, shuffled: no kernel's blocking (16 AVX-512 lanes, 8 AVX2 ones) pairs them."""
    big = rng.normal(size=(4, 2048)) * 1000
    values = np.concatenate([big, -big + rng.normal(size=(4, 2048)) * 1e-3], axis=1)
    return values[:, rng.permutation(values.shape[1])].astype("float32")


@harness.parity_case(inputs=cancelling, checks=["build", "outputs"])
def long_dot_product():
    """A 4096-term sum of values of 1000 that cancel to about 0.05: each backend sums in its own
    order, and its round-off is beyond atol in the result."""
    x = keras.Input((4096,))
    return keras.Model(x, layers.Dense(2, kernel_initializer="ones")(x))


class TwoBiases(layers.Layer):
    """Two variables given one name, as keras-hub's T5 gives its encoder's and decoder's
    relative-attention bias."""

    def build(self, shape):
        self.scale = self.add_weight(name="bias", shape=(shape[-1],), initializer="random_normal")
        self.shift = self.add_weight(name="bias", shape=(shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * self.scale + self.shift


@harness.parity_case(inputs=lambda rng: rng.normal(size=(4, 3)).astype("float32"), checks=["build", "outputs", "train"])
def two_variables_one_path():
    """A plain script (x = ones((4, 3)), y = zeros, SGD(0.1), mse, scale = ones, shift = zeros)
    prints the scale after each step: 0.93333, 0.87556, 0.82548 under TensorFlow and JAX, and
    0.93333, 0.80889, 0.63881 under torch, whose second step moves the first variable wrongly."""
    x = keras.Input((3,))
    return keras.Model(x, layers.Dense(2)(TwoBiases()(x)))


@harness.parity_case(inputs=lambda rng: rng.normal(size=(4, 3)).astype("float32"), checks=["build", "outputs"])
def tiny_outputs():
    x = keras.Input((3,))
    return keras.Model(x, layers.Dense(2, kernel_initializer=keras.initializers.RandomNormal(stddev=1e-9))(x))


@harness.parity_case(inputs=lambda rng: rng.uniform(0, 1e-9, size=(2, 8, 8, 3)).astype("float32"),
                     checks=["build", "outputs"])
def tiny_bicubic_resize():
    """Bicubic resizing of an image of about 1e-9: torch's cubic kernel (a=-0.75) is not
    TensorFlow's (a=-0.5), which atol=1e-5 would never see."""
    return layers.Resizing(12, 12, interpolation="bicubic")


@harness.parity_case(inputs=lambda rng: rng.normal(size=(4,)).astype("float32"), checks=["build", "outputs"])
def fixed_seed_noise():
    """Four normal draws from a fixed int seed: every call repeats them."""
    return lambda x: x + keras.random.normal((4,), seed=1)
'''

pytestmark = requires_all_backends


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("arbiter")
    write_module(path, "test_arbiter_cases.py", CASES)
    return run_pytest(path, "--keras-backends=all", "--keras-devices=cpu", "--keras-jit=off")


def reproduce(folder: str, backend: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, os.path.join(folder, "repro.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_round_off_beyond_the_tolerance_passes_with_its_float64_figures(run):
    beyond = []
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit"):
        record = run.cell("long_dot_product", cell)
        outputs = record["checks"]["outputs"]
        assert record["status"] == "pass", outputs
        if outputs["max_abs_err"] <= 1e-5:
            # The same kernel as TensorFlow's on this CPU (torch's and TensorFlow's oneDNN on
            # AVX-512 sum in one order): within atol, nothing to arbitrate.
            assert "float64" not in outputs, outputs
            continue
        beyond.append(cell)
        account = outputs["float64"]
        assert account["verdict"] == "round-off" and account["truth"] == "tensorflow", account
        assert account["held"] == {"tensorflow": True}, account  # no cell diverged: no other backend ran float64
        judged = account["outputs"]["output"]
        # Within the nudged runs' band, or (a sum that cancels, on a CPU whose kernels sum in yet
        # another order) where round-off alone moves the value by more than its size allows.
        assert judged["why"] in ("within_band", "roundoff_dominated"), judged
        assert judged["why"] != "within_band" or judged["error"] <= judged["band"], judged
        assert judged["band"] >= 3 * judged["reference_error"], judged  # 3x the widest round-off sample
        assert any("round-off" in note for note in record["notes"]), record["notes"]
    assert "jax-cpu-nojit" in beyond, beyond  # XLA's dot emitter sums in its own order on every CPU
    markdown = (run.path / "reports" / "parity.md").read_text()
    assert "## Judged against float64" in markdown and "| `test_arbiter_cases.py::long_dot_product` | jax-cpu-nojit " \
                                                         "| outputs | round-off | tensorflow |" in markdown


def test_torch_one_pass_batch_variance_departs_beyond_the_band_and_is_localized_in_training_mode(run):
    torch = run.cell("tabular_batchnorm", "torch-cpu-nojit")
    assert torch["status"] == "mismatch"
    train = torch["checks"]["train"]
    first = train["first_divergence"]
    assert (first["step"], first["quantity"], first["outlier"]) == (1, "loss", "torch"), first
    judged = first["float64"]
    assert judged["why"] == "numerical" and judged["error"] > 10 * judged["band"], judged  # torch's own float64 agrees
    assert judged["own_float64_error"] < judged["band"], judged
    forward = first["forward"]
    assert (forward["layer"], forward["class"], forward["outlier"]) == ("batch_normalization", "BatchNormalization",
                                                                         "torch"), forward
    # The layer alone, fed the reference's inputs in training mode, errs as it does in place.
    assert forward["introduced"] and forward["local_err"] == pytest.approx(forward["output_err"], rel=0.25), forward
    assert train["localization"]["mode"].startswith("training")
    assert train["localization"]["float64"].startswith("each layer beyond the plain tolerance was judged")
    reproducer = forward["reproducer"]
    assert reproducer["written"] and reproducer["reference_max_abs_err"] < 1e-5, reproducer
    assert reproduce(reproducer["folder"], "torch")["reproduces"]
    assert not reproduce(reproducer["folder"], "tensorflow")["reproduces"]
    assert "in training mode" in open(os.path.join(reproducer["folder"], "repro.py")).read()
    # JAX's differences from TensorFlow stay within float32 round-off of float64
    jax = run.cell("tabular_batchnorm", "jax-cpu-nojit")
    assert jax["status"] == "pass", jax["checks"]["train"]
    assert jax["checks"]["train"].get("float64", {}).get("verdict", "round-off") == "round-off"


def test_the_reference_far_from_float64_is_said_so(tmp_path):
    write_module(tmp_path, "test_arbiter_cases.py", CASES)
    run = run_pytest(tmp_path, "--keras-backends=all", "--keras-devices=cpu", "--keras-jit=off",
                     "--keras-reference=torch-cpu-nojit", "-k", "tabular_batchnorm")
    torch = run.cell("tabular_batchnorm", "torch-cpu-nojit")
    train = torch["checks"]["train"]
    assert torch["status"] == "mismatch" and train["message"].startswith("the reference cell is the one far from float64")
    assert train["first_divergence"]["outlier"] == "torch (the reference)", train["first_divergence"]
    for cell in ("tensorflow-cpu-nojit", "jax-cpu-nojit"):
        record = run.cell("tabular_batchnorm", cell)
        assert record["status"] == "pass", record["checks"]["train"]
        assert record["checks"]["train"]["float64"]["verdict"] == "round-off"


def test_two_variables_at_one_path_are_compared_and_torch_trains_them_wrongly(run):
    for cell in ("tensorflow-cpu-nojit", "jax-cpu-nojit", "torch-cpu-nojit"):
        record = run.cell("two_variables_one_path", cell)
        assert record["checks"]["build"]["status"] == "pass" and record["checks"]["outputs"]["status"] == "pass"
        assert any("share a path (two_biases/bias)" in note for note in record["notes"]), record["notes"]
    assert run.cell("two_variables_one_path", "jax-cpu-nojit")["status"] == "pass"
    first = run.cell("two_variables_one_path", "torch-cpu-nojit")["checks"]["train"]["first_divergence"]
    assert (first["step"], first["quantity"], first["variable"], first["outlier"]) == (
        2, "weight", "two_biases/bias", "torch"), first
    assert first["float64"]["verdict"] == "diverges", first


def test_tiny_values_are_compared_at_their_own_scale(run):
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit"):
        outputs = run.cell("tiny_outputs", cell)["checks"]["outputs"]
        assert outputs["status"] == "pass" and "own scale" in outputs["compared_at"], outputs
        assert outputs["max_scaled_err"] < 1e-5, outputs
    resized = run.cell("tiny_bicubic_resize", "torch-cpu-nojit")
    outputs = resized["checks"]["outputs"]
    assert resized["status"] == "mismatch" and "own scale" in outputs["compared_at"], outputs
    assert outputs["max_abs_err"] < 1e-9 and "at the values' own scale" in outputs["message"], outputs
    assert outputs["float64"]["verdict"] == "diverges", outputs["float64"]
    assert " rel" in (run.path / "reports" / "parity.md").read_text()  # the matrix shows the relative error


def test_too_few_draws_are_not_a_pass(run):
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit"):
        record = run.cell("fixed_seed_noise", cell)
        assert record["status"] == "skip", record
        assert "4 draws, fewer than the 32" in record["skip_reason"], record["skip_reason"]
