"""The `train` check on what users train: their optimizer, fit(x), the first divergence of a
real backend difference, and the guide's int-seed pitfall in a train step; one real run over
the three backends with jit on and off."""

import pytest

from tests.conftest import requires_all_backends, run_pytest, write_module

pytestmark = requires_all_backends

CASES = '''
import numpy as np
import keras
from keras import layers, ops

import harness

TRAIN = ["build", "outputs", "train"]
BUDGET = {"torch-*-jit": "torch.compile of a train step takes tens of seconds: the other cases compile it"}


@harness.parity_case(inputs=lambda rng: np.array([[1, 1, 1, 2, 3, 1]] * 4, dtype="int32"),
                     optimizer=lambda: keras.optimizers.Adam(0.1), checks=TRAIN)
def adam_on_repeated_ids():
    return keras.Sequential([keras.Input((6,), dtype="int32"), layers.Embedding(10, 4), layers.Flatten(),
                             layers.Dense(3)])


@harness.parity_case(inputs=harness.spec((8, 6)), checks=TRAIN)
def compiled_by_the_factory():
    model = keras.Sequential([keras.Input((6,)), layers.Dense(4), layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.RMSprop(0.005, clipnorm=1.0), loss="mae", metrics=["mse"])
    return model


@harness.parity_case(inputs=harness.spec((8, 6)), optimizer=lambda: keras.optimizers.Adafactor(0.01), checks=TRAIN,
                     skip=BUDGET)
def adafactor_state():
    return keras.Sequential([keras.Input((6,)), layers.Dense(4), layers.Dense(2)])


@harness.parity_case(inputs=lambda rng: rng.normal(size=(8, 6)).astype("float32"),
                     targets=lambda rng: {"label": rng.integers(0, 2, size=(8, 1)).astype("float32"),
                                          "score": rng.normal(size=(8, 1)).astype("float32")}, checks=TRAIN,
                     skip=BUDGET)
def saturated_label_output():
    x = keras.Input((6,))
    label = layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=30.0),
                         name="label")(x)
    model = keras.Model(x, {"label": label, "score": layers.Dense(1, name="score")(x)})
    model.compile(optimizer="sgd", loss={"label": "binary_crossentropy", "score": "mse"})
    return model


@harness.parity_case(inputs=harness.spec((8, 6)), targets=lambda rng: rng.integers(0, 3, size=(8,)).astype("int32"),
                     loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
                     checks=TRAIN, skip=BUDGET)
def per_sample_loss():
    return keras.Sequential([keras.Input((6,)), layers.Dense(3)])


class IntSeedDropout(layers.Layer):
    """The guide's pitfall in a dropout-like layer: a Python int seed bumped per call."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, 1337

    def call(self, x, training=False):
        if not training:
            return x
        self.seed += 1
        return keras.random.dropout(x, self.rate, seed=self.seed)


@harness.parity_case(inputs=harness.spec((8, 6)), checks=TRAIN)
def int_seed_dropout():
    return keras.Sequential([keras.Input((6,)), layers.Dense(8), IntSeedDropout(0.5), layers.Dense(3)])


class Sampling(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        self.add_loss(ops.mean(-0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)))
        return z_mean + ops.exp(0.5 * z_log_var) * keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)


class VAE(keras.Model):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        reconstruction = ops.mean(ops.sum(keras.losses.binary_crossentropy(x, y_pred), axis=-1))
        return reconstruction + sum(self.losses)


@harness.parity_case(inputs=lambda rng: rng.uniform(size=(8, 6)).astype("float32"), targets=harness.no_targets,
                     checks=TRAIN)
def vae_trained_as_fit_x():
    i = keras.Input((6,))
    h = layers.Dense(4, activation="relu")(i)
    z = Sampling()([layers.Dense(2)(h), layers.Dense(2)(h)])
    return VAE(i, layers.Dense(6, activation="sigmoid")(z))


class UnpacksTargets(keras.Model):
    def train_step(self, data):
        x, y = data  # fit(x) gives x alone
        return {"loss": ops.mean(self(x))}


@harness.parity_case(inputs=harness.spec((8, 6)), checks=TRAIN)
def train_step_unpacks_targets():
    inputs = keras.Input((6,))
    model = UnpacksTargets(inputs, layers.Dense(2)(inputs))
    model.compile(optimizer="sgd")  # no loss: its own train_step trains it as fit(x)
    return model
'''

