"""The set-up installs the same thing every time: the locks pin what their inputs name, and
`ci/check_lock.py` (the last step of `make .venv`) finds every way an environment can differ."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from harness.machine import packages

ROOT = Path(__file__).resolve().parents[1]
CHECK_LOCK = ROOT / "ci" / "check_lock.py"


def read_lock(path: Path) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("check_lock", CHECK_LOCK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_lock(str(path))


@pytest.mark.parametrize("lock", ["constraints.txt", "constraints-gpu.txt"])
def test_a_lock_pins_every_release_its_input_names(lock):
    lock_path = ROOT / "ci" / lock
    locked, wanted = read_lock(lock_path), read_lock(lock_path.with_suffix(".in"))
    assert wanted and all(locked.get(name) == version for name, version in wanted.items()), (
        f"{lock} is older than {lock_path.with_suffix('.in').name}: run make lock")
    assert len(locked) > len(wanted)  # everything below the releases is pinned too


def check(lock_text: str, tmp_path) -> subprocess.CompletedProcess:
    lock = tmp_path / "lock.txt"
    lock.write_text(lock_text)
    return subprocess.run([sys.executable, str(CHECK_LOCK), str(lock)],
                          capture_output=True, text=True, timeout=60)


def test_the_lock_check_passes_this_environment_and_names_each_difference(tmp_path):
    installed = {name: version for name, version in packages().items() if name != "keras-parity"}
    exact = "".join(f"{name}=={version}\n    # via something\n" for name, version in installed.items())
    result = check(exact, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{len(installed)} packages, exactly as" in result.stdout

    pytest_version = installed["pytest"]
    drifted = exact.replace(f"pytest=={pytest_version}\n", "pytest==0.0.1\n").replace(
        f"numpy=={installed['numpy']}\n", "") + "not-a-real-package==1.0\n"
    result = check(drifted, tmp_path)
    assert result.returncode == 1
    assert f"pytest: {pytest_version} installed, 0.0.1 locked" in result.stderr
    assert f"numpy=={installed['numpy']} is installed but not locked" in result.stderr
    assert "not-a-real-package==1.0 is locked but not installed" in result.stderr
    assert "make lock" in result.stderr

    result = check("pytest>=8\n", tmp_path)
    assert result.returncode == 1 and "is not a name==version pin" in result.stderr
