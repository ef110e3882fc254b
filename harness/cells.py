"""Cells (`backend-device-jit|nojit`, `...@ENV` in another environment), the options that select
them, and what this machine can run.

Nothing here imports a backend: availability is read from installed package metadata and the
NVIDIA driver, and a worker confirms at start-up whether its backend really sees a GPU.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import os
import re
import shutil

BACKENDS = ("tensorflow", "jax", "torch")
#: Keras 2 (tf.keras, from the tf-keras package) in a TensorFlow worker: the reference of a case
#: that gives Keras 2 code (`keras2=`), and only of such a case.
KERAS2 = "keras2"
ALL_BACKENDS = BACKENDS + (KERAS2,)
DEVICES = ("cpu", "gpu")
JIT_MODES = ("jit", "nojit")
DEFAULT_REFERENCE = "tensorflow-cpu-nojit"
ENV_NAME = re.compile(r"[A-Za-z0-9_.]+")  # no '-' or '@': a cell id parses back


class UsageError(ValueError):
    """A bad option value: the run stops at once with this message."""


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    backend: str
    device: str
    jit: bool
    env: str = ""  # "" for the main environment, else the name given to --keras-env

    @property
    def base_id(self) -> str:
        return f"{self.backend}-{self.device}-{'jit' if self.jit else 'nojit'}"

    @property
    def id(self) -> str:
        return self.base_id + (f"@{self.env}" if self.env else "")

    @property
    def worker_key(self) -> tuple[str, str, str]:
        """Cells that share a worker process: one per (backend, device, environment)."""
        return (self.backend, self.device, self.env)

    def in_env(self, env: str) -> Cell:
        return dataclasses.replace(self, env=env)

    @property
    def nojit(self) -> Cell:
        """The same cell without jit: a jit cell's sibling."""
        return dataclasses.replace(self, jit=False)

    @classmethod
    def parse(cls, text: str) -> Cell:
        base, _, env = text.strip().partition("@")
        parts = base.split("-")
        if (len(parts) != 3 or parts[0] not in ALL_BACKENDS or parts[1] not in DEVICES or parts[2] not in JIT_MODES
                or (env and not ENV_NAME.fullmatch(env))):
            raise UsageError(
                f"{text!r} is not a cell; write backend-device-jit, e.g. tensorflow-cpu-nojit, with "
                f"@NAME for a --keras-env environment (backends: {', '.join(ALL_BACKENDS)}; devices: cpu, gpu; "
                f"jit or nojit)"
            )
        return cls(parts[0], parts[1], parts[2] == "jit", env)

    def __str__(self) -> str:
        return self.id


def validate_pattern(pattern: str, where: str) -> None:
    """A cell pattern is a glob over cell ids; it must be able to match at least one cell."""
    base, at, env = pattern.partition("@")
    parts = ["*"] * 3 if base == "*" else base.split("-")  # '*@rc': every cell of an environment
    choices = (ALL_BACKENDS, DEVICES, JIT_MODES)
    if len(parts) != 3 or not all(
        any(fnmatch.fnmatchcase(c, p) for c in opts) for p, opts in zip(parts, choices)
    ) or (at and not env):
        raise UsageError(
            f"{where} {pattern!r} matches no cell; write backend-device-jit with * as a "
            f"wildcard, e.g. 'torch-*-jit' or '*-gpu-*', and @NAME for an environment's cells ('*@rc')"
        )


def matches(cell_id: str, pattern: str) -> bool:
    """A pattern without `@` matches a cell of any environment by its `backend-device-jit`
    (a declaration about a backend holds under every release); with `@NAME`, only that
    environment's cells. Only a pattern that names keras2 matches a keras2 cell: `*-*-*` declares
    what the Keras 3 backends do with the case's Keras 3 code."""
    if cell_id.startswith(KERAS2 + "-") and not pattern.startswith(KERAS2 + "-"):
        return False
    if "@" in pattern:
        return "@" in cell_id and fnmatch.fnmatchcase(cell_id, pattern)
    return fnmatch.fnmatchcase(cell_id.partition("@")[0], pattern)


def parse_subset(value: str, choices, option: str, noun: str, usage: str) -> list[str]:
    """A comma-separated subset of `choices`, or a usage error that names the option."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [i for i in items if i not in choices]
    if unknown or not items:
        raise UsageError(f"{option}: unknown {noun}(s) {', '.join(unknown) or '(none given)'}; use {usage}")
    return items


def installed_backends() -> list[str]:
    found = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    if "tensorflow" in found and importlib.util.find_spec("tf_keras") is not None:
        found.append(KERAS2)
    return found


def backend_unavailable(backend: str) -> str:
    if backend == KERAS2:
        return "Keras 2 is not installed: the keras2 cells need tensorflow and tf-keras (pip install keras-parity[keras2])"
    return f"backend {backend} is not installed (pip install keras-parity[{backend}])"


def machine_has_gpu() -> bool:
    """Whether an NVIDIA GPU is present at all (a cheap check; workers confirm per backend)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/gpus") and bool(os.listdir("/proc/driver/nvidia/gpus")) or (
        shutil.which("nvidia-smi") is not None and os.path.exists("/dev/nvidia0")
    )


