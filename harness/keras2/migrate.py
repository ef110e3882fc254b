"""The Keras 3 side of a migration, in a Keras 3 worker: Keras 2's files read as a team reads them.

`move_weights` loads the Keras 2 `.h5` weights into the Keras 3 factory's model with Keras 3's
own `load_weights` (by topology, then `by_name=True`), and where both fail, by order and shape;
it returns the names that tie each Keras 3 variable to its Keras 2 one, which the cell's recorded
steps are written under so that they compare with the keras2 cell's. `load_keras2_model` is
`keras.models.load_model` of a Keras 2 `.h5` with the fallbacks a team reaches for, each step's
failure kept with the fix it needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np

from harness.calls import ranked_names, variable_keys

UNRECOGNIZED = re.compile(r"Unrecognized keyword arguments passed to (\w+): (\{.*\})", re.S)
REBUILD_HINT = ("rebuild the model with Keras 3 code and call model.load_weights() on the Keras 2 .h5 file (by "
                "topology, or by_name=True)")


@dataclasses.dataclass
class Moved:
    """How the Keras 2 weights reached the model: `how` ("topology", "name", "order and shape"),
    `names` (Keras 3 key -> Keras 2 name), the failures of the ways tried before, and the Keras 3
    variables no Keras 2 weight reached."""

    how: str | None
    names: dict[str, str]
    failures: list[str] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)

    def note(self) -> str | None:
        if self.how == "topology":
            return None
        tried = "; ".join(self.failures)
        if self.how is None:
            return f"the Keras 2 weights could not be moved into the Keras 3 model ({tried})"
        return (f"the Keras 2 weights moved by {self.how}, after Keras 3's load_weights failed ({tried})"
                + (f"; not reached: {', '.join(self.unmatched[:5])}" if self.unmatched else ""))


def h5_layers(path: str) -> list[tuple[str, list[str]]]:
    """The layers of a Keras 2 weights file that hold weights, in order, with their weights' names."""
    import h5py

    def text(values):
        return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        found = []
        for name in text(group.attrs.get("layer_names", [])):
            names = text(group[name].attrs.get("weight_names", []))
            if names:
                found.append((name, names))
        return found


def legacy_order(layer) -> list:
    """A layer's weights in the order a `.h5` file keeps them (trainable first)."""
    return layer.trainable_weights + layer.non_trainable_weights


