"""Training divergences of keras 3.15.1 between the backends, each a case that the `train`
check names at its first step and variable, with TensorFlow as the outlier. Every figure was
measured with a plain script under KERAS_BACKEND=... from the same initial weights.

Budget: torch.compile of a train step takes tens of seconds on a CPU, and these divergences
are in the optimizers' and losses' Python code, the same with jit on: torch's jit cells are
not run here.
"""

import numpy as np

import harness

TORCH_COMPILE_BUDGET = {"torch-*-jit": "budget: the divergence is in Keras' optimizer and loss code, the "
                                      "same compiled; torch.compile of train steps runs in suites/models"}
REPEATED_IDS = np.array([[1, 1, 1, 2, 3, 1]] * 4, dtype="int32")
TRAIN = ["build", "outputs", "train"]


def embedding_model():
    import keras

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.set_weights([rng.normal(size=(10, 4)).astype("float32"), rng.normal(size=(24, 3)).astype("float32"),
                       np.zeros(3, "float32")])
    return model


def not_tensorflow(reason: str) -> dict:
    return {"jax-*-*": ("mismatch", reason), "torch-*-nojit": ("mismatch", reason)}


@harness.parity_case(
    inputs=REPEATED_IDS, targets=lambda rng: rng.normal(size=(4, 3)).astype("float32"), checks=TRAIN,
    skip=TORCH_COMPILE_BUDGET, covers=["keras.optimizers.Adam", "keras.layers.Embedding"],
    xfail=not_tensorflow(
        "TensorFlow's Adam updates an Embedding's gathered slices one by one (IndexedSlices), so a "
        "repeated id's slice gradients are squared before they are summed: after step 1, "
        "velocity[1] is [0.00247, 0.00300, 0.00326, 0.00293] under TensorFlow and [1.7e-05, "
        "0.0142, 0.00163, 0.0202] under JAX and torch (Adam(0.1), ids [1, 1, 1, 2, 3, 1])"))
def adam_embedding_repeated_ids():
    import keras

    model = embedding_model()
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    return model


@harness.parity_case(
    inputs=REPEATED_IDS, targets=lambda rng: rng.normal(size=(4, 3)).astype("float32"), checks=TRAIN,
    skip=TORCH_COMPILE_BUDGET, covers=["keras.optimizers.SGD", "keras.layers.Embedding"],
    xfail=not_tensorflow(
        "TensorFlow's clipnorm takes the norm over an Embedding's unsummed gathered slices: after "
        "one SGD(0.1, clipnorm=0.5) step, embeddings[1] is [-0.53741, 0.31209, 1.28722, 0.88804] "
        "under TensorFlow and [-0.53671, 0.33204, 1.29398, 0.91183] under JAX and torch"))
def sgd_clipnorm_embedding_repeated_ids():
    import keras

    model = embedding_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, clipnorm=0.5), loss="mse")
    return model


@harness.parity_case(
    inputs=np.ones((4, 2), "float32"), targets=np.array([[0.0], [0.0], [1.0], [0.0]], "float32"),
    checks=TRAIN, skip=TORCH_COMPILE_BUDGET, covers=["keras.losses.BinaryCrossentropy"],
    xfail=not_tensorflow(
        "binary cross-entropy of a saturated sigmoid: TensorFlow recovers the logits from the "
        "sigmoid and computes the loss from them (18.0 on the first step), JAX and torch clip "
        "the probabilities to [1e-7, 1 - 1e-7] (11.96)"))
def binary_crossentropy_saturated_sigmoid():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.set_weights([np.full((2, 1), 12.0, "float32"), np.zeros(1, "float32")])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="binary_crossentropy")
    return model
