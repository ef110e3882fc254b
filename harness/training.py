"""How the `train` check trains a model in a worker (this module imports keras: workers only).

- The configuration: the case's `optimizer`/`loss`/`metrics`, else what the factory compiled
  the model with, else plain SGD and mean squared error.
- The data, as `fit` would be called: `fit(x, y)`, or `fit(x)` for a model that trains without
  targets (`targets=harness.no_targets`, or a model with its own `train_step` compiled without
  a loss), with the case's `sample_weight` and `class_weight`.
- Randomness: Keras' own random layers (Dropout and its kin, the noise layers, the random
  augmentation layers, an RNN with dropout) run as at inference while the compared steps run,
  by a call wrapper on each instance; the user's code is not edited.
- Each step is recorded by a Keras callback: the loss, the metrics, the gradient of every
  trainable variable at the step's weights (by the backend's autodiff, where the model uses
  Keras' own `train_step`), the optimizer's variables and the weights after it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
import json
import time

import keras
import numpy as np

from harness.calls import assign_by_key, backend_tensors, synchronize, variable_keys, weights_by_key
from harness.checks.train import step_values

LEARNING_RATE = 0.01
COMPILE_KEYS = ("optimizer", "loss", "loss_weights", "metrics", "weighted_metrics")


# -- the configuration ---------------------------------------------------------------------

def compile_config_of(obj) -> dict | None:
    """What the factory compiled its model with, read before the harness compiles it for
    inference (which replaces it)."""
    if not (isinstance(obj, keras.Model) and getattr(obj, "compiled", False) and hasattr(obj, "_compile_config")):
        return None
    config = obj._compile_config.config
    return {key: config.get(key) for key in COMPILE_KEYS}


def declared(value):
    """A case's `optimizer`/`loss`/`metrics` as Keras takes them. A zero-argument callable is
    called here, so each cell gets fresh objects; an optimizer object is cloned from its config,
    as one declared at module level would carry its state from cell to cell in a worker."""
    if callable(value) and not isinstance(value, keras.losses.Loss) and _takes_no_arguments(value):
        value = value()
    if isinstance(value, keras.optimizers.Optimizer):
        value = value.__class__.from_config(value.get_config())
    return value


def _takes_no_arguments(fn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


@dataclasses.dataclass
class Configuration:
    compile_kwargs: dict
    source: dict  # each compile argument -> "the case", "the factory's compile()" or "the default"

    def describe(self, model) -> dict:
        """The record's `configuration`: the optimizer's class and settings as built, the loss,
        the metrics, and where each came from."""
        optimizer = model.optimizer
        config = optimizer.get_config()
        unused = ("ema_momentum", "ema_overwrite_frequency") if not config.get("use_ema") else ()
        settings = {k: v for k, v in config.items() if v not in (None, False) and k != "name" and k not in unused}
        described = {"optimizer": {"class": type(optimizer).__name__, **json.loads(json.dumps(settings, default=str))},
                     "source": self.source}
        for key in COMPILE_KEYS[1:]:
            if self.compile_kwargs.get(key) is not None:
                described[key] = describe_value(self.compile_kwargs[key])
        return described


def configuration(case, factory_config: dict | None, model) -> Configuration:
    kwargs, source = {}, {}
    for key, value in (factory_config or {}).items():
        if value is not None:
            kwargs[key], source[key] = value, "the factory's compile()"
    for key in ("optimizer", "loss", "metrics"):
        value = getattr(case, key)
        if value is not None:
            kwargs[key], source[key] = declared(value), "the case"
    if "optimizer" not in kwargs:
        kwargs["optimizer"], source["optimizer"] = keras.optimizers.SGD(learning_rate=LEARNING_RATE), "the default"
    if "loss" not in kwargs and factory_config is None:
        kwargs["loss"], source["loss"] = "mse", "the default"
    return Configuration(kwargs, source)


def describe_value(value):
    """A loss or metric declaration in a JSON-able form: names, classes with their settings."""
    if isinstance(value, dict):
        return {str(k): describe_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe_value(v) for v in value]
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if hasattr(value, "get_config"):
        try:
            config = {k: v for k, v in value.get_config().items() if k not in ("name", "dtype") and v is not None}
            return {"class": type(value).__name__, **json.loads(json.dumps(config, default=str))}
        except Exception:  # noqa: BLE001 - a config that cannot be read is named only
            pass
    return getattr(value, "__name__", type(value).__name__)


def has_own_training(model) -> bool:
    """The model's class (not Keras) defines `train_step`: it decides what data it takes."""
    for cls in type(model).__mro__:
        if "train_step" in cls.__dict__:
            return not cls.__module__.startswith("keras")
    return False


