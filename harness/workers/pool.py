"""The pool of worker processes, one per (backend, device, environment), owned by the pytest process.

Each worker is `python -m harness.workers` (under the environment's interpreter, for a
`--keras-env` one) in a session of its own (so a kill reaches the
compiler subprocesses it may have started), with its environment set before keras is
imported. The pool queues jobs per worker, sends each worker one job at a time, and watches
every job: past its deadline the worker's process group is killed and the job is a
`timeout`; a worker that dies makes its job a `crash`. Either way the next job of that
worker gets a fresh process, and every other worker keeps going.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Callable

from harness.cells import KERAS2
from harness.workers import compile_cache

START_TIMEOUT_S = 300.0  # importing a backend takes seconds; a loaded CI machine, longer
LOG_TAIL_BYTES = 65536
LOG_TAIL_LINES = 40
LOG_LINE_CHARS = 300  # faulthandler's list of extension modules is one very long line


#: The folder holding the `harness` package: another environment's worker imports this copy of
#: it, so both sides speak the same protocol whatever that environment has installed.
HARNESS_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker_environment(backend: str, device: str, compile_cache_dir: str | None = None,
                       python: str | None = None) -> dict[str, str]:
    """The environment a worker needs before keras is imported."""
    env = dict(os.environ)
    if python is not None:  # another environment: its own packages, this harness
        env.pop("VIRTUAL_ENV", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (HARNESS_ROOT, env.get("PYTHONPATH")) if p)
    for name, value in compile_cache.worker_environment(compile_cache_dir).items():
        env.setdefault(name, value)  # the user's own cache settings win
    env.update(
        KERAS_BACKEND="tensorflow" if backend == KERAS2 else backend,
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",  # a segfault prints the Python stack into the worker's log
        TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        # Not TF_DETERMINISTIC_OPS: under op determinism Keras silently refuses XLA, and the
        # jit cells would test nothing. cuDNN's deterministic algorithms are still asked for.
        TF_CUDNN_DETERMINISTIC="1",
        NVIDIA_TF32_OVERRIDE="0",
        CUBLAS_WORKSPACE_CONFIG=":4096:8",
    )
    if backend == KERAS2:
        env["TF_USE_LEGACY_KERAS"] = "1"  # `tf.keras` is tf-keras' Keras 2
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    if (os.cpu_count() or 1) <= 4:
        # Inductor compiles C++ kernels in a pool of subprocesses; on a small machine whose
        # cores the other workers already use, compiling in-process is faster (measured on
        # 2 cores: a small model's train step compiles in 10 s instead of 12).
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    else:
        env["JAX_PLATFORMS"] = "cuda"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # share the GPU with the other backends
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    return env


@dataclasses.dataclass
class Outcome:
    """How a job ended: `reply` is the worker's answer, or None with `status` and `message`."""

    reply: dict | None = None
    status: str | None = None  # "crash", "timeout", "skip" or "error" when there is no reply
    message: str = ""
    log_tail: str = ""


@dataclasses.dataclass
class Job:
    key: tuple[str, str, str]
    request: dict
    timeout: float
    on_done: Callable[[Outcome], None]


