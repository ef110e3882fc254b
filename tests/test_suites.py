"""The built-in suites are complete where they claim to be, and every case declares itself
correctly (collection would fail otherwise). Running them is `make parity`'s job."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SUITES = Path(__file__).resolve().parents[1] / "suites"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_layer_classes() -> set[str]:
    code = "import json, keras; print(json.dumps([n for n in dir(keras.layers) if n[0].isupper()]))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "numpy"},
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_every_keras_layer_is_covered_or_left_out_with_a_reason():
    suite = load(SUITES / "layers" / "test_builtin_layers.py")
    covered = {entry.layer for entries in suite.FAMILIES.values() for entry in entries}
    left_out = set(suite.NOT_COVERED)
    assert not covered & left_out, f"both covered and left out: {sorted(covered & left_out)}"
    missing = public_layer_classes() - covered - left_out
    assert not missing, f"keras.layers classes neither covered nor left out with a reason: {sorted(missing)}"
    assert all(reason.strip() for reason in suite.NOT_COVERED.values())


def test_every_pitfall_of_the_guide_has_a_keras2_case_and_a_fixed_case():
    suite = load(SUITES / "migration" / "test_migration_guide.py")
    cases = [name for name in vars(suite) if name.startswith(("keras2_pitfall", "fixed_pitfall"))]
    for number in range(1, 15):
        tag = f"pitfall{number:02d}_"
        assert any(n.startswith("keras2_" + tag) for n in cases), f"no Keras 2 case for pitfall {number}"
        assert any(n.startswith("fixed_" + tag) for n in cases), f"no fixed case for pitfall {number}"


def test_ops_examples_are_the_same_on_every_collection():
    first = load(SUITES / "ops" / "test_ops_parity.py")
    second = load(SUITES / "ops" / "test_ops_parity.py")
    for name in ("ops_sign", "ops_matmul", "ops_one_hot"):
        a, b = getattr(first, name).inputs, getattr(second, name).inputs
        assert len(a) == len(b) >= first.EXAMPLES
        assert all(first.same_example(x, y) for x, y in zip(a, b))
    sign = next(op for op in first.OPS if op.name == "sign")
    examples = first.op_examples(sign, edges=True)
    edges = [v for example in examples for array in example for v in array.ravel()]
    assert any(v != v for v in edges) and any(abs(v) == float("inf") for v in edges)
    assert any(array.size == 0 for example in examples for array in example)


def test_an_ops_case_carries_a_script_that_reproduces_it(tmp_path):
    suite = load(SUITES / "ops" / "test_ops_parity.py")
    case = suite.ops_sign
    script = tmp_path / "repro.py"
    script.write_text(case.repro)
    run = subprocess.run([sys.executable, str(script)], env={**os.environ, "KERAS_BACKEND": "numpy"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("[") >= len(case.inputs)  # one printed array per example
