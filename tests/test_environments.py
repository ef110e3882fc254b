"""Two real environments: the main `.venv` (keras 3.15.1) and one `make env` makes with keras 3.12.0.

What changed between them, as plain scripts confirm it (outside these tests):
- keras 3.12.0's torch backend computes `Conv2DTranspose(strides=2, padding="same")` otherwise than
  TensorFlow and JAX (max abs err 12.8 on unit weights), which 3.15.1 fixed: the keras-io denoising
  autoencoder's torch outputs move between the releases, its TensorFlow outputs do not;
- a `.keras` file written by 3.15.1 does not load under 3.12.0 (`GlorotUniform.__init__() got an
  unexpected keyword argument 'input_axes'`), while 3.12.0's files load under 3.15.1;
- the optimizer's variables are named `SGD/...` under 3.12.0 and `sgd/...` under 3.15.1.

The second environment is built once (`make env`, about a minute) and kept between test runs.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_all_backends, run_pytest, write_module

ROOT = Path(__file__).resolve().parent.parent
ENV_NAME = "keras312"
ENV_KERAS = "3.12.0"
ENV_PYTHON = ROOT / f".venv-{ENV_NAME}" / "bin" / "python"
ENV_CELLS = ("--keras-backends=tensorflow,torch", "--keras-jit=off")

CASES = '''
import harness


@harness.parity_case(
    inputs=lambda rng: rng.uniform(0, 1, size=(2, 28, 28, 1)).astype("float32"),
    targets=lambda rng: rng.uniform(0, 1, size=(2, 28, 28, 1)).astype("float32"),
    xfail={"torch-*-*@keras312": "keras 3.12.0's torch Conv2DTranspose(strides=2, padding='same') is fixed in 3.15",
           "*@keras312": "a .keras file of keras 3.15 does not load under 3.12"})
def denoising_autoencoder():
    # keras-io: examples/vision/autoencoder.py, as written (28x28 MNIST digits)
    from keras import layers
    from keras.models import Model

    input = layers.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(input)
    x = layers.MaxPooling2D((2, 2), padding="same")(x)
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(x)
    x = layers.MaxPooling2D((2, 2), padding="same")(x)
    x = layers.Conv2DTranspose(32, (3, 3), strides=2, activation="relu", padding="same")(x)
    x = layers.Conv2DTranspose(32, (3, 3), strides=2, activation="relu", padding="same")(x)
    x = layers.Conv2D(1, (3, 3), activation="sigmoid", padding="same")(x)
    autoencoder = Model(input, x)
    autoencoder.compile(optimizer="adam", loss="binary_crossentropy")
    return autoencoder


@harness.parity_case(inputs=harness.spec((4, 8)), checks=("build", "outputs", "train", "save"))
def small_mlp():
    import keras

    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
'''


def built_environment() -> Path:
    """`.venv-keras312`, made by `make env` where it is missing or holds another keras."""
    if ENV_PYTHON.exists():
        found = subprocess.run([str(ENV_PYTHON), "-c", "import importlib.metadata as m; print(m.version('keras'))"],
                               capture_output=True, text=True)
        if found.stdout.strip() == ENV_KERAS:
            return ENV_PYTHON
    made = subprocess.run(["make", "env", f"ENV={ENV_NAME}", f"PACKAGES=keras=={ENV_KERAS}",
                           f"PY={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return ENV_PYTHON


@pytest.fixture(scope="module")
def environment():
    return built_environment()


@pytest.fixture(scope="module")
def two_environments(environment, tmp_path_factory):
    path = tmp_path_factory.mktemp("envs")
    write_module(path, "test_cases.py", CASES)
    return run_pytest(path, *ENV_CELLS, f"--keras-env={ENV_NAME}={environment}")


@requires_all_backends
def test_a_value_that_moved_between_releases_is_a_version_mismatch_naming_the_quantity_and_the_layer(two_environments):
    run = two_environments
    torch = run.cell("denoising_autoencoder", f"torch-cpu-nojit@{ENV_NAME}")
    assert torch["env"] == ENV_NAME
    version = torch["checks"]["version"]
    assert version["status"] == "mismatch" and version["compared_with"] == "torch-cpu-nojit"
    assert version["first_moved"]["check"] == "outputs" and version["first_moved"]["max_abs_err"] > 1e-3
    assert version["first_divergence"]["layer"] == "conv2d_transpose", version["first_divergence"]
    assert any(m["check"] == "train" and m["step"] == 1 for m in version["moved"])
    assert version["message"].startswith("diverges first at layer conv2d_transpose (Conv2DTranspose)")
    # Within its environment, keras 3.12.0's torch departs from its TensorFlow: a divergence there.
    assert torch["checks"]["outputs"]["status"] == "mismatch"
    assert torch["checks"]["outputs"]["compared_with"] == f"tensorflow-cpu-nojit@{ENV_NAME}"
    # Declared for the environment's torch cells, as a release's known change is.
    assert torch["status"] == "xfail" and torch["xfail"]["pattern"] == f"torch-*-*@{ENV_NAME}"
    assert run.outcomes()[f"denoising_autoencoder[torch-cpu-nojit@{ENV_NAME}]"] == "xfailed"
    assert run.cell("denoising_autoencoder", "torch-cpu-nojit")["status"] == "pass"


@requires_all_backends
def test_values_that_did_not_move_pass_the_version_check(two_environments):
    run = two_environments
    tensorflow = run.cell("denoising_autoencoder", f"tensorflow-cpu-nojit@{ENV_NAME}")
    assert tensorflow["checks"]["version"]["status"] == "pass"
    assert tensorflow["checks"]["version"]["compared"] == ["outputs", "train"]
    for cell in ("tensorflow-cpu-nojit", "torch-cpu-nojit"):
        record = run.cell("small_mlp", f"{cell}@{ENV_NAME}")
        assert record["checks"]["version"]["status"] == "pass", record["checks"]["version"]
        assert record["checks"]["version"]["compared"] == ["outputs", "train"]
        # keras 3.12 names the optimizer's variables SGD/..., 3.15 sgd/...: matched, and said.
        assert any("SGD/iteration" in note for note in record["notes"]), record["notes"]


@requires_all_backends
def test_files_cross_environments_both_ways_and_a_file_that_does_not_load_is_reported(two_environments):
    run = two_environments
    main = run.cell("small_mlp", "tensorflow-cpu-nojit")["checks"]["save"]
    assert main["status"] == "pass"
    for source in (f"tensorflow-cpu-nojit@{ENV_NAME}", f"torch-cpu-nojit@{ENV_NAME}",
                   f"tensorflow-cpu-nojit@{ENV_NAME} .weights.h5"):
        assert main["loaded_from"][source]["status"] == "pass", (source, main["loaded_from"])
    old = run.cell("small_mlp", f"tensorflow-cpu-nojit@{ENV_NAME}")
    assert old["status"] == "error"  # small_mlp declares nothing: the finding fails its cells
    loads = old["checks"]["save"]["loaded_from"]
    assert loads["tensorflow-cpu-nojit"]["status"] == "error"
    assert "input_axes" in loads["tensorflow-cpu-nojit"]["message"]
    assert "another environment's release" in loads["tensorflow-cpu-nojit"]["hint"]
    assert loads["tensorflow-cpu-nojit .weights.h5"]["status"] == "pass"
    assert old["checks"]["version"]["statuses_changed"] == {"save": "pass -> error"}
    matrix = (run.path / "reports" / "parity.md").read_text()
    assert "## Files across backends and environments" in matrix and f"tensorflow-cpu-nojit@{ENV_NAME}" in matrix


@requires_all_backends
def test_what_differs_between_the_environments_is_said_first(two_environments):
    run = two_environments
    env = run.report["run"]["environments"][ENV_NAME]
    assert env["differs"]["under_test"] == [f"keras 3.15.1 -> keras {ENV_KERAS}"]
    assert env["packages"]["keras"] == ENV_KERAS
    line = f"environment {ENV_NAME} against the main one: keras 3.15.1 -> keras {ENV_KERAS}"
    assert line in run.output
    markdown = (run.path / "reports" / "parity.md").read_text().splitlines()
    assert markdown[2] == f"**{line}**"
    assert html.escape(line) in (run.path / "reports" / "parity.html").read_text()
    assert "## Across environments (version)" in "\n".join(markdown)


@requires_all_backends
def test_the_value_gate_lists_what_moved_and_what_was_fixed(environment, tmp_path):
    write_module(tmp_path, "test_cases.py", CASES)
    # The release run under keras 3.12.0 (its environment runs as the main one), then keras 3.15.1.
    before = run_pytest(tmp_path, *ENV_CELLS, "--keras-report-dir=release", python=str(environment))
    assert before.returncode == 1, before.output[-3000:]  # 3.12's torch diverges from its TensorFlow
    values = tmp_path / "release" / "values" / "test_cases" / "denoising_autoencoder"
    assert (values / "reference_weights.npz").exists() and (values / "torch-cpu-nojit" / "outputs.npz").exists()
    now = run_pytest(tmp_path, *ENV_CELLS, "--keras-baseline=release", "--keras-report-dir=candidate")
    gate = json.loads((tmp_path / "candidate" / "parity.json").read_text())["run"]["gate"]
    assert now.returncode == 1, now.output[-3000:]  # values moved: the gate fails
    moved = [m for m in gate["moved"] if m["case"].endswith("denoising_autoencoder")]
    assert {m["cell"] for m in moved} == {"torch-cpu-nojit"}, {m["cell"] for m in moved}
    assert moved[0]["check"] == "outputs" and moved[0]["max_abs_err"] > 1e-3
    assert {(f["case"].split("::")[1], f["cell"]) for f in gate["fixed"]} >= {("denoising_autoencoder", "torch-cpu-nojit")}
    assert not any(m["case"].endswith("small_mlp") for m in gate["moved"])
    assert "packages: keras 3.12.0 -> keras 3.15.1" in "\n".join(gate["machine_changes"])
    assert "keras-parity gate against release: FAILED" in now.output
    assert "## Gate against release: FAILED" in (tmp_path / "candidate" / "parity.md").read_text()
    # A status-only baseline (its parity.json) compares statuses as before: nothing got worse.
    statuses = run_pytest(tmp_path, *ENV_CELLS, "--keras-baseline=release/parity.json", "--keras-report-dir=again")
    gate = json.loads((tmp_path / "again" / "parity.json").read_text())["run"]["gate"]
    assert gate["moved"] == [] and gate["values_compared"] is None and gate["regressions"] == []
    assert statuses.returncode == 0, statuses.output[-3000:]
