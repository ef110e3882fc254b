"""Runs one case in one cell, inside a worker process whose backend is already imported.

The runner builds the case's object, records its variables, loads the reference weights,
computes outputs with jit on or off, trains, saves and exports, and writes every array to
`.npz` files. It compares only what a cell can judge alone (round trips within the cell,
reproducibility); every comparison across cells happens in the pytest process
(`harness.session`, `harness.compare`), so the rules live in one place.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import resource
import statistics
import sys
import time

import numpy as np

from harness import arrays, classify, compare, compile_cache, memory
from harness.cells import Cell
from harness.statuses import ERROR, MISMATCH, PASS, SKIP, worst

STEADY_REPEATS = 5
TRAIN_STEPS = 4
LEARNING_RATE = 0.01
RANDOM_FUNCTIONS = ("normal", "uniform", "categorical", "randint", "truncated_normal", "dropout",
                    "shuffle", "gamma", "binomial", "beta")


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
    case = getattr(module, case_ref["attr"])
    return case.bind(case_ref["param"]) if case_ref.get("param") is not None else case


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


def torch_graphs_compiled() -> int:
    """Graphs dynamo has handed to its backend in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def cpu_seconds() -> float:
    """CPU time of this worker and the compilers it ran (inductor's g++): unlike the wall-clock
    timings, it does not grow when other workers share the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def synchronize(backend: str, device: str) -> None:
    """Wait for queued device work (results are also read back, which synchronises too)."""
    if backend == "torch" and device == "gpu":
        import torch

        torch.cuda.synchronize()


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


def same_tree(a, b) -> bool:
    """Bit-for-bit equality of two structures of arrays (NaN equal to NaN)."""
    _, left = arrays.flatten(a)
    _, right = arrays.flatten(b)
    return len(left) == len(right) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
        for x, y in zip(left, right))


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


def untracked_state(obj) -> list[str]:
    """Attributes that hold trainable state Keras does not track: framework variables and
    parameters. Constants (arrays, tensors: a graph's edges, a lookup table) are not state."""
    import keras

    found = []
    layers = list(obj._flatten_layers()) if hasattr(obj, "_flatten_layers") else [obj]
    for layer in layers:
        if type(layer).__module__.startswith("keras."):
            continue
        # Under torch a layer is a torch.nn.Module, which files a Parameter attribute away in
        # its own `_parameters` registry (Keras keeps its variables under `_torch_params`).
        tracked = {id(v.value) for v in layer.weights}
        for attr, param in getattr(layer, "_parameters", {}).items():
            if param is not None and id(param) not in tracked:
                found.append(f"{layer.name}.{attr} is a torch.nn.Parameter")
        for attr, value in vars(layer).items():
            if attr.startswith("_") or isinstance(value, keras.Variable):
                continue
            library = type(value).__module__.split(".")[0]
            name = type(value).__name__
            if library == "tensorflow" and "Variable" in name:
                found.append(f"{layer.name}.{attr} is a tf.Variable")
            elif library == "torch" and (name == "Parameter" or getattr(value, "requires_grad", False)):
                found.append(f"{layer.name}.{attr} is a torch.nn.Parameter")
    return found


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


class CellRun:
    def __init__(self, request: dict, backend: str, device: str):
        self.request = request
        self.cell = Cell.parse(request["cell"])
        self.backend = backend
        self.device = device
        self.out_dir = request["out_dir"]
        self.wanted = request["checks"]
        self.checks: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.weights_loaded: bool | None = None  # None: this cell is the reference
        self.forward = None  # the built object's forward call, for naming XLA's rejected ops

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
            if failure.kind == "xla_unsupported_ops" and self.forward is not None:
                self.name_all_unsupported_ops(failure)
            raise StepFailed(status, failure) from exc

    def name_all_unsupported_ops(self, failure: classify.Failure) -> None:
        """XLA's message names only the first op it rejects; the graph names the rest."""
        from harness import xla_ops

        try:
            found = xla_ops.unsupported_ops(self.forward, self.inputs, self.device)
        except Exception as exc:  # noqa: BLE001 - the message's first op is still recorded
            self.notes.append(f"could not list every op XLA rejects: {type(exc).__name__}: {exc}")
            return
        failure.extra["unsupported_ops"] = list(dict.fromkeys(failure.extra["unsupported_ops"] + found))

    def optional_check(self, check: str, fn) -> None:
        """A check whose failure does not stop the others (save, export, train, rng): it is
        recorded in the check's own entry."""
        if check not in self.wanted:
            return
        t0 = time.perf_counter()
        try:
            fn()
        except StepFailed as failed:
            self.fail(failed)
        finally:
            self.timings[f"{check}_s"] = time.perf_counter() - t0  # the whole check, compiles included

    def run(self) -> dict:
        if self.device == "gpu":
            memory.reset_gpu_peak(self.backend)
        graphs_before = None
        if self.backend == "torch" and self.cell.jit:
            # Dynamo keeps compiled frames and recompile counts per code object for the whole
            # process, and past `recompile_limit` (8) recompiles of one of Keras' own frames runs
            # it eagerly from then on: each jit cell starts from an empty cache, as a fresh
            # process does, and counts the graphs it compiles.
            import torch

            torch._dynamo.reset()
            graphs_before = torch_graphs_compiled()
        cache_hits_before = compile_cache.hits(self.backend)
        cpu_before = cpu_seconds()
        try:
            self.run_checks()
        except StepFailed as failed:
            self.fail(failed)
            where = f"{failed.failure.check}/{failed.failure.phase}"
            for check in self.wanted:
                self.checks.setdefault(check, {"status": SKIP, "reason": f"not run: {where} failed "
                                                                         f"before it, and it needs what that makes"})
        if graphs_before is not None:
            self.record_torch_graphs(torch_graphs_compiled() - graphs_before)
        if cache_hits_before is not None:
            # Compiles served from disk make the first calls' timings cheaper than cold ones.
            self.timings["compile_cache_hits"] = compile_cache.hits(self.backend) - cache_hits_before
        self.timings["cpu_s"] = cpu_seconds() - cpu_before
        self.record_memory()
        return {
            "type": "cell_result",
            "checks": self.checks,
            "timings": self.timings,
            "notes": self.notes,
            "weights_loaded": self.weights_loaded,
        }

    def fail(self, failed: StepFailed) -> None:
        """Record a check's failure in its own entry (what it measured before failing kept)."""
        entry = self.checks.get(failed.failure.check, {})
        self.checks[failed.failure.check] = {**entry, "status": failed.status, "failure": failed.failure.to_json()}

    def record_torch_graphs(self, count: int) -> None:
        """A torch jit cell says how many graphs torch.compile made: none means it ran eagerly."""
        self.timings["compiled_graphs"] = count
        if count == 0 and not any("failure" in check for check in self.checks.values()):
            self.notes.append("torch.compile compiled no graph in this jit cell: dynamo ran every "
                              "step eagerly (see the worker log for its reasons)")

    def record_memory(self) -> None:
        self.timings["worker_peak_rss_mb"] = memory.host_peak_mb()
        self.timings["worker_rss_mb"] = memory.host_current_mb()
        if self.device == "gpu":
            try:
                peak = memory.gpu_peak_mb(self.backend)
            except Exception as exc:  # noqa: BLE001 - a figure missing is noted, not fatal
                self.notes.append(f"GPU memory not measured: {type(exc).__name__}: {exc}")
            else:
                if peak is not None:
                    self.timings["gpu_peak_mb"] = peak

    def make(self, case):
        import keras

        # Variable paths must not carry name counters. No gc.collect() (free_memory): on a
        # worker holding torch.compile caches it costs a second per cell; Python collects anyway.
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(self.request["seed"])
        return case.factory()

    def run_checks(self) -> None:
        case = self.step("build", "import", lambda: load_case(self.request["case"]))
        inputs = arrays.load_tree(self.request["inputs"])
        self.case, self.inputs = case, inputs

        t0 = time.perf_counter()
        obj = self.step("build", "factory", lambda: self.make(case))
        kind = self.kind_of(obj)
        if kind is None:
            raise StepFailed(ERROR, classify.Failure(
                check="build", phase="factory", kind="bad_factory", exception="TypeError",
                message=f"the factory returned {type(obj).__name__}",
                hint="return a keras.Model, a keras.layers.Layer or a callable built from keras.ops"))
        self.step("build", "build", lambda: self.build(obj, kind, inputs))
        if self.backend == "tensorflow":
            self.forward = (lambda x: call_function(obj, x)) if kind == "function" else (
                lambda x: obj(x, training=False)) if kind == "model" else obj
        self.timings["build_s"] = time.perf_counter() - t0
        self.checks["build"] = {"status": PASS, "variables": self.variables(obj, kind)}
        try:  # a finding about the model's state: the other checks still run
            self.check_untracked_state(obj, kind)
        except StepFailed as failed:
            self.fail(failed)
        self.step("build", "weights", lambda: self.exchange_weights(obj, kind))

        outputs = self.check_outputs(obj, kind, inputs)
        if kind == "function":
            for check in ("train", "save", "export"):
                if check in self.wanted:
                    self.checks[check] = {"status": SKIP, "reason": "a plain function has no weights"}
        else:
            self.optional_check("save", lambda: self.check_save(case, obj, kind, inputs))
            self.optional_check("export", lambda: self.check_export(obj, kind))
            self.optional_check("train", lambda: self.check_train(obj, kind, inputs, outputs))
        self.optional_check("rng", lambda: self.check_rng(case, inputs))

    # -- build -------------------------------------------------------------------------

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
        if kind == "layer" or (kind == "model" and not obj.built):
            obj(inputs)

    @staticmethod
    def variables(obj, kind: str) -> list[dict]:
        if kind == "function":
            return []
        return [
            {"path": v.path, "shape": list(v.shape), "dtype": str(v.dtype), "trainable": bool(v.trainable)}
            for v in obj.weights
        ]

    def check_untracked_state(self, obj, kind: str) -> None:
        if kind == "function":
            return
        found = untracked_state(obj)
        if found:
            raise StepFailed(ERROR, classify.Failure(
                check="build", phase="build", kind="untracked_state", exception=None,
                message="state Keras does not track (it is not trained, saved or loaded): "
                        + "; ".join(found),
                hint=classify.UNTRACKED_STATE_HINT))

    def exchange_weights(self, obj, kind: str) -> None:
        """The reference cell writes its initial weights; every other cell keeps a copy of its
        own (their law is compared in the rng check) and loads the reference's."""
        if kind == "function":
            return
        import keras

        own = {v.path: np.asarray(keras.ops.convert_to_numpy(v.value)) for v in obj.weights}
        save_to, load_from = self.request.get("save_weights_to"), self.request.get("load_weights_from")
        if save_to:
            paths = [v.path for v in obj.weights]
            duplicated = sorted({p for p in paths if paths.count(p) > 1})
            if duplicated:
                raise ValueError(
                    f"variable paths {duplicated} occur more than once, so weights cannot be "
                    f"matched across backends by path; give the variables distinct names")
            arrays.save_weights(save_to, own)
        if load_from:
            arrays.save_weights(os.path.join(self.out_dir, "initial_weights.npz"), own)
            missing = self.load_reference_weights(obj)
            self.weights_loaded = not missing
            if missing:
                self.notes.append(
                    f"reference weights not loaded: {len(missing)} variable path(s) differ "
                    f"from the reference cell (first: {missing[0]})")

    def load_reference_weights(self, obj) -> list[str]:
        """Assign the reference cell's weights by path; returns the paths it lacks (then
        nothing is assigned)."""
        reference = arrays.load_weights(self.request["load_weights_from"])
        missing = [v.path for v in obj.weights if v.path not in reference]
        if not missing:
            for v in obj.weights:
                v.assign(np.array(reference[v.path]))  # out of the read-only memory map
        return missing

    # -- outputs and timing ------------------------------------------------------------

    def predictor(self, obj, kind: str, *, jit: bool):
        if kind == "function":
            fn = backend_jit(obj, self.backend) if jit else obj
            import keras

            def run(inputs):
                tensors = keras.tree.map_structure(keras.ops.convert_to_tensor, inputs)
                return to_numpy_tree(call_function(fn, tensors))

            return run
        model = obj if kind == "model" else wrap_layer(obj, self.inputs)
        model.compile(jit_compile=jit)
        if jit and not model.jit_compile:
            self.notes.append(
                "Keras fell back from jit to eager for this model (model_supports_jit was "
                "False): the jit cell ran without a compiler")
        model.make_predict_function(force=True)
        return lambda inputs: model.predict_on_batch(inputs)

    def check_outputs(self, obj, kind: str, arrays_in):
        predict = self.step("outputs", "compile", lambda: self.predictor(obj, kind, jit=self.cell.jit))
        inputs = self.step("outputs", "inputs", lambda: backend_tensors(arrays_in))
        eager = lambda: self.predictor(obj, kind, jit=False)(inputs)  # noqa: E731
        with recording_random_use() as random_use:
            t0 = time.perf_counter()
            outputs = self.step("outputs", "predict", lambda: predict(inputs), jit_retry=eager)
            synchronize(self.backend, self.device)
            self.timings["predict_first_s"] = time.perf_counter() - t0
            second = self.step("outputs", "predict", lambda: predict(inputs))
        self.uses_random = random_use["any"]
        path = os.path.join(self.out_dir, "outputs.npz")
        dtypes = arrays.save_tree(path, outputs)
        result = {"status": PASS, "file": path, "dtypes": dtypes, "random": self.uses_random}
        if self.uses_random:
            # Draws differ per backend: the pytest process compares laws, not values, over
            # calls that draw anew (the elements of one call are not independent draws).
            result["draws_advance"] = not same_tree(outputs, second)
            if result["draws_advance"]:
                made = [outputs, second]  # the first two calls count among the draws
                result["draws"] = os.path.join(self.out_dir, "draws.npz")
                arrays.save_tree(result["draws"], self.step("outputs", "draws", lambda: draws_of(
                    lambda: made.pop(0) if made else to_numpy_tree(predict(inputs)))))
            eager = self.predictor(obj, kind, jit=False) if kind == "function" else (
                lambda x: to_numpy_tree(obj(x, training=False) if kind == "model" else obj(x)))
            result["eager_draws_advance"] = not same_tree(
                self.step("outputs", "eager", lambda: eager(inputs)), eager(inputs))
        if "outputs" in self.wanted:
            self.checks["outputs"] = result
        if "timing" in self.wanted:
            steady = []
            for _ in range(STEADY_REPEATS):
                t0 = time.perf_counter()
                predict(inputs)
                synchronize(self.backend, self.device)
                steady.append(time.perf_counter() - t0)
            self.timings.update(predict_median_s=statistics.median(steady), predict_min_s=min(steady),
                                predict_max_s=max(steady))
            self.checks["timing"] = {"status": PASS}
        self.outputs_result = result
        return outputs

    # -- train -------------------------------------------------------------------------

    def targets_for(self, outputs):
        path = self.request.get("targets")
        if path:
            return arrays.load_tree(path)
        rng = np.random.default_rng(self.request["seed"] + 1)
        import keras

        return keras.tree.map_structure(
            lambda o: rng.normal(size=o.shape).astype(o.dtype) if o.dtype.kind == "f" else np.zeros_like(o),
            outputs)

    def check_train(self, obj, kind: str, inputs, outputs) -> None:
        import keras

        model = obj if kind == "model" else wrap_layer(obj, inputs)
        inputs, targets = self.step("train", "inputs", lambda: (
            backend_tensors(inputs), backend_tensors(self.targets_for(outputs))))

        def compile_model():
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                          loss=self.case.loss, jit_compile=self.cell.jit)

        def eager_step():
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                          loss=self.case.loss, jit_compile=False)
            model.train_on_batch(inputs, targets)

        self.step("train", "compile", compile_model)
        losses, times = [], []
        with recording_random_use() as random_use:  # dropout draws only while training
            for i in range(TRAIN_STEPS):
                t0 = time.perf_counter()
                loss = self.step("train", "train_step", lambda: model.train_on_batch(inputs, targets),
                                 jit_retry=eager_step if i == 0 else None)
                synchronize(self.backend, self.device)
                times.append(time.perf_counter() - t0)
                losses.append(float(np.asarray(loss).reshape(-1)[0]))
        self.timings["train_first_s"] = times[0]
        self.timings.update(train_median_s=statistics.median(times[1:]), train_min_s=min(times[1:]),
                            train_max_s=max(times[1:]))
        path = os.path.join(self.out_dir, "trained_weights.npz")
        arrays.save_weights(path, {v.path: np.asarray(keras.ops.convert_to_numpy(v.value))
                                   for v in model.weights})
        self.checks["train"] = {"status": PASS, "losses": losses, "file": path, "steps": TRAIN_STEPS,
                                "random": random_use["any"]}

    # -- save and export ---------------------------------------------------------------

    def check_save(self, case, obj, kind: str, inputs) -> None:
        """`.keras` and `.weights.h5` round trips must reproduce this cell's outputs exactly
        (both sides run without jit, so the comparison is bit for bit); random outputs must
        follow the same law over independent calls."""
        import keras

        model = obj if kind == "model" else wrap_layer(obj, inputs)
        expected = self.nojit_results(obj, kind)
        keras_path = os.path.join(self.out_dir, "model.keras")
        self.step("save", "save_keras", lambda: model.save(keras_path))
        custom = custom_objects_of(model)
        reloaded = self.step("save", "load_keras", lambda: keras.models.load_model(
            keras_path, custom_objects=custom, compile=False))
        round_trips = {}
        predict_reloaded = self.step("save", "load_keras", lambda: self.predictor(reloaded, "model", jit=False))
        got = self.step("save", "load_keras", lambda: results_of(lambda: predict_reloaded(inputs), self.uses_random))
        round_trips["keras"] = same_results(expected, got, self.uses_random)

        weights_path = os.path.join(self.out_dir, "model.weights.h5")
        self.step("save", "save_weights", lambda: model.save_weights(weights_path))

        def reload_weights():
            fresh = case.factory()
            self.build(fresh, kind, inputs)
            fresh_model = fresh if kind == "model" else wrap_layer(fresh, inputs)
            fresh_model.load_weights(weights_path)
            predict = self.predictor(fresh, kind, jit=False)
            return results_of(lambda: predict(inputs), self.uses_random)

        round_trips["weights_h5"] = same_results(expected, self.step("save", "load_weights", reload_weights),
                                                 self.uses_random)
        bad = [name for name, ok in round_trips.items() if not ok]
        changed = "the law of the outputs' draws" if self.uses_random else "the outputs"
        self.checks["save"] = {
            "status": MISMATCH if bad else PASS, "round_trips": round_trips, "file": keras_path,
            **({"message": f"{', '.join(bad)} round trip changed {changed}"} if bad else {}),
        }

    def nojit_results(self, obj, kind: str):
        """This cell's outputs without jit (or for random outputs, their draws), written once to
        `outputs_nojit.npz`: what the file round trips of this cell and the others are judged on."""
        path = os.path.join(self.out_dir, "outputs_nojit.npz")
        if os.path.exists(path):
            return arrays.load_tree(path)
        predict = self.predictor(obj, kind, jit=False)
        results = results_of(lambda: predict(self.inputs), self.uses_random)
        arrays.save_tree(path, results)
        return results

    def check_export(self, obj, kind: str) -> None:
        """A TF SavedModel (reloaded later by a TensorFlow worker through TFSMLayer) and, where
        onnxruntime is installed, an ONNX file run here through onnxruntime."""
        import keras

        self.nojit_results(obj, kind)  # what the reloaded exports are judged against
        model = obj if kind == "model" else wrap_layer(obj, self.inputs)
        if kind == "layer":
            model(self.inputs)  # the ONNX exporter refuses a model that was never called
        signature = None
        if not isinstance(model, (keras.Sequential, keras.src.models.Functional)):
            # A subclassed model has no recorded input structure: give the case's, batch free.
            signature = [keras.tree.map_structure(
                lambda x: keras.InputSpec(shape=(None, *x.shape[1:]), dtype=str(x.dtype)), self.inputs)]
        if self.backend == "torch" and importlib.util.find_spec("torch_xla") is None:
            saved_model = {"status": SKIP, "reason": "model.export(format='tf_saved_model') under "
                                                     "torch needs torch_xla, which is not installed here"}
        else:
            path = os.path.join(self.out_dir, "saved_model")

            def export_saved_model():
                self.step("export", "export", lambda: model.export(
                    path, format="tf_saved_model", verbose=False, input_signature=signature))
                return {"status": PASS, "file": path, "input_structure": input_structure(model, self.inputs)}

            saved_model = self.route(export_saved_model)
        onnx = self.route(lambda: self.export_onnx(model, signature))  # whatever the SavedModel did
        failures = [r["failure"] for r in (saved_model, onnx) if "failure" in r]
        self.checks["export"] = {"status": worst([saved_model["status"], onnx["status"]]),
                                 "saved_model": saved_model, "onnx": onnx,
                                 **({"failure": failures[0]} if failures else {})}

    @staticmethod
    def route(fn) -> dict:
        """One of a check's independent routes (SavedModel, ONNX): its result, or its failure."""
        try:
            return fn()
        except StepFailed as failed:
            return {"status": failed.status, "failure": failed.failure.to_json()}

    def export_onnx(self, model, signature) -> dict:
        converter = {"jax": "jax2onnx", "tensorflow": "tf2onnx", "torch": "onnxscript"}[self.backend]
        missing = [m for m in ("onnxruntime", converter) if importlib.util.find_spec(m) is None]
        if missing:
            return {"status": SKIP, "reason": f"ONNX export needs {' and '.join(missing)}, not installed here"}
        import onnxruntime

        path = os.path.join(self.out_dir, "model.onnx")
        self.step("export", "export_onnx", lambda: model.export(
            path, format="onnx", verbose=False, input_signature=signature))

        def run():
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            names = [spec.name for spec in session.get_inputs()]
            if isinstance(self.inputs, dict):  # named as the model's inputs are, in its order
                feed = {name: self.inputs[name] for name in names if name in self.inputs}
            else:
                feed = dict(zip(names, arrays.flatten(self.inputs)[1]))
            return session.run(None, feed)

        out = os.path.join(self.out_dir, "onnx_outputs.npz")
        arrays.save_tree(out, self.step("export", "onnxruntime", lambda: results_of(run, self.uses_random)))
        return {"status": PASS, "file": out}

    # -- rng ---------------------------------------------------------------------------

    def check_rng(self, case, inputs) -> None:
        """The same seed in a fresh Keras session gives bit-identical draws."""
        if not self.uses_random:
            self.checks["rng"] = {"status": PASS, "random": False}
            return

        def again():
            obj = self.make(case)
            kind = self.kind_of(obj)
            self.build(obj, kind, inputs)
            if self.request.get("load_weights_from") and kind != "function":
                self.load_reference_weights(obj)
            return self.predictor(obj, kind, jit=self.cell.jit)(inputs)

        first = arrays.load_tree(self.outputs_result["file"])
        repeat = self.step("rng", "reseed", again)
        reproducible = same_tree(first, repeat)
        self.checks["rng"] = {
            "status": PASS if reproducible else MISMATCH, "random": True, "reproducible": reproducible,
            "draws_advance": self.outputs_result["draws_advance"],
            "eager_draws_advance": self.outputs_result["eager_draws_advance"],
            **({} if reproducible else {"message": "the same seed in a fresh Keras session gave "
                                                   "different draws"}),
        }


