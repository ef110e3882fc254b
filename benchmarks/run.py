"""keras-parity's own performance, printed as figures (`make bench`).

1. Harness overhead per cell: a warm jax worker runs a trivial case (identity function, build
   and outputs checks) again and again; overhead = the controller's wall time per cell minus
   the time the worker spent in the case itself. Goal: median under 20 ms.
2. A run of N small cases on the three backends (jit off) through `pytest`, against the same
   work done bare: one plain Python process per backend, in sequence, that imports keras,
   builds each model and predicts. Goal: at most 1.1x; under 1.0x as backends run side by side.
3. Weights of a 100 MB model moved to a worker: the reference side writes the `.npz`, a
   separate process reads it. Goal: 500 MB/s or more.

4. False alarms of the comparison of laws: a backend's random outputs compared with the same
   backend's, many times. The outputs are a VAE's as keras-io writes it (8 latent normals,
   decoded to 512 values): the values of one call are not independent draws. Printed: how
   often keras-parity's test (each call's statistics over 64 calls per side) flags a backend
   against itself, at the stated rate and two higher ones, and how often a KS test on the
   pooled values of one call does. Goal: at or under the stated rate.

5. The cost of localizing a divergence: a 12-layer convnet whose bicubic `Resizing` makes JAX's
   and torch's outputs mismatch, run in a warm session with the localization and without it
   (TensorFlow the reference; jit off, and JAX with jit). Printed: the case's extra wall time,
   and per mismatching cell the tapped run against the cell's own first inference, the layer
   alone, and the reproducer (written, then checked in a fresh process). Goal: the tapped runs
   cost at most two inferences per cell; the reproducer's fresh process comes on top.

6. False alarms of the float64 arbiter: real models (keras-io's small Xception, keras.applications'
   MobileNetV3Small and MobileNetV2 at 32x32) trained 4 steps on a batch of 2, each backend
   against itself: correct float32 runs (from other one-ulp nudges of the weights and inputs, or
   with the backend's other kernels) judged as cells against that backend's plain run, its
   round-off band and its float64 run. Printed: how many correct runs it flags. Goal: none.

Every figure is the median of several runs; ratios are given where machine noise matters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from harness import arrays  # noqa: E402
from harness.cells import Cell, plan_cells  # noqa: E402
from harness.session import CaseRef, ParitySession  # noqa: E402


def overhead_per_cell(repeats: int) -> list[float]:
    import cases

    plan = plan_cells("jax", "cpu", "off", None)
    cell = Cell.parse("jax-cpu-nojit")
    with tempfile.TemporaryDirectory() as logs:
        session = ParitySession(plan, timeout=60, log_dir=logs)
        try:
            session.record(cases.trivial, CaseRef.from_module("warm::trivial", cases, "trivial"), cell, {cell})
            overheads = []
            for i in range(repeats):
                ref = CaseRef.from_module(f"bench{i}::trivial", cases, "trivial")
                t0 = time.perf_counter()
                record = session.record(cases.trivial, ref, cell, {cell})
                wall = time.perf_counter() - t0
                assert record["status"] == "pass", record
                in_case = record["timings"]["build_s"] + record["timings"]["predict_first_s"]
                overheads.append(wall - in_case)
        finally:
            session.close()
    return overheads


BARE = r'''
import os, sys, time
sys.path.insert(0, {here!r})
import keras, numpy as np
import cases
for factory in cases.SMALL_FACTORIES:
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    spec = cases.SMALL_INPUTS[factory.__name__]
    x = np.random.default_rng(0).normal(size=spec.shape).astype("float32")
    model = factory()
    model(x)
    model.compile(jit_compile=False)
    model.predict_on_batch(x)
'''


def bare_sequential() -> float:
    t0 = time.perf_counter()
    for backend in ("tensorflow", "jax", "torch"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        subprocess.run([sys.executable, "-c", BARE.format(here=HERE)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def harness_run(folder: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--keras-backends=all", "--keras-jit=off", "test_bench_cases.py"],
                          cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the harness run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall


READ_IN_WORKER = (
    "import sys, time; sys.path.insert(0, sys.argv[2]); import numpy as np; from harness import arrays; "
    "t = time.perf_counter(); w = arrays.load_weights(sys.argv[1]); mapped = time.perf_counter() - t; "
    "copies = {k: np.array(v) for k, v in w.items()}; copied = time.perf_counter() - t; "
    "print(mapped, copied, sum(a.nbytes for a in copies.values()))")


def weights_throughput(megabytes: int) -> tuple[float, float]:
    """MB/s for a weights file written here and read in another process: as mapped arrays, and
    with every byte copied once into the reader's memory (what assigning to variables costs)."""
    weights = {f"model/layer_{i}/kernel": np.random.default_rng(i).random((1024, 1024), dtype=np.float32)
               for i in range(megabytes * 1024 * 1024 // (4 * 1024 * 1024))}
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = tempfile.mkdtemp(dir=shm)
    path = os.path.join(folder, "w.npz")
    try:
        t0 = time.perf_counter()
        arrays.save_weights(path, weights)
        write = time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-c", READ_IN_WORKER, path, os.path.dirname(HERE)],
                             capture_output=True, text=True, check=True).stdout.split()
        mapped, copied, nbytes = float(out[0]), float(out[1]), int(out[2])
        return nbytes / 1e6 / (write + mapped), nbytes / 1e6 / (write + copied)
    finally:
        shutil.rmtree(folder)


def print_overhead(args) -> None:
    overheads = overhead_per_cell(30)
    print(f"harness overhead per cell (trivial case, warm jax worker, 30 cells): "
          f"median {1000 * statistics.median(overheads):.1f} ms, "
          f"p90 {1000 * sorted(overheads)[26]:.1f} ms  (goal < 20 ms)")


def print_wall(args) -> None:
    folder = tempfile.mkdtemp()
    shutil.copy(os.path.join(HERE, "cases.py"), os.path.join(folder, "test_bench_cases.py"))
    try:
        walls, bares = [], []
        for _ in range(args.repeats):
            bares.append(bare_sequential())
            walls.append(harness_run(folder))
    finally:
        shutil.rmtree(folder)
    ratios = [w / b for w, b in zip(walls, bares)]
    print(f"8 small cases x 3 backends (jit off): harness {statistics.median(walls):.1f} s, bare "
          f"sequential {statistics.median(bares):.1f} s; ratio median {statistics.median(ratios):.2f} "
          f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}; goal <= 1.1, < 1.0 side by side)")


