"""The Keras 2 to Keras 3 migration guide's pitfalls, each written the Keras 2 way and the fixed way.

A `keras2_*` case is code as it worked under tf.keras; it declares, per cell, the status the
tool must give it and the kind of failure (the classifier rule whose hint names the guide's
fix), strictly: if Keras or a backend changes so that the code passes, the cell fails as an
unexpected pass. A `fixed_*` case is the guide's fix, written for every backend; it passes
every cell. A case with `keras2=` also runs the guide's code as it was written for Keras 2 (tf.keras)
in the keras2 cells, where it works: code that worked in Keras 2 and breaks in Keras 3.

Statuses measured on keras 3.15.1, tensorflow 2.21, jax 0.10.2, torch 2.13 (CPU).
"""

import os
import tempfile

import numpy as np

import harness

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


#: Pitfalls about what a compiler does with the code (XLA, tracing, compiled train steps,
#: seeds frozen into a trace). The others are about structure (saving, nesting, removed APIs,
#: variable tracking), which torch.compile does not change: their torch jit cells are a budget
#: item (torch.compile costs about 10 s per case on a 2-core CPU) and are skipped.
COMPILER_PITFALLS = {1, 5, 12, 13, 14}


def pitfall(number: int, **kwargs):
    """A case for the guide's pitfall `number` (DESIGN.md's list), counted in the coverage table."""
    if number not in COMPILER_PITFALLS:
        kwargs["skip"] = {"torch-*-jit": f"budget: pitfall {number} is not about compilation, and "
                                         f"torch.compile costs about 10 s per case on a 2-core CPU"}
    return harness.parity_case(covers=[f"migration.pitfall{number:02d}"], **kwargs)


def backend() -> str:
    import keras

    return keras.backend.backend()


def under_keras2(code):
    """The guide's code `code(keras)` with Keras 2 (tf.keras from tf-keras), for a case's
    `keras2=`: the same lines its Keras 3 case runs with `import keras`."""
    def keras2():
        from tensorflow import keras

        return code(keras)

    keras2.__name__ = f"{code.__name__}_under_keras2"
    return keras2


# -- 1. jit_compile is on by default on GPU; XLA cannot compile tf.strings ----------------

def strings_model():
    import keras

    class MyModel(keras.Model):
        def call(self, inputs):
            import tensorflow as tf

            string_input = tf.strings.as_string(inputs)
            return tf.strings.to_number(string_input)

    return MyModel()


def keras2_strings_model():
    """Keras 2: tf.strings in call() works, where jit_compile is off (tf.keras' default)."""
    import tensorflow as tf
    from tensorflow import keras

    class MyModel(keras.Model):
        def call(self, inputs):
            return tf.strings.to_number(tf.strings.as_string(inputs))

    return MyModel()


@pitfall(1, inputs=np.array([[1, 2, 3], [4, 5, 6]], "float32"), checks=["build", "outputs"],
         keras2=keras2_strings_model, xfail={
    "tensorflow-*-jit": ("compile_error", "XLA cannot compile tf.strings (AsString, StringToNumber)",
                         "xla_unsupported_ops"),
    "keras2-*-jit": ("compile_error", "Keras 2 with jit_compile=True: XLA cannot compile tf.strings either",
                     "xla_unsupported_ops"),
    "jax-*-jit": ("compile_error", "tf.strings on a JAX tracer: TensorFlow converts its input to NumPy",
                  "tf_or_numpy_op_in_call")})
def keras2_pitfall01_tf_strings_under_xla():
    return strings_model()


@pitfall(1, inputs=np.array([[1, 2, 3], [4, 5, 6]], "float32"), checks=["build", "outputs"])
def fixed_pitfall01_tf_strings_under_xla():
    """The number-to-string-to-number round trip, in keras.ops: XLA and every backend run it."""
    import keras

    class MyModel(keras.Model):
        def call(self, inputs):
            return keras.ops.cast(inputs, "float32")

    return MyModel()


