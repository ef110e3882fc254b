"""Where a model diverges, on real divergences of keras 3.15.1: torch's bicubic kernel in a
functional and in a subclassed model, XLA's rewrite of log(exp(x)) in a jit cell, and binary
cross-entropy of a saturated sigmoid in training; one real run over the three backends with
jit on and off. Each reproducer is run again here, in a process of its own."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from harness import compare
from harness.cells import Cell
from tests.conftest import requires_all_backends, run_pytest, write_module

CASES = '''
import numpy as np
import keras
from keras import layers, ops

import harness

BUDGET = {"torch-*-jit": "torch.compile takes tens of seconds: the functional convnet compiles it"}


def images(rng):
    return rng.uniform(0, 1, size=(2, 8, 8, 3)).astype("float32")


@harness.parity_case(inputs=images, checks=["build", "outputs"])
def convnet_with_bicubic_resize():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.Resizing(12, 12, interpolation="bicubic")(x)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(2)(x))


class Upscaler(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = layers.Conv2D(4, 3, padding="same", activation="relu")
        self.resize = layers.Resizing(12, 12, interpolation="bicubic")
        self.head = layers.Conv2D(2, 3)

    def call(self, x):
        return self.head(self.resize(self.stem(x)))


@harness.parity_case(inputs=images, checks=["build", "outputs"], skip=BUDGET)
def subclassed_with_bicubic_resize():
    return Upscaler()


class LogRate(layers.Layer):
    def call(self, rate):
        return ops.log(rate)


@harness.parity_case(inputs=lambda rng: rng.normal(size=(4, 3)).astype("float32") * 100, checks=["build", "outputs"],
                     skip=BUDGET)
def count_model_log_rate():
    """A count model's rate and its log: the rate overflows to inf, and XLA rewrites
    log(exp(h)) to h in a compiled step."""
    x = keras.Input((3,))
    h = layers.Dense(2, kernel_initializer="ones")(x)
    rate = layers.Activation("exponential")(h)
    return keras.Model(x, [rate, LogRate()(rate)])


@harness.parity_case(inputs=lambda rng: rng.normal(size=(8, 6)).astype("float32"),
                     targets=lambda rng: rng.integers(0, 2, size=(8, 1)).astype("float32"),
                     checks=["build", "outputs", "train"], skip=BUDGET)
def saturated_sigmoid():
    model = keras.Sequential([keras.Input((6,)), layers.Dense(4, activation="relu"), layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=30.0))])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return model
'''

BACKENDS = ("tensorflow", "jax", "torch")
CELLS = [f"{b}-cpu-{j}" for b in BACKENDS for j in ("nojit", "jit")]

pytestmark = requires_all_backends


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("localize")
    write_module(path, "test_localize_cases.py", CASES)
    return run_pytest(path, "--keras-backends=all", "--keras-devices=cpu")


def first_divergence(run, case, cell, check="outputs"):
    return run.cell(case, cell)["checks"][check]["first_divergence"]


def reproduce(reproducer: dict, backend: str) -> dict:
    """The reproducer's verdict, run under `backend` in a process of its own."""
    command = [sys.executable, os.path.join(reproducer["folder"], "repro.py")]
    command += ["--jit"] if reproducer["command"].endswith("--jit") else []
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}, "KERAS_BACKEND": backend}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_bicubic_resize_is_named_in_a_functional_convnet_with_torch_the_outlier(run):
    # torch's cubic kernel (a=-0.75) is not TensorFlow's (a=-0.5); JAX's is close enough that
    # the convnet's pooled outputs still match, so torch departs alone.
    for cell in ("torch-cpu-nojit", "torch-cpu-jit"):
        first = first_divergence(run, "convnet_with_bicubic_resize", cell)
        assert (first["layer"], first["class"]) == ("resizing", "Resizing"), first
        # Its inputs agree to round-off (0 where TensorFlow's and torch's convolutions sum in one
        # order, 1.8e-7 on an AVX2 CPU with oneDNN off); the resize itself departs by 0.01 or more.
        assert first["inputs_err"] <= 1e-6 and first["output_err"] > 0.01 and first["introduced"], first
        assert first["local_err"] == pytest.approx(first["output_err"], rel=1e-3), first
        assert first["outlier"] == "torch", first
        message = run.cell("convnet_with_bicubic_resize", cell)["checks"]["outputs"]["failure"]["message"]
        assert message.startswith("diverges first at layer resizing (Resizing)") and "torch departs" in message
        rows = run.cell("convnet_with_bicubic_resize", cell)["checks"]["outputs"]["localization"]["layers"]
        assert [r["layer"] for r in rows] == ["conv2d", "resizing", "conv2d_1", "global_average_pooling2d", "dense"]
        assert [r["agrees"] for r in rows] == [True, False, False, False, False]
    assert "under the compiler" in run.cell("convnet_with_bicubic_resize", "torch-cpu-jit")[
        "checks"]["outputs"]["localization"]["tapped"]


def test_a_subclassed_models_sublayer_is_named_and_three_way_disagreement_has_no_outlier(run):
    for cell in ("jax-cpu-nojit", "jax-cpu-jit", "torch-cpu-nojit"):
        first = first_divergence(run, "subclassed_with_bicubic_resize", cell)
        assert (first["layer"], first["class"]) == ("upscaler/resizing", "Resizing"), first
        assert "outlier" not in first, first  # TensorFlow, JAX and torch each resize their own way
        assert first["agree"] == [["tensorflow-cpu-nojit"], ["jax-cpu-nojit", "jax-cpu-jit"], ["torch-cpu-nojit"]]


