"""The values a run compared, kept in the report folder (`values/`), and a later run's cells
compared with them (`--keras-baseline=DIR`): the value gate.

Per case: the inputs (and targets, sample weights), the initial weights every cell loaded, and
per cell its inference outputs and its training steps (each step's losses, metrics, gradients,
optimizer variables and weights). An array of a cell's file is kept whole up to
`KEPT_ARRAY_ELEMENTS` values, while the file stays within `KEPT_FILE_ELEMENTS`; the others as a
summary (shape, dtype, SHA-256, and the mean, std, min and max of the finite values), compared
by digest and then by those statistics. Inputs and initial weights are kept whole up to
`KEPT_START_ELEMENTS`, so that a later run starts every cell from the baseline's; past it, the
later run starts from its own and says so.
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
KEPT_ARRAY_ELEMENTS = 65_536  # an array of a cell's file kept whole: at most 256 KiB of float32
KEPT_FILE_ELEMENTS = 1_048_576  # and at most 4 MiB of float32 per file; the rest as summaries
KEPT_START_ELEMENTS = 4_194_304  # a case's inputs or initial weights: whole up to 16 MiB, or not at all
START_FILES = ("inputs.npz", "targets.npz", "sample_weight.npz", "reference_weights.npz")
CELL_FILES = {"outputs": "outputs.npz", "train": "train_steps.npz"}
SUMMARY = ".summary.json"


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


def stats(value: np.ndarray) -> dict:
    """An array too large to keep: shape, dtype, digest and statistics of its finite values."""
    entry = {"shape": list(value.shape), "dtype": str(value.dtype),
             "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
    if value.dtype.kind in "fiub" and value.size:
        finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
        if finite.size:
            f64 = finite.astype(np.float64)
            entry.update(mean=float(f64.mean()), std=float(f64.std()), min=float(f64.min()), max=float(f64.max()))
        entry["nonfinite"] = int(value.size - finite.size)
    return entry


def keep(path: str, folder: str, name: str, array_limit: int, file_limit: int) -> None:
    """`path` into `folder` as `name`: each array whole while it fits both limits, the others
    as their summaries beside it (`name.summary.json`)."""
    os.makedirs(folder, exist_ok=True)
    whole, summaries, used = {}, {}, 0
    for key, value in arrays.read_npz(path).items():
        if value.size <= array_limit and used + value.size <= file_limit:
            whole[key] = value
            used += value.size
        else:
            summaries[key] = stats(value)
    np.savez(os.path.join(folder, name), **whole)
    if summaries:
        with open(os.path.join(folder, name + SUMMARY), "w", encoding="utf-8") as f:
            json.dump(summaries, f)


def keep_start(case_dir: str, folder: str) -> None:
    """A case's inputs and initial weights; the case's folder starts empty (a run replaces it)."""
    shutil.rmtree(folder, ignore_errors=True)
    for name in START_FILES:
        path = os.path.join(case_dir, name)
        if os.path.exists(path):
            keep(path, folder, name, KEPT_START_ELEMENTS, KEPT_START_ELEMENTS)


def keep_cell(folder: str, cell_id: str, files: dict[str, str]) -> None:
    """`files`: check -> the file of values it compared (outputs, train steps)."""
    for check, path in files.items():
        if path and os.path.exists(path):
            keep(path, os.path.join(folder, cell_id), CELL_FILES[check], KEPT_ARRAY_ELEMENTS, KEPT_FILE_ELEMENTS)


def start_file(folder: str, name: str) -> str | None:
    """A baseline's inputs or initial weights, where it kept them whole."""
    path = os.path.join(folder, name)
    return path if os.path.exists(path) and not os.path.exists(path + SUMMARY) else None


# -- comparing with a baseline ---------------------------------------------------------------

def compare_cell(baseline_folder: str, cell_id: str, files: dict[str, str], rtol, atol) -> dict:
    """This cell's values against the baseline's same cell, at the case's tolerances:
    {"compared": [...], "moved": [...], "not_compared": [...]}. Random outputs are not in
    `files`: each backend's draws are compared by law across cells, not by value across runs."""
    found = {"compared": [], "moved": [], "not_compared": []}
    for check, path in files.items():
        kept = os.path.join(baseline_folder, cell_id, CELL_FILES[check])
        if not (path and os.path.exists(path)):
            continue
        if not os.path.exists(kept):
            found["not_compared"].append(f"{check}: the baseline kept no values of it for this cell")
            continue
        found["compared"].append(check)
        found["moved"] += compare_file(check, kept, path, rtol, atol)
    return found