# -- 2. model.save("folder") no longer writes a SavedModel ---------------------------------

def dense_model():
    import keras

    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])


def keras2_dense_model_saved_to_a_folder():
    """Keras 2: model.save() to a folder writes a SavedModel."""
    from tensorflow import keras

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    model.save(os.path.join(tempfile.mkdtemp(), "saved_model"))
    return model


@pitfall(2, inputs=harness.spec((3, 5)), checks=["build", "outputs"], keras2=keras2_dense_model_saved_to_a_folder, xfail={
    "*-*-*": ("error", "model.save() to a folder raises: Keras 3 writes no SavedModel there", "savedmodel_via_save")})
def keras2_pitfall02_save_to_a_folder():
    model = dense_model()
    model.save(os.path.join(tempfile.mkdtemp(), "saved_model"))
    return model


@pitfall(2, inputs=harness.spec((3, 5)), checks=["build", "outputs", "save", "export"])
def fixed_pitfall02_save_to_a_folder():
    """`.keras` for Keras (the save check), `model.export()` for a SavedModel (the export
    check exports it and reloads it with TFSMLayer in a TensorFlow worker)."""
    return dense_model()


# -- 3. keras.models.load_model() no longer reads a SavedModel ------------------------------

def keras2_load_savedmodel():
    """Keras 2: model.save(folder) writes a SavedModel and load_model() reads it back. (The data
    folder's SavedModel is Keras 3's export, which Keras 2 reads only as a bare _UserObject.)"""
    from tensorflow import keras

    folder = os.path.join(tempfile.mkdtemp(), "saved_model")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh", name="dense")]).save(folder)
    return keras.models.load_model(folder)


@pitfall(3, inputs=harness.spec((2, 4)), checks=["build", "outputs"], keras2=keras2_load_savedmodel, xfail={
    "*-*-*": ("error", "load_model() refuses a SavedModel folder", "load_savedmodel")})
def keras2_pitfall03_load_model_on_a_savedmodel():
    import keras

    return keras.models.load_model(os.path.join(DATA, "keras2_savedmodel"))


@pitfall(3, inputs=harness.spec((2, 4)), checks=["build", "outputs"])
def fixed_pitfall03_load_model_on_a_savedmodel():
    """TFSMLayer reloads the SavedModel, under TensorFlow only (Keras raises elsewhere); the
    other backends load the same model's `.keras` file. The two hold the same weights under
    different variable names, so the case is a function: outputs are compared, not weights."""
    import keras

    if backend() == "tensorflow":
        layer = keras.layers.TFSMLayer(os.path.join(DATA, "keras2_savedmodel"), call_endpoint="serve")
    else:
        layer = keras.models.load_model(os.path.join(DATA, "keras2_model.keras"))
    return lambda x: layer(x)


# -- 4. inputs nested more than one level deep ---------------------------------------------

def deeply_nested_inputs(keras):
    inputs = {"foo": keras.Input(shape=(1,), name="foo"),
              "bar": {"baz": keras.Input(shape=(1,), name="bar")}}
    outputs = inputs["foo"] + inputs["bar"]["baz"]
    return keras.Model(inputs, outputs)


@pitfall(4, inputs={"foo": harness.spec((2, 1)), "bar": {"baz": harness.spec((2, 1))}},
         checks=["build", "outputs"], keras2=under_keras2(deeply_nested_inputs), xfail={
    "keras2-*-*": ("error", "tf-keras 2.21 builds the model but cannot call it: its Functional.input_spec "
                            "reads _keras_history from the inner dict (AttributeError)")})
def keras2_pitfall04_deeply_nested_inputs():
    """No longer reproduces on Keras 3.15: keras.Model accepts the guide's dict of dicts of
    inputs, and every cell passes."""
    import keras

    return deeply_nested_inputs(keras)


