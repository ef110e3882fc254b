"""Runs one case in one cell, inside a worker process whose backend is already imported.

The runner builds the case's object, records its variables, loads the reference weights,
computes outputs with jit on or off, and writes arrays to `.npz` files. It compares nothing:
the pytest process compares every cell against the reference, so the comparison rules live
in one place (`harness.compare`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from harness import arrays, classify
from harness.cells import Cell
from harness.statuses import ERROR, PASS, SKIP

STEADY_REPEATS = 5


class StepFailed(Exception):
    """A step of the cell failed; carries the classified status and failure record."""

    def __init__(self, status: str, failure: classify.Failure):
        super().__init__(failure.message)
        self.status = status
        self.failure = failure


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
    return getattr(module, case_ref["attr"])


class LayerAsModel:
    """Wraps a built layer in a keras.Model so jit on/off goes through Keras' own compiled paths."""

    @staticmethod
    def wrap(layer):
        import keras

        class _LayerModel(keras.Model):
            def __init__(self, inner):
                super().__init__(name=f"{inner.name}_as_model")
                self.inner = inner

            def call(self, inputs):
                return self.inner(inputs)

        return _LayerModel(layer)


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


def to_numpy_tree(value):
    import keras

    return keras.tree.map_structure(lambda v: np.asarray(keras.ops.convert_to_numpy(v)), value)


def synchronize(backend: str, device: str) -> None:
    """Wait for queued device work (results are also read back, which synchronises too)."""
    if backend == "torch" and device == "gpu":
        import torch

        torch.cuda.synchronize()


