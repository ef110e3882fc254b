"""Tapping a model in a worker: the tensors of every layer call, captured while the model runs
the cell's way, and a piece of the model run alone (this module imports keras: workers only).

A tap is an instance attribute shadowing a layer's `call` (the user's code is not edited), so
functional, Sequential, subclassed and nested models are tapped alike, every layer at every
depth, keyed by `layer.path` (and `#2`, `#3` for the later calls of a shared layer). The
tapped model runs through Keras' own predict step, compiled as the cell compiles it: the
layer calls' tensors are returned from the step beside its outputs. Under a compiler that cuts
fusion across layers where a tensor is returned, so a tapped jit run can differ from the
untapped one; the caller compares the two.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a call's tensor stood among its arguments: its index among the call's tensors."""

    index: int


@dataclasses.dataclass
class LayerCall:
    key: str
    layer: object
    template: tuple  # (args, kwargs), each tensor replaced by its Slot
    template_tensors: int  # how many tensors the call took

    def arguments(self, tensors: list) -> tuple[tuple, dict]:
        """The call's arguments with `tensors` in the slots."""
        args, kwargs = fill(self.template, tensors)
        return tuple(args), dict(kwargs)


def is_tensor(value) -> bool:
    return not isinstance(value, keras.KerasTensor) and keras.ops.is_tensor(value)