# -- requests that read other cells' files ---------------------------------------------

def input_structure(model, inputs) -> str:
    """How the exported model takes its inputs at the top: 'list', 'tuple', 'dict' or 'single'.
    A functional model keeps the structure it was built with, which its SavedModel's signature
    has too (a list there refuses a tuple: "Can not cast"); other models take the case's."""
    structure = getattr(model, "_inputs_struct", inputs)
    return {list: "list", tuple: "tuple", dict: "dict"}.get(type(structure), "single")


def as_structure(inputs, structure: str):
    """The case's inputs in the structure a SavedModel was exported with."""
    if structure == "list" and isinstance(inputs, tuple):
        return list(inputs)
    if structure == "tuple" and isinstance(inputs, list):
        return tuple(inputs)
    return inputs


def load_saved_models(request: dict) -> dict:
    """Load `.keras` files saved under other backends and predict on the case's inputs."""
    import keras

    results = {}
    inputs = arrays.load_tree(request["inputs"])
    custom = {}
    try:
        case = load_case(request["case"])
        keras.backend.clear_session(free_memory=False)
        obj = case.factory()
        custom = custom_objects_of(obj)
    except Exception:  # noqa: BLE001 - loading may still work without custom objects
        pass
    for source, path in request["files"].items():
        t0 = time.perf_counter()
        try:
            model = keras.models.load_model(path, custom_objects=custom, compile=False)
            model.compile(jit_compile=False)
            out = os.path.join(request["out_dir"], f"loaded_from_{source}.npz")
            arrays.save_tree(out, results_of(lambda: model.predict_on_batch(inputs), request["random"]))
            results[source] = {"status": PASS, "file": out}
        except Exception as exc:  # noqa: BLE001
            _, failure = classify.describe(exc, check="save", phase="load_other_backend", jit=False)
            results[source] = {"status": ERROR, "failure": failure.to_json()}
        results[source]["seconds"] = time.perf_counter() - t0
    return {"type": "loaded", "results": results}


def reload_exports(request: dict) -> dict:
    """Reload SavedModels exported under any backend with TFSMLayer (TensorFlow workers only)."""
    import keras

    results = {}
    inputs = arrays.load_tree(request["inputs"])
    for source, path in request["files"].items():
        t0 = time.perf_counter()
        try:
            layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
            out = os.path.join(request["out_dir"], f"export_{source}.npz")
            structured = as_structure(inputs, request["structures"][source])
            arrays.save_tree(out, results_of(lambda: to_numpy_tree(layer(structured)), request["random"][source]))
            results[source] = {"status": PASS, "file": out}
        except Exception as exc:  # noqa: BLE001
            _, failure = classify.describe(exc, check="export", phase="reload_tfsmlayer", jit=False)
            results[source] = {"status": ERROR, "failure": failure.to_json()}
        results[source]["seconds"] = time.perf_counter() - t0
    return {"type": "reloaded", "results": results}
