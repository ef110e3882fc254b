"""What the library under test warns while a cell runs: Python warnings and logged warnings.

A warning is often the only trace of a behaviour a release changes quietly (a layer that drops
a mask, an argument now ignored), so each cell's record keeps them (`warnings`: message,
category, where, count), one entry per distinct message.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

MESSAGE_CHARS = 400
# Loggers whose warnings belong to the library under test (Keras logs through absl and its own).
LOGGERS = ("keras", "absl", "tensorflow", "jax", "torch")
ADDRESS = re.compile(r" at 0x[0-9a-f]+")  # object reprs differ per process; the warning does not


def entry(message: str, category: str, where: str) -> tuple[str, str, str]:
    text = ADDRESS.sub("", message.strip())
    return (text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + " [...]"), category, where


class LoggedWarnings(logging.Handler):
    def __init__(self, found: list):
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        self.found.append(entry(record.getMessage(), f"log:{record.levelname}", record.name))


@contextlib.contextmanager
def watch():
    """Yields a list filled at the end with {message, category, where, count}, in first-seen order."""
    result: list[dict] = []
    logged: list = []
    handler = LoggedWarnings(logged)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every occurrence, not once per place: they are counted
            yield result
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        counts: dict[tuple[str, str, str], int] = {}
        for w in caught:
            key = entry(str(w.message), w.category.__name__, f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}")
            counts[key] = counts.get(key, 0) + 1
        for key in logged:
            counts[key] = counts.get(key, 0) + 1
        result.extend({"message": m, "category": c, "where": w, "count": n} for (m, c, w), n in counts.items())