def template_of(value, tensors: list):
    """`value` with each backend tensor moved to `tensors` and replaced by its Slot, in
    keras.tree's order (a dict's keys sorted), the order of a functional node's tensors."""
    if isinstance(value, (list, tuple)):
        return type(value)(template_of(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: template_of(value[k], tensors) for k in sorted(value, key=str)}
    if is_tensor(value):
        tensors.append(value)
        return Slot(len(tensors) - 1)
    return value


def fill(template, tensors: list):
    if isinstance(template, Slot):
        return tensors[template.index]
    if isinstance(template, (list, tuple)):
        return type(template)(fill(v, tensors) for v in template)
    if isinstance(template, dict):
        return {k: fill(v, tensors) for k, v in template.items()}
    return template


class Recorder:
    """The layer calls of one run of the model, in the order they finish (a nested layer's
    calls before the call of the layer holding it)."""

    def __init__(self, paths: dict[int, str]):
        self.paths = paths  # id(layer) -> its key's path
        self.active: list = []  # the layers whose call is running, innermost last
        self.begin()

    def begin(self) -> None:
        self.calls: list[LayerCall] = []
        self.values: list[dict] = []
        self.counts: collections.Counter = collections.Counter()

    def record(self, layer, args, kwargs, outputs) -> None:
        leaves = [o for o in keras.tree.flatten(outputs) if is_tensor(o)]
        if not leaves:  # a symbolic build (KerasTensors), or a call that returned no tensor
            return
        path = self.paths[id(layer)]
        self.counts[path] += 1
        count = self.counts[path]
        inputs: list = []
        template = template_of((args, kwargs), inputs)
        self.calls.append(LayerCall(path if count == 1 else f"{path}#{count}", layer, template, len(inputs)))
        self.values.append({"inputs": inputs, "outputs": leaves})


def layer_paths(model) -> dict[int, str]:
    """Each layer below `model` by id: its `path`, or where Keras gave it none (a layer without
    weights), its parent's key and its own name."""
    paths: dict[int, str] = {}

    def walk(parent, prefix: str) -> None:
        for layer in parent._flatten_layers(include_self=False, recursive=False):
            if id(layer) not in paths:
                paths[id(layer)] = layer.path or prefix + layer.name
                walk(layer, paths[id(layer)] + "/")

    walk(model, "")
    return paths


@contextlib.contextmanager
def tapping(model, recorder):
    """Every layer below `model` records its calls while the block runs. `recorder` is a
    `Recorder`, or anything with its `active` list and `record` method."""
    layers = list(model._flatten_layers(include_self=False))
    for layer in layers:
        object.__setattr__(layer, "call", _tapped(layer, layer.call, recorder))
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("call", None)


def _tapped(layer, call, recorder):
    @functools.wraps(call)
    def tapped(*args, **kwargs):
        recorder.active.append(layer)
        try:
            outputs = call(*args, **kwargs)
        finally:
            recorder.active.pop()
        recorder.record(layer, args, kwargs, outputs)
        return outputs

    return tapped


class TappedModel(keras.Model):
    """The model, with every layer call's tensors returned beside its outputs."""

    def __init__(self, inner, recorder: Recorder, training: bool):
        super().__init__(name="keras_parity_tapped")
        self.inner, self.recorder, self.training = inner, recorder, training
        self.built = True  # the inner model is built, with the weights to tap

    def call(self, inputs):
        self.recorder.begin()  # each trace (and each eager call) records afresh
        outputs = self.inner(inputs, training=self.training)
        return {"outputs": outputs, "taps": [dict(values) for values in self.recorder.values]}


def run_tapped(model, inputs, *, jit: bool, training: bool = False) -> tuple[Recorder, dict, bool]:
    """One run of the model with its layer calls tapped, through Keras' predict step compiled
    with the cell's jit setting. Returns the recorder, the NumPy results (`outputs` and `taps`:
    a list of `{"inputs": [...], "outputs": [...]}` in the recorder's order) and whether the
    step was compiled as asked (Keras may refuse jit for a model)."""
    recorder = Recorder(layer_paths(model))
    tapped = TappedModel(model, recorder, training)
    with tapping(model, recorder):
        tapped.compile(jit_compile=jit)
        results = tapped.predict_on_batch(inputs)
    return recorder, results, bool(tapped.jit_compile) == jit


def piece_model(call: LayerCall, tensors: list[np.ndarray]):
    """The layer of `call` alone, as a functional model of its tensor arguments (the other
    arguments, `training` or a flag, kept as they were)."""
    symbolic = [keras.Input(batch_shape=t.shape, dtype=str(t.dtype)) for t in tensors]
    args, kwargs = call.arguments(symbolic)
    return keras.Model(symbolic, call.layer(*args, **kwargs), name=f"{call.layer.name}_alone")


def functional_pieces(model, calls: list[LayerCall], culprit: LayerCall, most: int):
    """Sub-models of a functional model that end at the culprit's output and start at the
    inputs of one of the `most` top-level layers called before it, nearest first: (the key of
    the layer it starts at, the sub-model). Where the graph between them needs another input
    (a skip connection from further up), that start is passed over."""
    if not hasattr(model, "_nodes_by_depth") or culprit.layer not in model.layers:
        return
    ends = culprit.layer._inbound_nodes[0].output_tensors
    keys = [c.key for c in calls]
    tried = 0
    for call in reversed(calls[:keys.index(culprit.key)]):
        if tried == most:
            return
        if call.layer not in model.layers or "#" in call.key:
            continue
        starts = call.layer._inbound_nodes[0].input_tensors
        if len(starts) != call.template_tensors:  # Keras added a mask to the call
            continue
        tried += 1
        try:
            yield call.key, keras.Model(list(starts), ends, name=f"{culprit.layer.name}_from_{call.layer.name}")
        except Exception:  # noqa: BLE001 - not a self-contained piece of the graph
            continue


class InTraining(keras.Model):
    """A model called in training mode through Keras' predict step (which calls it with
    `training=False`), so that a piece of a training step runs as it ran there."""

    def __init__(self, inner):
        super().__init__(name=f"{inner.name}_in_training")
        self.inner = inner
        self.built = True

    def call(self, inputs):
        return self.inner(inputs, training=True)


def predict(model, inputs: list[np.ndarray], *, jit: bool, training: bool = False) -> list[np.ndarray]:
    """The piece's output tensors, predicted the cell's way, in training mode where the
    localized step was a training step."""
    runner = InTraining(model) if training else model
    runner.compile(jit_compile=jit)
    return [np.asarray(o) for o in keras.tree.flatten(runner.predict_on_batch(inputs))]
