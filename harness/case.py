"""The case API: `@parity_case(...)` on a zero-argument factory, and `spec(shape, dtype)`.

This module is imported both in the pytest process (collection) and in the workers (to find
the factory again), so it must not import keras or any backend.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import zlib
from typing import Any, Callable

import numpy as np

from harness.cells import UsageError, validate_pattern
from harness.statuses import FAILING_STATUSES

#: Every check of the contract, in the order a cell runs them.
ALL_CHECKS = ("build", "outputs", "train", "rng", "save", "export", "timing")


class CaseDefinitionError(UsageError):
    """A case is declared wrongly; raised at decoration or collection time."""


@dataclasses.dataclass(frozen=True)
class spec:  # noqa: N801 - lower case: it reads as a function in a case declaration
    """A placeholder for an input array: filled from the case's seeded generator."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        try:
            np.dtype(self.dtype)
        except TypeError as exc:
            raise CaseDefinitionError(f"spec({self.shape}, {self.dtype!r}): unknown dtype") from exc

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if dtype == np.bool_:
            return rng.integers(0, 2, size=self.shape).astype(bool)
        if np.issubdtype(dtype, np.integer):
            return rng.integers(0, 10, size=self.shape).astype(dtype)
        return rng.normal(size=self.shape).astype(dtype)


@dataclasses.dataclass(frozen=True)
class XfailRule:
    """One `xfail` entry: cells matching `pattern` must end with `status` (any failure if None)
    and, when `kind` is given, with a failure of that kind (the rule that picked its hint)."""

    pattern: str
    status: str | None
    reason: str
    kind: str | None = None

    def matches(self, cell_id: str) -> bool:
        return fnmatch.fnmatchcase(cell_id, self.pattern)


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    factory: Callable[[], Any]
    inputs: Any
    targets: Any = None
    loss: Any = "mse"
    checks: tuple[str, ...] | None = None
    rtol: float | None = None
    atol: float | None = None
    xfail: tuple[XfailRule, ...] = ()
    covers: tuple[str, ...] = ()  # the APIs this case exercises, for the coverage table
    repro: str | None = None  # a ready-to-run script that reproduces the case, shown on failure
    jit_checks: tuple[str, ...] | None = None  # the checks jit cells run (all when None)

    @property
    def name(self) -> str:
        return self.factory.__name__

    def __call__(self):
        """Calling a case builds its object: the factory stays usable as a plain function."""
        return self.factory()

    def wanted_checks(self) -> list[str]:
        """The checks this case runs, in the contract's order."""
        return [c for c in ALL_CHECKS if c in (self.checks or ALL_CHECKS)]

    def runs_in(self, check: str, jit: bool) -> bool:
        """Whether a cell with jit on/off runs `check` (a budget: `jit_checks`)."""
        return not jit or self.jit_checks is None or check in self.jit_checks

    def seed(self, case_id: str) -> int:
        """A seed that depends only on the case's id, so every run draws the same inputs."""
        return zlib.crc32(case_id.encode())

    def make_inputs(self, seed: int) -> Any:
        return materialize(self.inputs, np.random.default_rng(seed), "inputs")

    def make_targets(self, seed: int) -> Any:
        if self.targets is None:
            return None
        return materialize(self.targets, np.random.default_rng(seed + 1), "targets")

    def xfail_rule(self, cell_id: str) -> XfailRule | None:
        for rule in self.xfail:
            if rule.matches(cell_id):
                return rule
        return None


