"""Every `keras.optimizers` class with its main options, trained four steps by the `train` check
on dense weights and on an `Embedding` looked up with repeated ids (sparse gradients), from the
same initial weights in every cell. Each step's loss, gradients, optimizer variables (moments,
accumulators, the iteration count, EMA copies) and weights are compared.

An optimizer is declared as (class name, keyword arguments); a keyword argument given as
(class name, keyword arguments) is built the same way, so a learning-rate schedule or the
optimizer a LossScaleOptimizer wraps reads as the optimizer does. Every divergence found is
declared on its entry with the figures a plain script measured under KERAS_BACKEND=...

Budget: torch.compile of a train step takes tens of seconds on a CPU, and what is compared
here is Keras' optimizer code, which torch runs the same compiled: torch's jit cells are not
run (suites/models compiles train steps under torch).
"""

import numpy as np

import harness

TORCH_COMPILE_BUDGET = {"torch-*-jit": "budget: the optimizers are Keras' own code, the same compiled; "
                                      "torch.compile of train steps runs in suites/models"}
TRAIN = ["build", "outputs", "train"]
REPEATED_IDS = np.array([[1, 1, 1, 2, 3, 1]] * 4, dtype="int32")


def build(spec):
    """(class name, keyword arguments) -> the object, from keras.optimizers or its schedules."""
    import keras

    def value(v):
        if isinstance(v, tuple):
            return build(v)
        return {k: value(x) for k, x in v.items()} if isinstance(v, dict) else v

    name, kwargs = spec
    cls = getattr(keras.optimizers, name, None) or getattr(keras.optimizers.schedules, name)
    return cls(**{k: value(v) for k, v in kwargs.items()})


def not_tensorflow(reason: str) -> dict:
    """JAX and torch agree; TensorFlow (the reference) departs: every other cell mismatches."""
    return {"jax-*-*": ("mismatch", reason), "torch-*-nojit": ("mismatch", reason)}


def covered(zoo: dict) -> list[str]:
    """The optimizer classes and schedules a zoo's entries name, for the coverage table."""
    found = set()

    def walk(spec):
        found.add(spec[0])
        for value in spec[1].values():
            for inner in value.values() if isinstance(value, dict) else [value]:
                if isinstance(inner, tuple):
                    walk(inner)

    for entry in zoo.values():
        walk((entry.kwargs if isinstance(entry, harness.param) else entry)["optimizer"])
    return sorted(f"keras.optimizers.{'schedules.' if 'Decay' in name else ''}{name}" for name in found)


def tensorflow_departs(spec, reason: str):
    """An entry whose TensorFlow cells depart from JAX's and torch's (which agree)."""
    return harness.param(optimizer=spec, xfail=not_tensorflow(reason))


SCHEDULE_FREE = ("ScheduleFreeAdamW's momentum must start as a copy of the weights (its build() "
                 "assigns it), but under TensorFlow it starts at 0 when fit() builds the optimizer (an "
                 "explicit optimizer.build(model.trainable_variables) before fit gives the copy), so the "
                 "first step replaces the weights with the momentum's first step: ")
#: Figures of the Embedding entries: one step from the same initial weights (a plain script,
#: normal draws of seed 0, ids [1, 1, 1, 2, 3, 1] in each of 4 rows), row 1 of the embeddings.
SLICES = ("TensorFlow hands the optimizer an Embedding's gradient as IndexedSlices, one slice per "
          "lookup, and Keras applies {what} to each slice before the slices of a repeated id are "
          "summed; JAX and torch apply it to the summed gradient. After one step, ")


