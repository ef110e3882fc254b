"""Cell and check statuses, and how they combine.

A cell's status is the worst of its checks' statuses. `skip` ranks below every failure and
above `pass` only when nothing ran: a cell whose checks partly skipped (say, no reference to
compare against) keeps the status of the checks that did run.
"""

PASS = "pass"
MISMATCH = "mismatch"
ERROR = "error"
COMPILE_ERROR = "compile_error"
CRASH = "crash"
TIMEOUT = "timeout"
SKIP = "skip"
XFAIL = "xfail"

#: Statuses a cell can end with that are failures, least to most severe.
FAILING_STATUSES = (MISMATCH, COMPILE_ERROR, ERROR, TIMEOUT, CRASH)

_SEVERITY = {PASS: 0, SKIP: -1, **{s: i + 1 for i, s in enumerate(FAILING_STATUSES)}}


def worst(statuses) -> str:
    """The status of a cell from its checks' statuses (`skip` only if every check skipped)."""
    statuses = list(statuses)
    if not statuses:
        return SKIP
    ran = [s for s in statuses if s != SKIP]
    if not ran:
        return SKIP
    return max(ran, key=_SEVERITY.__getitem__)


def is_failure(status: str) -> bool:
    return status in FAILING_STATUSES
