"""Small real models as users write them: each runs in every cell and must match the reference."""

import harness


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


@harness.parity_case(inputs=images)
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


@harness.parity_case(inputs=token_ids)
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
