"""`python ci/make_env.py NAME LOCK "REQUIREMENTS"`: a second environment, `.venv-NAME`.

`make env ENV=NAME PACKAGES="keras==3.13.2"` runs it, with the main `.venv`'s Python. The environment holds the lock's versions
with the named requirements put in their place, and keras-parity installed editable, so it can
run the suites as the main `.venv` does and be the interpreter of `--keras-env NAME=PYTHON`.
keras-nightly replaces keras (both install the `keras` module). The lock it was made from, with
the replaced pins left out, is written to `.venv-NAME/constraints.txt`; `ci/check_lock.py`
checks the result against that lock and the requirements.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

from check_lock import PIN  # ci/ is this script's folder, first on sys.path
from harness.machine import normalized_name

# Distributions that install the same top-level module: asking for one replaces the others.
SAME_MODULE = {"keras": {"keras", "keras-nightly"}, "keras-nightly": {"keras", "keras-nightly"}}
EXTRAS = ("all", "onnx", "test")
KERAS2_PINS = ("ci/keras2.txt",)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def requirement_name(requirement: str) -> str:
    found = NAME.match(requirement.strip())
    if found is None:
        raise SystemExit(f"make env: {requirement!r} is not a requirement; write PACKAGES=\"keras==3.13.2\"")
    return normalized_name(found[0].split("[")[0])


def replaced_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement_name(requirement)
        names |= SAME_MODULE.get(name, {name})
    return names


def project_requirements(pyproject: str, extras: tuple[str, ...]) -> list[str]:
    """keras-parity's dependencies with the extras' (an extra that names the project expands)."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project["optional-dependencies"]
    found, pending = list(project["dependencies"]), list(extras)
    while pending:
        for requirement in optional[pending.pop()]:
            nested = re.fullmatch(r"keras-parity\[(.+)\]", requirement)
            if nested:
                pending += [e.strip() for e in nested[1].split(",")]
            else:
                found.append(requirement)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[0] or not NAME.fullmatch(argv[0]):
        print('usage: python ci/make_env.py NAME LOCK "REQUIREMENTS" (make env ENV=NAME PACKAGES="keras==3.13.2")',
              file=sys.stderr)
        return 2
    name, lock, wanted = argv[0], argv[1], argv[2].split()
    if not wanted:
        print("make env: PACKAGES is empty; name what differs from the lock, e.g. PACKAGES=\"keras==3.13.2\"",
              file=sys.stderr)
        return 2
    loose = [r for r in wanted if not PIN.fullmatch(r)]
    if loose:
        print(f"make env: {', '.join(loose)}: pin each package (name==version), so the environment is one "
              f"release, e.g. PACKAGES=\"keras==3.13.2\"", file=sys.stderr)
        return 2
    replaced = replaced_names(wanted)
    venv = f".venv-{name}"
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    constraints = os.path.join(venv, "constraints.txt")
    with open(lock, encoding="utf-8") as f:
        kept = [line for line in f if not (NAME.match(line) and requirement_name(line.split("=")[0]) in replaced)]
    with open(constraints, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.writelines(f"{requirement}\n" for requirement in wanted)
    requirements = [r for r in project_requirements("pyproject.toml", EXTRAS) if requirement_name(r) not in replaced]
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", constraints]
    subprocess.run(pip + ["pip", "setuptools"], check=True)
    # The plugin without its dependencies (its `keras` may be replaced), then those and the wanted.
    subprocess.run(pip + ["--no-build-isolation", "--no-deps", "-e", "."], check=True)
    install = pip + requirements + wanted
    if subprocess.run(install).returncode != 0:
        print("make env: retrying with PyTorch's index for the locked torch build", file=sys.stderr)
        subprocess.run(install + ["--extra-index-url", os.environ.get("TORCH_INDEX", "https://download.pytorch.org/whl/cpu")],
                       check=True)
    # Keras 2 as the main set-up has it (without its `tensorflow` requirement: see the file), unless
    # the wanted packages replace it.
    keras2 = [path for path in KERAS2_PINS if os.path.exists(path)]
    pins = [line.split("#", 1)[0].strip() for path in keras2 for line in open(path, encoding="utf-8")]
    pins = [pin for pin in pins if pin and requirement_name(pin) not in replaced]
    if pins:
        subprocess.run(pip + ["--no-deps", *pins], check=True)
    # What it holds against its lock: a package the other release needs and the lock lacks is said.
    return subprocess.run([python, "ci/check_lock.py", "--allow-extra", constraints, *keras2]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