DENSE = {
    "sgd": {"optimizer": ("SGD", {"learning_rate": 0.1})},
    "sgd_momentum": {"optimizer": ("SGD", {"learning_rate": 0.1, "momentum": 0.9})},
    "sgd_nesterov": {"optimizer": ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True})},
    "sgd_weight_decay": {"optimizer": ("SGD", {"learning_rate": 0.1, "weight_decay": 0.05})},
    "sgd_clipnorm": {"optimizer": ("SGD", {"learning_rate": 0.1, "clipnorm": 0.1})},
    "sgd_global_clipnorm": {"optimizer": ("SGD", {"learning_rate": 0.1, "global_clipnorm": 0.1})},
    "sgd_clipvalue": {"optimizer": ("SGD", {"learning_rate": 0.1, "clipvalue": 0.02})},
    "sgd_ema": {"optimizer": ("SGD", {"learning_rate": 0.1, "use_ema": True, "ema_momentum": 0.5,
                                      "ema_overwrite_frequency": 2})},
    "sgd_gradient_accumulation": {"optimizer": ("SGD", {"learning_rate": 0.1, "gradient_accumulation_steps": 2})},
    "sgd_exponential_decay": {"optimizer": ("SGD", {"learning_rate": (
        "ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 1, "decay_rate": 0.5})})},
    "sgd_piecewise_constant": {"optimizer": ("SGD", {"learning_rate": (
        "PiecewiseConstantDecay", {"boundaries": [1, 2], "values": [0.1, 0.05, 0.01]})})},
    "adam": {"optimizer": ("Adam", {"learning_rate": 0.01})},
    "adam_amsgrad": {"optimizer": ("Adam", {"learning_rate": 0.01, "amsgrad": True})},
    "adam_weight_decay": {"optimizer": ("Adam", {"learning_rate": 0.01, "weight_decay": 0.1})},
    "adam_global_clipnorm": {"optimizer": ("Adam", {"learning_rate": 0.01, "global_clipnorm": 0.1})},
    "adam_ema_accumulation": {"optimizer": ("Adam", {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.5,
                                                     "gradient_accumulation_steps": 2})},
    "adam_cosine_decay": {"optimizer": ("Adam", {"learning_rate": (
        "CosineDecay", {"initial_learning_rate": 0.01, "decay_steps": 4, "warmup_target": 0.02, "warmup_steps": 2})})},
    "adamw": {"optimizer": ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1})},
    "adamax": {"optimizer": ("Adamax", {"learning_rate": 0.01})},
    "nadam": {"optimizer": ("Nadam", {"learning_rate": 0.01})},
    "adagrad": {"optimizer": ("Adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.01})},
    "adadelta": {"optimizer": ("Adadelta", {"learning_rate": 1.0, "rho": 0.9})},
    "rmsprop": {"optimizer": ("RMSprop", {"learning_rate": 0.01})},
    "rmsprop_momentum_centered": {"optimizer": ("RMSprop", {"learning_rate": 0.01, "momentum": 0.9,
                                                            "centered": True})},
    "ftrl": {"optimizer": ("Ftrl", {"learning_rate": 0.1})},
    "ftrl_regularized": {"optimizer": ("Ftrl", {"learning_rate": 0.1, "l1_regularization_strength": 0.01,
                                                "l2_regularization_strength": 0.01,
                                                "l2_shrinkage_regularization_strength": 0.01, "beta": 0.1})},
    "lion": {"optimizer": ("Lion", {"learning_rate": 0.01})},
    "lamb": {"optimizer": ("Lamb", {"learning_rate": 0.01})},
    "adafactor": {"optimizer": ("Adafactor", {"learning_rate": 0.01})},
    "muon": {"optimizer": ("Muon", {"learning_rate": 0.01})},
    "schedule_free_adamw": tensorflow_departs(("ScheduleFreeAdamW", {"learning_rate": 0.01}), SCHEDULE_FREE + (
        "with lr 0.01 the first kernel's row 1 is [0.01, 0.01, -0.01, 0.01, -0.01, -0.01, -0.01, 0.01] "
        "under TensorFlow and [0.10426, -0.3066, -0.19878, -0.53557, ...] under JAX and torch")),
    "loss_scale_sgd": {"optimizer": ("LossScaleOptimizer", {"inner_optimizer": ("SGD", {"learning_rate": 0.1}),
                                                            "initial_scale": 1024.0})},
    "multi_optimizer": {"optimizer": ("MultiOptimizer", {"optimizer_map": ("OptimizerMap", {
        "default_optimizer": ("SGD", {"learning_rate": 0.1}),
        "optimizer_map": {"sequential/dense/.*": ("Adam", {"learning_rate": 0.01})}})})},
}


@harness.parity_case(
    inputs=lambda rng: rng.normal(size=(8, 6)).astype("float32"),
    targets=lambda rng: rng.normal(size=(8, 3)).astype("float32"),
    checks=TRAIN, skip=TORCH_COMPILE_BUDGET, params=DENSE, covers=covered(DENSE))
def optimizer_on_dense(optimizer):
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model.compile(optimizer=build(optimizer), loss="mse")
    return model


EMBEDDING = {
    "sgd": {"optimizer": ("SGD", {"learning_rate": 0.1})},
    "sgd_momentum": {"optimizer": ("SGD", {"learning_rate": 0.1, "momentum": 0.9})},
    "sgd_weight_decay": {"optimizer": ("SGD", {"learning_rate": 0.1, "weight_decay": 0.05})},
    "lion": {"optimizer": ("Lion", {"learning_rate": 0.1})},
    "sgd_clipnorm": tensorflow_departs(("SGD", {"learning_rate": 0.1, "clipnorm": 0.5}), SLICES.format(
        what="clipnorm's norm") + "embeddings[1] is [-0.53266, -0.36584, 0.41508, 0.98875] under TensorFlow and "
                                  "[-0.53787, -0.3436, 0.41353, 1.01289] under JAX and torch"),
    "sgd_global_clipnorm": tensorflow_departs(("SGD", {"learning_rate": 0.1, "global_clipnorm": 0.5}), SLICES.format(
        what="global_clipnorm's norm") + "embeddings[1] is [-0.53713, -0.34672, 0.41375, 1.0095] under TensorFlow "
                                         "and [-0.53904, -0.33858, 0.41318, 1.01834] under JAX and torch"),
    "sgd_clipvalue": tensorflow_departs(("SGD", {"learning_rate": 0.1, "clipvalue": 0.05}), SLICES.format(
        what="clipvalue") + "embeddings[1] is [-0.53625, -0.3163, 0.42318, 1.00251] under TensorFlow and "
                            "[-0.53926, -0.3213, 0.41663, 1.03751] under JAX and torch"),
    "adam": tensorflow_departs(("Adam", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the second moment") + "embeddings[1] is [-0.4853, -0.50155, 0.44251, 0.81334] under "
                                                  "TensorFlow and [-0.44426, -0.4163, 0.51163, 0.94251] under JAX and torch"),
    "adamw": tensorflow_departs(("AdamW", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the second moment") + "embeddings[1] is [-0.48509, -0.50143, 0.44234, 0.81292] under "
                                                  "TensorFlow and [-0.44404, -0.41617, 0.51146, 0.9421] under JAX and torch"),
    "adamax": tensorflow_departs(("Adamax", {"learning_rate": 0.1}), SLICES.format(
        what="the infinity norm's absolute value") + "embeddings[1] is [-0.5265, -0.37649, 0.42047, 0.98095] under "
                                                     "TensorFlow and [-0.44426, -0.4163, 0.51163, 0.94251] under JAX and torch"),
    "nadam": tensorflow_departs(("Nadam", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the second moment") + "embeddings[1] is [-0.4816, -0.51319, 0.44444, 0.79895] under "
                                                  "TensorFlow and [-0.43798, -0.42258, 0.51791, 0.93623] under JAX and torch"),
    "adagrad": tensorflow_departs(("Adagrad", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the accumulator") + "accumulator[1] is [8.93871, 16.41872, 2.95482, 12.65465] (a sum "
                                                "of squares) under TensorFlow and [3.17217, 56.10464, 0.37214, "
                                                "66.04033] (a square of the sum) under JAX and torch"),
    "adadelta": tensorflow_departs(("Adadelta", {"learning_rate": 1.0}), SLICES.format(
        what="the square of the accumulated gradient") + "accumulated_grad[1] is [0.44194, 0.81594, 0.14274, 0.62773] "
                                                         "under TensorFlow and [0.15361, 2.80023, 0.01361, 3.29702] "
                                                         "under JAX and torch"),
    "rmsprop": tensorflow_departs(("RMSprop", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the velocity") + "velocity[1] is [0.88387, 1.63187, 0.28548, 1.25547] under TensorFlow "
                                             "and [0.30722, 5.60046, 0.02721, 6.59403] under JAX and torch"),
    "ftrl": tensorflow_departs(("Ftrl", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the accumulator") + "accumulator[1] is [8.93871, 16.41872, 2.95482, 12.65465] under "
                                                "TensorFlow and [3.17217, 56.10464, 0.37214, 66.04033] under JAX and torch"),
    "lamb": tensorflow_departs(("Lamb", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the second moment") + "embeddings[1] is [-0.48432, -0.50465, 0.44302, 0.80951] under "
                                                  "TensorFlow and [-0.36637, -0.49418, 0.58952, 0.86463] under JAX and torch"),
    "adafactor": tensorflow_departs(("Adafactor", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the factored moments") + "embeddings[1] is [-0.48091, -0.50499, 0.42916, 0.79181] under "
                                                     "TensorFlow and [-0.4696, -0.42042, 0.42212, 0.92774] under JAX and torch"),
    "muon": tensorflow_departs(("Muon", {"learning_rate": 0.1}), SLICES.format(
        what="the square of the second moment of Muon's Adam path for embeddings") + (
        "embeddings[1] is [-0.48509, -0.50143, 0.44234, 0.81292] under TensorFlow and [-0.44404, -0.41617, 0.51146, "
        "0.9421] under JAX and torch")),
    "schedule_free_adamw": tensorflow_departs(("ScheduleFreeAdamW", {"learning_rate": 0.1}), SCHEDULE_FREE + (
        "embeddings[1] is [0.05896, -0.18525, 0.03088, -0.22918] under TensorFlow and [-0.44426, -0.4163, 0.51163, "
        "0.94251] under JAX and torch (with the slices' square of the second moment as for Adam)")),
}


@harness.parity_case(
    inputs=REPEATED_IDS, targets=lambda rng: rng.normal(size=(4, 3)).astype("float32"),
    checks=TRAIN, skip=TORCH_COMPILE_BUDGET, params=EMBEDDING,
    covers=covered(EMBEDDING) + ["keras.layers.Embedding"])
def optimizer_on_embedding(optimizer):
    import keras

    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer=build(optimizer), loss="mse")
    return model
