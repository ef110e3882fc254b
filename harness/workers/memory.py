"""Memory figures for the `timings` of a cell, measured inside the worker.

Host memory is the worker's peak resident set (`ru_maxrss`): a worker serves many cells, so
it is the peak of this worker so far, which is what sizing a CI machine needs. GPU memory is
the backend allocator's peak during this cell, reset before the cell starts.
"""

from __future__ import annotations

import resource

MB = 1024 * 1024


def host_peak_mb() -> float:
    # Linux reports KiB, and refreshes the high-water mark lazily: it can trail the current RSS.
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, host_current_mb())


def host_current_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / MB


def reset_gpu_peak(backend: str) -> None:
    if backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    # JAX has no reset: its peak is the process's, reported as such.


def gpu_peak_mb(backend: str) -> float | None:
    """The allocator's peak bytes on the first GPU, or None where the backend cannot say."""
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / MB
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / MB
    import jax

    stats = jax.devices("gpu")[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / MB
