"""Small real models as users write them: each runs in every cell and must match the reference."""

import numpy as np

import harness


#: torch.compile's budget: a train step compiles in 20 to 100 s on a 2-core CPU (the MNIST
#: convnet's 104 s, the residual block's 101 s), so torch jit cells compile the train step for
#: two models (mlp, the custom train_step) and inference for the others, except three whose
#: layers another model compiles already. KERAS_PARITY_FULL=1 compiles everything.
TORCH_INFERENCE_ONLY = {"torch-*-jit": ["build", "outputs", "timing"]}


def torch_compiled_in(case: str, seconds: int | None = None) -> dict:
    """Skip torch's jit cell of a model whose layers another model compiles already."""
    cost = f"takes {seconds} s" if seconds else "takes minutes"
    return {"torch-*-jit": f"budget: torch.compile of this model's inference {cost} on a 2-core CPU; "
                           f"{case} compiles the same layers (KERAS_PARITY_FULL=1 runs it)"}


def images(rng):
    return rng.random((4, 12, 12, 1)).astype("float32")


def token_ids(rng):
    return rng.integers(1, 50, size=(4, 10)).astype("int32")


@harness.parity_case(
    inputs=lambda rng: rng.normal(size=(8, 16)).astype("float32"),
    xfail={"tensorflow-*-nojit": ("error", "export: tf2onnx writes gelu as Erfc, which onnxruntime "
                                           "1.32 cannot load at opset 15 (No Op registered for Erfc)")},
)
def mlp():
    import keras

    return keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(16, activation="gelu"),
        keras.layers.Dense(3, activation="softmax"),
    ])


@harness.parity_case(inputs=images,
                     cell_checks=TORCH_INFERENCE_ONLY)
def convnet():
    import keras

    return keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])


@harness.parity_case(inputs=token_ids,
                     cell_checks=TORCH_INFERENCE_ONLY)
def lstm_classifier():
    import keras

    return keras.Sequential([
        keras.Input((10,), dtype="int32"),
        keras.layers.Embedding(50, 8),
        keras.layers.LSTM(12),
        keras.layers.Dense(2, activation="softmax"),
    ])


@harness.parity_case(
    inputs=token_ids,
    xfail={"torch-*-nojit": ("error", "export: torch.onnx cannot export MultiHeadAttention's "
                                      "shape-dependent Gather (it is not constant)")},
    cell_checks=TORCH_INFERENCE_ONLY,
)
def transformer_block():
    import keras
    from keras import layers

    inputs = keras.Input((10,), dtype="int32")
    x = layers.Embedding(50, 16)(inputs)
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = layers.LayerNormalization()(x + attention)
    ffn = layers.Dense(16)(layers.Dense(32, activation="relu")(x))
    x = layers.LayerNormalization()(x + ffn)
    outputs = layers.Dense(2)(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs)


# -- models as the Keras examples write them -----------------------------------------------

def mnist_images(rng):
    return rng.random((8, 28, 28, 1)).astype("float32")


def one_hot_digits(rng):
    return np.eye(10, dtype="float32")[rng.integers(0, 10, size=8)]


@harness.parity_case(inputs=mnist_images, targets=one_hot_digits, loss="categorical_crossentropy",
                     covers=["keras.layers.Conv2D", "keras.layers.MaxPooling2D", "keras.layers.Dropout"],
                     skip=torch_compiled_in("convnet", 35))
def mnist_convnet():
    """keras.io's "Simple MNIST convnet"."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])


def binary_labels(rng):
    return rng.integers(0, 2, size=(4, 1)).astype("float32")


@harness.parity_case(inputs=lambda rng: rng.integers(0, 100, size=(4, 12)).astype("int32"),
                     targets=binary_labels, loss="binary_crossentropy",
                     covers=["keras.layers.Bidirectional", "keras.layers.GRU", "keras.layers.LSTM"],
                     skip=torch_compiled_in("lstm_classifier"))
def text_classifier_gru_lstm():
    """A review classifier: padded token ids (0 is padding, masked), a bidirectional GRU, an LSTM."""
    import keras
    from keras import layers

    inputs = keras.Input((12,), dtype="int32")
    x = layers.Embedding(100, 16, mask_zero=True)(inputs)
    x = layers.Bidirectional(layers.GRU(8, return_sequences=True))(x)
    x = layers.LSTM(8)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def token_and_position_embedding():
    import keras
    from keras import layers

    class TokenAndPositionEmbedding(layers.Layer):
        """keras.io's text classification with Transformer: token plus learned position embedding."""

        def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
            super().__init__(**kwargs)
            self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
            self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

        def build(self, input_shape):
            self.token_emb.build(input_shape)
            self.pos_emb.build(input_shape)

        def call(self, x):
            positions = keras.ops.arange(0, keras.ops.shape(x)[-1], 1)
            return self.token_emb(x) + self.pos_emb(positions)

    return TokenAndPositionEmbedding