def uses_keras_train_step(model) -> bool:
    return not has_own_training(model)


# -- the data --------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingData:
    x: object
    y: object = None
    sample_weight: object = None
    class_weight: dict | None = None

    @property
    def batch_size(self) -> int:
        return int(keras.tree.flatten(self.x)[0].shape[0])

    def fit_kwargs(self) -> dict:
        kwargs = {"x": self.x, "batch_size": self.batch_size, "shuffle": False, "verbose": 0}
        if self.y is not None:
            kwargs["y"] = self.y
        if self.sample_weight is not None:
            kwargs["sample_weight"] = self.sample_weight
        if self.class_weight is not None:
            kwargs["class_weight"] = self.class_weight
        return kwargs

    def call(self) -> str:
        """How `fit` is called, in words: `fit(x, y, sample_weight=...)`."""
        return "fit(" + ", ".join(["x"] + (["y"] if self.y is not None else []) + [
            f"{k}=..." for k in ("sample_weight", "class_weight") if getattr(self, k) is not None]) + ")"

    def received(self) -> str:
        """What a `train_step` receives from this `fit` call, for a hint."""
        parts = [("x", self.x)] + ([("y", self.y)] if self.y is not None else []) + (
            [("sample_weight", self.sample_weight)] if self.sample_weight is not None else [])
        described = ", ".join(f"{name}: {describe_structure(value)}" for name, value in parts)
        if len(parts) == 1 and not isinstance(self.x, (tuple, list)):
            return f"data = x alone ({described})"
        return f"data = a tuple of {len(parts)} ({described})"

    def gradient_data(self):
        """(x, y, sample_weight) as backend tensors, class weights as sample weights."""
        sample_weight = self.sample_weight
        if self.class_weight is not None:
            from keras.src.trainers.data_adapters import data_adapter_utils

            sample_weight = data_adapter_utils.class_weight_to_sample_weights(np.asarray(self.y), self.class_weight)
        return tuple(None if value is None else backend_tensors(value)
                     for value in (self.x, self.y, sample_weight))