def print_weights(args) -> None:
    mapped, copied = zip(*[weights_throughput(100) for _ in range(5)])
    print(f"100 MB of weights to another process: median {statistics.median(mapped):.0f} MB/s as "
          f"mapped arrays (runs: {', '.join(f'{r:.0f}' for r in mapped)}), "
          f"{statistics.median(copied):.0f} MB/s with every byte copied into the worker "
          f"(runs: {', '.join(f'{r:.0f}' for r in copied)}); goal >= 500 MB/s")


LATENT, DECODED = 8, 512


def vae_draws(backend: str, calls: int) -> np.ndarray:
    """`calls` independent calls of a VAE-like sampler under `backend`, drawn by the backend's
    own RNG (in a process of that backend): each call's 512 outputs, as float32."""
    script = f"""
import sys, numpy as np, keras
seed = keras.random.SeedGenerator(1337)
z = keras.ops.convert_to_numpy(keras.random.normal(({calls}, {LATENT}), seed=seed))
w = np.random.default_rng(0).normal(size=({LATENT}, {DECODED})).astype("float32")
np.save(sys.argv[1], np.tanh(z @ w).astype("float32"))
"""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "draws.npy")
        subprocess.run([sys.executable, "-c", script, path], check=True, capture_output=True,
                       env={**os.environ, "KERAS_BACKEND": backend})
        return np.load(path)


