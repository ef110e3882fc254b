"""A step of a check in a worker: it runs, or it fails with a classified status and failure.

Checks stand on these: a failing step raises `StepFailed`, which the cell runner records in
that check's own entry; `route` keeps one independent route of a check (a file format) from
stopping the others.
"""

from __future__ import annotations

import time

from harness import classify
from harness.statuses import ERROR, PASS


class StepFailed(Exception):
    """A step of the cell failed; carries the classified status and failure record."""

    def __init__(self, status: str, failure: classify.Failure):
        super().__init__(failure.message)
        self.status = status
        self.failure = failure


def route(fn) -> dict:
    """One of a check's independent routes (SavedModel, ONNX): its result, or its failure."""
    try:
        return fn()
    except StepFailed as failed:
        return {"status": failed.status, "failure": failed.failure.to_json()}


def each_file(files: dict[str, str], check: str, phase: str, load) -> dict:
    """A cross-cell request: `load(source, path)` for each other cell's file, which returns
    the `.npz` it wrote; each file's result, or its classified failure, with its seconds."""
    results = {}
    for source, path in files.items():
        t0 = time.perf_counter()
        try:
            results[source] = {"status": PASS, "file": load(source, path)}
        except Exception as exc:  # noqa: BLE001 - a file that does not load is a result
            _, failure = classify.describe(exc, check=check, phase=phase, jit=False)
            results[source] = {"status": ERROR, "failure": failure.to_json()}
        results[source]["seconds"] = time.perf_counter() - t0
    return results
