"""A step of a check in a worker: it runs, or it fails with a classified status and failure.

Checks stand on these: a failing step raises `StepFailed`, which the cell runner records in
that check's own entry; `route` keeps one independent route of a check (a file format) from
stopping the others.
"""

from __future__ import annotations

from harness import classify


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