def describe_structure(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {describe_structure(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe_structure(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return f"{np.asarray(value).dtype} {tuple(np.shape(value))}"


# -- randomness made inert ---------------------------------------------------------------

def random_layers(model) -> list:
    """Keras' own layers that draw while training: those holding a SeedGenerator (Dropout and
    its kin, GaussianNoise, the random augmentation layers) and RNNs whose cell does. Each is
    the identity, or its expectation, at inference."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        if not type(layer).__module__.startswith("keras."):
            continue
        cell = getattr(layer, "cell", None)
        if getattr(layer, "_seed_generators", None) or getattr(cell, "_seed_generators", None):
            found.append(layer)
    return found


@contextlib.contextmanager
def run_as_at_inference(layers):
    """Each layer's `call` gets `training=False` while the block runs (an instance attribute
    shadowing the class's method, removed afterwards)."""
    for layer in layers:
        object.__setattr__(layer, "call", _at_inference(layer.call))
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("call", None)


def _at_inference(call):
    signature = inspect.signature(call)
    if "training" not in signature.parameters:
        return call

    @functools.wraps(call)
    def inert(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["training"] = False
        return call(*bound.args, **bound.kwargs)

    return inert


# -- gradients -----------------------------------------------------------------------------

def gradients(model, backend: str, data: TrainingData) -> list[np.ndarray]:
    """d loss / d trainable variable at the current weights, in training mode, through the
    model's own loss (`compute_loss`), as Keras' train step takes them. What the forward pass
    changes (BatchNormalization's moving statistics, seed states, metrics) is put back."""
    x, y, sample_weight = data.gradient_data()
    trainable = model.trainable_variables
    kept = [(v, np.array(keras.ops.convert_to_numpy(v.value)))
            for v in model.non_trainable_variables + model.metrics_variables]
    try:
        if backend == "jax":
            import jax

            non_trainable = [v.value for v in model.non_trainable_variables]
            metrics = [v.value for v in model.metrics_variables]
            optimizer = [v.value for v in model.optimizer.variables]
            grads = jax.grad(lambda tv: model.compute_loss_and_updates(  # [1][0]: the loss unscaled
                tv, non_trainable, metrics, x, y, sample_weight, training=True,
                optimizer_variables=optimizer)[1][0])([v.value for v in trainable])
        elif backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = model._compute_loss(x=x, y=y, y_pred=model(x, training=True),
                                           sample_weight=sample_weight, training=True)
            grads = [None if g is None else tf.convert_to_tensor(g) for g in tape.gradient(loss, trainable)]
        else:
            import torch

            with torch.enable_grad():
                loss = model._compute_loss(x=x, y=y, y_pred=model(x, training=True),
                                           sample_weight=sample_weight, training=True)
                grads = torch.autograd.grad(loss, [v.value for v in trainable], allow_unused=True)
    finally:
        for v, value in kept:
            v.assign(value)
    return [np.zeros(v.shape, v.dtype) if g is None else np.asarray(keras.ops.convert_to_numpy(g))
            for v, g in zip(trainable, grads)]


# -- the steps -----------------------------------------------------------------------------

def weights_of(model) -> dict[str, np.ndarray]:
    return weights_by_key(model.weights)


def optimizer_state(optimizer) -> dict[str, np.ndarray]:
    """The optimizer's variables under names that match across backends. Their paths do not:
    a variable an optimizer makes outside `add_variable` (Nadam's momentum product, Adafactor's
    factors) is `nadam/variable` under TensorFlow, whose name scopes reach every variable, and
    `variable` under JAX and torch; and Adafactor gives both factors of a kernel one path. So
    every name gets the optimizer's scope, and a repeated one its rank (`adafactor/bias#2`), in
    the order of `optimizer.variables`, which every backend builds alike."""
    scope = f"{optimizer.name}/"
    state, seen = {}, collections.Counter()
    for v in optimizer.variables:
        name = scope + v.path.removeprefix(scope)
        seen[name] += 1
        state[name if seen[name] == 1 else f"{name}#{seen[name]}"] = np.array(keras.ops.convert_to_numpy(v.value))
    return state


class StepRecorder(keras.callbacks.Callback):
    """One epoch of one batch is one step. Records, in a step's order: its loss and metrics,
    the gradients taken at its starting weights, then the optimizer's variables and the weights
    after it, under keys `"{step}/{quantity}/{name}"` (steps from 1). With `frozen`, every step
    starts again from those weights (the draws of a step, not training, are then recorded)."""

    def __init__(self, backend: str, device: str, data: TrainingData, *, with_gradients: bool,
                 record_state: bool = True, frozen: dict | None = None, dtype=np.float32):
        super().__init__()
        self.backend, self.device, self.data, self.dtype = backend, device, data, dtype
        self.with_gradients, self.record_state, self.frozen = with_gradients, record_state, frozen
        self.steps: dict[str, np.ndarray] = {}
        self.losses: list[float] = []
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        if self.frozen is not None:
            assign_by_key(self.model.weights, self.frozen)
        if self.with_gradients:
            grads = gradients(self.model, self.backend, self.data)
            self.pending = {f"gradient/{key}": g for key, g in zip(variable_keys(self.model.trainable_variables), grads)}
        else:
            self.pending = {}
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Reading the values waits for the step. Kept whole: a metric may be a vector (F1Score
        # per class); Keras computes them in float32 on every backend (in float64 in the
        # arbiter's float64 run, whose recorder keeps them so).
        values = {name: np.asarray(keras.ops.convert_to_numpy(value), self.dtype) for name, value in (logs or {}).items()}
        synchronize(self.backend, self.device)
        self.times.append(time.perf_counter() - self.started)
        self.losses.append(float(values["loss"].reshape(-1)[0]) if "loss" in values else float("nan"))
        self.logs = values

    def on_epoch_end(self, epoch, logs=None):
        if not self.record_state:
            return
        self.steps.update(step_values(epoch + 1, self.logs, self.pending, optimizer_state(self.model.optimizer),
                                      weights_of(self.model)))