class WorkerProcess:
    """One worker: the subprocess, its two pipes and its log file."""

    def __init__(self, key: tuple[str, str, str], log_dir: str, serial: int, compile_cache_dir: str | None,
                 python: str | None = None):
        backend, device, env = key
        self.key = key
        self.log_path = os.path.join(log_dir, f"{backend}-{device}{'@' + env if env else ''}.{serial}.log")
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "harness.workers", "--backend", backend, "--device", device,
             "--read-fd", str(req_r), "--write-fd", str(rep_w), "--parent-pid", str(os.getpid())],
            # Compiled kernels of one release are not another's: each environment caches its own.
            env=worker_environment(backend, device, compile_cache_dir and env and os.path.join(
                compile_cache_dir, f"env-{env}") or compile_cache_dir, python),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            pass_fds=(req_r, rep_w), start_new_session=True,
        )
        os.close(req_r)
        os.close(rep_w)
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(rep_r, writable=False)
        self.ready = False
        self.info: dict = {}
        self.job: Job | None = None
        self.deadline = time.monotonic() + START_TIMEOUT_S
        self.log_offset = 0

    def send(self, job: Job) -> None:
        self.job = job
        self.log.flush()
        self.log_offset = os.path.getsize(self.log_path)
        self.deadline = time.monotonic() + job.timeout
        self.requests.send_bytes(json.dumps(job.request).encode())

    def receive(self) -> dict:
        return json.loads(self.replies.recv_bytes())

    def log_since_job(self) -> str:
        return self.read_log(self.log_offset)

    def read_log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                size = os.path.getsize(self.log_path)
                f.seek(max(offset, size - LOG_TAIL_BYTES))
                lines = f.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                return "\n".join(line[:LOG_LINE_CHARS] for line in lines)
        except OSError:
            return ""

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            why = " (the kernel's out-of-memory killer sends this)" if code == -signal.SIGKILL else ""
            return f"was killed by {name}{why}"
        return f"exited with code {code}"

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for conn in (self.requests, self.replies):
            conn.close()
        self.log.close()

    def shutdown(self) -> None:
        """Ask politely, then make sure: no worker outlives the pytest process."""
        try:
            self.requests.send_bytes(json.dumps({"type": "shutdown"}).encode())
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class WorkerPool:
    def __init__(self, log_dir: str, compile_cache_dir: str | None = None, envs: dict[str, str] | None = None):
        self.log_dir = log_dir
        self.compile_cache_dir = compile_cache_dir
        self.envs = envs or {}  # environment name -> its Python interpreter
        self.workers: dict[tuple[str, str, str], WorkerProcess] = {}
        # Keys whose backend cannot serve here (no GPU seen, the import fails): the reason.
        self.unavailable: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.started = collections.Counter()
        self.info: dict[tuple[str, str, str], dict] = {}  # what each key's worker reported at start
        os.makedirs(log_dir, exist_ok=True)

    def versions(self, key: tuple[str, str, str]) -> dict:
        """keras' and the backend's versions, as the worker of `key` reported them."""
        info = self.info.get(key)
        return {"keras": info["keras"], "tensorflow" if key[0] == KERAS2 else key[0]: info["version"]} if info else {}

    def packages(self, key: tuple[str, str, str]) -> dict:
        """Every distribution installed where the worker of `key` runs: name -> version."""
        return self.info.get(key, {}).get("packages", {})

    def kernels(self, key: tuple[str, str, str]) -> dict:
        """The kernels `key`'s backend chose on this machine (oneDNN, torch's CPU capability)."""
        return self.info.get(key, {}).get("kernels", {})

    def start(self, key: tuple[str, str, str]) -> WorkerProcess:
        """Start `key`'s worker if it is not running; the backend imports while we go on."""
        worker = self.workers.get(key)
        if worker is None:
            self.started[key] += 1
            worker = self.workers[key] = WorkerProcess(key, self.log_dir, self.started[key],
                                                       self.compile_cache_dir, self.envs.get(key[2]))
        return worker

    def run(self, jobs: list[Job]) -> None:
        """Run jobs to completion: each worker takes its own jobs in order, all side by side."""
        queues: dict[tuple[str, str, str], collections.deque[Job]] = collections.defaultdict(collections.deque)
        for job in jobs:
            queues[job.key].append(job)
        for key in queues:
            if key not in self.unavailable:
                self.start(key)

        while any(queues.values()) or any(w.job for w in self.workers.values()):
            for key, queue in queues.items():
                if key in self.unavailable:
                    status, reason = self.unavailable[key]
                    while queue:
                        queue.popleft().on_done(Outcome(status=status, message=reason))
                    continue
                worker = self.start(key) if queue else self.workers.get(key)
                if worker and worker.ready and worker.job is None and queue:
                    worker.send(queue.popleft())
            self._wait_and_handle()

    def _wait_and_handle(self) -> None:
        watched = [w for w in self.workers.values() if w.job or not w.ready]
        if not watched:
            return
        timeout = max(0.0, min(w.deadline for w in watched) - time.monotonic())
        ready = wait([w.replies for w in watched], timeout=timeout)
        now = time.monotonic()
        for worker in watched:
            if worker.replies in ready:
                self._handle_message(worker)
            elif now >= worker.deadline:
                self._handle_deadline(worker)

    def _handle_message(self, worker: WorkerProcess) -> None:
        try:
            message = worker.receive()
        except (EOFError, OSError):
            self._handle_death(worker)
            return
        if message["type"] == "ready":
            worker.ready = True
            worker.info = self.info[worker.key] = {k: v for k, v in message.items() if k != "type"}
            if not message.get("device_ok"):
                backend, device, _ = worker.key
                self._retire(worker, ("skip", f"{backend} sees no {device.upper()} here "
                                      f"(a CPU-only build, or no driver for it)"))
        elif message["type"] == "fatal":
            self._retire(worker, ("error", f"the {worker.key[0]} worker could not import its "
                                  f"backend: {message['exception']}: {message['message']}"))
        else:
            job, worker.job = worker.job, None
            job.on_done(Outcome(reply=message, log_tail=worker.log_since_job()))

    def _handle_death(self, worker: WorkerProcess) -> None:
        how = worker.exit_description()
        tail = worker.read_log(worker.log_offset if worker.job else 0)
        job = worker.job
        self._discard(worker)
        if job is None:  # died while starting: the backend cannot run here
            self.unavailable[worker.key] = ("crash", f"the {worker.key[0]} worker {how} while "
                                            f"importing its backend")
            return
        job.on_done(Outcome(status="crash", message=f"the {worker.key[0]} worker {how}", log_tail=tail))

    def _handle_deadline(self, worker: WorkerProcess) -> None:
        job = worker.job
        tail = worker.read_log(worker.log_offset if job else 0)
        self._discard(worker)
        if job is None:
            self.unavailable[worker.key] = ("timeout", f"the {worker.key[0]} worker did not start "
                                            f"within {START_TIMEOUT_S:.0f} s")
            return
        job.on_done(Outcome(status="timeout", message=f"no answer within {job.timeout:g} s "
                            f"(--keras-timeout); the worker was killed", log_tail=tail))

    def _retire(self, worker: WorkerProcess, reason: tuple[str, str]) -> None:
        self.unavailable[worker.key] = reason
        self._discard(worker)

    def _discard(self, worker: WorkerProcess) -> None:
        worker.kill()
        if self.workers.get(worker.key) is worker:
            del self.workers[worker.key]

    def shutdown(self) -> None:
        for worker in list(self.workers.values()):
            worker.shutdown()
        self.workers.clear()