BACKENDS = ("tensorflow", "jax", "torch")
CELLS = [f"{b}-cpu-{j}" for b in BACKENDS for j in ("nojit", "jit")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("training")
    write_module(path, "test_training_cases.py", CASES)
    return run_pytest(path, "--keras-backends=all", "--keras-devices=cpu")


def test_adam_on_repeated_ids_diverges_at_step_1_in_tensorflow(run):
    # TensorFlow's Adam squares each gathered slice's gradient before the repeated ids are
    # summed; JAX and torch square the summed gradient. The reference cell is TensorFlow's.
    for cell in CELLS[2:]:
        train = run.cell("adam_on_repeated_ids", cell)["checks"]["train"]
        assert train["status"] == "mismatch", (cell, train)
        first = train["first_divergence"]
        assert first["step"] == 1 and first["quantity"] == "optimizer", first
        assert first["variable"].endswith("embedding_embeddings_velocity"), first
        assert first["outlier"] == "tensorflow (the reference)", first
        assert train["configuration"]["optimizer"]["class"] == "Adam"
        assert train["configuration"]["source"]["optimizer"] == "the case"
    assert run.cell("adam_on_repeated_ids", "tensorflow-cpu-jit")["checks"]["train"]["status"] == "pass"


def test_the_factorys_compile_is_what_trains(run):
    for cell in CELLS[1:]:
        train = run.cell("compiled_by_the_factory", cell)["checks"]["train"]
        assert train["status"] == "pass", (cell, train)
        config = train["configuration"]
        assert config["optimizer"]["class"] == "RMSprop" and config["optimizer"]["clipnorm"] == 1.0
        assert config["loss"] == "mae" and config["source"]["loss"] == "the factory's compile()"
        assert train["gradients"] == ("in the nojit cell" if cell.endswith("-jit") else "by the backend's autodiff")
    # the metric's values per step were compared too
    record = run.cell("compiled_by_the_factory", "jax-cpu-nojit")
    assert record["checks"]["train"]["compared_values"] >= 4 * 2


def test_an_int_seed_in_a_train_step_is_caught_with_the_seed_generator_fix(run):
    # TensorFlow traces its train step with jit off too; JAX jit freezes the seed; torch.compile
    # guards on the int and recompiles, and eager steps draw anew.
    for cell in ("tensorflow-cpu-nojit", "tensorflow-cpu-jit", "jax-cpu-jit"):
        train = run.cell("int_seed_dropout", cell)["checks"]["train"]
        assert train["status"] == "mismatch", (cell, train)
        assert train["failure"]["kind"] == "python_int_seed" and "SeedGenerator" in train["failure"]["hint"]
        assert train["randomness"]["draws_advance"] is False and train["randomness"]["eager_draws_advance"] is True
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit", "torch-cpu-jit"):
        train = run.cell("int_seed_dropout", cell)["checks"]["train"]
        assert train["randomness"]["own_draws"] and train["randomness"]["draws_advance"], (cell, train)
        assert train["status"] == "pass", (cell, train)


def test_a_vae_trains_as_fit_x_in_every_backend_compared_by_law(run):
    for cell in CELLS:
        record = run.cell("vae_trained_as_fit_x", cell)
        train = record["checks"]["train"]
        assert record["status"] == "pass" and train["status"] == "pass", (cell, train)
        assert train["data"] == "fit(x)" and train["randomness"]["own_draws"]
        if cell != "tensorflow-cpu-nojit":
            assert train["draws_law"]["status"] == "pass" and "by law" in train["note"]


def test_a_train_step_that_unpacks_the_wrong_data_gets_a_hint_naming_it(run):
    failure = run.cell("train_step_unpacks_targets", "tensorflow-cpu-nojit")["checks"]["train"]["failure"]
    assert failure["kind"] == "train_step_data", failure
    assert failure["hint"].startswith("data = x alone (x: float32 (8, 6)), from fit(x)"), failure["hint"]
    assert "harness.no_targets" in failure["hint"]


def test_optimizer_state_is_compared_under_names_every_backend_shares(run):
    # Adafactor's factors share one path per variable, and the variables it makes outside
    # add_variable are `adafactor/bias` under TensorFlow and `bias` elsewhere.
    for cell in CELLS[1:-1]:
        train = run.cell("adafactor_state", cell)["checks"]["train"]
        assert train["status"] == "pass", (cell, train)
    steps = run.cell("adafactor_state", "jax-cpu-nojit")["checks"]["train"]["compared_values"]
    assert steps >= 4 * (1 + 4 + 4 + 14), steps  # loss, gradients, weights, the 14 optimizer variables


def test_a_divergence_is_named_at_the_output_whose_loss_departs(run):
    # TensorFlow computes the saturated sigmoid's cross-entropy from its logits; JAX and torch clip.
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit"):
        first = run.cell("saturated_label_output", cell)["checks"]["train"]["first_divergence"]
        assert (first["step"], first["quantity"], first["variable"]) == (1, "loss", "label_loss"), first
        assert first["outlier"] == "tensorflow (the reference)", first


def test_a_loss_without_reduction_fails_where_only_scalars_have_gradients(run):
    assert run.cell("per_sample_loss", "tensorflow-cpu-jit")["checks"]["train"]["status"] == "pass"
    for cell in ("jax-cpu-nojit", "jax-cpu-jit", "torch-cpu-nojit"):
        failure = run.cell("per_sample_loss", cell)["checks"]["train"]["failure"]
        assert failure["kind"] == "loss_not_scalar" and "reduction" in failure["hint"], (cell, failure)