class CellRun:
    def __init__(self, request: dict, backend: str, device: str):
        self.request = request
        self.cell = Cell.parse(request["cell"])
        self.backend = backend
        self.device = device
        self.out_dir = request["out_dir"]
        self.checks: dict[str, dict] = {}
        self.failure: classify.Failure | None = None
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.weights_loaded: bool | None = None  # None: this cell is the reference

    # -- the steps ---------------------------------------------------------------------

    def step(self, check: str, phase: str, fn, *, jit_retry=None):
        """Run one step; on an exception classify it (re-running without jit when asked)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a fault in user code is a result
            jit_only = None
            if jit_retry is not None and self.cell.jit:
                try:
                    jit_retry()
                    jit_only = True
                except Exception:  # noqa: BLE001
                    jit_only = False
            status, failure = classify.describe(exc, check=check, phase=phase,
                                                jit=self.cell.jit, jit_only=jit_only)
            raise StepFailed(status, failure) from exc

    def run(self) -> dict:
        wanted = self.request["checks"]
        try:
            self.run_checks(wanted)
        except StepFailed as failed:
            self.checks.setdefault(failed.failure.check, {})["status"] = failed.status
            self.failure = self.failure or failed.failure
            for check in wanted:
                self.checks.setdefault(check, {"status": SKIP, "reason": f"{failed.failure.check} failed"})
        return {
            "type": "cell_result",
            "checks": self.checks,
            "failure": self.failure.to_json() if self.failure else None,
            "timings": self.timings,
            "notes": self.notes,
            "weights_loaded": self.weights_loaded,
        }

    def run_checks(self, wanted: list[str]) -> None:
        import keras

        case = self.step("build", "import", lambda: load_case(self.request["case"]))
        inputs = arrays.load_tree(self.request["inputs"])

        def make():
            keras.backend.clear_session()  # variable paths must not carry name counters
            keras.utils.set_random_seed(self.request["seed"])
            return case.factory()

        t0 = time.perf_counter()
        obj = self.step("build", "factory", make)
        kind = self.kind_of(obj)
        if kind is None:
            raise StepFailed(ERROR, classify.Failure(
                check="build", phase="factory", kind="bad_factory", exception="TypeError",
                message=f"the factory returned {type(obj).__name__}",
                hint="return a keras.Model, a keras.layers.Layer or a callable built from keras.ops"))
        self.step("build", "build", lambda: self.build(obj, kind, inputs))
        variables = self.variables(obj, kind)
        self.timings["build_s"] = time.perf_counter() - t0
        self.checks["build"] = {"status": PASS, "variables": variables}

        self.step("build", "weights", lambda: self.exchange_weights(obj, kind))

        if "outputs" in wanted or "timing" in wanted:
            predict = self.step("outputs", "compile", lambda: self.predictor(obj, kind, jit=self.cell.jit))
            eager = lambda: self.predictor(obj, kind, jit=False)(inputs)  # noqa: E731
            t0 = time.perf_counter()
            outputs = self.step("outputs", "predict", lambda: predict(inputs), jit_retry=eager)
            synchronize(self.backend, self.device)
            self.timings["predict_first_s"] = time.perf_counter() - t0
            path = os.path.join(self.out_dir, "outputs.npz")
            dtypes = arrays.save_tree(path, outputs)
            if "outputs" in wanted:
                self.checks["outputs"] = {"status": PASS, "file": path, "dtypes": dtypes}
            if "timing" in wanted:
                steady = []
                for _ in range(STEADY_REPEATS):
                    t0 = time.perf_counter()
                    predict(inputs)
                    synchronize(self.backend, self.device)
                    steady.append(time.perf_counter() - t0)
                self.timings["predict_median_s"] = statistics.median(steady)
                self.checks["timing"] = {"status": PASS}

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def kind_of(obj) -> str | None:
        import keras

        if isinstance(obj, keras.Model):
            return "model"
        if isinstance(obj, keras.layers.Layer):
            return "layer"
        if callable(obj):
            return "function"
        return None

    @staticmethod
    def build(obj, kind: str, inputs) -> None:
        if kind in ("model", "layer") and not obj.built:
            obj(inputs)
        elif kind == "layer":
            obj(inputs)  # a layer built ahead (layer.build) is still called once to check it

    @staticmethod
    def variables(obj, kind: str) -> list[dict]:
        if kind == "function":
            return []
        return [
            {"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype), "trainable": bool(v.trainable)}
            for v in obj.weights
        ]

    def exchange_weights(self, obj, kind: str) -> None:
        """The reference cell writes its initial weights; every other cell loads them."""
        if kind == "function":
            return
        import keras

        save_to, load_from = self.request.get("save_weights_to"), self.request.get("load_weights_from")
        if save_to:
            paths = [v.path for v in obj.weights]
            duplicated = sorted({p for p in paths if paths.count(p) > 1})
            if duplicated:
                raise ValueError(
                    f"variable paths {duplicated} occur more than once, so weights cannot be "
                    f"matched across backends by path; give the variables distinct names")
            arrays.save_weights(save_to, {v.path: np.asarray(keras.ops.convert_to_numpy(v.value))
                                          for v in obj.weights})
        if load_from:
            reference = arrays.load_weights(load_from)
            missing = [v.path for v in obj.weights if v.path not in reference]
            if missing:
                self.weights_loaded = False
                self.notes.append(
                    f"reference weights not loaded: {len(missing)} variable path(s) differ "
                    f"from the reference cell (first: {missing[0]})")
                return
            for v in obj.weights:
                v.assign(np.array(reference[v.path]))  # out of the read-only memory map
            self.weights_loaded = True

    def predictor(self, obj, kind: str, *, jit: bool):
        if kind == "function":
            fn = backend_jit(obj, self.backend) if jit else obj
            import keras

            def run(inputs):
                tensors = keras.tree.map_structure(keras.ops.convert_to_tensor, inputs)
                return to_numpy_tree(call_function(fn, tensors))

            return run
        model = obj if kind == "model" else LayerAsModel.wrap(obj)
        model.compile(jit_compile=jit)
        if jit and not model.jit_compile:
            self.notes.append(
                "Keras fell back from jit to eager for this model (model_supports_jit was "
                "False): the jit cell ran without a compiler")
        model.make_predict_function(force=True)
        return lambda inputs: model.predict_on_batch(inputs)