@pitfall(4, inputs={"foo": harness.spec((2, 1)), "bar": harness.spec((2, 1))})
def fixed_pitfall04_deeply_nested_inputs():
    import keras

    inputs = {"foo": keras.Input(shape=(1,), name="foo"), "bar": keras.Input(shape=(1,), name="bar")}
    outputs = keras.layers.Dense(2)(keras.layers.Add()([inputs["foo"], inputs["bar"]]))
    return keras.Model(inputs, outputs)


# -- 5. no autograph in call(): Python control flow on a tensor -----------------------------

def keras2_python_if_on_a_tensor():
    """Keras 2: autograph turns the Python if on a tensor into a tf.cond."""
    import tensorflow as tf
    from tensorflow import keras

    class MyCustomLayer(keras.layers.Layer):
        def call(self, inputs):
            if tf.reduce_sum(inputs) > 0:
                return inputs * 2
            return inputs / 2

    return MyCustomLayer()


@pitfall(5, inputs=harness.spec((3, 3)), checks=["build", "outputs"], keras2=keras2_python_if_on_a_tensor, xfail={
    "tensorflow-*-*": ("error", "Python if on a symbolic tf.Tensor (OperatorNotAllowedInGraphError)",
                       "python_bool_on_tensor"),
    "jax-*-*": ("error", "Python if on a traced value; JAX 0.10's TracerBoolConversionError fails to format "
                         "under Keras' symbolic build (AttributeError: '_error_repr')", "python_bool_on_tensor")})
def keras2_pitfall05_python_if_on_a_tensor():
    import keras

    class MyCustomLayer(keras.layers.Layer):
        """Passes under torch, whose symbolic build and torch.compile both run the Python if."""

        def call(self, inputs):
            if keras.ops.sum(inputs) > 0:
                return inputs * 2
            return inputs / 2

    return MyCustomLayer()


@pitfall(5, inputs=harness.spec((3, 3)), checks=["build", "outputs"])
def fixed_pitfall05_python_if_on_a_tensor():
    import keras

    class MyCustomLayer(keras.layers.Layer):
        def call(self, inputs):
            return keras.ops.cond(keras.ops.sum(inputs) > 0, lambda: inputs * 2, lambda: inputs / 2)

    return MyCustomLayer()


# -- 6. TensorFlow ops on a KerasTensor ------------------------------------------------------

def tf_op_on_a_keras_tensor(keras):
    """Keras 2 turns the TensorFlow op on a symbolic input into a layer (TFOpLambda)."""
    import tensorflow as tf

    inputs = keras.layers.Input([2, 2, 1])
    return keras.Model(inputs, tf.squeeze(inputs))


@pitfall(6, inputs=harness.spec((2, 2, 2, 1)), checks=["build", "outputs"], keras2=under_keras2(tf_op_on_a_keras_tensor),
         xfail={"*-*-*": ("error", "tf.squeeze on a KerasTensor while building a functional model",
                          "keras_tensor_in_tf_op")})
def keras2_pitfall06_tf_op_on_a_keras_tensor():
    import keras

    return tf_op_on_a_keras_tensor(keras)


@pitfall(6, inputs=harness.spec((2, 2, 2, 1)))
def fixed_pitfall06_tf_op_on_a_keras_tensor():
    import keras

    inputs = keras.layers.Input([2, 2, 1])
    return keras.Model(inputs, keras.layers.Dense(3)(keras.ops.squeeze(inputs, axis=-1)))


# -- 7. multi-output evaluate() no longer returns a loss per output --------------------------

def two_output_model(keras):
    layers = keras.layers
    inputs = layers.Input(shape=(10,))
    x1 = layers.Dense(5, activation="relu")(inputs)
    x2 = layers.Dense(5, activation="relu")(x1)
    output_1 = layers.Dense(5, activation="softmax", name="output_1")(x1)
    output_2 = layers.Dense(5, activation="softmax", name="output_2")(x2)
    return keras.Model(inputs=inputs, outputs=[output_1, output_2])


