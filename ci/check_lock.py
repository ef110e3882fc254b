"""`python ci/check_lock.py LOCK [PINS...]`: does this environment hold exactly the lock's versions?

`make .venv` runs it last. It compares every installed distribution (but the editable
keras-parity itself) with the `name==version` pins of a lock `make lock` wrote, and exits 1
naming each difference: a package at another version, installed but not locked (the lock is
older than pyproject.toml), or locked but not installed. Further files of pins (ci/keras2.txt: a package installed without its
dependencies) count as part of the lock. With `--allow-extra` (`make env`, whose other release may need a
package the lock lacks) a package installed but not locked is listed, not an error.
"""

from __future__ import annotations

import re
import sys

from harness.machine import normalized_name, packages

PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)={2,3}(\S+)")  # `===`: an exact version string


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            pin = PIN.fullmatch(line)
            if pin is None:
                raise SystemExit(f"{path}:{number}: {line!r} is not a name==version pin; regenerate it with make lock")
            pins[normalized_name(pin[1])] = pin[2]
    return pins


def differences(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(set(locked) | set(installed)):
        want, have = locked.get(name), installed.get(name)
        if want is None:
            lines.append(f"{name}=={have} is installed but not locked")
        elif have is None:
            lines.append(f"{name}=={want} is locked but not installed")
        elif want != have:
            lines.append(f"{name}: {have} installed, {want} locked")
    return lines


def main(argv: list[str]) -> int:
    allow_extra = "--allow-extra" in argv  # `make env`: a package the other release needs is said, not an error
    argv = [a for a in argv if a != "--allow-extra"]
    if not argv:
        print("usage: python ci/check_lock.py [--allow-extra] LOCK [PINS...]", file=sys.stderr)
        return 2
    installed = {name: version for name, version in packages().items() if name != "keras-parity"}
    locked = {name: version for path in argv for name, version in read_lock(path).items()}
    found = differences(locked, installed)
    extra = [line for line in found if line.endswith("installed but not locked")] if allow_extra else []
    found = [line for line in found if line not in extra]
    for line in extra:
        print(f"{argv[0]}: {line} (needed by a replaced release)")
    for line in found:
        print(f"{argv[0]}: {line}", file=sys.stderr)
    if found:
        print(f"{sys.prefix} does not hold {argv[0]}'s versions: rebuild it (rm -rf .venv && make .venv), "
              f"or regenerate the lock after a change to pyproject.toml (make lock)", file=sys.stderr)
        return 1
    print(f"{sys.prefix}: {len(installed)} packages, exactly as {argv[0]} pins them")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