def compare_file(check: str, kept: str, path: str, rtol, atol) -> list[dict]:
    """What moved from `kept` (a baseline's file, or the main environment's for `version`) to
    `path`, in the order a step computes it. Each array kept: whole ones value by value, the others by digest, then by
    their statistics (an array that moved beyond the tolerance almost always moves one of them)."""
    before = arrays.read_npz(kept)
    summaries = {}
    if os.path.exists(kept + SUMMARY):
        with open(kept + SUMMARY, encoding="utf-8") as f:
            summaries = json.load(f)
    now = arrays.read_npz(path)
    structure = before.pop(arrays.STRUCTURE_KEY, None)
    now.pop(arrays.STRUCTURE_KEY, None)
    keys = list(before) + list(summaries)
    if check == "outputs":
        names = arrays.leaf_names(json.loads(structure.tobytes().decode())) if structure is not None else keys
        where = {str(i): {"quantity": "output", "variable": name} for i, name in enumerate(names)}
        order = sorted(keys, key=int)
    else:
        from harness.checks.train import step_keys

        # A release that names the optimizer's variables otherwise: matched by order and shape.
        shapes = {**{k: v for k, v in before.items()},
                  **{k: np.broadcast_to(0, summary["shape"]) for k, summary in summaries.items()}}
        now = {**now, **{old: now[new] for old, new in paired_renames(shapes, now).items()}}
        ordered = step_keys(dict.fromkeys(keys))
        where = {key: {"step": step, "quantity": quantity, "variable": name} for step, quantity, name, key in ordered}
        order = [key for *_, key in ordered]
    moved = []
    for key in order:
        label = {"check": check, **where.get(key, {"quantity": key})}
        if key not in now:
            if label.get("quantity") != "gradient":  # a jit cell leaves gradients to its nojit sibling
                moved.append({**label, "message": "recorded in the cell compared with, not in this one"})
            continue
        if key in before:
            expected = before[key]
            verdict = compare.compare_arrays(label.get("variable", key), expected, now[key], str(expected.dtype), rtol,
                                             atol, own_scale=label.get("quantity") in ("output", "loss", "metric"))
            if verdict["status"] != PASS:
                moved.append({**label, **{k: verdict[k] for k in ("max_abs_err", "max_rel_err", "message") if k in verdict}})
        else:
            off = compare_stats(summaries[key], stats(now[key]), rtol, atol)
            if off:
                moved.append({**label, **off})
    return moved


def paired_renames(expected: dict, got: dict) -> dict[str, str]:
    """Keys of one step and quantity that only one side has, paired in order where both
    have as many of the same shapes (a release that names an optimizer's variables otherwise)."""
    def unmatched(steps, others):
        groups: dict[tuple, list[str]] = {}
        for key in steps:
            if key not in others:
                step, quantity, _ = key.split("/", 2)
                groups.setdefault((step, quantity), []).append(key)
        return groups

    mine, theirs = unmatched(expected, got), unmatched(got, expected)
    pairs = {}
    for group, keys in mine.items():
        others = theirs.get(group, [])
        if len(keys) == len(others) and all(expected[a].shape == got[b].shape for a, b in zip(keys, others)):
            pairs.update(zip(keys, others))
    return pairs


def compare_stats(old: dict, new: dict, rtol, atol) -> dict | None:
    if new["shape"] != old["shape"]:
        return {"message": f"shape {old['shape']} then, {new['shape']} now"}
    if new["sha256"] == old["sha256"]:
        return None
    r, a = compare.tolerance(old["dtype"], rtol, atol)
    off = {stat: (old[stat], new.get(stat, np.nan)) for stat in ("mean", "std", "min", "max", "nonfinite")
           if stat in old and not abs(old[stat] - new.get(stat, np.nan)) <= a + r * abs(old[stat])}
    if not off:
        return None
    return {"compared": "by summary statistics (the array was too large to keep whole)",
            "max_abs_err": max(abs(x - y) for x, y in off.values()),
            "message": ", ".join(f"{stat} {x:.6g} -> {y:.6g}" for stat, (x, y) in off.items())}