@harness.parity_case(inputs=token_ids, targets=lambda rng: rng.integers(0, 2, size=(4,)).astype("int32"),
                     loss="sparse_categorical_crossentropy",
                     covers=["keras.layers.MultiHeadAttention", "keras.layers.Embedding"],
                     xfail={"torch-*-nojit": ("error", "export: torch.onnx cannot export MultiHeadAttention's "
                                                        "shape-dependent Gather (it is not constant)")},
                     skip=torch_compiled_in("transformer_block", 152))
def transformer_with_positional_embedding():
    import keras
    from keras import layers

    inputs = keras.Input((10,), dtype="int32")
    x = token_and_position_embedding()(10, 50, 16)(inputs)
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=16)(x, x, use_causal_mask=True)
    x = layers.LayerNormalization(epsilon=1e-6)(x + layers.Dropout(0.1)(attention))
    ffn = layers.Dense(16)(layers.Dense(32, activation="relu")(x))
    x = layers.LayerNormalization(epsilon=1e-6)(x + layers.Dropout(0.1)(ffn))
    x = layers.GlobalAveragePooling1D()(x)
    outputs = layers.Dense(2, activation="softmax")(layers.Dropout(0.1)(x))
    return keras.Model(inputs, outputs)


@harness.parity_case(inputs=lambda rng: rng.normal(size=(6, 8, 8, 4)).astype("float32"),
                     covers=["keras.layers.BatchNormalization", "keras.layers.Conv2D", "keras.layers.Add"],
                     cell_checks=TORCH_INFERENCE_ONLY)
def residual_block_with_batchnorm():
    """A ResNet basic block: the train check compares BatchNormalization's moving statistics too."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    shortcut = layers.BatchNormalization()(layers.Conv2D(8, 1, use_bias=False)(inputs))
    x = layers.Activation("relu")(layers.Add()([x, shortcut]))
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


@harness.parity_case(
    inputs=lambda rng: {"title": rng.integers(0, 30, size=(4, 6)).astype("int32"),
                        "price": rng.normal(size=(4, 1)).astype("float32"),
                        "tags": rng.integers(0, 2, size=(4, 5)).astype("float32")},
    targets=lambda rng: {"priority": rng.normal(size=(4, 1)).astype("float32"),
                         "department": rng.normal(size=(4, 3)).astype("float32")},
    covers=["keras.layers.Concatenate"],
    cell_checks=TORCH_INFERENCE_ONLY,
)
def dict_inputs_and_outputs():
    """keras.io's multi-input, multi-output functional model, with named dict inputs and outputs."""
    import keras
    from keras import layers

    title = keras.Input((6,), dtype="int32", name="title")
    price = keras.Input((1,), name="price")
    tags = keras.Input((5,), name="tags")
    title_features = layers.GlobalAveragePooling1D()(layers.Embedding(30, 8)(title))
    x = layers.Concatenate()([title_features, layers.Dense(4)(price), tags])
    priority = layers.Dense(1, name="priority")(x)
    department = layers.Dense(3, name="department")(x)
    return keras.Model({"title": title, "price": price, "tags": tags},
                       {"priority": priority, "department": department})


def train_step_per_backend_model():
    """The guide's custom train_step, one implementation per backend, each written as the
    keras.io guides (custom_train_step_in_jax / _tensorflow / _torch) write it."""
    import keras

    class CustomTrainStep(keras.Model):
        def train_step(self, *args, **kwargs):
            backend = keras.backend.backend()
            if backend == "jax":
                return self._jax_train_step(*args, **kwargs)
            if backend == "tensorflow":
                return self._tensorflow_train_step(*args, **kwargs)
            return self._torch_train_step(*args, **kwargs)

        def _jax_train_step(self, state, data):
            import jax

            trainable_variables, non_trainable_variables, optimizer_variables, metrics_variables = state
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)

            def compute_loss(trainable_variables, non_trainable_variables):
                y_pred, non_trainable_variables = self.stateless_call(
                    trainable_variables, non_trainable_variables, x, training=True)
                return keras.ops.mean(keras.ops.square(y - y_pred)), non_trainable_variables

            (loss, non_trainable_variables), grads = jax.value_and_grad(compute_loss, has_aux=True)(
                trainable_variables, non_trainable_variables)
            trainable_variables, optimizer_variables = self.optimizer.stateless_apply(
                optimizer_variables, grads, trainable_variables)
            return {"loss": loss}, (trainable_variables, non_trainable_variables, optimizer_variables,
                                    metrics_variables)

        def _tensorflow_train_step(self, data):
            import tensorflow as tf

            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = keras.ops.mean(keras.ops.square(y - y_pred))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"loss": loss}

        def _torch_train_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            self.zero_grad()
            loss = keras.ops.mean(keras.ops.square(y - self(x, training=True)))
            loss.backward()
            grads = [v.value.grad for v in self.trainable_weights]
            import torch

            with torch.no_grad():
                self.optimizer.apply(grads, self.trainable_weights)
            return {"loss": loss}

    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inputs))
    return CustomTrainStep(inputs, outputs)


@harness.parity_case(inputs=lambda rng: rng.normal(size=(8, 6)).astype("float32"),
                     checks=["build", "outputs", "train", "save"], covers=["migration.pitfall13"])
def custom_train_step_per_backend():
    return train_step_per_backend_model()
