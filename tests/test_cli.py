"""Options, usage errors, skips, selection (-k, --lf, -x), timeouts, Ctrl-C and pytest-xdist,
each through a real pytest run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import harness.cells
from tests.conftest import requires_all_backends

TWO_CASES = '''
import harness

@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def dense():
    import keras
    return keras.layers.Dense(2)

@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def relu():
    import keras
    return lambda x: keras.ops.relu(x)
'''


def test_options_are_listed_in_help(parity):
    run = parity(TWO_CASES, "--help")
    for flag in ("--keras-backends", "--keras-devices", "--keras-jit", "--keras-reference",
                 "--keras-report-dir", "--keras-timeout", "--keras-checks"):
        assert flag in run.output
    assert "keras_backends" in run.output  # the ini key


@pytest.mark.parametrize("args, message", [
    (["--keras-backends=tensorflow,mxnet"], "unknown backend(s) mxnet"),
    (["--keras-devices=tpu"], "unknown device(s) tpu"),
    (["--keras-jit=maybe"], "is not one of both, on, off"),
    (["--keras-reference=torch-cpu"], "'torch-cpu' is not a cell"),
    (["--keras-timeout=-3"], "not a positive number"),
    (["--keras-checks=outputs,speed"], "unknown check(s) speed"),
])
def test_a_bad_option_stops_the_run_with_a_usage_error(parity, args, message):
    run = parity(TWO_CASES, *args)
    assert run.returncode == 4, run.output
    assert message in run.output
    assert not (run.path / "reports" / "workers").exists()  # nothing ran


def test_a_run_without_cases_leaves_earlier_reports_alone(parity):
    run = parity({"test_plain.py": "def test_plain():\n    assert True\n"})
    assert run.returncode == 0, run.output
    assert not (run.path / "reports").exists()
    (run.path / "reports").mkdir()
    (run.path / "reports" / "results.jsonl").write_text('{"earlier": "run"}\n')
    run = parity({}, "-k", "plain")
    assert run.returncode == 0, run.output
    assert (run.path / "reports" / "results.jsonl").read_text() == '{"earlier": "run"}\n'


@pytest.mark.skipif("jax" not in harness.cells.installed_backends(), reason="needs jax")
def test_compiled_programs_are_kept_in_pytests_cache_between_runs(parity):
    args = ("--keras-backends=jax", "--keras-jit=off")

    def cache_hits(run):
        assert run.returncode == 0, run.output[-3000:]
        return run.cell("dense", "jax-cpu-nojit")["timings"]["compile_cache_hits"]

    first = parity(TWO_CASES, *args)
    cold = cache_hits(first)
    cache = first.path / ".pytest_cache" / "d" / "keras-parity-compile"
    (machine_folder,) = cache.iterdir()  # machine code for this CPU's vector extensions
    assert any((machine_folder / "jax").iterdir()), "jax wrote no compiled program to the cache"
    # Without jit, JAX compiles every primitive of the Dense layer: the second run loads them.
    warm = cache_hits(parity(TWO_CASES, *args))
    assert warm > cold, (cold, warm)
    # Code for another instruction set is never served: that run has a folder of its own.
    assert cache_hits(parity(TWO_CASES, *args, env={"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"})) < warm
    assert len(list(cache.iterdir())) == 2
    assert cache_hits(parity(TWO_CASES, *args, "--cache-clear")) < warm


@pytest.mark.parametrize("declaration, message", [
    ('xfail={"torch-jit": "typo"}', "'torch-jit' matches no cell"),
    # every other cell loads the reference's weights and is compared with it
    ('skip={"jax-*-nojit": "too slow"}',
     "test_cases.py::case: its skip patterns match the reference cell jax-cpu-nojit ('too slow')"),
])
def test_a_bad_declaration_is_reported_at_collection(parity, declaration, message):
    run = parity(f'''
import harness

@harness.parity_case(inputs=harness.spec((2,)), {declaration})
def case():
    return lambda x: x
''', "--keras-backends=jax", "--collect-only")
    assert run.returncode != 0
    assert message in run.output


def test_ini_keys_set_the_options(parity, tmp_path):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nkeras_backends = jax\nkeras_jit = off\nkeras_report_dir = out\nkeras_checks = outputs\n")
    run = parity(TWO_CASES)
    assert run.returncode == 0, run.output
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert {c["cell"] for c in report["cells"]} == {"jax-cpu-nojit"}
    assert {tuple(c["checks"]) for c in report["cells"]} == {("outputs",)}
    assert report["run"]["reference"] == "jax-cpu-nojit"


def test_gpu_cells_skip_with_the_reason_on_a_machine_without_one(parity):
    import harness.cells

    if harness.cells.machine_has_gpu():
        pytest.skip("this machine has a GPU")
    run = parity(TWO_CASES, "--keras-backends=jax,torch", "--keras-devices=cpu,gpu", "--keras-jit=off", "-rs")
    assert run.returncode == 0, run.output
    outcomes = run.outcomes()
    assert outcomes["dense[jax-gpu-nojit]"] == "skipped"
    assert outcomes["dense[jax-cpu-nojit]"] == "passed"
    assert "no GPU on this machine" in run.output
    record = run.cell("dense", "torch-gpu-nojit")
    assert record["status"] == "skip" and "no GPU" in record["skip_reason"]


def test_k_selects_cells_and_lf_reruns_only_failures(parity, tmp_path):
    source = TWO_CASES + '''
@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def broken():
    raise ValueError("always")
'''
    run = parity(source, "--keras-backends=jax,torch", "--keras-jit=off", "-k", "dense and torch")
    assert run.outcomes() == {"dense[torch-cpu-nojit]": "passed"}
    assert [c["cell"] for c in run.report["cells"]] == ["torch-cpu-nojit"]

    run = parity(source, "--keras-backends=jax,torch", "--keras-jit=off")
    assert run.returncode == 1
    run = parity(source, "--keras-backends=jax,torch", "--keras-jit=off", "--lf")
    assert set(run.outcomes()) == {"broken[jax-cpu-nojit]", "broken[torch-cpu-nojit]"}

    run = parity(source, "--keras-backends=jax,torch", "--keras-jit=off", "-x", "-p", "no:cacheprovider")
    assert sum(o == "failed" for o in run.outcomes().values()) == 1


def test_a_cell_past_the_timeout_is_killed_and_the_run_goes_on(parity):
    run = parity('''
import time
import harness

@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def sleeps():
    time.sleep(120)

@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def quick():  # one op: well inside the timeout even on a loaded machine
    import keras
    return lambda x: keras.ops.add(x, 1.0)
''', "--keras-backends=jax", "--keras-jit=off", "--keras-timeout=10")
    record = run.cell("sleeps", "jax-cpu-nojit")
    assert record["status"] == "timeout"
    assert "10 s" in record["failure"]["message"] and "--keras-timeout" in record["failure"]["hint"]
    assert run.cell("quick", "jax-cpu-nojit")["status"] == "pass"


def worker_pids(parent_pid: int) -> list[int]:
    """Live `harness.workers` processes started by `parent_pid` (their command line says so)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"harness.workers" in argv and str(parent_pid).encode() in argv and state != "Z":
            pids.append(int(entry))
    return pids


