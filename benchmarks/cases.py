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
