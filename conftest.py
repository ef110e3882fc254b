"""Root conftest: lets `pytest suites` run from a plain checkout where keras-parity is not
installed (with `make .venv` it is installed, and its pytest11 entry point loads the plugin)."""

import importlib.metadata

if not any(ep.value == "harness.plugin" for ep in importlib.metadata.entry_points(group="pytest11")):
    pytest_plugins = ["harness.plugin"]