def evaluation_data():
    rng = np.random.default_rng(0)
    return rng.uniform(size=(10, 10)).astype("float32"), rng.uniform(size=(10, 5)).astype("float32")


def per_output_losses_from_evaluate(keras):
    model = two_output_model(keras)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x_test, y_test = evaluation_data()
    total, loss_1, loss_2 = model.evaluate(x_test, [y_test, y_test], verbose=0)
    return model


@pitfall(7, inputs=harness.spec((4, 10)), checks=["build", "outputs"],
         keras2=under_keras2(per_output_losses_from_evaluate))
def keras2_pitfall07_per_output_losses_from_evaluate():
    """No longer reproduces on Keras 3.15: evaluate() of a two-output model compiled with one
    loss returns [total, output_1 loss, output_2 loss] again, as tf.keras did."""
    import keras

    return per_output_losses_from_evaluate(keras)


@pitfall(7, inputs=harness.spec((4, 10)), checks=["build", "outputs"])
def fixed_pitfall07_per_output_losses_from_evaluate():
    """The guide's fix: ask for each output's loss as a metric, and read results by name."""
    import keras

    model = two_output_model(keras)
    model.compile(optimizer="adam", loss="categorical_crossentropy",
                  metrics=["categorical_crossentropy", "categorical_crossentropy"])
    x_test, y_test = evaluation_data()
    results = model.evaluate(x_test, [y_test, y_test], verbose=0, return_dict=True)
    per_output = [results[f"output_{i}_categorical_crossentropy"] for i in (1, 2)]
    assert abs(sum(per_output) - results["loss"]) < 1e-4 * abs(results["loss"]), results
    return model


# -- 8. a tf.Variable attribute is not tracked ----------------------------------------------

def keras2_tf_variable_attribute():
    """Keras 2: a tf.Variable attribute is tracked, trained and saved."""
    import tensorflow as tf
    from tensorflow import keras

    class MyCustomLayer(keras.layers.Layer):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, input_shape):
            self.w = tf.Variable(initial_value=tf.zeros([input_shape[-1], self.units]))
            self.b = tf.Variable(initial_value=tf.zeros([self.units]))

        def call(self, inputs):
            return tf.matmul(inputs, self.w) + self.b

    return MyCustomLayer(3)


@pitfall(8, inputs=harness.spec((3, 3)), checks=["build", "outputs"], keras2=keras2_tf_variable_attribute, xfail={
    "*-*-*": ("error", "tf.Variable attributes are not tracked: the layer has no weights", "untracked_state")})
def keras2_pitfall08_tf_variable_attribute():
    import keras
    import tensorflow as tf

    class MyCustomLayer(keras.layers.Layer):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, input_shape):
            self.w = tf.Variable(initial_value=tf.zeros([input_shape[-1], self.units]))
            self.b = tf.Variable(initial_value=tf.zeros([self.units]))

        def call(self, inputs):
            return keras.ops.matmul(inputs, self.w) + self.b

    return MyCustomLayer(3)


@pitfall(8, inputs=harness.spec((3, 3)), checks=["build", "outputs", "train"])
def fixed_pitfall08_tf_variable_attribute():
    import keras

    class MyCustomLayer(keras.layers.Layer):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=[input_shape[-1], self.units], initializer="glorot_uniform")
            self.b = self.add_weight(shape=[self.units], initializer="zeros")

        def call(self, inputs):
            return keras.ops.matmul(inputs, self.w) + self.b

    return MyCustomLayer(3)


# -- 9. None inside nested call() arguments -------------------------------------------------

def none_in_nested_call_arguments(keras):
    class CustomLayer(keras.layers.Layer):
        def call(self, inputs):
            foo = inputs["foo"]
            baz = inputs["bar"]["baz"]
            if baz is not None:
                return foo + baz
            return foo

    foo = keras.Input(shape=(1,), name="foo")
    return keras.Model(foo, CustomLayer()({"foo": foo, "bar": {"baz": None}}))