def print_false_alarms(args) -> None:
    from harness import cells, compare

    trials, k = args.law_trials, compare.LAW_CALLS
    for backend in cells.installed_backends():
        draws = vae_draws(backend, trials * 2 * k)
        stats = np.stack([compare.draw_statistics(call) for call in draws]).reshape(trials, 2, k, -1)
        flagged = {alpha: sum(compare.compare_draws("out", t[0], t[1], alpha)["status"] != "pass" for t in stats)
                   for alpha in (compare.LAW_ALPHA, 0.01, 0.05)}
        pooled = draws.reshape(trials, 2, k, DECODED)[:, :, 0]  # one call per side, its 512 values
        old = sum(compare.compare_laws("out", t[0], t[1])["status"] != "pass" for t in pooled)
        upper = 3 / trials if flagged[compare.LAW_ALPHA] == 0 else None
        print(f"{backend} against itself, {trials} comparisons of {k} VAE calls per side: flagged "
              f"{flagged[compare.LAW_ALPHA]} at the stated {compare.LAW_ALPHA:g}"
              + (f" (rate under {upper:.0e}, 95%)" if upper else f" (rate {flagged[compare.LAW_ALPHA] / trials:.1e})")
              + f", {flagged[0.01] / trials:.2%} at 0.01, {flagged[0.05] / trials:.2%} at 0.05; a KS test "
              f"on one call's pooled values: {old / trials:.1%} at {compare.LAW_ALPHA:g} (goal: at or under "
              f"the stated rate)")


def localize_run(localize: bool, repeat: int) -> tuple[float, dict[str, dict]]:
    """The bicubic convnet in a session whose workers are warm (a first case ran): its wall
    time, and each cell's timings."""
    import cases

    plan = plan_cells("all", "cpu", "both", None)
    wanted = {Cell.parse(c) for c in ("tensorflow-cpu-nojit", "jax-cpu-nojit", "jax-cpu-jit", "torch-cpu-nojit")}
    with tempfile.TemporaryDirectory() as folder:
        session = ParitySession(plan, timeout=300, log_dir=folder, report_dir=folder)
        if not localize:
            session.localize = lambda *args: None
        try:
            session.record(cases.mlp_8, CaseRef.from_module("warm::mlp_8", cases, "mlp_8"), min(wanted), wanted)
            ref = CaseRef.from_module(f"bench{repeat}::convnet_bicubic", cases, "convnet_bicubic")
            t0 = time.perf_counter()
            records = {c.id: session.record(cases.convnet_bicubic, ref, c, wanted) for c in sorted(wanted)}
            return time.perf_counter() - t0, {k: r["timings"] for k, r in records.items()}
        finally:
            session.close()


def print_localize(args) -> None:
    runs = {flag: [localize_run(flag, i) for i in range(args.repeats)] for flag in (True, False)}
    walls = {flag: [wall for wall, _ in found] for flag, found in runs.items()}
    extra = statistics.median(walls[True]) - statistics.median(walls[False])
    print(f"localizing a 12-layer convnet's divergence in 3 mismatching cells: the case takes "
          f"{statistics.median(walls[True]):.1f} s with it, {statistics.median(walls[False]):.1f} s without "
          f"(medians of {args.repeats}): {extra:.1f} s more")
    timings = [t for _, t in runs[True]]

    def median(cell, key):
        values = [t[cell].get(key) for t in timings if t[cell].get(key) is not None]
        return statistics.median(values) if values else float("nan")

    for cell, prefix in (("tensorflow-cpu-nojit", "localize_reference_"), ("jax-cpu-nojit", "localize_"),
                         ("jax-cpu-jit", "localize_"), ("torch-cpu-nojit", "localize_")):
        taps, first = median(cell, prefix + "taps_s"), median(cell, "predict_first_s")
        line = (f"  {cell}{' (the reference, once per case)' if 'reference' in prefix else ''}: the model "
                f"rebuilt with the weights {median(cell, prefix + 'setup_s') * 1000:.0f} ms (the cell's own build "
                f"{median(cell, 'build_s') * 1000:.0f} ms), the tapped run {taps * 1000:.0f} ms (the cell's own "
                f"first inference {first * 1000:.0f} ms: ratio {taps / first:.2f})")
        if "reference" not in prefix:
            line += (f", the layer alone {median(cell, 'localize_local_s') * 1000:.0f} ms, the reproducer "
                     f"{median(cell, 'localize_reproducer_s'):.1f} s")
        print(line)


