"""`python -m harness check FILE [--inputs FILE.npz] [--keras-* options]`: a saved model checked in
every cell without writing a test.

A `.keras` file runs across the Keras 3 backends; a Keras 2 `.h5` file (a whole model, as
tf.keras' `model.save("model.h5")` writes it) runs in the keras2 cell as the reference and in every
Keras 3 cell through `keras.models.load_model` (with `legacy_load`'s fallbacks where it fails).
The case is written to a temporary test module and run by pytest with the options given, so the
reports, the statuses and the exit code are pytest's and the plugin's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import zipfile

import numpy as np

BATCH = 2  # the batch size of inputs drawn from a model's input specs
FREE_DIM = 8  # any other dimension the specs leave free

MODULE = '''"""keras-parity check of {path}"""
import harness

FILE = {path!r}


@harness.parity_case(inputs={inputs}{keras2})
def {name}():
{body}
'''
KERAS3_BODY = '''    import keras

    return keras.models.load_model(FILE)
'''
KERAS2_BODY = '''    import tempfile

    from harness.keras2 import migrate

    model, attempts = migrate.load_keras2_model(FILE, tempfile.mkdtemp())
    if model is None:
        raise attempts[0].error  # legacy_load says why, and what every fallback gave
    if not getattr(model, "compiled", False) and (args := migrate.keras3_compile_args(FILE)):
        model.compile(**args)  # the file's training configuration, in Keras 3's terms
    return model
'''


class CheckError(Exception):
    """The file cannot be checked as given: the message says what to change."""


def model_config(path: str) -> dict:
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    import h5py

    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise CheckError(f"{path} holds no model config: give a whole model saved by model.save('model.h5') "
                             f"(a weights-only .h5 needs the model's code: write a parity_case)")
        config = f.attrs["model_config"]
        return json.loads(config.decode() if isinstance(config, bytes) else config)


def input_specs(config: dict):
    """The model's inputs as `harness.spec(...)` source, from its InputLayers (batch and free
    dimensions filled in): one, a list in the model's order, or none found (None)."""
    layers = config.get("config", {}).get("layers", [])
    inputs = [layer for layer in layers if layer.get("class_name") == "InputLayer"]
    if not inputs and layers:  # a Sequential model without an InputLayer: its first layer's shape
        inputs = layers[:1]
    order = [entry[0] for entry in config.get("config", {}).get("input_layers", []) if isinstance(entry, list)]
    if order and all(isinstance(name, str) for name in order):
        inputs.sort(key=lambda layer: order.index(layer["config"].get("name")) if layer["config"].get("name")
                    in order else len(order))
    found = []
    for layer in inputs:
        cfg = layer.get("config", {})
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape:
            dtype = cfg.get("dtype")
            dtype = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
            found.append(([BATCH] + [FREE_DIM if d is None else int(d) for d in shape[1:]], dtype or "float32"))
    if not found:
        return None
    specs = [f"harness.spec({tuple(dims)!r}, {dtype!r})" for dims, dtype in found]
    return specs[0] if len(specs) == 1 else "[" + ", ".join(specs) + "]"


def inputs_from_npz(path: str) -> str:
    with np.load(path) as data:
        names = list(data.files)
    if not names:
        raise CheckError(f"--inputs {path}: the file holds no arrays")
    if len(names) == 1:
        return f"__import__('numpy').load({path!r})[{names[0]!r}]"
    return "[" + ", ".join(f"__import__('numpy').load({path!r})[{n!r}]" for n in names) + "]"


def write_module(path: str, inputs_npz: str | None, folder: str) -> str:
    keras2 = path.endswith((".h5", ".hdf5"))
    if not (keras2 or path.endswith(".keras")):
        raise CheckError(f"{path}: give a Keras 3 .keras file or a Keras 2 .h5 file")
    if inputs_npz:
        inputs = inputs_from_npz(os.path.abspath(inputs_npz))
    else:
        inputs = input_specs(model_config(path))
        if inputs is None:
            raise CheckError(f"{path}: the model's config names no input shape (a subclassed model): "
                             f"give --inputs FILE.npz (np.savez(FILE, x=...), one array per input in order)")
    name = "check_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module = os.path.join(folder, f"test_{name}.py")
    with open(module, "w") as f:
        f.write(MODULE.format(path=path, inputs=inputs, name=name, keras2=", keras2=FILE" if keras2 else "",
                              body=KERAS2_BODY if keras2 else KERAS3_BODY))
    return module


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness check", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a Keras 3 .keras file or a Keras 2 .h5 file (a whole model)")
    parser.add_argument("--inputs", help="a .npz of the inputs (one array per model input, in order); "
                                         "default: seeded random inputs from the model's input specs")
    args, pytest_args = parser.parse_known_args(argv)
    path = os.path.abspath(args.file)
    if not os.path.isfile(path):
        parser.error(f"{args.file}: no such file")
    folder = tempfile.mkdtemp(prefix="keras-parity-check-")
    try:
        module = write_module(path, args.inputs, folder)
    except CheckError as exc:
        print(f"python -m harness check: {exc}", file=sys.stderr)
        return 4  # pytest's usage error
    import pytest

    return int(pytest.main([module, "-p", "no:cacheprovider", "--rootdir", folder, *pytest_args]))