def materialize(value: Any, rng: np.random.Generator, what: str) -> Any:
    """Turn a case's `inputs`/`targets` declaration into concrete numpy arrays."""
    if callable(value) and not isinstance(value, spec):
        value = value(rng)
    if isinstance(value, spec):
        return value.sample(rng)
    if isinstance(value, dict):
        return {str(k): materialize(v, rng, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [materialize(v, rng, what) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(value)
    raise CaseDefinitionError(
        f"{what}: expected an array, a tuple/list/dict of arrays, harness.spec(...) or a "
        f"callable rng -> one of those; got {type(value).__name__}"
    )


def _parse_xfail(xfail: dict | None, factory_name: str) -> tuple[XfailRule, ...]:
    if not xfail:
        return ()
    if not isinstance(xfail, dict):
        raise CaseDefinitionError(
            f"case {factory_name!r}: xfail must be a dict from a cell pattern "
            f"(e.g. 'torch-*-jit') to a reason, to (status, reason) or to (status, reason, kind)"
        )
    rules = []
    for pattern, value in xfail.items():
        try:
            validate_pattern(pattern, f"case {factory_name!r}: xfail pattern")
        except UsageError as exc:
            raise CaseDefinitionError(str(exc)) from None
        if isinstance(value, str):
            rules.append(XfailRule(pattern, None, value))
            continue
        if isinstance(value, (tuple, list)) and len(value) in (2, 3):
            status, reason, kind = (*value, None) if len(value) == 2 else value
            if status not in FAILING_STATUSES:
                raise CaseDefinitionError(
                    f"case {factory_name!r}: xfail[{pattern!r}] names status {status!r}; "
                    f"a declared failure must be one of {', '.join(FAILING_STATUSES)}"
                )
            rules.append(XfailRule(pattern, status, str(reason), kind))
            continue
        raise CaseDefinitionError(
            f"case {factory_name!r}: xfail[{pattern!r}] must be a reason string, a "
            f"(status, reason) pair or a (status, reason, failure kind) triple, got {value!r}"
        )
    return tuple(rules)


def parity_case(
    *,
    inputs: Any,
    targets: Any = None,
    loss: Any = "mse",
    checks: list[str] | tuple[str, ...] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    xfail: dict | None = None,
    covers: list[str] | tuple[str, ...] = (),
    repro: str | None = None,
    jit_checks: list[str] | tuple[str, ...] | None = None,
) -> Callable[[Callable[[], Any]], Case]:
    """Declare a parity case: the decorated zero-argument factory builds the object to compare.

    The factory returns a `keras.Model`, a `keras.layers.Layer` (called on the inputs) or a
    plain callable built from `keras.ops`. Each case becomes one pytest item per cell.
    `covers` names the APIs the case exercises (`keras.layers.Dense`, `keras.ops.matmul`,
    `migration.pitfall05`); the report's coverage table counts them by namespace. `repro` is a
    script that reproduces the case without keras-parity, printed with its failures.
    `jit_checks` narrows what jit cells run, to budget slow compilers (torch.compile compiles
    a train step in 10 s or more on CPU): `jit_checks=["build", "outputs"]`; `jit_checks=[]`
    runs the case with jit off only (its jit cells are `skip`).
    """

    def decorate(factory: Callable[[], Any]) -> Case:
        if not callable(factory):
            raise CaseDefinitionError("@parity_case decorates a zero-argument factory function")
        name = getattr(factory, "__name__", repr(factory))
        for label, chosen in (("checks", checks), ("jit_checks", jit_checks)):
            if chosen is None:
                continue
            unknown = [c for c in chosen if c not in ALL_CHECKS]
            if unknown or (not chosen and label == "checks"):
                raise CaseDefinitionError(
                    f"case {name!r}: {label}: unknown check(s) {unknown or chosen!r}; choose from "
                    f"{', '.join(ALL_CHECKS)}"
                )
        if isinstance(covers, str) or not all(isinstance(c, str) and c for c in covers):
            raise CaseDefinitionError(f"case {name!r}: covers must be a list of API names such as "
                                      f"'keras.layers.Dense' or 'keras.ops.matmul'")
        for label, tol in (("rtol", rtol), ("atol", atol)):
            if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
                raise CaseDefinitionError(f"case {name!r}: {label} must be a number >= 0")
        return Case(
            factory=factory,
            inputs=inputs,
            targets=targets,
            loss=loss,
            checks=tuple(checks) if checks is not None else None,
            rtol=rtol,
            atol=atol,
            xfail=_parse_xfail(xfail, name),
            covers=tuple(covers),
            repro=repro,
            jit_checks=tuple(jit_checks) if jit_checks is not None else None,
        )

    return decorate