def test_ctrl_c_leaves_no_worker_and_keeps_the_results(tmp_path):
    (tmp_path / "test_cases.py").write_text(TWO_CASES + '''
@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def zz_hangs():
    import time
    time.sleep(600)
''')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "KERAS_"))}
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored: give the run the default handler, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "--keras-backends=jax,torch", "--keras-jit=off"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = tmp_path / "reports" / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = results.read_text().splitlines() if results.exists() else []
        if len(done) >= 4 and len(worker_pids(proc.pid)) == 2:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the run did not get going: {proc.communicate()[0].decode()[-2000:]}")
    time.sleep(1)  # the hanging cell is now running in its workers
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 2, output  # pytest's "interrupted"
    assert "KeyboardInterrupt" in output
    assert worker_pids(proc.pid) == []
    kept = [json.loads(line) for line in results.read_text().splitlines()]
    assert {(r["case"].split("::")[1], r["status"]) for r in kept} >= {("dense", "pass"), ("relu", "pass")}


@requires_all_backends
def test_xdist_gives_the_same_cells_and_statuses_as_a_plain_run(parity, tmp_path):
    built = tmp_path / "built.txt"  # each cell's worker appends the case it builds
    source = TWO_CASES + f'''
@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def broken():
    raise ValueError("always")

@harness.parity_case(inputs=harness.spec((2, 3)), checks=["build", "outputs"])
def counted():
    import keras
    with open({str(built)!r}, "a") as log:
        log.write("counted\\n")
    return keras.layers.Dense(2)

@harness.parity_case(inputs=lambda rng, units: rng.normal(size=(2, units)).astype("float32"),
                     checks=["build", "outputs"], params={{"two": {{"units": 2}}, "four": {{"units": 4}}}})
def zoo(units):
    import keras
    with open({str(built)!r}, "a") as log:
        log.write(f"zoo{{units}}\\n")
    return keras.layers.Dense(units)
'''
    run = parity(source, "--keras-jit=off", "-p", "no:cacheprovider")
    plain = run.statuses()
    assert sorted(built.read_text().split()) == ["counted"] * 3 + ["zoo2"] * 3 + ["zoo4"] * 3
    assert {"zoo[two-jax-cpu-nojit]", "zoo[four-torch-cpu-nojit]"} <= set(run.outcomes())
    assert run.cell("zoo[four]", "torch-cpu-nojit")["checks"]["build"]["status"] == "pass"
    built.unlink()
    distributed = parity(source, "--keras-jit=off", "-n", "2", "-p", "no:cacheprovider")
    assert distributed.statuses() == plain
    assert len(plain) == 18
    assert sorted(o for o in distributed.outcomes().values()) == ["failed"] * 3 + ["passed"] * 15
    # all cells of a case run on one xdist worker: a case split across two would run twice
    assert sorted(built.read_text().split()) == ["counted"] * 3 + ["zoo2"] * 3 + ["zoo4"] * 3
    # two pools, two sets of worker logs: neither pool reads the other's log as its own
    folders = {p.parent.name for p in (distributed.path / "reports" / "workers").glob("*/*.log")}
    assert folders and folders <= {"gw0", "gw1"}, folders
