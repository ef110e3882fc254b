"""The values a run compared, kept in the report folder (`values/`), and a later run's cells
compared with them (`--keras-baseline=DIR`): the value gate.

Per case: the inputs (and targets, sample weights), the initial weights every cell loaded, and
per cell its inference outputs and its training steps (each step's losses, metrics, gradients,
optimizer variables and weights). A file of at most `KEPT_ELEMENTS` values is kept whole; a
larger one as a summary (per array: shape, dtype, SHA-256 and mean, std, min, max), compared by
digest and then by those statistics. Inputs and initial weights are kept whole up to
`KEPT_START_ELEMENTS`, so that a later run starts every cell from the baseline's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import numpy as np

from harness import arrays, compare
from harness.statuses import PASS

FOLDER = "values"
KEPT_ELEMENTS = 262_144  # 1 MiB of float32 per file of a cell
KEPT_START_ELEMENTS = 4_194_304  # 16 MiB of float32 for a case's inputs or initial weights
START_FILES = ("inputs.npz", "targets.npz", "sample_weight.npz", "reference_weights.npz")
CELL_FILES = {"outputs": "outputs.npz", "train": "train_steps.npz"}


def case_folder(report_dir: str, case_id: str) -> str:
    """`values/<module>/<case>` (a case id is `path/to/test_x.py::name`)."""
    module, _, name = case_id.partition("::")
    clean = lambda text: re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")  # noqa: E731
    return os.path.join(report_dir, FOLDER, clean(os.path.splitext(module)[0]), clean(name))


def prune(report_dir: str, case_ids: set[str]) -> None:
    """At the end of a run, the values of cases it did not run go: the folder holds this run's."""
    root = os.path.join(report_dir, FOLDER)
    kept = {os.path.relpath(case_folder(report_dir, case_id), root) for case_id in case_ids}
    for module in os.listdir(root) if os.path.isdir(root) else []:
        for name in os.listdir(os.path.join(root, module)):
            if os.path.join(module, name) not in kept:
                shutil.rmtree(os.path.join(root, module, name), ignore_errors=True)
        if not os.listdir(os.path.join(root, module)):
            os.rmdir(os.path.join(root, module))


def elements(path: str) -> int:
    with np.load(path, allow_pickle=False) as data:
        return sum(data[name].size for name in data.files)


