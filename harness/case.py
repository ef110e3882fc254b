"""The case API: `@parity_case(...)` on a zero-argument factory, and `spec(shape, dtype)`.

This module is imported both in the pytest process (collection) and in the workers (to find
the factory again), so it must not import keras or any backend.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import zlib
from typing import Any, Callable

import numpy as np

from harness.cells import UsageError, matches, validate_pattern
from harness.statuses import FAILING_STATUSES, PASS, is_failure

#: Every check of the contract, in the order a cell runs them.
ALL_CHECKS = ("build", "outputs", "train", "legacy_load", "rng", "save", "export", "timing", "version")
#: Checks only a case with Keras 2 code (`keras2=`) runs.
KERAS2_CHECKS = ("legacy_load",)
#: Checks the pytest process makes over other cells' results: a worker does not run them, and a
#: case's `checks=` does not turn them off (`version` runs in --keras-env cells whenever the run has them).
RUN_LEVEL_CHECKS = ("version",)


def full_budget() -> bool:
    """True under KERAS_PARITY_FULL=1: suites then also run the cells they budget away with
    `skip` and `cell_checks` (torch.compile of every case, on a machine with the time)."""
    return os.environ.get("KERAS_PARITY_FULL") == "1"


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


class NoTargets:
    """`targets=harness.no_targets`: the model trains as `fit(x)` (a VAE, a custom `train_step`
    or `compute_loss` that needs no targets)."""

    def __repr__(self) -> str:
        return "harness.no_targets"


no_targets = NoTargets()


@dataclasses.dataclass(frozen=True, init=False)
class param:  # noqa: N801 - lower case: it reads as a function in a declaration, as pytest.param
    """A `params` entry with declarations of its own, as `pytest.param` carries marks:

        params={"sgd": {"name": "SGD"},
                "adam": harness.param(name="Adam", xfail={"jax-*-*": ("mismatch", "why")})}

    The keyword arguments go to the factory; the entry's `xfail` applies to its cells before
    the case's own (the first matching pattern decides)."""

    kwargs: dict
    xfail: dict | None

    def __init__(self, *, xfail: dict | None = None, **kwargs):
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "xfail", xfail)


@dataclasses.dataclass(frozen=True)
class machine_dependent:  # noqa: N801 - lower case: it reads as a function in a declaration
    """An `xfail` value for cells whose outcome depends on the machine: the CPU's instruction
    set, and the kernels the backends pick for it (TensorFlow's oneDNN, XLA's vector code).

        xfail={"jax-*-*": harness.machine_dependent(
            "TensorFlow's oneDNN softmax keeps NaN to a row's inf",
            {"pass": "oneDNN off (AVX2): every backend gives a row of NaN",
             "mismatch": "oneDNN on (AVX512_VNNI): [0, 0, nan] against a row of NaN"})}

    `outcomes` maps each allowed status ("pass" or a failure) to what was measured on the
    machines that give it. Any of them is accepted, and the record says which one this machine
    gave; every other outcome fails, a pass too when "pass" is not among them.
    """

    reason: str
    outcomes: dict[str, str]


