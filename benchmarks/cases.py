"""Small cases the benchmark runs, both through the harness and bare."""

import harness


@harness.parity_case(inputs=harness.spec((2, 4)), checks=["build", "outputs"])
def trivial():
    return lambda x: x


def _mlp(width):
    def factory():
        import keras

        return keras.Sequential([keras.Input((16,)), keras.layers.Dense(width, activation="relu"),
                                 keras.layers.Dense(4)])

    factory.__name__ = f"mlp_{width}"
    return factory


def _conv(filters):
    def factory():
        import keras

        return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(filters, 3, activation="relu"),
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])

    factory.__name__ = f"conv_{filters}"
    return factory


SMALL_FACTORIES = [_mlp(w) for w in (8, 16, 32, 64)] + [_conv(f) for f in (4, 8, 16, 32)]
SMALL_INPUTS = {f.__name__: (harness.spec((8, 16)) if f.__name__.startswith("mlp") else harness.spec((4, 8, 8, 3)))
                for f in SMALL_FACTORIES}

for _factory in SMALL_FACTORIES:
    globals()[_factory.__name__] = harness.parity_case(
        inputs=SMALL_INPUTS[_factory.__name__], checks=["build", "outputs"])(_factory)


@harness.parity_case(inputs=lambda rng: rng.uniform(0, 255, size=(4, 16, 16, 3)).astype("float32"),
                     checks=["build", "outputs"])
def convnet_bicubic():
    """A 12-layer convnet on 0-255 pixels with a bicubic `Resizing` halfway: JAX's and torch's
    cubic kernels are not TensorFlow's, so its outputs mismatch and the divergence is localized."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Resizing(12, 12, interpolation="bicubic")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(16, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(4)(x))


# -- correct models trained on a batch of 2, for the float64 arbiter's false-alarm rate --------

def two_images(rng):
    return rng.uniform(0, 1, size=(2, 32, 32, 3)).astype("float32")


def ten_targets(rng):
    return rng.normal(size=(2, 10)).astype("float32")


@harness.parity_case(inputs=two_images, targets=ten_targets, checks=["build", "outputs", "train"])
def mobilenet_v3_small():
    """keras.applications' MobileNetV3Small as written, untrained, at 32x32."""
    import keras

    return keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10,
                                               classifier_activation=None, include_preprocessing=False)


@harness.parity_case(inputs=two_images, targets=ten_targets, checks=["build", "outputs", "train"])
def mobilenet_v2():
    """keras.applications' MobileNetV2 as written, untrained, at 32x32: its last feature map is
    1x1, so each BatchNormalization there normalizes 2 values and training amplifies round-off
    chaotically."""
    import keras

    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                          classifier_activation=None)