def summary(path: str) -> dict:
    """Per array of an `.npz`: shape, dtype, digest and statistics."""
    found = {}
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            value = data[name]
            entry = {"shape": list(value.shape), "dtype": str(value.dtype),
                     "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
            if value.dtype.kind in "fiub" and value.size:
                finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
                if finite.size:
                    f64 = finite.astype(np.float64)
                    entry.update(mean=float(f64.mean()), std=float(f64.std()), min=float(f64.min()),
                                 max=float(f64.max()))
                entry["nonfinite"] = int(value.size - finite.size)
            found[name] = entry
    return found


def keep(path: str, folder: str, name: str, limit: int = KEPT_ELEMENTS) -> None:
    """`path` into `folder` as `name`: whole within `limit` values, else as its summary."""
    os.makedirs(folder, exist_ok=True)
    if elements(path) <= limit:
        shutil.copyfile(path, os.path.join(folder, name))
    else:
        with open(os.path.join(folder, name + ".summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary(path), f)


def keep_start(case_dir: str, folder: str) -> None:
    """A case's inputs and initial weights; the case's folder starts empty (a run replaces it)."""
    shutil.rmtree(folder, ignore_errors=True)
    for name in START_FILES:
        path = os.path.join(case_dir, name)
        if os.path.exists(path):
            keep(path, folder, name, KEPT_START_ELEMENTS)


def keep_cell(folder: str, cell_id: str, files: dict[str, str]) -> None:
    """`files`: check -> the file of values it compared (outputs, train steps)."""
    for check, path in files.items():
        if path and os.path.exists(path):
            keep(path, os.path.join(folder, cell_id), CELL_FILES[check])


def start_file(folder: str, name: str) -> str | None:
    """A baseline's inputs or initial weights, where it kept them whole."""
    path = os.path.join(folder, name)
    return path if os.path.exists(path) else None


# -- comparing with a baseline ---------------------------------------------------------------

def compare_cell(baseline_folder: str, cell_id: str, files: dict[str, str], rtol, atol) -> dict:
    """This cell's values against the baseline's same cell, at the case's tolerances:
    {"compared": [...], "moved": [...], "not_compared": [...]}. Random outputs are not in
    `files`: each backend's draws are compared by law across cells, not by value across runs."""
    found = {"compared": [], "moved": [], "not_compared": []}
    for check, path in files.items():
        name = CELL_FILES[check]
        whole = os.path.join(baseline_folder, cell_id, name)
        digest = whole + ".summary.json"
        if not (path and os.path.exists(path)):
            continue
        if os.path.exists(whole):
            moved = compare_whole(check, whole, path, rtol, atol)
        elif os.path.exists(digest):
            with open(digest, encoding="utf-8") as f:
                moved = compare_summaries(check, json.load(f), summary(path), rtol, atol)
        else:
            found["not_compared"].append(f"{check}: the baseline kept no values of it for this cell")
            continue
        found["compared"].append(check)
        found["moved"] += moved
    return found


def compare_whole(check: str, baseline_path: str, path: str, rtol, atol) -> list[dict]:
    if check == "outputs":
        skeleton, expected = arrays.load_leaves(baseline_path)
        names = arrays.leaf_names(skeleton)
        got = arrays.load_leaves(path)[1]
        if len(expected) != len(got):
            return [{"check": check, "quantity": "output", "message": f"{len(expected)} outputs then, {len(got)} now"}]
        moved = []
        for name, e, g in zip(names, expected, got):
            verdict = compare.compare_arrays(name, e, g, str(e.dtype), rtol, atol, own_scale=True)
            if verdict["status"] != PASS:
                moved.append(figures({"check": check, "quantity": "output", "variable": name}, verdict))
        return moved
    from harness.checks.train import step_keys

    expected, got = arrays.load_weights(baseline_path), arrays.load_weights(path)
    moved = []
    for step, quantity, name, key in step_keys(expected):
        if key not in got:
            if quantity != "gradient":
                moved.append({"check": check, "step": step, "quantity": quantity, "variable": name,
                              "message": "recorded in the baseline, not now"})
            continue
        verdict = compare.compare_arrays(name, expected[key], got[key], str(expected[key].dtype), rtol, atol,
                                         own_scale=quantity in ("loss", "metric"))
        if verdict["status"] != PASS:
            moved.append(figures({"check": check, "step": step, "quantity": quantity, "variable": name}, verdict))
    return moved


def figures(where: dict, verdict: dict) -> dict:
    return {**where, **{k: verdict[k] for k in ("max_abs_err", "max_rel_err", "message") if k in verdict}}


def compare_summaries(check: str, before: dict, now: dict, rtol, atol) -> list[dict]:
    """Arrays too large to keep: equal digests agree; else each statistic within the tolerance
    (an array that moved beyond it moves its statistics too, most of the time: said so)."""
    moved = []
    for name, old in before.items():
        new = now.get(name)
        if new is None or new["shape"] != old["shape"]:
            moved.append({"check": check, "quantity": name, "message": f"shape {old['shape']} then, "
                          f"{new['shape'] if new else 'absent'} now"})
            continue
        if new["sha256"] == old["sha256"]:
            continue
        off = {stat: (old[stat], new[stat]) for stat in ("mean", "std", "min", "max", "nonfinite")
               if stat in old and abs(old[stat] - new.get(stat, np.nan)) > atol + rtol * abs(old[stat])}
        if off:
            moved.append({"check": check, "quantity": name, "compared": "summary statistics (kept as a digest)",
                          "max_abs_err": max(abs(a - b) for a, b in off.values()),
                          "message": ", ".join(f"{stat} {a:.6g} -> {b:.6g}" for stat, (a, b) in off.items())})
    return moved