@dataclasses.dataclass(frozen=True)
class XfailRule:
    """One `xfail` entry: cells matching `pattern` must end with `status` (any failure if None)
    and, when `kind` is given, with a failure of that kind (the rule that picked its hint).
    A machine-dependent entry has `outcomes` instead: (allowed status, what was measured where
    it happens) pairs."""

    pattern: str
    status: str | None
    reason: str
    kind: str | None = None
    outcomes: tuple[tuple[str, str], ...] = ()

    def matches(self, cell_id: str) -> bool:
        return matches(cell_id, self.pattern)

    @property
    def expected(self) -> str:
        """The declared outcome in words: 'mismatch', 'any failure', 'pass or mismatch'."""
        if self.outcomes:
            return " or ".join(status for status, _ in self.outcomes)
        return self.status or "any failure"

    def allows(self, status: str, kind: str | None) -> bool:
        if self.outcomes:
            return status in dict(self.outcomes)
        return (is_failure(status) and (self.status is None or self.status == status)
                and (self.kind is None or self.kind == kind))


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    factory: Callable[[], Any]
    inputs: Any
    targets: Any = None
    loss: Any = None  # None: what the factory compiled the model with, else "mse"
    optimizer: Any = None  # None: what the factory compiled the model with, else SGD(0.01)
    metrics: Any = None
    sample_weight: Any = None
    class_weight: dict | None = None
    checks: tuple[str, ...] | None = None
    rtol: float | None = None
    atol: float | None = None
    xfail: tuple[XfailRule, ...] = ()
    covers: tuple[str, ...] = ()  # the APIs this case exercises, for the coverage table
    repro: str | None = None  # a ready-to-run script that reproduces the case, shown on failure
    cell_checks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (cell pattern, checks run there)
    skip: tuple[tuple[str, str], ...] = ()  # (cell pattern, reason): cells not run
    params: tuple[tuple[str, dict], ...] = ()  # (id, keyword arguments): one case per entry
    param_xfail: tuple[tuple[str, tuple[XfailRule, ...]], ...] = ()  # (id, the entry's own declarations)
    param: str | None = None  # the entry this case is bound to (see `bind`)
    # Keras 2 code: a zero-argument factory written against tf.keras, or a Keras 2 `.h5` path
    keras2: Callable[[], Any] | str | None = None

    def bind(self, param: str) -> Case:
        """The case of one `params` entry: the factory, and `inputs`/`targets` callables that
        take them, called with its keyword arguments."""
        kwargs = dict(self.params)[param]
        factory = self.factory

        @functools.wraps(factory)
        def bound():
            return factory(**kwargs)

        return dataclasses.replace(self, factory=bound, inputs=_bind_data(self.inputs, kwargs),
                                   targets=_bind_data(self.targets, kwargs),
                                   sample_weight=_bind_data(self.sample_weight, kwargs), param=param,
                                   xfail=dict(self.param_xfail).get(param, ()) + self.xfail)

    def skip_reason(self, cell_id: str) -> str | None:
        for pattern, reason in self.skip:
            if matches(cell_id, pattern):
                return reason
        return None

    @property
    def name(self) -> str:
        return self.factory.__name__ + (f"[{self.param}]" if self.param is not None else "")

    def __call__(self):
        """Calling a case builds its object: the factory stays usable as a plain function."""
        return self.factory()

    def wanted_checks(self) -> list[str]:
        """The checks this case runs, in the contract's order."""
        return [c for c in ALL_CHECKS if c in (self.checks or ALL_CHECKS) and c not in RUN_LEVEL_CHECKS
                and (self.keras2 is not None or c not in KERAS2_CHECKS)]

    def runs_in(self, check: str, cell_id: str) -> bool:
        """Whether the cell runs `check` (a budget: `cell_checks` narrows it per cell)."""
        for pattern, checks in self.cell_checks:
            if matches(cell_id, pattern):
                return check in checks
        return True

    def seed(self, case_id: str) -> int:
        """A seed that depends only on the case's id, so every run draws the same inputs."""
        return zlib.crc32(case_id.encode())

    def make_inputs(self, seed: int) -> Any:
        return materialize(self.inputs, np.random.default_rng(seed), "inputs")

    def make_targets(self, seed: int) -> Any:
        if self.targets is None or self.targets is no_targets:
            return None
        return materialize(self.targets, np.random.default_rng(seed + 1), "targets")

    def make_sample_weight(self, seed: int) -> Any:
        if self.sample_weight is None:
            return None
        return materialize(self.sample_weight, np.random.default_rng(seed + 2), "sample_weight")

    def xfail_rule(self, cell_id: str) -> XfailRule | None:
        for rule in self.xfail:
            if rule.matches(cell_id):
                return rule
        return None


def _bind_data(value: Any, kwargs: dict) -> Any:
    """An `inputs`/`targets` callable that names some of the params gets them; others do not."""
    if not callable(value) or isinstance(value, (spec, NoTargets)):
        return value
    accepted = inspect.signature(value).parameters
    wanted = {k: v for k, v in kwargs.items() if k in accepted}
    return functools.partial(value, **wanted) if wanted else value


