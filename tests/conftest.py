"""Helpers for the project's own tests: run pytest with the plugin on real backends, in a subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import harness.cells


@dataclasses.dataclass
class ParityRun:
    """One `pytest` run of the plugin: its exit code, output, report and per-item outcomes."""

    returncode: int
    output: str
    path: Path

    @property
    def report(self) -> dict:
        return json.loads((self.path / "reports" / "parity.json").read_text())

    def cell(self, case: str, cell: str) -> dict:
        found = [c for c in self.report["cells"] if c["case"].endswith("::" + case) and c["cell"] == cell]
        assert len(found) == 1, f"{case}[{cell}]: {len(found)} records\n{self.output[-3000:]}"
        return found[0]

    def statuses(self) -> dict[tuple[str, str], str]:
        return {(c["case"], c["cell"]): c["status"] for c in self.report["cells"]}

    def outcomes(self) -> dict[str, str]:
        """pytest's own verdict per item, from --junitxml: passed, failed, skipped, xfailed."""
        tree = ET.parse(self.path / "junit.xml")
        result = {}
        for case in tree.iter("testcase"):
            name = case.get("name")
            child = {c.tag: c for c in case}
            if "failure" in child or "error" in child:
                result[name] = "failed"
            elif "skipped" in child:
                kind = child["skipped"].get("type", "")
                result[name] = "xfailed" if kind == "pytest.xfail" else "skipped"
            else:
                result[name] = "passed"
        return result


def write_module(path: Path, name: str, source: str) -> Path:
    target = path / name
    target.write_text(textwrap.dedent(source))
    return target


def run_pytest(path: Path, *args: str, timeout: float = 900, env: dict[str, str] | None = None,
               python: str = sys.executable) -> ParityRun:
    """pytest in `path` under `python`, with this environment less pytest's and keras' own
    variables, plus `env`."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "KERAS_"))}, **(env or {})}
    proc = subprocess.run(
        [python, "-m", "pytest", "-p", "no:randomly", f"--junitxml={path / 'junit.xml'}",
         "-o", "junit_family=xunit2", *args],
        cwd=path, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return ParityRun(proc.returncode, proc.stdout + proc.stderr, path)


@pytest.fixture
def parity(tmp_path):
    """Write modules into a fresh folder and run pytest there: `parity(source, *args)`."""

    def run(source: str | dict[str, str], *args: str, **kwargs) -> ParityRun:
        sources = source if isinstance(source, dict) else {"test_cases.py": source}
        for name, text in sources.items():
            write_module(tmp_path, name, text)
        return run_pytest(tmp_path, *args, **kwargs)

    return run


requires_all_backends = pytest.mark.skipif(
    len(harness.cells.installed_backends()) < 3,
    reason="needs tensorflow, jax and torch installed (make .venv installs them)",
)