@pitfall(9, inputs=harness.spec((2, 1)), checks=["build", "outputs"], keras2=under_keras2(none_in_nested_call_arguments))
def keras2_pitfall09_none_in_nested_call_arguments():
    """No longer reproduces on Keras 3.15: None inside a nested call() argument is accepted,
    and every cell passes."""
    import keras

    return none_in_nested_call_arguments(keras)


@pitfall(9, inputs=harness.spec((2, 1)), checks=["build", "outputs"])
def fixed_pitfall09_none_in_nested_call_arguments():
    import keras

    class CustomLayer(keras.layers.Layer):
        def call(self, foo, baz=None):
            if baz is not None:
                return foo + baz
            return foo

    foo = keras.Input(shape=(1,), name="foo")
    return keras.Model(foo, CustomLayer()(foo, baz=None))


# -- 10. state must be created in __init__() or build(), not in call() -----------------------

def positional_embedding(with_build: bool):
    import keras
    from keras import layers

    class PositionalEmbedding(layers.Layer):
        def __init__(self, sequence_length, output_dim, **kwargs):
            super().__init__(**kwargs)
            self.position_embeddings = layers.Embedding(input_dim=sequence_length, output_dim=output_dim)
            self.sequence_length = sequence_length
            self.output_dim = output_dim

        def call(self, inputs):
            inputs = keras.ops.cast(inputs, self.compute_dtype)
            length = keras.ops.shape(inputs)[1]
            positions = keras.ops.arange(start=0, stop=length, step=1)
            embedded_positions = self.position_embeddings(positions)
            return inputs + embedded_positions

    class BuiltPositionalEmbedding(PositionalEmbedding):
        def build(self, input_shape):
            self.position_embeddings.build(input_shape)

    return (BuiltPositionalEmbedding if with_build else PositionalEmbedding)(8, 4)


def keras2_sublayer_built_in_call():
    """Keras 2: a sublayer first built by call() is tracked like any other."""
    import tensorflow as tf
    from tensorflow import keras

    class PositionalEmbedding(keras.layers.Layer):
        def __init__(self, sequence_length, output_dim, **kwargs):
            super().__init__(**kwargs)
            self.position_embeddings = keras.layers.Embedding(input_dim=sequence_length, output_dim=output_dim)

        def call(self, inputs):
            positions = tf.range(start=0, limit=tf.shape(inputs)[1], delta=1)
            return inputs + self.position_embeddings(positions)

    return PositionalEmbedding(8, 4)


@pitfall(10, inputs=harness.spec((2, 8, 4)), keras2=keras2_sublayer_built_in_call, xfail={
    "*-*-*": ("mismatch", "the Keras 2 .h5 saved after training loads only with compile=False (Keras 3 cannot "
                          "deserialize its loss 'mse', as keras.metrics.mse): Keras 2's optimizer state is not "
                          "restored, so training does not resume where Keras 2 left it")})
def keras2_pitfall10_sublayer_built_in_call():
    """The guide's own example, which failed under JAX on Keras 3.0. On Keras 3.15 it passes
    every cell: Keras builds the unbuilt Embedding by tracing call() symbolically."""
    return positional_embedding(with_build=False)


@pitfall(10, inputs=harness.spec((2, 8, 4)))
def fixed_pitfall10_sublayer_built_in_call():
    return positional_embedding(with_build=True)


def weight_created_in_call(keras):
    class LazyScale(keras.layers.Layer):
        def call(self, inputs):
            if not hasattr(self, "scale"):
                self.scale = self.add_weight(shape=(inputs.shape[-1],), initializer="ones")
            return inputs * self.scale

    return LazyScale()


@pitfall(10, inputs=harness.spec((2, 3)), checks=["build", "outputs"], keras2=under_keras2(weight_created_in_call), xfail={
    "*-*-*": ("error", "add_weight() inside call(): Keras refuses state created after build", "unbuilt_state")})
