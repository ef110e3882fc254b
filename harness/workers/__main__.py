"""`python -m harness.workers`: a long-lived process that serves cells of one (backend, device).

The pool sets the environment (KERAS_BACKEND, visible devices, determinism flags) before this
process starts, so keras and the backend are imported once, configured, and then serve many
cells. Requests and replies are JSON frames on two pipes inherited from the pytest process;
stdout and stderr go to the worker's log file, so user code may print freely.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection

from harness import machine
from harness.cells import KERAS2
from harness.workers import compile_cache


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the pytest process dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def configure_backend(backend: str, device: str) -> dict:
    """Import keras and the backend, switch off TF32 and non-determinism, report the devices."""
    if backend == KERAS2:
        return configure_keras2(device)
    import keras

    info = {"keras": keras.__version__, "backend": keras.backend.backend(), "packages": machine.packages()}
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:  # three backends share one GPU: grow memory, never grab it all
            tf.config.experimental.set_memory_growth(gpu, True)
        info.update(version=tf.__version__, gpus=[g.name for g in gpus], kernels={"onednn": onednn_enabled()})
    elif backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        info.update(version=jax.__version__,
                    gpus=[str(d) for d in jax.devices() if d.platform == "gpu"] if device == "gpu" else [])
    else:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info.update(version=torch.__version__, gpus=gpus,
                    kernels={"cpu_capability": torch.backends.cpu.get_cpu_capability()})
    compile_cache.count_hits(backend)
    info["device_ok"] = device == "cpu" or bool(info["gpus"])
    if info["device_ok"]:
        warm_up()
    return info


def configure_keras2(device: str) -> dict:
    """A Keras 2 worker: TensorFlow with `tf.keras` as tf-keras (TF_USE_LEGACY_KERAS=1, set by
    the pool); Keras 3 is not imported here."""
    import tensorflow as tf
    import tf_keras

    if not tf.keras.__name__.startswith("tf_keras"):
        raise RuntimeError(f"tf.keras is {tf.keras.__name__}, not tf-keras' Keras 2: TF_USE_LEGACY_KERAS=1 "
                           f"was set too late or tf-keras does not match TensorFlow {tf.__version__}")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    info = {"keras": tf_keras.__version__, "backend": "tensorflow", "packages": machine.packages(),
            "version": tf.__version__, "gpus": [g.name for g in gpus], "kernels": {"onednn": onednn_enabled()}}
    info["device_ok"] = device == "cpu" or bool(gpus)
    if info["device_ok"]:
        tf.keras.layers.Dense(2)(tf.ones((1, 2)))  # the runtime's first-use costs, before the first cell
        tf.keras.backend.clear_session()
    return info


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels: on by default only on CPUs with AVX512_VNNI,
    AVX512_BF16, AVX_VNNI or AMX, or as TF_ENABLE_ONEDNN_OPTS says (see harness.machine)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a private module: a release that moves it leaves the fact unknown
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def warm_up() -> None:
    """Pay the backend's first-use costs (lazy imports, runtime start) before the first cell,
    so they count against start-up, not against that cell's timeout and timings."""
    import keras
    import numpy as np

    layer = keras.layers.Dense(2)
    keras.ops.convert_to_numpy(layer(np.ones((1, 2), "float32")))
    keras.backend.clear_session()


def send(conn: Connection, message: dict) -> None:
    conn.send_bytes(json.dumps(message).encode())


def serve(conn_in: Connection, conn_out: Connection, backend: str, device: str) -> None:
    if backend == KERAS2:
        return serve_keras2(conn_in, conn_out, device)
    from harness.arbiter import run as arbiter
    from harness.localize import run as localize
    from harness.checks.export import reload_exports
    from harness.checks.save import load_saved_models
    from harness.workers.runner import CellRun

    while True:
        try:
            request = json.loads(conn_in.recv_bytes())
        except EOFError:
            return  # the pytest process closed the pipe: shut down
        if request["type"] == "shutdown":
            return
        if request["type"] == "run_cell":
            reply = CellRun(request, backend, device).run()
        elif request["type"] == "load_saved":
            reply = load_saved_models(request)
        elif request["type"] == "reload_exports":
            reply = reload_exports(request)
        elif request["type"] == "localize":
            reply = localize.serve(request, backend)
        elif request["type"] == "arbitrate":
            reply = arbiter.serve(request, backend)
        else:
            reply = {"type": "error", "message": f"unknown request {request['type']!r}"}
        send(conn_out, reply)


def serve_keras2(conn_in: Connection, conn_out: Connection, device: str) -> None:
    """A Keras 2 worker runs its cells (`harness.keras2.cell`); what reads Keras 3 files or runs
    Keras 3 code (file round trips, the float64 arbiter, the localization) is not asked of it."""
    from harness.keras2.cell import Keras2CellRun

    while True:
        try:
            request = json.loads(conn_in.recv_bytes())
        except EOFError:
            return
        if request["type"] == "shutdown":
            return
        if request["type"] == "run_cell":
            reply = Keras2CellRun(request, device).run()
        else:
            reply = {"type": "error", "error": f"a Keras 2 worker does not serve {request['type']!r} requests",
                     "message": f"a Keras 2 worker does not serve {request['type']!r} requests"}
        send(conn_out, reply)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.workers")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--read-fd", type=int, required=True)
    parser.add_argument("--write-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)

    conn_in = Connection(args.read_fd, writable=False)
    conn_out = Connection(args.write_fd, readable=False)
    try:
        info = configure_backend(args.backend, args.device)
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not hidden
        send(conn_out, {"type": "fatal", "exception": type(exc).__name__, "message": str(exc),
                        "traceback": traceback.format_exc()})
        return 1
    send(conn_out, {"type": "ready", "pid": os.getpid(), **info})
    serve(conn_in, conn_out, args.backend, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
