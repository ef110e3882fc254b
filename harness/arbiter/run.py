"""The arbiter's runs in a worker: the case's computation in float64, and in float32 from weights
and inputs nudged by one unit in the last place (this module imports keras: workers only).

The float64 run rebuilds the object under a float64 dtype policy (floatx float64 too, so losses
and optimizer variables follow), casts the weights it is given and the inputs to float64, and
runs what the check ran: one inference (`outputs`), or the training steps with their gradients
(`train`), without jit. It checks that it computed in float64 end to end and says where it did not:
- JAX computes in float64 only with x64 enabled, which the run turns on around itself;
- Keras' type promotion turns any float64 value that meets another dtype into float32 under JAX
  and torch (`BIT64_TO_BIT32_DTYPE`, to match JAX's default), which BatchNormalization meets in
  `result_type(inputs.dtype, "float32")` (measured: its batch variance in float32, 1.4e-7 off
  float64, under a float64 policy); the run lets float64 stay float64 there;
- every layer call is tapped: a floating output that is not float64, or a cast of a float64
  value to a narrower float inside a layer's call (`keras.ops.cast`), is named in `narrowed`.

The nudged float32 runs are round-off made visible: each starts from the reference's weights
and inputs moved by one ulp (a random direction per element, seeded), and runs as the reference
cell does. How far they land from float64 is what float32 round-off alone does to this
computation; the pytest process (`harness.arbiter.verdict`) judges the cells against that.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback

import numpy as np

from harness import arrays
from harness.cells import Cell

FLOAT64 = "float64"
NARROW_FLOATS = ("float32", "float16", "bfloat16")


def serve(request: dict, backend: str) -> dict:
    """An `arbitrate` request: the float64 run (unless `float64` is false) and `nudged` float32
    runs from nudged weights and inputs (seeded from `nudged_from` on), as the request's cell runs."""
    runs = ArbiterRuns(request, backend)
    reply = {"type": "arbitrated", "backend": backend, "seconds": runs.seconds}
    first = request.get("nudged_from", 0)
    for index in range(first, first + request.get("nudged", 0)):
        try:
            reply.setdefault("nudged", []).append(runs.float32(nudged=index))
        except Exception as exc:  # noqa: BLE001 - the band is then the reference's own error alone
            reply["nudged_error"] = f"{type(exc).__name__}: {exc}"[:500]
            break
    if not request.get("float64", True):
        return reply
    try:
        reply.update(runs.float64())
    except Exception as exc:  # noqa: BLE001 - where float64 cannot run, the plain tolerance stands
        reply.update(float64_error=f"{type(exc).__name__}: {exc}"[:500], traceback=traceback.format_exc()[-3000:])
    return reply


class Float64Watch:
    """What a float64 run computed in a narrower float: tapped layer outputs, and casts of
    float64 values inside a layer's call. A tap recorder (`taps.tapping`)."""

    def __init__(self, paths: dict[int, str]):
        self.paths = paths
        self.active: list = []
        self.narrowed: dict[str, int] = {}

    def note(self, what: str) -> None:
        self.narrowed[what] = self.narrowed.get(what, 0) + 1

    def record(self, layer, args, kwargs, outputs) -> None:
        import keras

        for leaf in keras.tree.flatten(outputs):
            dtype = keras.backend.standardize_dtype(getattr(leaf, "dtype", None)) if hasattr(leaf, "dtype") else None
            if dtype in NARROW_FLOATS:
                self.note(f"{self.where(layer)}: a {dtype} output")

    def where(self, layer) -> str:
        return f"{self.paths.get(id(layer), layer.name)} ({type(layer).__name__})"

    @contextlib.contextmanager
    def casts(self):
        """Casts of float64 values to a narrower float, attributed to the innermost layer."""
        import keras
        from keras.src import backend

        original = backend.core.cast

        def cast(x, dtype):
            if (keras.backend.standardize_dtype(dtype) in NARROW_FLOATS and hasattr(x, "dtype")
                    and keras.backend.standardize_dtype(x.dtype) == FLOAT64):
                self.note(f"{self.where(self.active[-1]) if self.active else 'outside any layer'}: "
                          f"a cast to {keras.backend.standardize_dtype(dtype)}")
            return original(x, dtype)

        backend.core.cast = cast
        try:
            yield
        finally:
            backend.core.cast = original


@contextlib.contextmanager
def float64_mode(backend: str):
    """floatx float64, JAX's x64 on, and Keras' promotion of float64 to float32 off, for the
    block (the dtype policy is set by `calls.make_object`, after it clears the session)."""
    import keras
    from keras.src.backend.common import dtypes

    floatx, promoted = keras.config.floatx(), dtypes.BIT64_TO_BIT32_DTYPE["float64"]
    with contextlib.ExitStack() as stack:
        if backend == "jax":
            import jax

            stack.enter_context(jax.enable_x64(True))
        keras.config.set_floatx(FLOAT64)
        dtypes.BIT64_TO_BIT32_DTYPE["float64"] = FLOAT64
        try:
            yield
        finally:
            keras.config.set_floatx(floatx)
            dtypes.BIT64_TO_BIT32_DTYPE["float64"] = promoted
            keras.backend.clear_session(free_memory=False)  # the float64 policy goes with it


