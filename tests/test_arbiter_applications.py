"""The float64 arbiter on models nobody here wrote: keras.applications' MobileNetV2 as written,
untrained (`weights=None`), at 32x32, trained 4 steps on a batch of 2 under TensorFlow and torch.

Its last feature map is 1x1, so each BatchNormalization there normalizes 2 values, and training
amplifies float32 round-off far beyond any fixed tolerance: the plain tolerance flags every cell
(over 1000 values beyond it per cell), as it flags each backend against itself (`make bench`,
`--only arbiter`). Against float64 and the reference's runs from nudged weights, that is
round-off, and no cell is a mismatch. Fed raw pixels (as users who skip `preprocess_input` do),
its first BatchNormalization gets large activations, whose variance torch computes in one pass
(E[x^2] - E[x]^2): measured here, torch's runs from nudged weights scatter into the round-off band,
so that is round-off too; where torch departs beyond it, it must be named, for its float32
computation (its float64 agreeing). `tests/test_arbiter.py` has a model where it does, every run.
"""

import pytest

from tests.conftest import requires_all_backends, run_pytest, write_module

CASES = '''
import harness


def unit_images(rng):
    return rng.uniform(0, 1, size=(2, 32, 32, 3)).astype("float32")


def raw_pixels(rng):
    return rng.uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")


def ten_targets(rng):
    return rng.normal(size=(2, 10)).astype("float32")


@harness.parity_case(inputs=unit_images, targets=ten_targets, checks=["build", "train"])
def mobilenet_v2():
    import keras

    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                          classifier_activation=None)


@harness.parity_case(inputs=raw_pixels, targets=ten_targets, checks=["build", "train"])
def mobilenet_v2_raw_pixels():
    import keras

    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                          classifier_activation=None)
'''

pytestmark = requires_all_backends


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("applications")
    write_module(path, "test_applications.py", CASES)
    # JAX without jit compiles each op of a convnet for minutes here: its runs of these models are
    # judged in `make bench` (--only arbiter), and JAX cells in tests/test_arbiter.py.
    return run_pytest(path, "--keras-backends=tensorflow,torch", "--keras-devices=cpu", "--keras-jit=off")


@pytest.mark.parametrize("case", ["mobilenet_v2", "mobilenet_v2_raw_pixels"])
def test_round_off_that_training_amplifies_is_not_a_mismatch(run, case):
    for cell in ("torch-cpu-nojit",):
        record = run.cell(case, cell)
        train = record["checks"]["train"]
        if cell.startswith("torch") and record["status"] == "mismatch":  # the one-pass variance, where it shows
            first = train["first_divergence"]
            # numerical; or, on a CPU where TensorFlow's oneDNN kernels run (AVX-512 VNNI, AMX), the
            # reference's raw-pixel statistics leave float32's range first and float64 cannot arbitrate
            assert first["outlier"] == "torch" and first["float64"]["why"] in ("numerical", "float32_range"), first
            continue
        assert record["status"] == "pass", train.get("message")
        account = train["float64"]
        assert account["verdict"] == "round-off" and account["truth"] == "tensorflow", account
        assert account["beyond_tolerance"] > 100, account  # what the plain tolerance alone would flag
        growth = account["growth"]
        assert [row["step"] for row in growth] == [1, 2, 3, 4], growth
        # the distance from float64 grows in the nudged runs as it does in this cell
        assert growth[-1]["nudged_vs_float64"] > growth[0]["nudged_vs_float64"], growth
    assert run.cell(case, "tensorflow-cpu-nojit")["status"] == "pass"