def _parse_params(params: dict | None, factory: Callable, factory_name: str) -> tuple[tuple[str, dict], ...]:
    """The entries as (id, keyword arguments); a `harness.param` entry's declarations are read
    by `_parse_param_xfail`."""
    if params is None:
        return ()
    where = f"case {factory_name!r}: params"
    if not isinstance(params, dict) or not params:
        raise CaseDefinitionError(f"{where} must be a non-empty dict from an id to the factory's "
                                  f"keyword arguments, e.g. {{'small': {{'width': 8}}, 'wide': {{'width': 64}}}}")
    signature = inspect.signature(factory)
    entries = []
    for param_id, kwargs in params.items():
        if isinstance(kwargs, param):
            kwargs = kwargs.kwargs
        if not (isinstance(param_id, str) and param_id and not set(param_id) & set("[]/: ")):
            raise CaseDefinitionError(f"{where}: id {param_id!r} must be a non-empty string without "
                                      f"brackets, slashes, colons or spaces (it goes into the test id)")
        if not isinstance(kwargs, dict):
            raise CaseDefinitionError(f"{where}[{param_id!r}] must be a dict of keyword arguments, got {kwargs!r}")
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise CaseDefinitionError(f"{where}[{param_id!r}]: the factory {factory_name}{signature} "
                                      f"cannot take {kwargs!r}: {exc}") from None
        entries.append((param_id, kwargs))
    return tuple(entries)


def _parse_param_xfail(params: dict | None, factory_name: str) -> tuple[tuple[str, tuple[XfailRule, ...]], ...]:
    return tuple((param_id, _parse_xfail(entry.xfail, f"{factory_name}[{param_id}]"))
                 for param_id, entry in (params or {}).items() if isinstance(entry, param) and entry.xfail)


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


def check_pattern(pattern: str, factory_name: str, label: str) -> None:
    """A cell pattern in a case's declaration must match some cell: an error naming the case."""
    try:
        validate_pattern(pattern, f"case {factory_name!r}: {label} pattern")
    except UsageError as exc:
        raise CaseDefinitionError(str(exc)) from None


def _parse_xfail(xfail: dict | None, factory_name: str) -> tuple[XfailRule, ...]:
    if not xfail:
        return ()
    if not isinstance(xfail, dict):
        raise CaseDefinitionError(
            f"case {factory_name!r}: xfail must be a dict from a cell pattern (e.g. 'torch-*-jit') "
            f"to a reason, to (status, reason), to (status, reason, kind) or to "
            f"harness.machine_dependent(reason, outcomes)"
        )
    rules = []
    for pattern, value in xfail.items():
        check_pattern(pattern, factory_name, "xfail")
        if isinstance(value, str):
            rules.append(XfailRule(pattern, None, value))
            continue
        if isinstance(value, machine_dependent):
            rules.append(_machine_dependent_rule(pattern, value, factory_name))
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
            f"(status, reason) pair, a (status, reason, failure kind) triple or "
            f"harness.machine_dependent(reason, outcomes), got {value!r}"
        )
    return tuple(rules)


def _machine_dependent_rule(pattern: str, value: machine_dependent, factory_name: str) -> XfailRule:
    where = f"case {factory_name!r}: xfail[{pattern!r}] = harness.machine_dependent(...)"
    outcomes = value.outcomes
    if not (isinstance(value.reason, str) and value.reason.strip()):
        raise CaseDefinitionError(f"{where}: give the reason the outcome depends on the machine")
    if not isinstance(outcomes, dict) or len(outcomes) < 2:
        raise CaseDefinitionError(
            f"{where}: outcomes must be a dict of two or more allowed statuses, each to what was "
            f"measured where it happens (one outcome on every machine is a plain xfail)")
    for status, measured in outcomes.items():
        if status != PASS and status not in FAILING_STATUSES:
            raise CaseDefinitionError(
                f"{where}: outcome {status!r} is not a status a cell can end with; use pass or "
                f"one of {', '.join(FAILING_STATUSES)}")
        if not (isinstance(measured, str) and measured.strip()):
            raise CaseDefinitionError(
                f"{where}: outcome {status!r} needs what was measured where it happens (the "
                f"machine, and the values)")
    return XfailRule(pattern, None, value.reason, outcomes=tuple(outcomes.items()))


