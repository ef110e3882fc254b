"""A keras2 cell: the case's Keras 2 model (its `keras2=` factory, or the `.h5` file it names) in
a worker where `tf.keras` is tf-keras, recorded as a Keras 3 cell records its own.

It runs `build` (the variables, under the names Keras 2 gives them without `:0`), `outputs`
(inference, jit being tf.keras' own `jit_compile`) and `train` (the same steps of `fit` on the
same data, each step's loss, metrics, gradients, optimizer variables and weights). It writes the
files a migrating team has: the initial weights as Keras 2's `.h5` (what the Keras 3 cells load)
and the whole model as `.h5` as Keras 2 saves it, compiled where the factory compiled it, at the
initial weights and after training (what `legacy_load` loads). Checks that test Keras 3's own
files, compilers and random streams (`save`, `export`, `rng`) do not run here.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from harness import arrays, classify
from harness.calls import draws_of, load_case, ranked_names
from harness.checks.train import TRAIN_STEPS, step_values
from harness.cells import Cell
from harness.statuses import ERROR, PASS, SKIP
from harness.steps import StepFailed

LEARNING_RATE = 0.01  # harness.training.LEARNING_RATE, the default optimizer's
NOT_HERE = "not run in a Keras 2 cell: it tests Keras 3's own {what}"
RANDOM_LAYERS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                 "GaussianDropout", "AlphaDropout")


def keras2_key(name: str) -> str:
    """A Keras 2 variable's name without TensorFlow's output index (`dense/kernel:0`)."""
    return name[:-2] if name.endswith(":0") else name


def keys_of(variables) -> list[str]:
    """Each variable's key: its Keras 2 name, ranked where repeated, as Keras 3 paths are."""
    return ranked_names([keras2_key(v.name) for v in variables])


def values_of(variables) -> dict[str, np.ndarray]:
    return {key: np.array(v.numpy()) for key, v in zip(keys_of(variables), variables)}