def bare(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def move_weights(model, path: str) -> Moved:
    keys = dict(zip(map(id, model.weights), variable_keys(model.weights)))
    saved = h5_layers(path)
    keras2_names = dict(zip([(layer, i) for layer, names in saved for i in range(len(names))],
                            ranked_names([bare(n) for _, names in saved for n in names])))
    failures = []
    try:
        model.load_weights(path)
        layers = [layer for layer in model.layers if legacy_order(layer)]
        names = {keys[id(v)]: keras2_names[(saved_name, i)]
                 for layer, (saved_name, _) in zip(layers, saved) for i, v in enumerate(legacy_order(layer))}
        return Moved("topology", names)
    except Exception as exc:  # noqa: BLE001 - each way's failure is part of the result
        failures.append(f"load_weights: {type(exc).__name__}: {str(exc)[:300]}")
    try:
        model.load_weights(path, by_name=True)
        by_name = {layer.name: layer for layer in model.layers}
        names = {keys[id(v)]: keras2_names[(saved_name, i)] for saved_name, _ in saved if saved_name in by_name
                 for i, v in enumerate(legacy_order(by_name[saved_name]))}
        unmatched = [key for key in keys.values() if key not in names]
        if names and not unmatched:
            return Moved("name", names, failures)
        failures.append(f"load_weights(by_name=True) reached {len(names)} of {len(keys)} variables")
    except Exception as exc:  # noqa: BLE001
        failures.append(f"load_weights(by_name=True): {type(exc).__name__}: {str(exc)[:300]}")
    return by_order_and_shape(model, path, saved, keras2_names, keys, failures)


def by_order_and_shape(model, path, saved, keras2_names, keys, failures) -> Moved:
    """Each Keras 3 variable, in the file's order, takes the next Keras 2 weight of its shape."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        pending = [(keras2_names[(layer, i)], np.asarray(group[layer][name]))
                   for layer, names in saved for i, name in enumerate(names)]
    ordered = [v for layer in model.layers for v in legacy_order(layer)]
    ordered += [v for v in model.weights if all(v is not o for o in ordered)]
    names, unmatched = {}, []
    for v in ordered:
        match = next((i for i, (_, value) in enumerate(pending) if tuple(value.shape) == tuple(v.shape)), None)
        if match is None:
            unmatched.append(keys[id(v)])
            continue
        name, value = pending.pop(match)
        v.assign(value)
        names[keys[id(v)]] = name
    return Moved("order and shape" if names else None, names, failures, unmatched)


def optimizer_names(mine: dict[str, np.ndarray], keras2: dict[str, np.ndarray]) -> dict[str, str]:
    """This cell's optimizer variables paired with Keras 2's by order and shape (Keras 3 holds the
    learning rate as a variable, Keras 2 does not: such a variable pairs with nothing)."""
    pending = list(keras2.items())
    pairs = {}
    for name, value in mine.items():
        if name.rsplit("/", 1)[-1] == "learning_rate":
            continue
        match = next((i for i, (_, other) in enumerate(pending) if np.shape(other) == np.shape(value)
                      and (np.asarray(other).dtype.kind == "f") == (np.asarray(value).dtype.kind == "f")), None)
        if match is not None:
            pairs[name] = pending.pop(match)[0]
    return pairs


# -- load_model of a Keras 2 file --------------------------------------------------------------

@dataclasses.dataclass
class Attempt:
    how: str
    error: Exception | None = None
    dropped: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        found = {"how": self.how, "status": "pass" if self.error is None else "error"}
        if self.error is not None:
            found.update(exception=type(self.error).__name__, message=str(self.error)[:600])
        if self.dropped:
            found["dropped"] = self.dropped
        return found


def load_keras2_model(path: str, work_dir: str, custom_objects: dict | None = None):
    """`keras.models.load_model` of a Keras 2 `.h5`, as saved (with `custom_objects`: the Keras 3
    code's own classes, as a team passes its custom layers); then `compile=False`; then with the
    config keys Keras 3 refuses dropped from a copy of the file's config, one refusal at a time.
    Returns (the model or None, the attempts in order)."""
    import keras

    attempts = []
    for how, kwargs in (("load_model", {}), ("load_model(compile=False)", {"compile": False})):
        try:
            model = keras.models.load_model(path, custom_objects=custom_objects, **kwargs)
            attempts.append(Attempt(how))
            return model, attempts
        except Exception as exc:  # noqa: BLE001 - each way's failure is part of the result
            attempts.append(Attempt(how, exc))
    edited = os.path.join(work_dir, "keras3_config_" + os.path.basename(path))
    shutil.copyfile(path, edited)
    dropped: dict[str, list[str]] = {}
    error = attempts[-1].error
    for _ in range(20):  # one refused key at a time, as Keras 3 names them
        found = UNRECOGNIZED.search(str(error))
        if not found or not drop_config_keys(edited, found.group(1), keys_of(found.group(2)), dropped):
            break
        for how, kwargs in (("load_model", {}), ("load_model(compile=False)", {"compile": False})):
            try:
                model = keras.models.load_model(edited, custom_objects=custom_objects, **kwargs)
            except Exception as exc:  # noqa: BLE001
                error = exc
                if UNRECOGNIZED.search(str(exc)):
                    break  # another refused key: drop it too
                continue
            attempts.append(Attempt(f"{how} of the config without the keys Keras 3 refuses", dropped=dropped))
            return model, attempts
    if dropped:
        attempts.append(Attempt("load_model of the config without the keys Keras 3 refuses", error, dropped))
    return None, attempts


def keras3_compile_args(path: str) -> dict | None:
    """The Keras 2 file's training configuration as Keras 3 `compile()` arguments (the optimizer
    by class name, with the settings Keras 3's class takes; string losses and metrics as they
    are), for a model loaded with compile=False; None where the file has none."""
    import inspect

    import h5py
    import keras

    with h5py.File(path, "r") as f:
        config = f.attrs.get("training_config")
    if config is None:
        return None
    config = json.loads(config.decode() if isinstance(config, bytes) else config)
    optimizer = config.get("optimizer_config") or {}
    cls = getattr(keras.optimizers, str(optimizer.get("class_name", "")).split(">")[-1], None)
    args = {}
    if cls is not None:
        accepted = inspect.signature(cls).parameters
        args["optimizer"] = cls(**{k: v for k, v in optimizer.get("config", {}).items() if k in accepted})
    if isinstance(config.get("loss"), (str, dict)):
        args["loss"] = config["loss"]
    if isinstance(config.get("metrics"), list) and all(isinstance(m, str) for m in config["metrics"]):
        args["metrics"] = config["metrics"]
    return args or None


def keys_of(text: str) -> list[str]:
    return re.findall(r"'(\w+)':", text)


def drop_config_keys(path: str, class_name: str, keys: list[str], dropped: dict) -> bool:
    """Remove `keys` from the config of every `class_name` layer (nested ones too) in the file's
    `model_config`; False where none was there to remove."""
    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        removed = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("class_name") == class_name and isinstance(node.get("config"), dict):
                    for key in keys:
                        if key in node["config"]:
                            node["config"].pop(key)
                            removed.append(key)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(config)
        if not removed:
            return False
        f.attrs["model_config"] = json.dumps(config)
    dropped.setdefault(class_name, []).extend(k for k in dict.fromkeys(removed) if k not in dropped.get(class_name, []))
    return True


def hint_for(attempts: list[Attempt]) -> str:
    """The fix for the first way that failed, by what Keras 3 said."""
    first = attempts[0]
    message = str(first.error)
    found = UNRECOGNIZED.search(message)
    if found:
        keys = ", ".join(keys_of(found.group(2)))
        return (f"Keras 3's {found.group(1)} no longer takes {keys} (a Keras 2 config key): load with "
                f"custom_objects={{'{found.group(1)}': a subclass whose __init__ drops {keys}}}, or remove {keys} "
                f"from the file's model_config; or {REBUILD_HINT}")
    unknown = re.search(r"Unknown (?:layer|object|class)[^']*'(\w+)'", message)
    if unknown:
        return (f"Keras 3 does not know {unknown.group(1)}: pass custom_objects={{'{unknown.group(1)}': its Keras 3 "
                f"class}} to load_model (the class's __init__ must take what the Keras 2 config holds: give it "
                f"get_config() in Keras 2 before saving, or defaults); or {REBUILD_HINT}")
    if any(a.how == "load_model(compile=False)" and a.error is None for a in attempts):
        return ("the model loads with compile=False: Keras 3 cannot rebuild the Keras 2 training configuration "
                "(loss, metrics or optimizer) saved in the file; compile it again with Keras 3 losses and "
                "optimizers, or " + REBUILD_HINT)
    return REBUILD_HINT
