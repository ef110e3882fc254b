"""Compiled-program caches on disk, shared by a run's workers and kept between runs.

JAX without jit compiles every primitive for every new shape (50-200 ms each on CPU) and
Keras' recurrent layers re-trace their `lax.scan` on every call, so the same program is
compiled many times over a run; torch's inductor compiles C++ per graph. Both backends can
keep what they compiled on disk; the pool points their caches at one folder in pytest's cache
(`.pytest_cache/d/keras-parity-compile`), so a fresh clone or `pytest --cache-clear` starts
cold and a second run is warm. A cell records how many compiles the cache served
(`timings.compile_cache_hits`), since those make its first-call timings cheaper than a cold
compile. TensorFlow has no such cache for its XLA programs.

What is cached is machine code for this CPU's vector extensions, and neither backend keys its
cache on all of them: inductor served AVX2 code to a run under ATEN_CPU_CAPABILITY=default,
which then failed to compile (`'at::vec' has not been declared`). So each instruction set, and
each override of the backends' choice of one, gets a folder of its own: a cache restored on
another machine (CI runners differ) or a run with other overrides starts cold instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

from harness import machine

CACHE_NAME = "keras-parity-compile"
#: The overrides that change the code XLA and inductor generate (oneDNN's are read at run time).
CODEGEN_OVERRIDES = ("XLA_FLAGS", "ATEN_CPU_CAPABILITY")


@functools.cache
def machine_folder() -> str:
    """'x86_64-3f2a9c01d4e7': the architecture, and a digest of the vector extensions and overrides."""
    cpu = machine.cpu()
    overrides = {name: os.environ[name] for name in CODEGEN_OVERRIDES if name in os.environ}
    digest = hashlib.sha256(json.dumps([cpu["vector_extensions"], overrides], sort_keys=True).encode())
    return f"{cpu['arch']}-{digest.hexdigest()[:12]}"


def worker_environment(cache_dir: str | None) -> dict[str, str]:
    """Environment variables that point a worker's backend at this machine's cache folder."""
    if not cache_dir:
        return {}
    cache_dir = os.path.join(cache_dir, machine_folder())
    return {
        "JAX_COMPILATION_CACHE_DIR": os.path.join(cache_dir, "jax"),
        # Every eager primitive is worth keeping: the default keeps only compiles over 1 s. No
        # size limit: with one, jax scans the folder and takes a file lock on every write, which
        # made a cold run of the ops suite 50% slower; `--cache-clear` empties the folder.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache_dir, "torchinductor"),
    }


_jax_hits = 0


def count_hits(backend: str) -> None:
    """In a worker, at start: count the compiles its backend serves from the on-disk cache."""
    if backend == "jax":
        import jax

        jax.monitoring.register_event_listener(_on_jax_event)


def _on_jax_event(event: str, **kwargs) -> None:
    global _jax_hits
    if event == "/jax/compilation_cache/cache_hits":
        _jax_hits += 1


def hits(backend: str) -> int | None:
    """Compiles served from the cache in this process so far (None: the backend has no cache)."""
    if backend == "jax":
        return _jax_hits
    if backend == "torch":
        from torch._dynamo.utils import counters

        return counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
    return None