class Keras2CellRun:
    def __init__(self, request: dict, device: str):
        self.request = request
        self.cell = Cell.parse(request["cell"])
        self.device = device
        self.out_dir = request["out_dir"]
        self.wanted = request["checks"]
        self.checks: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.files: dict[str, str | None] = {}
        self.weights_loaded: bool | None = None  # None: this cell is the reference
        self.case = None

    def step(self, check: str, phase: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a fault in user code is a result
            raise StepFailed(*classify.describe(exc, check=check, phase=phase, jit=self.cell.jit,
                                                jit_only=None)) from exc

    def run(self) -> dict:
        for check, what in (("save", "file formats (the Keras 3 cells load this cell's .h5 files: legacy_load)"),
                            ("export", "export formats"), ("rng", "random streams"),
                            ("timing", "speed (Keras 2's first call and step are in the cell's timings)"),
                            ("legacy_load", "loading of Keras 2 files")):
            if check in self.wanted:
                self.checks[check] = {"status": SKIP, "reason": NOT_HERE.format(what=what)}
        try:
            self.run_checks()
        except StepFailed as failed:
            self.fail(failed)
            where = f"{failed.failure.check}/{failed.failure.phase}"
            for check in self.wanted:
                self.checks.setdefault(check, {"status": SKIP, "reason": f"not run: {where} failed before it"})
        return {"type": "cell_result", "checks": self.checks, "timings": self.timings, "notes": self.notes,
                "weights_loaded": self.weights_loaded, "keras2_files": self.files}

    def fail(self, failed: StepFailed) -> None:
        entry = self.checks.get(failed.failure.check, {})
        self.checks[failed.failure.check] = {**entry, "status": failed.status, "failure": failed.failure.to_json()}

    # -- the checks ------------------------------------------------------------------------

    def run_checks(self) -> None:
        import tensorflow as tf

        keras = tf.keras
        case = self.case = self.step("build", "import", lambda: load_case(self.request["case"]))
        inputs = arrays.load_tree(self.request["inputs"])
        t0 = time.perf_counter()
        model = self.step("build", "factory", lambda: self.make_model(case, keras))
        self.timings["build_s"] = time.perf_counter() - t0
        self.checks["build"] = {"status": PASS, "variables": [
            {"path": key, "shape": list(v.shape), "dtype": v.dtype.name, "trainable": bool(v.trainable)}
            for key, v in zip(keys_of(model.weights), model.weights)]}
        if self.request.get("load_weights_from"):  # another keras2 cell (jit): the reference's weights
            self.step("build", "weights", lambda: self.load_weights(model))
        else:
            self.step("build", "weights", lambda: self.write_files(model, keras))
        outputs = self.outputs(model, inputs)
        if "train" in self.wanted:
            try:
                self.train(case, model, keras, inputs, outputs)
            except StepFailed as failed:
                self.fail(failed)

    def make_model(self, case, keras):
        """The Keras 2 model: the factory's (a layer inside a functional model of the inputs'
        shapes), or the `.h5` file's, seeded as the Keras 3 cells are."""
        keras.backend.clear_session()
        keras.utils.set_random_seed(self.request["seed"])
        source = case.keras2
        if isinstance(source, str):
            return keras.models.load_model(source)
        obj = source()
        inputs = arrays.load_tree(self.request["inputs"])
        if isinstance(obj, keras.Model):
            if not obj.built:
                obj(inputs)
            return obj
        if isinstance(obj, keras.layers.Layer):
            import tensorflow as tf

            symbolic = tf.nest.map_structure(lambda x: keras.Input(batch_shape=x.shape, dtype=str(x.dtype)), inputs)
            return keras.Model(symbolic, obj(symbolic), name=f"{obj.name}_model")
        raise TypeError(f"the keras2 factory returned {type(obj).__name__}: return a tf.keras Model or Layer "
                        f"(Keras 2 code: `from tensorflow import keras`)")

    def write_files(self, model, keras) -> None:
        """The initial weights (`.npz` for the arbiter's Keras 3 runs, `.h5` as Keras 2 writes
        them for the Keras 3 cells), and the whole model as `.h5`, compiled as built."""
        if self.request.get("save_weights_to"):
            arrays.save_weights(self.request["save_weights_to"], values_of(model.weights))
        weights_h5 = os.path.join(self.out_dir, "keras2_weights.h5")
        try:
            model.save_weights(weights_h5)
            self.files["weights"] = weights_h5
        except Exception as exc:  # noqa: BLE001 - two variables of one name (tf.Variable's default) clash in h5
            self.files["weights"] = None
            self.notes.append(f"Keras 2 could not save the weights as .h5 ({type(exc).__name__}: {exc}): the Keras 3 "
                              f"cells load them by name from this cell's own record instead"[:400])
        source = self.case.keras2
        # The team's own file as it is, where the case names one; else the model as Keras 2 saves it.
        self.files["model"] = source if isinstance(source, str) else self.save_model(model, "keras2_model.h5")
        self.files["compiled"] = bool(getattr(model, "optimizer", None) is not None and model.compiled_loss)

    def load_weights(self, model) -> None:
        weights = arrays.load_weights(self.request["load_weights_from"])
        keys = keys_of(model.weights)
        missing = [key for key in keys if key not in weights]
        self.weights_loaded = not missing
        if missing:
            self.notes.append(f"reference weights not loaded: {len(missing)} variable name(s) differ from the "
                              f"reference cell's (first: {missing[0]})")
            return
        for key, v in zip(keys, model.weights):
            v.assign(np.array(weights[key]))

    def save_model(self, model, name: str) -> str | None:
        path = os.path.join(self.out_dir, name)
        try:
            model.save(path)
        except Exception as exc:  # noqa: BLE001 - a subclassed model has no .h5 form in Keras 2
            self.notes.append(f"Keras 2 could not save the model as {name}: {type(exc).__name__}: {exc}"[:400])
            return None
        return path

    def outputs(self, model, inputs):
        model.jit_compile = self.cell.jit  # tf.keras' own XLA switch, the compile settings kept
        model.predict_function = None
        t0 = time.perf_counter()
        outputs = self.step("outputs", "predict", lambda: model.predict_on_batch(inputs))
        self.timings["predict_first_s"] = time.perf_counter() - t0
        second = model.predict_on_batch(inputs)
        path = os.path.join(self.out_dir, "outputs.npz")
        dtypes = arrays.save_tree(path, outputs)
        _, first_leaves = arrays.flatten(outputs)
        _, second_leaves = arrays.flatten(second)
        random = not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first_leaves, second_leaves))
        result = {"status": PASS, "file": path, "dtypes": dtypes, "random": random, "kind": "model"}
        if random:  # compared by law, as a Keras 3 cell's random outputs are (harness.checks.outputs)
            made = [outputs, second]
            result.update(draws_advance=True, eager_draws_advance=True, draws=os.path.join(self.out_dir, "draws.npz"))
            arrays.save_tree(result["draws"], self.step("outputs", "draws", lambda: draws_of(
                lambda: made.pop(0) if made else model.predict_on_batch(inputs))))
        if "outputs" in self.wanted:
            self.checks["outputs"] = result
        return outputs

    # -- training ----------------------------------------------------------------------------

    def configuration(self, case, model, keras) -> tuple[dict, dict]:
        """compile() arguments: the case's where given by name (a Keras 3 object cannot configure
        Keras 2), else the factory's compile(), else SGD(0.01) and mse, as in a Keras 3 cell."""
        kwargs, source = {}, {}
        if getattr(model, "optimizer", None) is not None and model.compiled_loss is not None:
            kwargs = {"optimizer": model.optimizer, "loss": model.loss}
            metrics = getattr(model.compiled_metrics, "_user_metrics", None)
            if metrics:
                kwargs["metrics"] = metrics
            source = {key: "the factory's compile()" for key in kwargs}
        for key in ("optimizer", "loss", "metrics"):
            value = getattr(case, key)
            if isinstance(value, (str, list, tuple, dict)) and value:
                kwargs[key], source[key] = value, "the case"
            elif value is not None:
                self.notes.append(f"train: the case's {key}= is Keras 3 code, which Keras 2 cannot take: the "
                                  f"keras2 cell trains with {source.get(key, 'the default')}'s")
        if "optimizer" not in kwargs:
            kwargs["optimizer"], source["optimizer"] = keras.optimizers.SGD(learning_rate=LEARNING_RATE), "the default"
        if "loss" not in kwargs:
            kwargs["loss"], source["loss"] = "mse", "the default"
        return kwargs, source

    def train(self, case, model, keras, inputs, outputs) -> None:
        import tensorflow as tf

        kwargs, source = self.configuration(case, model, keras)
        self.step("train", "compile", lambda: model.compile(**kwargs, jit_compile=self.cell.jit))
        if self.request.get("targets"):
            y = arrays.load_tree(self.request["targets"])
        else:  # as harness.checks.train.targets_for draws them
            rng = np.random.default_rng(self.request["seed"] + 1)
            y = tf.nest.map_structure(lambda o: rng.normal(size=o.shape).astype(o.dtype) if o.dtype.kind == "f"
                                      else np.zeros_like(o), outputs)
        targets_file = os.path.join(self.out_dir, "train_targets.npz")
        arrays.save_tree(targets_file, y)
        sample_weight = arrays.load_tree(self.request["sample_weight"]) if self.request.get("sample_weight") else None
        batch = int(arrays.flatten(inputs)[1][0].shape[0])
        fit = {"x": inputs, "y": y, "batch_size": batch, "shuffle": False, "verbose": 0}
        if sample_weight is not None:
            fit["sample_weight"] = sample_weight
        if case.class_weight is not None:
            fit["class_weight"] = case.class_weight
        inert = make_inert(model, keras)
        with_gradients = not self.cell.jit and case.class_weight is None and "train_step" not in type(model).__dict__
        recorder = StepRecorder(keras, (inputs, y, sample_weight), with_gradients)
        self.step("train", "train_step", lambda: model.fit(**fit, epochs=TRAIN_STEPS, callbacks=[recorder]))
        path = os.path.join(self.out_dir, "train_steps.npz")
        arrays.save_weights(path, recorder.steps)
        times = recorder.times
        self.timings.update(train_first_s=times[0], train_median_s=float(np.median(times[1:])))
        self.files["trained_model"] = self.save_model(model, "keras2_trained.h5")
        optimizer = model.optimizer
        settings = {k: v for k, v in optimizer.get_config().items()
                    if v not in (None, False) and k != "name" and not k.startswith("ema_")}
        self.checks["train"] = {
            "status": PASS, "steps": TRAIN_STEPS, "losses": recorder.losses, "file": path,
            "targets_file": targets_file, "data": "fit(x, y" + (", sample_weight=..." if sample_weight is not None
                                                                 else "") + ")",
            "configuration": {"optimizer": {"class": type(optimizer).__name__, **jsonable(settings)},
                              "loss": jsonable(kwargs["loss"]), "source": source},
            "gradients": "by tf.GradientTape" if with_gradients else "not recorded in this cell",
            "randomness": {"made_inert": [f"{layer.name} ({type(layer).__name__})" for layer in inert],
                           "own_draws": False},
        }


