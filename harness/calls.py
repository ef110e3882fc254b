"""How a worker calls a case's object under its backend: finding the case, wrapping a layer,
compiling a function, moving values between NumPy and the backend, and what a call's results
are judged on (values, or for random outputs the draws of independent calls).

The checks stand on these; nothing here knows a check.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys

import numpy as np

from harness import arrays, compare
from harness.statuses import PASS

RANDOM_FUNCTIONS = ("normal", "uniform", "categorical", "randint", "truncated_normal", "dropout",
                    "shuffle", "gamma", "binomial", "beta")


def load_case(case_ref: dict):
    """Import the case's module under the name pytest gave it, then fetch the case object.

    The module must be importable by that name (torch.compile re-imports the module of a
    custom layer class), so its import root goes on sys.path and it lands in sys.modules.
    """
    name, path = case_ref["module"], case_ref["file"]
    module = sys.modules.get(name)
    if module is None or os.path.abspath(getattr(module, "__file__", "") or "") != path:
        root = case_ref.get("import_root")
        if root and root not in sys.path:
            sys.path.insert(0, root)
        if root:
            module = importlib.import_module(name)
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    case = getattr(module, case_ref["attr"])
    return case.bind(case_ref["param"]) if case_ref.get("param") is not None else case


def make_object(case, seed: int, dtype_policy: str | None = None):
    """The case's object, built by its factory in a fresh Keras session seeded as every cell is
    (under `dtype_policy` where given: the session's own is cleared with it)."""
    import keras

    # Variable paths must not carry name counters. No gc.collect() (free_memory): on a
    # worker holding torch.compile caches it costs a second per cell; Python collects anyway.
    keras.backend.clear_session(free_memory=False)
    if dtype_policy is not None:
        keras.config.set_dtype_policy(dtype_policy)
    keras.utils.set_random_seed(seed)
    return case.factory()


def kind_of(obj) -> str | None:
    """"model", "layer" or "function": how the harness calls the object; None for none of them."""
    import keras

    if isinstance(obj, keras.Model):
        return "model"
    if isinstance(obj, keras.layers.Layer):
        return "layer"
    if callable(obj):
        return "function"
    return None


def build_object(obj, kind: str, inputs) -> None:
    """A layer is built by a call on the inputs; so is a model that is not built yet."""
    if kind == "layer" or (kind == "model" and not obj.built):
        obj(inputs)


@contextlib.contextmanager
def torch_compiler_watch():
    """A torch jit job from an empty dynamo cache, as a fresh process has it, and what dynamo did
    in it (filled in at the end): `graphs` compiled, `frames` it was asked to compile and those it
    `ran_eagerly` (a graph break it could not resume from, an unsupported frame), and each
    `recompile_limit` hit. Dynamo keeps compiled frames and recompile counts per code object for
    the whole process, and past `recompile_limit` (8) recompiles of one of Keras' own frames runs
    it eagerly from then on: such a job tests less than a compiled run, and its record says so."""
    import logging

    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    hits: list[str] = []

    class RecompileLimit(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("torch._dynamo hit config."):
                function = next((line.split("function:", 1)[1].strip() for line in message.splitlines()
                                 if "function:" in line), "?")
                hits.append(f"{message.split(chr(10))[0].removeprefix('torch._dynamo hit ')}: {function}")

    logger, handler = logging.getLogger("torch._dynamo.convert_frame"), RecompileLimit(logging.WARNING)
    logger.addHandler(handler)
    before = (counters["stats"]["unique_graphs"], counters["frames"]["total"], counters["frames"]["ok"])
    found: dict = {}
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        frames = counters["frames"]["total"] - before[1]
        found.update(graphs=counters["stats"]["unique_graphs"] - before[0], frames=frames,
                     ran_eagerly=frames - (counters["frames"]["ok"] - before[2]),
                     recompile_limit=sorted({hit: hits.count(hit) for hit in hits}.items()))


def describe_dynamo(found: dict) -> str | None:
    """A note for a torch jit job in which dynamo left part of the model eager, else None."""
    if not (found.get("ran_eagerly") or found.get("recompile_limit")):
        return None
    limits = "; ".join(f"{hit} ({n} time{'s' if n > 1 else ''})" for hit, n in found["recompile_limit"])
    return (f"torch.compile ran {found['ran_eagerly']} of the {found['frames']} frames dynamo was given eagerly"
            + (f" (it hit its recompile limit: {limits})" if limits else "")
            + ": this jit cell tested less than a compiled run of the whole model")


def variable_keys(variables) -> list[str]:
    """Each variable's key across cells: its path, and where a path repeats (two variables
    given one name in one layer, as keras-hub's T5 does with its encoder's and decoder's
    relative-attention bias), its rank in order of appearance (`layer/bias#2`), which every
    backend builds alike."""
    return ranked_names([v.path for v in variables])


def ranked_names(names: list[str]) -> list[str]:
    """Names made unique by rank of appearance where one repeats (`name#2`)."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def repeated_paths(variables) -> list[str]:
    """The paths held by more than one variable, for the note that says they were ranked."""
    paths = [v.path for v in variables]
    return sorted({p for p in paths if paths.count(p) > 1})


def weights_by_key(variables) -> dict[str, np.ndarray]:
    """The variables' values as NumPy, by `variable_keys`."""
    import keras

    return {key: np.array(keras.ops.convert_to_numpy(v.value)) for key, v in zip(variable_keys(variables), variables)}


def assign_by_key(variables, weights: dict[str, np.ndarray], cast=None) -> list[str]:
    """Assign `weights` by `variable_keys` (cast to `cast` where given); returns the keys it
    lacks, and then assigns nothing."""
    keys = variable_keys(variables)
    missing = [key for key in keys if key not in weights]
    if not missing:
        for key, v in zip(keys, variables):
            value = np.array(weights[key])  # out of the read-only memory map
            v.assign(value.astype(cast) if cast is not None and value.dtype.kind == "f" else value)
    return missing


def wrap_layer(layer, inputs):
    """A built layer inside a functional keras.Model of the inputs' exact shapes, so jit on/off,
    training, saving and export go through Keras' own paths, and the file needs no wrapper class."""
    import keras

    symbolic = keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=str(x.dtype)), inputs)
    return keras.Model(symbolic, layer(symbolic), name=f"{layer.name}_model")