#: A backend's other kernels, for a correct float32 run that is not the reference's: TensorFlow
#: with oneDNN flipped, XLA (JAX) for SSE4.2 without FMA, ATen's scalar code (torch).
OTHER_KERNELS = {"tensorflow": {"TF_ENABLE_ONEDNN_OPTS": None},
                 "jax": {"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"},
                 "torch": {"ATEN_CPU_CAPABILITY": "default"}}
ARBITER_SCRIPT = """
import json, sys
from harness.arbiter.run import ArbiterRuns
request, float64, nudged = json.loads(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
runs = ArbiterRuns(request, sys.argv[4])
found = {"float32": runs.float32(), "nudged": [runs.float32(nudged=i) for i in range(nudged)]}
if float64:
    found.update(runs.float64())
print(json.dumps(found))
"""


def arbiter_runs(case_ref, folder: str, backend: str, env: dict, float64: bool, nudged: int) -> dict:
    """The train check's computation of a case in a process of `backend` (with `env`): float32 as
    given, float32 from `nudged` one-ulp nudges, and float64 where asked."""
    out_dir = os.path.join(folder, f"{backend}-{len(os.listdir(folder))}")
    os.makedirs(out_dir)
    request = {"case": dataclasses.asdict(case_ref), "inputs": os.path.join(folder, "inputs.npz"),
               "targets": os.path.join(folder, "targets.npz"), "weights": os.path.join(folder, "weights.npz"),
               "seed": 7, "check": "train", "cell": f"{backend}-cpu-nojit", "out_dir": out_dir}
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", **env}
    done = subprocess.run([sys.executable, "-c", ARBITER_SCRIPT, json.dumps(request), "1" if float64 else "0",
                           str(nudged), backend], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def other_kernels(backend: str) -> dict:
    """The variables that give `backend` kernels other than the ones this machine picks."""
    env = dict(OTHER_KERNELS[backend])
    if backend == "tensorflow":  # oneDNN is on by default with these (TensorFlow's DefaultOneDnnPolicy)
        from harness import machine

        on = bool({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"} & set(machine.cpu()["vector_extensions"]))
        env["TF_ENABLE_ONEDNN_OPTS"] = "0" if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1" if on else "0") == "1" else "1"
    return env


def print_arbiter(args) -> None:
    """The float64 arbiter's false alarms: a correct float32 run (the same backend from other
    one-ulp nudges, or with its other kernels) judged as a cell against the reference (that
    backend's plain float32 run) and its round-off band, with two other runs of its own kernels
    as its nudged runs, over 4 training steps of real models."""
    import cases

    from harness import arrays, cells, compare
    from harness.arbiter import verdict
    from harness.checks.train import judge_steps

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "suites", "examples"))
    import test_keras_io_examples as examples

    models = [(examples, "xception_small"), (cases, "mobilenet_v3_small"), (cases, "mobilenet_v2")]
    for module, name in models:
        case = getattr(module, name)
        case_ref = CaseRef.from_module(f"bench::{name}", module, name)
        with tempfile.TemporaryDirectory() as folder:
            seed = case.seed(case_ref.id)
            arrays.save_tree(os.path.join(folder, "inputs.npz"), case.make_inputs(seed))
            # The initial weights, and targets shaped like the outputs where the case gives none.
            weights_script = ("import sys, numpy as np, keras; from harness.calls import *; from harness import arrays\n"
                              f"sys.path.insert(0, {os.path.dirname(module.__file__)!r}); import {module.__name__} as m\n"
                              f"obj = make_object(m.{name}, 7); x = arrays.load_tree(sys.argv[1]); build_object(obj, kind_of(obj), x)\n"
                              "arrays.save_weights(sys.argv[2], weights_by_key(obj.weights))\n"
                              "out = keras.ops.convert_to_numpy(obj(x))\n"
                              "arrays.save_tree(sys.argv[3], np.random.default_rng(8).normal(size=out.shape).astype('float32'))")
            subprocess.run([sys.executable, "-c", weights_script, os.path.join(folder, "inputs.npz"),
                            os.path.join(folder, "weights.npz"), os.path.join(folder, "targets.npz")],
                           check=True, capture_output=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
            if case.targets is not None:
                arrays.save_tree(os.path.join(folder, "targets.npz"), case.make_targets(seed))
            for backend in cells.installed_backends():
                band = verdict.NUDGED_RUNS + verdict.MORE_NUDGED_RUNS
                base = arbiter_runs(case_ref, folder, backend, {}, True, band + args.arbiter_cells)
                other = arbiter_runs(case_ref, folder, backend, other_kernels(backend), False, args.arbiter_cells)
                load = arrays.load_weights
                ref, truth = load(base["float32"]), load(base["float64_file"])
                samples = [load(p) for p in base["nudged"][:band]]
                judged = {"nudged": base["nudged"][band:], "other kernels": [other["float32"]] + other["nudged"]}
                counts, beyond, chaotic, flagged = {}, 0, 0, []
                for kind, paths in judged.items():
                    counts[kind] = 0
                    runs = [load(p) for p in paths]
                    for i, run in enumerate(runs):
                        # the run's own backend's nudged runs: two others of the same kernels
                        own = [runs[(i + k) % len(runs)] for k in range(1, verdict.NUDGED_RUNS + 1)]
                        # as the harness does: the first band, then, where a value is beyond it, the wider one
                        values, first = judge_steps(ref, run, truth, samples[:verdict.NUDGED_RUNS], None, None, None)
                        if first:
                            values, first = judge_steps(ref, run, truth, samples, None, None, None, own)
                        beyond += len(values)
                        chaotic += sum(v[3].why == "roundoff_dominated" for v in values)
                        if first:
                            counts[kind] += 1
                            flagged.append(f"step {first['step']} {first['quantity']} {first['variable']}: "
                                           f"{first['float64']['error']:.3g} against a band of {first['float64']['band']:.3g}")
                total = sum(len(p) for p in judged.values())
                print(f"{name} under {backend} ({'float64 held' if base['held'] else 'float64 narrowed'}): "
                      f"{sum(counts.values())} of {total} correct runs flagged ("
                      + ", ".join(f"{n} of {len(judged[k])} {k}" for k, n in counts.items())
                      + f"); {beyond} values beyond the plain tolerance, {chaotic} of them dominated by round-off"
                      + (f"; flagged: {'; '.join(flagged[:3])}" if flagged else ""))


BENCHMARKS = {"overhead": print_overhead, "wall": print_wall, "weights": print_weights,
              "false_alarms": print_false_alarms, "localize": print_localize, "arbiter": print_arbiter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the wall-time comparison")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    parser.add_argument("--law-trials", type=int, default=10000,
                        help="comparisons of a backend with itself in the false-alarm benchmark")
    parser.add_argument("--arbiter-cells", type=int, default=4,
                        help="correct float32 runs per backend and model judged by the float64 arbiter")
    args = parser.parse_args()
    for name, bench in BENCHMARKS.items():
        if args.only in (None, name):
            bench(args)


if __name__ == "__main__":
    main()
