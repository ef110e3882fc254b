"""What decides the outcomes that differ from one machine to the next: `run.machine` in parity.json.

The same wheels run different kernels on different x86-64 CPUs. XLA (TensorFlow's jit, JAX)
compiles for the host's vector extensions; torch's ATen and inductor dispatch on them (AVX2,
AVX-512); TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX (`DefaultOneDnnPolicy` in TensorFlow's util_port), and oneDNN
changes edge-value results (softmax of a row holding inf) and supported data formats (NCHW
convolutions). So a report records the CPU, the kernels each backend chose, the GPU and
driver, the environment variables that override those choices, and every installed package,
and the gate can say when a baseline came from another machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess

#: The CPU flags (as /proc/cpuinfo spells them) that TensorFlow, XLA, oneDNN and torch select on.
VECTOR_EXTENSIONS = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)
#: Variables that override what the backends choose by CPU.
OVERRIDES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "XLA_FLAGS", "ATEN_CPU_CAPABILITY")


def cpu(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """The CPU model and the vector extensions the kernels select on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo_path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""
    if found := re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE):
        model = found.group(1).strip()
    if found := re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE):
        flags = set(found.group(1).split())
    return {
        "model": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "vector_extensions": [f for f in VECTOR_EXTENSIONS if f in flags],
    }


def gpus() -> list[dict]:
    """Each NVIDIA GPU with its driver, as nvidia-smi reports them (none without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) == 3]


def normalized_name(name: str) -> str:
    """A distribution's name as a lock file spells it (PEP 503): `tensorflow_cpu` -> `tensorflow-cpu`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def packages() -> dict[str, str]:
    """Every installed distribution and its version, by normalized name."""
    found = {normalized_name(dist.metadata["Name"]): dist.version
             for dist in importlib.metadata.distributions() if dist.metadata["Name"]}
    return dict(sorted(found.items()))


#: The packages under test, each spelled as any of its distributions (keras-nightly is keras).
UNDER_TEST = {"keras": ("keras", "keras-nightly"),
              "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly", "tf-nightly-cpu", "tensorflow-intel"),
              "tf-keras": ("tf-keras", "tf-keras-nightly"), "jax": ("jax",), "jaxlib": ("jaxlib",),
              "torch": ("torch",)}


def under_test(installed: dict[str, str]) -> dict[str, str]:
    """Each package under test as installed: 'keras' -> 'keras-nightly 3.16.0.dev2026102704'."""
    found = {}
    for package, names in UNDER_TEST.items():
        for name in names:
            if name in installed:
                found[package] = f"{name} {installed[name]}"
                break
    return found


def what_differs(before: dict[str, str], now: dict[str, str]) -> dict:
    """Between two sets of installed packages: the packages under test that differ ('keras 3.15.1 ->
    keras-nightly 3.16.0.dev...', one package whichever distribution holds it), and the
    incidental ones apart."""
    old, new = under_test(before), under_test(now)
    tested = [f"{old.get(p, p + ' (absent)')} -> {new.get(p, p + ' (absent)')}"
              for p in UNDER_TEST if old.get(p) != new.get(p)]
    names = {n for names in UNDER_TEST.values() for n in names}
    incidental = [f"{name} {before.get(name, '(absent)')} -> {now.get(name, '(absent)')}"
                  for name in sorted(set(before) | set(now))
                  if name not in names and before.get(name) != now.get(name)]
    return {"under_test": tested, "incidental": incidental}


def differs_line(differs: dict) -> str:
    """`what_differs` in one line, the packages under test first."""
    line = "; ".join(differs["under_test"]) or "no package under test differs"
    if differs["incidental"]:
        line += f" (incidental: {', '.join(differs['incidental'])})"
    return line


def describe(kernels: dict[str, dict]) -> dict:
    """`run.machine`: `kernels` is what each worker's backend chose, by worker (`tensorflow-cpu`)."""
    installed = packages()
    listing = "".join(f"{name}=={version}\n" for name, version in installed.items())
    return {
        "cpu": cpu(),
        "gpus": gpus(),
        "kernels": dict(sorted(kernels.items())),
        "overrides": {name: os.environ[name] for name in OVERRIDES if name in os.environ},
        "packages": installed,
        "packages_sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


def of_run(run: dict) -> list[dict]:
    """The machine of a report's run, or of each shard of a merged report, in merge order."""
    if "machine" in run:
        return [run["machine"]]
    return [m for shard in run.get("merged_from", []) for m in of_run(shard.get("run", {}))]


KERNEL_NAMES = {"onednn": "oneDNN", "cpu_capability": "ATen"}


def summary(machine: dict) -> str:
    """One line: 'AMD EPYC, 2 cores (avx, avx2, fma); tensorflow-cpu oneDNN off; torch-cpu ATen AVX2'."""
    parts = [describe_part("cpu", machine)]
    for worker, chosen in machine.get("kernels", {}).items():
        parts += [f"{worker} {KERNEL_NAMES.get(name, name)} "
                  + (("on" if value else "off") if isinstance(value, bool) else str(value))
                  for name, value in chosen.items()]
    parts += [f"{gpu['name']} (driver {gpu['driver']})" for gpu in machine.get("gpus", [])]
    parts += [f"{name}={value}" for name, value in machine.get("overrides", {}).items()]
    return "; ".join(parts)


def differences(before: dict, now: dict) -> list[str]:
    """What differs between two machines, in lines a person reads: CPU, kernels, GPUs,
    overrides and packages (those that changed, appeared or went)."""
    lines = []
    for key, label in (("cpu", "CPU"), ("kernels", "kernels"), ("gpus", "GPUs"), ("overrides", "overrides")):
        if before.get(key) != now.get(key):
            lines.append(f"{label}: {describe_part(key, before)} -> {describe_part(key, now)}")
    differs = what_differs(before.get("packages", {}), now.get("packages", {}))
    if differs["under_test"] or differs["incidental"]:
        lines.append("packages: " + differs_line(differs))
    return lines


def describe_part(key: str, machine: dict) -> str:
    value = machine.get(key)
    if key == "cpu" and value:
        extensions = ", ".join(value.get("vector_extensions", [])) or "no vector extensions"
        return f"{value.get('model')}, {value.get('cores')} cores ({extensions})"
    return str(value if value else "none")
