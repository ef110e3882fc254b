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