def test_a_jit_only_divergence_is_put_on_the_compiler(run):
    # XLA rewrites log(exp(h)) to h in a compiled step; eagerly, exp overflows and log gives inf.
    for cell, compiler in (("tensorflow-cpu-jit", "XLA"), ("jax-cpu-jit", "jax.jit's XLA")):
        first = first_divergence(run, "count_model_log_rate", cell)
        assert (first["layer"], first["class"]) == ("log_rate", "LogRate"), first
        assert first["cause"] == "compiler" and first["compiler"] == compiler, first
        assert first["agrees_without_jit"] == cell.replace("-jit", "-nojit")
        # alone, on the reference's input (inf), the layer agrees: the rewrite needs the exp before it
        assert first["local_err"] == 0 and not first["introduced"], first
        assert first["outlier"] == "tensorflow-cpu-jit, jax-cpu-jit", first
        assert first["reproducer"]["piece"] == "the sub-model from activation's inputs to it", first
    for cell in ("tensorflow-cpu-nojit", "jax-cpu-nojit", "torch-cpu-nojit"):
        assert run.cell("count_model_log_rate", cell)["status"] == "pass"


def test_a_loss_that_departs_after_an_agreeing_forward_pass_is_said(run):
    for cell in ("jax-cpu-nojit", "torch-cpu-nojit"):
        train = run.cell("saturated_sigmoid", cell)["checks"]["train"]
        assert train["first_divergence"]["step"] == 1 and train["first_divergence"]["quantity"] == "loss"
        assert train["first_divergence"]["outlier"] == "tensorflow (the reference)", train["first_divergence"]
        assert train["first_divergence"]["forward"]["in"] == "the loss", train["first_divergence"]
        assert all(row["agrees"] for row in train["localization"]["layers"]), train["localization"]
        assert "the forward pass of the step agrees layer by layer" in train["message"]


def test_each_reproducer_reproduces_in_a_process_of_its_own(run):
    for case, cell in (("convnet_with_bicubic_resize", "torch-cpu-nojit"),
                       ("subclassed_with_bicubic_resize", "jax-cpu-nojit"),
                       ("count_model_log_rate", "tensorflow-cpu-jit")):
        reproducer = first_divergence(run, case, cell)["reproducer"]
        assert reproducer["written"] and os.path.isfile(os.path.join(reproducer["folder"], "piece.keras"))
        assert str(run.path / "reports" / "repro") in reproducer["folder"]
        verdict = reproduce(reproducer, Cell.parse(cell).backend)
        assert verdict["reproduces"] and verdict["max_abs_err"] == pytest.approx(reproducer["max_abs_err"]), verdict
        # the reference's own backend, without jit, gives back the reference's output
        assert not reproduce({**reproducer, "command": ""}, "tensorflow")["reproduces"]
    assert "reproduce it (the layer alone): KERAS_BACKEND=torch python" in run.output


def test_reports_show_each_localized_divergence_layer_by_layer(run):
    markdown = (run.path / "reports" / "parity.md").read_text()
    section = markdown[markdown.index("## Localized divergences"):]
    assert "`test_localize_cases.py::convnet_with_bicubic_resize` [torch-cpu-nojit] outputs: diverges first" in section
    assert re.search(r"\| `resizing` \| Resizing \| \(2, 12, 12, 4\) \| (0|[0-9.]+e-0[7-9]) \|", section), section
    assert "| new | **departs first** |" in section
    page = (run.path / "reports" / "parity.html").read_text()
    assert page.count('aria-label="error by layer"') == len(
        [c for c in run.report["cells"] for check in c["checks"].values() if check.get("localization", {}).get("layers")])


def test_who_departs_is_told_by_the_groups_of_cells_that_agree():
    cells = {name: Cell.parse(name) for name in CELLS}
    ref, one, other = np.zeros(3, "float32"), np.ones(3, "float32"), np.full(3, 2.0, "float32")

    def outlier(values, cell, with_reference=()):
        return compare.outlier({cells[k]: v for k, v in values.items()}, cells[cell], cells["tensorflow-cpu-nojit"],
                               None, None, frozenset(cells[c] for c in with_reference))

    # JAX and torch agree, TensorFlow (the reference) departs
    assert outlier({"tensorflow-cpu-nojit": ref, "tensorflow-cpu-jit": ref, "jax-cpu-nojit": one,
                    "torch-cpu-nojit": one}, "jax-cpu-nojit")[0] == "tensorflow (the reference)"
    # torch departs; JAX's cells matched the reference and were not tapped
    assert outlier({"tensorflow-cpu-nojit": ref, "torch-cpu-nojit": one, "torch-cpu-jit": one}, "torch-cpu-jit",
                   ["jax-cpu-nojit", "jax-cpu-jit", "tensorflow-cpu-jit"])[0] == "torch"
    # one jit cell departs while its nojit sibling agrees: the cell, not the backend
    assert outlier({"tensorflow-cpu-nojit": ref, "jax-cpu-jit": one}, "jax-cpu-jit",
                   ["jax-cpu-nojit", "torch-cpu-nojit"])[0] == "jax-cpu-jit"
    # three ways, or two groups of one size: no one departs
    name, groups = outlier({"tensorflow-cpu-nojit": ref, "jax-cpu-nojit": one, "torch-cpu-nojit": other}, "jax-cpu-nojit")
    assert name is None and groups == [["tensorflow-cpu-nojit"], ["jax-cpu-nojit"], ["torch-cpu-nojit"]]
    assert outlier({"tensorflow-cpu-nojit": ref, "torch-cpu-nojit": one}, "torch-cpu-nojit")[0] is None