def _parse_cell_checks(cell_checks: dict | None, factory_name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not cell_checks:
        return ()
    if not isinstance(cell_checks, dict):
        raise CaseDefinitionError(
            f"case {factory_name!r}: cell_checks must be a dict from a cell pattern (e.g. "
            f"'torch-*-jit') to the checks those cells run")
    parsed = []
    for pattern, checks in cell_checks.items():
        check_pattern(pattern, factory_name, "cell_checks")
        unknown = [c for c in checks if c not in ALL_CHECKS] if isinstance(checks, (list, tuple)) else [checks]
        if unknown or not checks:
            raise CaseDefinitionError(
                f"case {factory_name!r}: cell_checks[{pattern!r}]: unknown check(s) {unknown or checks!r}; "
                f"choose from {', '.join(ALL_CHECKS)} (to run those cells not at all: "
                f"skip={{{pattern!r}: reason}})")
        parsed.append((pattern, tuple(checks)))
    return tuple(parsed)


def _parse_class_weight(class_weight: dict | None, factory_name: str) -> dict | None:
    if class_weight is None:
        return None
    if not (isinstance(class_weight, dict) and class_weight and all(
            isinstance(k, (int, np.integer)) and isinstance(v, (int, float)) for k, v in class_weight.items())):
        raise CaseDefinitionError(f"case {factory_name!r}: class_weight must be a dict from a class index "
                                  f"to its weight, e.g. {{0: 1.0, 1: 5.0}}; got {class_weight!r}")
    return {int(k): float(v) for k, v in class_weight.items()}


def _parse_skip(skip: dict | None, factory_name: str) -> tuple[tuple[str, str], ...]:
    if not skip:
        return ()
    if not isinstance(skip, dict) or not all(isinstance(r, str) and r.strip() for r in skip.values()):
        raise CaseDefinitionError(
            f"case {factory_name!r}: skip must be a dict from a cell pattern (e.g. 'torch-*-jit') "
            f"to the reason those cells are not run")
    for pattern in skip:
        check_pattern(pattern, factory_name, "skip")
    return tuple(skip.items())


def _parse_keras2(keras2, factory_name: str):
    if keras2 is None or callable(keras2):
        return keras2
    if isinstance(keras2, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(keras2))
        if not path.endswith((".h5", ".hdf5")) or not os.path.isfile(path):
            raise CaseDefinitionError(f"case {factory_name!r}: keras2={os.fspath(keras2)!r} must be a Keras 2 .h5 "
                                      f"file that exists (a whole model, as tf.keras' model.save('model.h5') writes it)")
        return path
    raise CaseDefinitionError(f"case {factory_name!r}: keras2= must be a zero-argument factory written against "
                              f"tf.keras, or the path of a Keras 2 .h5 file; got {type(keras2).__name__}")


def parity_case(
    *,
    inputs: Any,
    targets: Any = None,
    loss: Any = None,
    optimizer: Any = None,
    metrics: Any = None,
    sample_weight: Any = None,
    class_weight: dict | None = None,
    checks: list[str] | tuple[str, ...] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    xfail: dict | None = None,
    covers: list[str] | tuple[str, ...] = (),
    repro: str | None = None,
    cell_checks: dict | None = None,
    skip: dict | None = None,
    params: dict | None = None,
    keras2: Callable[[], Any] | str | os.PathLike | None = None,
) -> Callable[[Callable[..., Any]], Case]:
    """Declare a parity case: the decorated zero-argument factory builds the object to compare.

    The factory returns a `keras.Model`, a `keras.layers.Layer` (called on the inputs) or a
    plain callable built from `keras.ops`. Each case becomes one pytest item per cell.
    `covers` names the APIs the case exercises (`keras.layers.Dense`, `keras.ops.matmul`,
    `migration.pitfall05`); the report's coverage table counts them by namespace. `repro` is a
    script that reproduces the case without keras-parity, printed with its failures.
    `cell_checks` narrows what some cells run, to budget slow compilers (torch.compile compiles
    a train step in 10 s or more on CPU): `cell_checks={"torch-*-jit": ["build", "outputs"]}`
    (the first matching pattern decides). `skip` maps cell patterns to the reason those cells
    are not run (`{"*-*-jit": "..."}` runs the case with jit off only); they are reported as
    `skip` with that reason. Both are budgets: KERAS_PARITY_FULL=1 ignores them. `params`
    makes one case per entry of a dict from an id to the factory's keyword arguments (a model
    zoo: `params={"small": {"width": 8}, "wide": {"width": 64}}` gives the cases `zoo[small]`
    and `zoo[wide]`); an `inputs` or `targets` callable that names a parameter gets it too. An
    entry given as `harness.param(xfail=..., **kwargs)` carries declarations of its own.

    Keras 2 (`keras2`): the same model as Keras 2 code, a zero-argument factory written against
    tf.keras (`from tensorflow import keras`), or the path of a Keras 2 `.h5` file holding the whole
    model. It runs in the keras2 cells, and the keras2 cell is the case's reference: the Keras 3
    cells load its weights from the `.h5` Keras 2 writes (Keras 3's `load_weights`), and the
    `legacy_load` check loads its whole-model `.h5` with `keras.models.load_model`.

    Training (the `train` check): `optimizer` (a name, an optimizer object, or a zero-argument
    callable returning one: `lambda: keras.optimizers.Adam(1e-3, clipnorm=1.0)`), `loss` (a
    name, a loss object or function, a dict per output, or a zero-argument callable returning
    those) and `metrics` (what `compile` takes, or a callable returning it) override what the
    factory compiled its model with; without either, the model trains with SGD(0.01) and "mse".
    `targets=harness.no_targets` trains as `fit(x)`; `sample_weight` (the forms of `inputs`)
    and `class_weight` (a dict from class index to weight) are passed to `fit`.
    """

    def decorate(factory: Callable[..., Any]) -> Case:
        if not callable(factory):
            raise CaseDefinitionError("@parity_case decorates a zero-argument factory function")
        name = getattr(factory, "__name__", repr(factory))
        if checks is not None:
            unknown = [c for c in checks if c not in ALL_CHECKS]
            if unknown or not checks:
                raise CaseDefinitionError(
                    f"case {name!r}: checks: unknown check(s) {unknown or checks!r}; choose from "
                    f"{', '.join(ALL_CHECKS)}"
                )
        if isinstance(covers, str) or not all(isinstance(c, str) and c for c in covers):
            raise CaseDefinitionError(f"case {name!r}: covers must be a list of API names such as "
                                      f"'keras.layers.Dense' or 'keras.ops.matmul'")
        for label, tol in (("rtol", rtol), ("atol", atol)):
            if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
                raise CaseDefinitionError(f"case {name!r}: {label} must be a number >= 0")
        cell_checks_rules, skip_rules = _parse_cell_checks(cell_checks, name), _parse_skip(skip, name)
        budgeted = not full_budget()
        return Case(
            factory=factory,
            inputs=inputs,
            targets=targets,
            loss=loss,
            optimizer=optimizer,
            metrics=metrics,
            sample_weight=sample_weight,
            class_weight=_parse_class_weight(class_weight, name),
            checks=tuple(checks) if checks is not None else None,
            rtol=rtol,
            atol=atol,
            xfail=_parse_xfail(xfail, name),
            covers=tuple(covers),
            repro=repro,
            cell_checks=cell_checks_rules if budgeted else (),
            skip=skip_rules if budgeted else (),
            params=_parse_params(params, factory, name),
            param_xfail=_parse_param_xfail(params, name),
            keras2=_parse_keras2(keras2, name),
        )

    return decorate
