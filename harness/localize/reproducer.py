"""A reproducer of a localized divergence: a folder with the piece of the model that diverges
(the layer alone, or the smallest sub-model ending at it that still diverges) as a `.keras`
file holding the reference's weights, the inputs the reference cell gave it, the reference's
output, and one script that runs it under any backend and prints its error. It is written by
the worker that localized the divergence and kept only when the script, run in a fresh
process under the cell's backend, reproduces it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np

SCRIPT = '''"""Reproduces a divergence keras-parity localized: {what}.

    KERAS_BACKEND={backend} python repro.py{jit_flag}

Runs piece.keras ({piece}, with the reference cell's weights) on the inputs the reference cell
({reference}) gave it, {mode}, and prints its error against the reference's output
(expected.npz). Another backend: change KERAS_BACKEND; --jit compiles the piece as a jit cell does.
"""
import argparse
import importlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def custom_objects(info):
    """The classes of the module that defines the model, for the .keras file's custom layers."""
    if not info.get("module"):
        return {{}}
    import keras

    sys.path.insert(0, info["import_root"])
    module = importlib.import_module(info["module"])
    return {{name: value for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, keras.layers.Layer)}}


def arrays(name):
    with np.load(os.path.join(HERE, name)) as data:
        return [data[str(i)] for i in range(len(data.files))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jit", action="store_true", help="compile the piece (XLA, jax.jit, torch.compile)")
    jit = parser.parse_args().jit
    import keras

    info = json.load(open(os.path.join(HERE, "repro.json")))
    model = keras.saving.load_model(os.path.join(HERE, "piece.keras"), custom_objects=custom_objects(info),
                                    compile=False)
    if info["training"]:  # the piece ran in a training step: call it in training mode

        class InTraining(keras.Model):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def call(self, inputs):
                return self.inner(inputs, training=True)

        model = InTraining(model)
    model.compile(jit_compile=jit)
    got = [np.asarray(o) for o in keras.tree.flatten(model.predict_on_batch(arrays("inputs.npz")))]
    worst, beyond = 0.0, False
    for mine, ref, (rtol, atol) in zip(got, arrays("expected.npz"), info["tolerances"]):
        mine, ref = mine.astype(np.float64), ref.astype(np.float64)
        with np.errstate(invalid="ignore"):
            same = (np.isnan(mine) & np.isnan(ref)) | (mine == ref)
            err = np.where(same, 0.0, np.abs(mine - ref))
        err = np.where(np.isnan(err), np.inf, err)
        worst = max(worst, float(err.max()) if err.size else 0.0)
        beyond |= bool((err > atol + rtol * np.abs(np.where(np.isfinite(ref), ref, 0))).any())
    print(f"{{info['what']}} under {{keras.backend.backend()}}{{' with jit' if jit else ''}}: max abs err "
          f"{{worst:.4g}} against the reference ({{'beyond' if beyond else 'within'}} its tolerances, "
          f"(rtol, atol) per output: {{info['tolerances']}})")
    print(json.dumps({{"max_abs_err": worst, "reproduces": beyond}}))


if __name__ == "__main__":
    main()
'''


def write(folder: str, piece, inputs: list[np.ndarray], expected: list[np.ndarray], info: dict) -> None:
    """The reproducer's files; `info`: what (one line), backend, jit, reference, piece (in
    words), training (whether the piece ran in a training step), tolerances ((rtol, atol) per
    output), and the module to import for custom layers (module, import_root)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    piece.save(os.path.join(folder, "piece.keras"))
    np.savez(os.path.join(folder, "inputs.npz"), **{str(i): a for i, a in enumerate(inputs)})
    np.savez(os.path.join(folder, "expected.npz"), **{str(i): a for i, a in enumerate(expected)})
    with open(os.path.join(folder, "repro.json"), "w") as f:
        json.dump(info, f, indent=1)
    with open(os.path.join(folder, "repro.py"), "w") as f:
        f.write(SCRIPT.format(what=info["what"], backend=info["backend"], jit_flag=" --jit" if info["jit"] else "",
                              piece=info["piece"], reference=info["reference"],
                              mode="in training mode, as in the training step" if info["training"] else "at inference"))


def check(folder: str, backend: str, jit: bool, timeout: float = 300) -> dict:
    """Run the script in a fresh process under `backend`: its verdict, or why there is none."""
    command = [sys.executable, os.path.join(folder, "repro.py")] + (["--jit"] if jit else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=folder,
                              env={**os.environ, "KERAS_BACKEND": backend})
    except subprocess.TimeoutExpired:
        return {"reproduces": False, "why": f"the script took more than {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    try:
        verdict = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"reproduces": False, "why": f"the script failed in a fresh process: {tail[:300]}"}
    return {**verdict, "printed": lines[0] if len(lines) > 1 else ""}


def command(folder: str, backend: str, jit: bool) -> str:
    return f"KERAS_BACKEND={backend} python {os.path.join(folder, 'repro.py')}{' --jit' if jit else ''}"