@dataclasses.dataclass(frozen=True)
class CellPlan:
    """The cells a run asks for, with the reason each one that cannot run here is skipped.
    With environments (`envs`: name -> Python interpreter), every cell runs in each of them
    too, compared within its environment with that environment's copy of the reference."""

    cells: tuple[Cell, ...]
    skipped: dict[Cell, str]
    reference: Cell
    envs: dict[str, str] = dataclasses.field(default_factory=dict)

    def skip_reason(self, cell: Cell) -> str | None:
        return self.skipped.get(cell)

    def for_env(self, env: str) -> CellPlan:
        """The plan of one environment's cells, with its own reference."""
        return CellPlan(cells=tuple(c for c in self.cells if c.env == env),
                        skipped={c: r for c, r in self.skipped.items() if c.env == env},
                        reference=self.reference.in_env(env), envs=self.envs)

    def keras3_only(self) -> CellPlan:
        """The plan of a case without Keras 2 code: no keras2 cells."""
        return dataclasses.replace(self, cells=tuple(c for c in self.cells if c.backend != KERAS2),
                                   skipped={c: r for c, r in self.skipped.items() if c.backend != KERAS2})

    @property
    def keras2_reference(self) -> Cell | None:
        """The reference of a case with Keras 2 code: the first keras2 cell this machine runs,
        nojit on CPU first (Keras 2's own computation, as the team ran it)."""
        runnable = [c for c in self.cells if c.backend == KERAS2 and c not in self.skipped and not c.env]
        return min(runnable, key=lambda c: (c.jit, c.device != "cpu"), default=None)

    def with_reference(self, reference: Cell) -> CellPlan:
        return dataclasses.replace(self, reference=reference)


def parse_envs(values: list[str], cwd: str) -> dict[str, str]:
    """`NAME=PYTHON` pairs (--keras-env, ini keras_envs): each environment's interpreter, which
    must exist (a virtual environment's bin/python, as `make env` makes it)."""
    envs: dict[str, str] = {}
    for value in values:
        name, eq, python = value.strip().partition("=")
        name, python = name.strip(), python.strip()
        if not eq or not ENV_NAME.fullmatch(name) or not python:
            raise UsageError(f"--keras-env {value!r}: write NAME=PYTHON, e.g. rc=.venv-rc/bin/python "
                             f"(NAME of letters, digits, '_' and '.')")
        if name in envs:
            raise UsageError(f"--keras-env: {name!r} is named twice")
        path = python if os.path.isabs(python) else os.path.join(cwd, python)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise UsageError(f"--keras-env {name}: {python!r} is not an executable Python interpreter "
                             f"(make one with: make env ENV={name} PACKAGES=\"keras==...\")")
        envs[name] = os.path.abspath(path)
    return envs


def plan_cells(backends: str, devices: str, jit: str, reference: str | None,
               envs: dict[str, str] | None = None) -> CellPlan:
    installed = installed_backends()
    if backends.strip() == "all":
        # All three are asked for: one that is not installed is skipped with that reason.
        wanted_backends = list(ALL_BACKENDS)
    else:
        wanted_backends = parse_subset(backends, ALL_BACKENDS, "--keras-backends", "backend",
                                       f"'all' or a comma-separated subset of {', '.join(ALL_BACKENDS)}")

    gpu_here = machine_has_gpu()
    if devices.strip() == "auto":
        wanted_devices = ["cpu", "gpu"] if gpu_here else ["cpu"]
    else:
        wanted_devices = parse_subset(devices, DEVICES, "--keras-devices", "device", "auto, cpu, gpu or cpu,gpu")

    jit_choices = {"both": [False, True], "on": [True], "off": [False]}
    if jit.strip() not in jit_choices:
        raise UsageError(f"--keras-jit: {jit!r} is not one of both, on, off")

    cells = tuple(
        Cell(b, d, j) for b in wanted_backends for d in wanted_devices for j in jit_choices[jit.strip()]
    )
    skipped = {}
    for cell in cells:
        if cell.backend not in installed:
            skipped[cell] = backend_unavailable(cell.backend)
        elif cell.device == "gpu" and not gpu_here:
            skipped[cell] = "no GPU on this machine (no NVIDIA driver found)"

    runnable = [c for c in cells if c not in skipped]
    if reference:
        ref = Cell.parse(reference)
        if ref.backend == KERAS2:
            raise UsageError(f"--keras-reference={ref.id}: a keras2 cell is the reference of the cases that give "
                             f"Keras 2 code (keras2=), and of those only; choose a Keras 3 cell")
        if ref.env:
            raise UsageError(f"--keras-reference={ref.id}: the reference is a cell of the main environment; "
                             f"each --keras-env environment is compared with its own copy of it")
        if ref.backend not in installed or (ref.device == "gpu" and not gpu_here):
            raise UsageError(
                f"--keras-reference={ref.id} cannot run here "
                f"({'backend not installed' if ref.backend not in installed else 'no GPU'}); "
                f"choose a cell this machine can run, e.g. {runnable[0].id if runnable else 'jax-cpu-nojit'}"
            )
    else:
        default = Cell.parse(DEFAULT_REFERENCE)
        ref = default if default in runnable or not runnable else next(
            (c for c in runnable if c.backend != KERAS2), runnable[0])
    # The backends of another environment are not read from this one's packages: its workers
    # say at start-up what they cannot import.
    envs = envs or {}
    # Keras 2 is the same in every environment's comparison: its cells run in the main one.
    env_cells = tuple(c.in_env(env) for env in envs for c in cells if c.backend != KERAS2)
    env_skipped = {c.in_env(env): r for env in envs for c, r in skipped.items() if "GPU" in r}
    return CellPlan(cells=cells + env_cells, skipped={**skipped, **env_skipped}, reference=ref, envs=envs)


def case_plan(plan: CellPlan, case) -> CellPlan:
    """A case's cells: with Keras 2 code (`keras2=`), the keras2 cells too, the first one this
    machine runs as its reference; without, no keras2 cell."""
    if getattr(case, "keras2", None) is None:
        return plan.keras3_only()
    reference = plan.keras2_reference
    return plan.with_reference(reference) if reference is not None else plan
