"""Runs one case in one cell, inside a worker process whose backend is already imported.

`CellRun` is the cell's context and its orchestration: it imports the case, builds the object,
then runs each check's worker side (`harness.checks.<check>.run`) in the contract's order,
recording each check's result or failure in its own entry, and the cell's timings, memory and
compile counts. Comparisons across cells happen in the pytest process (`harness.judge`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time

from harness import arrays, classify
from harness.workers import compile_cache, library_warnings, memory
from harness.calls import (assign_by_key, backend_jit, build_object, call_function, describe_dynamo, kind_of,
                           load_case, make_object, results_of, to_numpy_tree, torch_compiler_watch, variable_keys,
                           wrap_layer)
from harness.cells import Cell
from harness.checks import build, export, legacy_load, outputs, rng, save, train
from harness.statuses import ERROR, SKIP
from harness.steps import StepFailed


def cpu_seconds() -> float:
    """CPU time of this worker and the compilers it ran (inductor's g++): unlike the wall-clock
    timings, it does not grow when other workers share the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
        self.factory_compile = None  # what the factory compiled its model with (`train` uses it)
        self.dynamo: dict | None = None  # what torch.compile left eager, in a torch jit cell
        # In a case with Keras 2 code: each variable's Keras 2 name (Keras 3 key -> name), under
        # which this cell's values are written, to compare with the keras2 cell's.
        self.keras2_names: dict[str, str] | None = None

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
        torch_jit = self.backend == "torch" and self.cell.jit
        cache_hits_before = compile_cache.hits(self.backend)
        cpu_before = cpu_seconds()
        with (torch_compiler_watch() if torch_jit else contextlib.nullcontext({}) as dynamo,
              library_warnings.watch() as warned):
            try:
                self.run_checks()
            except StepFailed as failed:
                self.fail(failed)
                where = f"{failed.failure.check}/{failed.failure.phase}"
                for check in self.wanted:
                    self.checks.setdefault(check, {"status": SKIP, "reason": f"not run: {where} failed "
                                                                             f"before it, and it needs what that makes"})
        if torch_jit:
            self.record_torch_compiler(dynamo)
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
            **({"dynamo": self.dynamo} if self.dynamo else {}),
            **({"warnings": warned} if warned else {}),
        }

    def fail(self, failed: StepFailed) -> None:
        """Record a check's failure in its own entry (what it measured before failing kept)."""
        entry = self.checks.get(failed.failure.check, {})
        self.checks[failed.failure.check] = {**entry, "status": failed.status, "failure": failed.failure.to_json()}

    def record_torch_compiler(self, dynamo: dict) -> None:
        """A torch jit cell says how many graphs torch.compile made (none: it ran eagerly), and
        where dynamo left frames eager or hit its recompile limit."""
        self.timings["compiled_graphs"] = dynamo["graphs"]
        if dynamo["graphs"] == 0 and not any("failure" in check for check in self.checks.values()):
            self.notes.append("torch.compile compiled no graph in this jit cell: dynamo ran every "
                              "step eagerly (see the worker log for its reasons)")
        elif note := describe_dynamo(dynamo):
            self.notes.append(note)
        if dynamo["ran_eagerly"] or dynamo["recompile_limit"]:
            self.dynamo = {k: dynamo[k] for k in ("frames", "ran_eagerly", "recompile_limit")}

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

    def run_checks(self) -> None:
        case = self.step("build", "import", lambda: load_case(self.request["case"]))
        inputs = arrays.load_tree(self.request["inputs"])
        self.case, self.inputs = case, inputs

        t0 = time.perf_counter()
        obj = self.step("build", "factory", lambda: make_object(case, self.request["seed"]))
        from harness import training  # imports keras: workers only

        self.factory_compile = training.compile_config_of(obj)  # before inference recompiles it
        kind = kind_of(obj)
        if kind is None:
            raise StepFailed(ERROR, classify.Failure(
                check="build", phase="factory", kind="bad_factory", exception="TypeError",
                message=f"the factory returned {type(obj).__name__}",
                hint="return a keras.Model, a keras.layers.Layer or a callable built from keras.ops"))
        self.step("build", "build", lambda: build_object(obj, kind, inputs))
        if self.backend == "tensorflow":
            self.forward = (lambda x: call_function(obj, x)) if kind == "function" else (
                lambda x: obj(x, training=False)) if kind == "model" else obj
        self.timings["build_s"] = time.perf_counter() - t0
        build.run(self, obj, kind)

        self.outputs = outputs.run(self, obj, kind, inputs)
        if kind == "function":
            for check in ("train", "save", "export"):
                if check in self.wanted:
                    self.checks[check] = {"status": SKIP, "reason": "a plain function has no weights"}
        else:
            self.optional_check("save", lambda: save.run(self, case, obj, kind, inputs))
            self.optional_check("export", lambda: export.run(self, obj, kind))
            self.optional_check("train", lambda: train.run(self, obj, kind, inputs, self.outputs))
            if self.request.get("keras2"):
                self.optional_check(legacy_load.NAME, lambda: legacy_load.run(self, obj, inputs))
            elif legacy_load.NAME in self.wanted:
                self.checks[legacy_load.NAME] = {"status": SKIP, "reason": (
                    "no keras2 cell wrote the Keras 2 files (keras2 not among --keras-backends, tf-keras not "
                    "installed, or the keras2 cell failed: see its record)")}
        self.optional_check("rng", lambda: rng.run(self, case, inputs))

    # -- the object ------------------------------------------------------------------

    def load_reference_weights(self, obj) -> list[str]:
        """Assign the reference cell's weights by path; returns the paths it lacks (then
        nothing is assigned). From a keras2 cell, its `.h5` as a migrating team loads it."""
        if self.request.get("keras2"):
            return self.move_keras2_weights(obj)
        return assign_by_key(obj.weights, arrays.load_weights(self.request["load_weights_from"]))

    def move_keras2_weights(self, obj) -> list[str]:
        """The keras2 cell's weights through Keras 3's `load_weights` of its `.h5` (a layer inside
        the functional model the keras2 cell saved it from); returns the variables not reached."""
        from harness.keras2 import migrate

        model = obj if kind_of(obj) == "model" else wrap_layer(obj, self.inputs)
        moved = migrate.move_weights(model, self.request["keras2"]["weights"])
        if self.keras2_names is None:  # the first load says how; a later one (rng) repeats it
            self.keras2_names = moved.names
            if note := moved.note():
                self.notes.append(note)
        return moved.unmatched if moved.how else [key for key in variable_keys(model.weights)]

    def in_keras2_names(self, steps: dict) -> dict:
        """Recorded steps under the keras2 cell's names: weights and gradients by the names the
        `.h5` gave them, optimizer variables paired with Keras 2's by order and shape."""
        if self.keras2_names is None:
            return steps
        from harness.keras2 import migrate

        keras2_steps = self.request["keras2"].get("train_steps")
        optimizer = {}
        if keras2_steps:
            theirs = {k.split("/", 2)[2]: v for k, v in arrays.load_weights(keras2_steps).items()
                      if k.startswith("1/optimizer/")}
            mine = {k.split("/", 2)[2]: v for k, v in steps.items() if k.startswith("1/optimizer/")}
            optimizer = migrate.optimizer_names(mine, theirs)
        renamed = {}
        for key, value in steps.items():
            step, quantity, name = key.split("/", 2)
            names = optimizer if quantity == "optimizer" else self.keras2_names
            renamed[f"{step}/{quantity}/{names.get(name, name)}"] = value
        return renamed

    # -- services the checks call --------------------------------------------------------

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


