"""Compile failures named precisely: the guide's tf.strings model under XLA."""

import pytest

import harness.cells

pytestmark = pytest.mark.skipif("tensorflow" not in harness.cells.installed_backends(),
                                reason="needs tensorflow (make .venv installs it)")

GUIDE_MODEL = '''
import numpy as np
import keras
import harness


class MyModel(keras.Model):
    """The migration guide's first pitfall: tf.strings ops, which XLA cannot compile."""

    def call(self, inputs):
        import tensorflow as tf
        string_input = tf.strings.as_string(inputs)
        return tf.strings.to_number(string_input)


@harness.parity_case(inputs=np.array([[1, 2, 3], [4, 5, 6]], "float32"), checks=["build", "outputs"])
def tf_strings_model():
    return MyModel()
'''


def test_tf_strings_under_xla_is_a_compile_error_with_the_unsupported_ops(parity):
    run = parity(GUIDE_MODEL, "--keras-backends=tensorflow")
    assert run.cell("tf_strings_model", "tensorflow-cpu-nojit")["status"] == "pass"
    record = run.cell("tf_strings_model", "tensorflow-cpu-jit")
    assert record["status"] == "compile_error", record
    failure = record["failure"]
    assert failure["kind"] == "xla_unsupported_ops"
    # XLA names only AsString; the graph scan finds StringToNumber after it.
    assert failure["unsupported_ops"] == ["AsString", "StringToNumber"]
    assert "jit_compile=False" in failure["hint"]
    assert "unsupported ops: AsString" in run.output


NAN_GUARDED_BLOCKS = '''
import numpy as np
import keras
import harness


class GuardedScale(keras.layers.Layer):
    """A scaling block with a NaN guard: a Python `if` on a tensor's value, which torch.compile
    cannot trace (a graph break) and runs eagerly."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        if keras.ops.convert_to_numpy(keras.ops.any(keras.ops.isnan(x))):
            raise ValueError("NaN in the activations")
        return x * self.factor


@harness.parity_case(inputs=np.ones((2, 3), "float32"), checks=["build", "outputs"])
def guarded_blocks():
    x = keras.Input((3,))
    h = x
    for index in range(12):
        h = GuardedScale(1.0 + index / 100.0)(h)
    return keras.Model(x, keras.layers.Dense(2)(h))
'''


@pytest.mark.skipif("torch" not in harness.cells.installed_backends(), reason="needs torch")
def test_a_torch_jit_cell_says_what_dynamo_left_eager(parity):
    run = parity(NAN_GUARDED_BLOCKS, "--keras-backends=torch", "--keras-jit=on")
    record = run.cell("guarded_blocks", "torch-cpu-jit")
    assert record["status"] == "pass", record.get("failure")
    dynamo = record["dynamo"]
    assert 0 < dynamo["ran_eagerly"] < dynamo["frames"], dynamo
    assert any(note.startswith(f"torch.compile ran {dynamo['ran_eagerly']} of the {dynamo['frames']} frames")
               and "tested less than a compiled run" in note for note in record["notes"]), record["notes"]


TWO_SEQUENCES = '''
import numpy as np
import keras
import harness


@harness.parity_case(inputs=[np.ones((2, 5, 4), "float32"), np.ones((2, 5, 4), "float32")],
                     checks=["build", "outputs", "export"])
def two_sequences():
    """Two sequence inputs of unknown length, added: they must be equally long."""
    a, b = keras.Input((None, 4)), keras.Input((None, 4))
    return keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([a, b])))
'''


@pytest.mark.skipif("jax" not in harness.cells.installed_backends(), reason="needs jax")
def test_a_jax_export_that_fails_on_symbolic_shapes_gets_the_input_signature_hint(parity):
    # jax2tf gives the two unknown lengths their own symbols, and Add cannot prove them equal.
    run = parity(TWO_SEQUENCES, "--keras-backends=jax", "--keras-jit=off")
    export = run.cell("two_sequences", "jax-cpu-nojit")["checks"]["export"]
    failure = export["saved_model"]["failure"]
    assert failure["kind"] == "export_symbolic_shapes", failure
    assert "input_signature=" in failure["hint"] and "inputs do not fit" not in failure["hint"]