def keras2_pitfall10_weight_created_in_call():
    """What still fails on Keras 3.15: a weight created on the first call() (Keras 2 takes it)."""
    import keras

    return weight_created_in_call(keras)


@pitfall(10, inputs=harness.spec((2, 3)))
def fixed_pitfall10_weight_created_in_call():
    import keras

    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, inputs):
            return inputs * self.scale

    return Scale()


# -- 11. removed APIs -------------------------------------------------------------------------

def thresholded_relu(keras):
    return keras.layers.ThresholdedReLU(theta=0.5)


@pitfall(11, inputs=harness.spec((2, 6)), checks=["build", "outputs"], keras2=under_keras2(thresholded_relu), xfail={
    "*-*-*": ("error", "keras.layers.ThresholdedReLU was removed", "removed_api")})
def keras2_pitfall11_thresholded_relu():
    import keras

    return thresholded_relu(keras)


@pitfall(11, inputs=harness.spec((2, 6)), checks=["build", "outputs"])
def fixed_pitfall11_thresholded_relu():
    """ThresholdedReLU(theta) is x where x > theta, else 0; ReLU(threshold=theta) is the same."""
    import keras

    return keras.layers.ReLU(threshold=0.5)


def rnn_time_major(keras):
    return keras.layers.SimpleRNN(4, time_major=True)


@pitfall(11, inputs=harness.spec((5, 2, 3)), checks=["build", "outputs"], keras2=under_keras2(rnn_time_major), xfail={
    "*-*-*": ("error", "the RNN time_major argument was removed", "removed_api")})
def keras2_pitfall11_rnn_time_major():
    import keras

    return rnn_time_major(keras)


@pitfall(11, inputs=harness.spec((5, 2, 3)), checks=["build", "outputs"])
def fixed_pitfall11_rnn_time_major():
    """Transpose the time-major inputs (time, batch, features) to batch-major around the RNN."""
    import keras

    inputs = keras.Input((2, 3), batch_size=5)
    return keras.Model(inputs, keras.layers.SimpleRNN(4)(keras.ops.transpose(inputs, (1, 0, 2))))


# -- 12. tf.* calls replaced by keras.ops.* ------------------------------------------------------

def tf_ops_in_a_layer(keras):
    import tensorflow as tf

    class L2Pool(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 3), initializer="glorot_uniform")

        def call(self, inputs):
            x = tf.abs(tf.matmul(inputs, self.kernel))
            x = tf.gather(x, [2, 0], axis=1)
            return tf.nn.l2_normalize(x, axis=-1) * tf.reduce_mean(x, axis=-1, keepdims=True)

    return L2Pool()


@pitfall(12, inputs=harness.spec((4, 6)), checks=["build", "outputs", "train"], keras2=under_keras2(tf_ops_in_a_layer), xfail={
    "jax-*-*": ("error", "tf.* ops on JAX tensors: TensorFlow calls __array__ on a tracer", "tf_or_numpy_op_in_call"),
    "torch-*-*": ("error", "tf.* ops on torch tensors return tf.Tensors, which Keras refuses as layer outputs",
                  "tf_or_numpy_op_in_call")})
def keras2_pitfall12_tf_ops_in_a_layer():
    import keras

    return tf_ops_in_a_layer(keras)


@pitfall(12, inputs=harness.spec((4, 6)), checks=["build", "outputs", "train"])
def fixed_pitfall12_tf_ops_in_a_layer():
    import keras
    from keras import ops

    class L2Pool(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 3), initializer="glorot_uniform")

        def call(self, inputs):
            x = ops.absolute(ops.matmul(inputs, self.kernel))
            x = ops.take(x, [2, 0], axis=1)
            norm = ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-12))
            return x / norm * ops.mean(x, axis=-1, keepdims=True)

    return L2Pool()


# -- 13. a custom train_step needs one implementation per backend ------------------------------

def regression_model(keras, model_class):
    inputs = keras.Input((6,))
    return model_class(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inputs)))