def jsonable(value):
    import json

    if hasattr(value, "numpy"):  # Keras 2 keeps the learning rate as a variable
        return float(value.numpy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "get_config") and not isinstance(value, (str, dict)):
        return {"class": type(value).__name__}
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "__name__", type(v).__name__)))


def make_inert(model, keras) -> list:
    """Keras 2's random layers run as at inference while the steps are compared, as a Keras 3
    cell runs Keras 3's (`harness.training.run_as_at_inference`)."""
    found = [layer for layer in model._flatten_layers() if type(layer).__name__ in RANDOM_LAYERS
             and type(layer).__module__.startswith("tf_keras")]
    for layer in found:
        layer.call = functools.partial(at_inference, layer.call)
    return found


def at_inference(call, *args, **kwargs):
    kwargs["training"] = False
    return call(*args, **kwargs)



class StepRecorder:
    """One epoch of one batch is one step; keys `"{step}/{quantity}/{name}"` as a Keras 3 cell's
    (`harness.training.StepRecorder`), names as Keras 2 gives them without `:0`."""

    def __new__(cls, keras, data, with_gradients: bool):
        class Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.steps: dict[str, np.ndarray] = {}
                self.losses: list[float] = []
                self.times: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.pending = gradients(self.model, data) if with_gradients else {}
                self.started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self.started)
                self.logs = {name: np.asarray(value, np.float32) for name, value in (logs or {}).items()}
                self.losses.append(float(self.logs["loss"].reshape(-1)[0]) if "loss" in self.logs else float("nan"))

            def on_epoch_end(self, epoch, logs=None):
                self.steps.update(step_values(epoch + 1, self.logs, self.pending,
                                              values_of(self.model.optimizer.variables()), values_of(self.model.weights)))

        return Recorder()


def gradients(model, data) -> dict[str, np.ndarray]:
    """d loss / d trainable variable at the step's starting weights, through Keras 2's own
    `compute_loss`, with what the forward pass changes (BatchNormalization's statistics) put back."""
    import tensorflow as tf

    x, y, sample_weight = (None if part is None else tf.nest.map_structure(tf.convert_to_tensor, part)
                           for part in data)
    kept = [(v, v.numpy()) for v in model.non_trainable_weights]
    try:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=True), sample_weight)
        grads = tape.gradient(loss, model.trainable_weights)
    finally:
        for v, value in kept:
            v.assign(value)
        model.reset_metrics()  # compute_loss fed the loss tracker: the step's own logs start clean
    return {f"gradient/{key}": np.zeros(v.shape, v.dtype.as_numpy_dtype) if g is None
            else np.asarray(tf.convert_to_tensor(g))  # an embedding's gradient comes as IndexedSlices
            for key, v, g in zip(keys_of(model.trainable_weights), model.trainable_weights, grads)}