def backend_jit(fn, backend: str):
    """The backend's own compiler for a plain function: XLA, jax.jit or torch.compile."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    import torch

    return torch.compile(fn)


def call_function(fn, inputs):
    """A tuple of inputs is spread as positional arguments, a dict as keywords."""
    if isinstance(inputs, tuple):
        return fn(*inputs)
    if isinstance(inputs, dict):
        return fn(**inputs)
    return fn(inputs)


def backend_tensors(value):
    """NumPy leaves as the backend's tensors (on the cell's device), as `fit` and `predict`
    hand them to a compiled step. `torch.compile` given NumPy arrays breaks its graph on
    them (`ndarray.dtype`) and traces the step two to five times slower."""
    import keras

    return keras.tree.map_structure(keras.ops.convert_to_tensor, value)


def to_numpy_tree(value):
    import keras

    return keras.tree.map_structure(lambda v: np.asarray(keras.ops.convert_to_numpy(v)), value)


def synchronize(backend: str, device: str) -> None:
    """Wait for queued device work (results are also read back, which synchronises too)."""
    if backend == "torch" and device == "gpu":
        import torch

        torch.cuda.synchronize()


def same_tree(a, b) -> bool:
    """Bit-for-bit equality of two structures of arrays (NaN equal to NaN)."""
    _, left = arrays.flatten(a)
    _, right = arrays.flatten(b)
    return len(left) == len(right) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
        for x, y in zip(left, right))


def draws_of(call):
    """LAW_CALLS calls of a random function, each output leaf as its draw statistics over the
    calls: a (calls, statistics) array in the outputs' structure, compared by law."""
    calls = [arrays.flatten(call()) for _ in range(compare.LAW_CALLS)]
    skeleton, first = calls[0]
    return arrays.unflatten(skeleton, [np.stack([compare.draw_statistics(leaves[i]) for _, leaves in calls])
                                       for i in range(len(first))])


def results_of(call, random: bool):
    """What a file's round trip is judged on: the outputs, or for random ones their draws."""
    return draws_of(lambda: to_numpy_tree(call())) if random else call()


def same_results(expected, got, random: bool) -> bool:
    """Outputs bit for bit; draws by law (every leaf's statistics over the calls)."""
    if not random:
        return same_tree(expected, got)
    _, left = arrays.flatten(expected)
    _, right = arrays.flatten(got)
    return len(left) == len(right) and all(compare.compare_draws("output", a, b)["status"] == PASS
                                           for a, b in zip(left, right))


@contextlib.contextmanager
def recording_random_use():
    """Notes whether any keras.random draw happens inside the block (eager or while tracing)."""
    from keras.src import backend

    module = backend.random
    used = {"any": False}
    originals = {name: getattr(module, name) for name in RANDOM_FUNCTIONS if hasattr(module, name)}

    def wrap(fn):
        def recorded(*args, **kwargs):
            used["any"] = True
            return fn(*args, **kwargs)
        return recorded

    for name, fn in originals.items():
        setattr(module, name, wrap(fn))
    try:
        yield used
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def custom_objects_of(obj) -> dict:
    """Classes of the object and its layers that `load_model` cannot find by itself."""
    import keras

    objects = {}
    layers = list(obj._flatten_layers()) if hasattr(obj, "_flatten_layers") else [obj]
    for layer in layers:
        cls = type(layer)
        if not cls.__module__.startswith("keras."):
            objects[cls.__name__] = cls
            objects[keras.saving.get_registered_name(cls)] = cls
    return objects