def train_step_with_gradient_tape(keras):
    import tensorflow as tf

    class TapeModel(keras.Model):
        def train_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
            gradients = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
            return {"loss": loss}

    return regression_model(keras, TapeModel)


@pitfall(13, inputs=harness.spec((8, 6)), checks=["build", "outputs", "train"],
         keras2=under_keras2(train_step_with_gradient_tape), xfail={
    "jax-*-*": ("error", "under JAX Keras calls train_step(state, data): 'takes 2 positional arguments but 3 "
                         "were given'", "train_step_per_backend"),
    "torch-*-*": ("error", "tf.GradientTape on torch tensors: 'Cannot convert the argument type_value: tensor(...) "
                           "to a TensorFlow DType'", "train_step_per_backend")})
def keras2_pitfall13_train_step_with_gradient_tape():
    import keras

    return train_step_with_gradient_tape(keras)


@pitfall(13, inputs=harness.spec((8, 6)), checks=["build", "outputs", "train"])
def fixed_pitfall13_train_step_with_gradient_tape():
    """The guide's first fix: override only compute_loss(), which every backend's own
    train_step calls (see suites/models for a train_step per backend)."""
    import keras

    class LossModel(keras.Model):
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            # The guide's keras.losses.mean_squared_error(y, y_pred, sample_weight) takes no
            # sample weights on Keras 3.15; the loss object does.
            return keras.losses.MeanSquaredError(reduction="sum")(y, y_pred, sample_weight)

    return regression_model(keras, LossModel)


# -- 14. keras.random ops are stateless: an int seed repeats in compiled calls -------------------

def keras2_int_seed_in_a_layer():
    """Keras 2: a stateful random op with an op seed draws anew at every call, compiled or not."""
    import tensorflow as tf
    from tensorflow import keras

    class RandomNoiseLayer(keras.layers.Layer):
        def __init__(self, noise_rate, **kwargs):
            super().__init__(**kwargs)
            self.noise_rate = noise_rate
            self.seed = 1337

        def call(self, inputs):
            self.seed += 1
            return inputs + tf.random.uniform(tf.shape(inputs), minval=0, maxval=self.noise_rate, seed=self.seed)

    return RandomNoiseLayer(0.1)


@pitfall(14, inputs=harness.spec((64, 32)), checks=["build", "outputs", "rng"], keras2=keras2_int_seed_in_a_layer, xfail={
    "tensorflow-*-*": ("mismatch", "the int seed is frozen into the traced graph: compiled calls repeat their draws",
                       "python_int_seed"),
    "jax-*-jit": ("mismatch", "the int seed is frozen into the jitted function: calls repeat their draws",
                  "python_int_seed")})
def keras2_pitfall14_int_seed_in_a_layer():
    import keras

    class RandomNoiseLayer(keras.layers.Layer):
        """Passes under torch: dynamo guards on the int and recompiles for each new seed."""

        def __init__(self, noise_rate, **kwargs):
            super().__init__(**kwargs)
            self.noise_rate = noise_rate
            self.seed = 1337

        def call(self, inputs):
            self.seed += 1  # a new seed per call: works eagerly, frozen once compiled
            noise = keras.random.uniform(keras.ops.shape(inputs), minval=0, maxval=self.noise_rate,
                                         seed=self.seed)
            return inputs + noise

    return RandomNoiseLayer(0.1)


@pitfall(14, inputs=harness.spec((64, 32)), checks=["build", "outputs", "rng"])
def fixed_pitfall14_int_seed_in_a_layer():
    import keras

    class RandomNoiseLayer(keras.layers.Layer):
        def __init__(self, noise_rate, **kwargs):
            super().__init__(**kwargs)
            self.noise_rate = noise_rate
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, inputs):
            noise = keras.random.uniform(keras.ops.shape(inputs), minval=0, maxval=self.noise_rate,
                                         seed=self.seed_generator)
            return inputs + noise

    return RandomNoiseLayer(0.1)