def as_float(value, dtype):
    """The floating leaves of a structure cast to `dtype` (None: left as they are)."""
    skeleton, leaves = arrays.flatten(value)
    return arrays.unflatten(skeleton, [leaf.astype(dtype) if dtype is not None and leaf.dtype.kind == "f" else leaf
                                       for leaf in leaves])


def nudge(value, rng: np.random.Generator):
    """Each floating element moved by one ulp, up or down at random."""
    def one(leaf):
        if leaf.dtype.kind != "f" or leaf.size == 0:
            return leaf
        direction = np.where(rng.random(leaf.shape) < 0.5, -np.inf, np.inf).astype(leaf.dtype)
        return np.nextafter(leaf, direction).astype(leaf.dtype)

    skeleton, leaves = arrays.flatten(value)
    return arrays.unflatten(skeleton, [one(np.asarray(leaf)) for leaf in leaves])


class ArbiterRuns:
    def __init__(self, request: dict, backend: str):
        from harness.calls import load_case

        self.request, self.backend = request, backend
        self.check = request["check"]  # "outputs" or "train"
        self.case = load_case(request["case"])
        self.inputs = arrays.load_tree(request["inputs"])
        self.weights = arrays.load_weights(request["weights"])
        self.seconds: dict[str, float] = {}

    def build(self, inputs, dtype_policy: str | None = None):
        """The case's model (a layer wrapped in one), built, with what its factory compiled."""
        from harness import training
        from harness.calls import build_object, kind_of, make_object, wrap_layer

        obj = make_object(self.case, self.request["seed"], dtype_policy)
        factory_config = training.compile_config_of(obj)
        kind = kind_of(obj)
        build_object(obj, kind, inputs)
        return (obj if kind == "model" else wrap_layer(obj, inputs)), factory_config

    def data(self, inputs, dtype):
        from harness import training

        def load(key):
            return as_float(arrays.load_tree(self.request[key]), dtype) if self.request.get(key) else None

        return training.TrainingData(x=inputs, y=load("targets"), sample_weight=load("sample_weight"),
                                     class_weight=self.case.class_weight)

    def computation(self, model, factory_config, inputs, dtype, jit: bool, watch: Float64Watch | None = None):
        """What the check computed, as arrays to save: the outputs, or every step's quantities."""
        from harness import training
        from harness.calls import backend_tensors, to_numpy_tree
        from harness.checks.train import TRAIN_STEPS
        from harness.localize import taps

        tapped = taps.tapping(model, watch) if watch is not None else contextlib.nullcontext()
        if self.check == "outputs":
            model.compile(jit_compile=jit)
            with tapped:
                return to_numpy_tree(model.predict_on_batch(backend_tensors(inputs)))
        config = training.configuration(self.case, factory_config, model)
        model.compile(**config.compile_kwargs, jit_compile=jit)
        data = self.data(inputs, dtype)
        recorder = training.StepRecorder(self.backend, "cpu", data, dtype=dtype or np.float32,
                                         with_gradients=training.uses_keras_train_step(model) and not jit)
        with training.run_as_at_inference(training.random_layers(model)), tapped:
            model.fit(**data.fit_kwargs(), epochs=TRAIN_STEPS, callbacks=[recorder])
        if watch is not None and recorder.logs.get("loss") is not None and recorder.logs["loss"].dtype != np.float64:
            watch.note(f"the loss: {recorder.logs['loss'].dtype}")
        return recorder.steps

    def save(self, name: str, results) -> str:
        path = os.path.join(self.request["out_dir"], f"{name}.npz")
        if self.check == "outputs":
            arrays.save_tree(path, results)
        else:
            np.savez(path, **results)  # float64 kept (arrays.save_weights keeps dtypes too)
        return path

    def float64(self) -> dict:
        from harness.calls import assign_by_key
        from harness.localize import taps

        t0 = time.perf_counter()
        inputs = as_float(self.inputs, np.float64)
        with float64_mode(self.backend):
            model, factory_config = self.build(inputs, FLOAT64)
            assign_by_key(model.weights, self.weights, cast=np.float64)
            watch = Float64Watch(taps.layer_paths(model))
            with watch.casts():
                results = self.computation(model, factory_config, inputs, np.float64, jit=False, watch=watch)
            narrow_variables = [f"{v.path}: a {v.dtype} variable" for v in model.weights
                                if str(v.dtype) in NARROW_FLOATS]
        self.seconds["float64_s"] = time.perf_counter() - t0
        narrowed = narrow_variables + [f"{what}{f' (x{n})' if n > 1 else ''}" for what, n in watch.narrowed.items()]
        return {"float64_file": self.save("float64", results), "held": not narrowed, "narrowed": narrowed[:20]}

    def float32(self, nudged: int | None = None) -> str:
        """A float32 run as the reference cell runs, from the weights and inputs as given or, with
        `nudged` (a seed), moved by one ulp."""
        from harness.calls import assign_by_key

        t0 = time.perf_counter()
        inputs, weights = self.inputs, dict(self.weights)
        if nudged is not None:
            rng = np.random.default_rng([self.request["seed"], nudged])
            inputs, weights = nudge(inputs, rng), nudge(weights, rng)
        model, factory_config = self.build(inputs)
        assign_by_key(model.weights, weights)
        results = self.computation(model, factory_config, inputs, None, jit=Cell.parse(self.request["cell"]).jit)
        name = "float32" if nudged is None else f"nudged{nudged + 1}"
        self.seconds[f"{name}_s"] = time.perf_counter() - t0
        return self.save(name, results)
