"""The pytest plugin: options, one item per (case, cell), outcomes, and the reports.

Registered through the `pytest11` entry point. Hooks that must exist before options are
parsed live at module level; the state of a run lives in `ParityPlugin`, registered in
`pytest_configure`.
"""

from __future__ import annotations

import datetime
import inspect
import os
import platform
import sys
import time

import pytest

from harness.case import ALL_CHECKS, Case
from harness.cells import Cell, CellPlan, UsageError, case_plan, parse_envs, parse_subset, plan_cells
from harness import machine
from harness.workers import compile_cache
from harness.report import gate as gate_rules
from harness.report import tables as report_tables
from harness.report import ReportError, ReportWriter, read_report, values
from harness.session import CaseRef, ParitySession
from harness.statuses import PASS, SKIP, XFAIL

# (ini name, default, help). Each is also a command-line option: --keras-backends, ...
OPTIONS = (
    ("keras_backends", "all",
     "backends to run: 'all' or a comma-separated subset of tensorflow,jax,torch"),
    ("keras_devices", "auto",
     "devices: auto (cpu, plus gpu where there is one), cpu, gpu or cpu,gpu"),
    ("keras_jit", "both", "jit settings to run: both, on or off"),
    ("keras_reference", "",
     "the cell every other cell is compared with (default tensorflow-cpu-nojit, else the "
     "first cell that can run)"),
    ("keras_report_dir", "reports", "folder for results.jsonl, parity.json, parity.md, parity.html and worker logs"),
    ("keras_timeout", "600", "seconds a cell may take before its worker is killed (timeout)"),
    ("keras_baseline", "",
     "an earlier report folder (or its parity.json): fail the session on any cell that got worse and, "
     "with the folder's values, on any value that moved (each cell starts from the baseline's inputs and "
     "initial weights)"),
    ("keras_perf_threshold", "",
     "with a baseline: report steady-state timings slower than RATIO x the baseline's, beyond "
     "the spread both runs measured (e.g. 1.5)"),
    ("keras_perf_fail", "", "with a threshold: 'yes' to fail the session on a slowdown too"),
    ("keras_checks", "all",
     "checks to run: 'all' or a comma-separated subset of " + ", ".join(ALL_CHECKS)
     + " (each case runs the ones it declares that are also named here)"),
)


ENVS_HELP = ("NAME=PYTHON: run every cell again under that interpreter's packages (another keras, TensorFlow, "
             "JAX or torch release, e.g. a virtual environment from `make env`), as cells backend-device-jit@NAME, "
             "each compared with the main environment's same cell by value (the version check); repeatable")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("keras-parity", "keras-parity: Keras 3 cross-backend parity")
    for name, default, help_text in OPTIONS:
        group.addoption("--" + name.replace("_", "-"), dest=name, default=None,
                        help=f"{help_text} [default: {default or 'see help'}; ini: {name}]")
        parser.addini(name, help=help_text, default="")  # "": not set, the default applies
    group.addoption("--keras-env", dest="keras_envs", action="append", default=None, metavar="NAME=PYTHON",
                    help=f"{ENVS_HELP} [ini: keras_envs, one per line]")
    parser.addini("keras_envs", help=ENVS_HELP, type="linelist", default=[])


def environments(config: pytest.Config) -> dict[str, str]:
    """--keras-env (all of them), else the ini's keras_envs: name -> interpreter."""
    values = config.getoption("keras_envs")
    if values is None:
        values = config.getini("keras_envs")
    return parse_envs(values, str(config.invocation_params.dir))


def option(config: pytest.Config, name: str) -> str:
    """Command line, else ini file, else the default."""
    value = config.getoption(name)
    if value is None:
        value = config.getini(name) or dict((n, d) for n, d, _ in OPTIONS)[name]
    return str(value)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser, args) -> None:
    # A parity run never needs a real backend in the pytest process: test modules that
    # `import keras` at the top get the light numpy backend during collection.
    if getattr(early_config.known_args_namespace, "keras_backends", None) or early_config.getini("keras_backends"):
        os.environ["KERAS_BACKEND"] = "numpy"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "keras_parity: a keras-parity cell item")
    try:
        plan = plan_cells(option(config, "keras_backends"), option(config, "keras_devices"),
                          option(config, "keras_jit"), option(config, "keras_reference") or None,
                          environments(config))
        checks = parse_checks(option(config, "keras_checks"))
        timeout = float(option(config, "keras_timeout"))
        if timeout <= 0:
            raise ValueError
        gate = read_gate_options(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    except ValueError:
        raise pytest.UsageError(
            f"--keras-timeout: {option(config, 'keras_timeout')!r} is not a positive number of seconds") from None
    config.pluginmanager.register(ParityPlugin(config, plan, timeout, checks, gate), "keras-parity")


def read_gate_options(config: pytest.Config) -> dict | None:
    path = option(config, "keras_baseline")
    threshold = option(config, "keras_perf_threshold")
    if not path:
        if threshold:
            raise UsageError("--keras-perf-threshold needs --keras-baseline=FILE to compare with")
        return None
    given = os.path.join(config.invocation_params.dir, path)
    folder = given if os.path.isdir(given) else None
    report_dir = os.path.join(config.invocation_params.dir, option(config, "keras_report_dir"))
    if folder and os.path.realpath(folder) == os.path.realpath(report_dir):
        raise UsageError(f"--keras-baseline={path} is this run's report folder, which the run overwrites: copy the "
                         f"baseline elsewhere first (cp -r {path} baseline-reports), or set --keras-report-dir")
    try:
        baseline = read_report(os.path.join(folder, "parity.json") if folder else given)
    except ReportError as exc:
        raise UsageError(f"--keras-baseline: {exc}") from None
    kept = folder and os.path.isdir(os.path.join(folder, values.FOLDER))
    try:
        ratio = float(threshold) if threshold else None
        if ratio is not None and ratio <= 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--keras-perf-threshold: {threshold!r} is not a ratio above 1 (e.g. 1.5)") from None
    return {"baseline": baseline, "path": path, "perf_threshold": ratio,
            "values": folder if kept else None,  # the report folder whose values/ the cells are compared with
            "perf_fail": option(config, "keras_perf_fail").lower() in ("1", "yes", "true", "on")}


def parse_checks(value: str) -> tuple[str, ...]:
    if value.strip() == "all":
        return ALL_CHECKS
    return tuple(parse_subset(value, ALL_CHECKS, "--keras-checks", "check",
                              f"'all' or a comma-separated subset of {', '.join(ALL_CHECKS)}"))


TERMINAL_MESSAGE_CHARS = 1600  # of a message in pytest's output; past it, a quarter and the cause


class CellFailed(Exception):
    """A cell ended in a failing status; the message is the whole story, no traceback."""


class ParityItem(pytest.Item):
    def __init__(self, *, case: Case, case_ref: CaseRef, cell: Cell, **kwargs):
        super().__init__(**kwargs)
        self.case = case
        self.case_ref = case_ref
        self.cell = cell
        self.record: dict | None = None

    def runtest(self) -> None:
        plugin: ParityPlugin = self.config.pluginmanager.get_plugin("keras-parity")
        self.record = record = plugin.record(self)
        self.user_properties.append(("keras_parity_status", record["status"]))
        status, declared = record["status"], record.get("xfail")
        if status == SKIP:
            pytest.skip(record.get("skip_reason") or "skipped")
        if status == XFAIL:
            pytest.xfail(f"{declared['actual']} as declared: {declared['reason']}" if "outcomes" not in declared
                         else f"{declared['actual']}, one of the outcomes declared machine-dependent "
                              f"({declared['expected']}): {declared['reason']}")
        if declared and not declared["met"]:
            if status == PASS:
                raise CellFailed(f"[XPASS(strict)] {self.case_ref.id} [{self.cell.id}] passed, but "
                                 f"the case declares {declared['expected']}: {declared['reason']}. "
                                 f"Remove or narrow the xfail pattern {declared['pattern']!r}.")
            expected = declared["expected"] + (f" of kind {declared['expected_kind']}" if "expected_kind" in declared
                                               else " (machine-dependent)" if "outcomes" in declared else "")
            got = status + (f" of kind {declared['actual_kind']}" if "expected_kind" in declared else "")
            raise CellFailed(f"declared {expected} ({declared['reason']}), got {got}:\n"
                             + describe_failure(record, self.case.repro))
        if status != PASS:
            raise CellFailed(describe_failure(record, self.case.repro))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CellFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        code = getattr(inspect.unwrap(self.case.factory), "__code__", None)
        return self.path, (code.co_firstlineno - 1 if code else None), self.name


def describe_failure(record: dict, repro: str | None = None) -> str:
    """The failure as a user reads it in pytest's output: the status, then every failing check
    with where it failed, its message, root cause and hint; the worker log's tail, the notes,
    and the case's ready-to-run reproduction where it has one."""
    lines = [f"{record['case']} [{record['cell']}]: {record['status']}"]
    for name, failure in report_tables.check_failures(record):
        where = report_tables.failure_where({**failure, "check": failure.get("check") or name})
        what = failure.get("exception") or failure.get("kind")
        message = failure.get("message", "")
        if len(message) > TERMINAL_MESSAGE_CHARS:  # the root cause follows, whole
            message = message[:TERMINAL_MESSAGE_CHARS // 4] + " [...; whole in parity.json]"
        cause = report_tables.cause_to_show({**failure, "message": message})
        lines.append(f"  {name}: {record['checks'][name]['status']} ({where}, {failure.get('kind')}): "
                     + (f"{what}: " if what != failure.get("kind") else "") + message)
        if cause:
            lines.append(f"    cause: {cause}")
        if failure.get("unsupported_ops"):
            lines.append(f"    unsupported ops: {', '.join(failure['unsupported_ops'])}")
        if failure.get("hint"):
            lines.append(f"    hint: {failure['hint']}")
        reproducer = (record["checks"][name].get("first_divergence") or {}).get("reproducer") or {}
        if reproducer.get("written"):
            lines.append(f"    reproduce it ({reproducer['piece']}): {reproducer['command']}")
    tail = [line[:200] for line in ((record.get("failure") or {}).get("log_tail") or "").strip().splitlines()[-15:]]
    if tail:
        lines.append("  worker log (tail):\n    " + "\n    ".join(tail))
    for note in record.get("notes", []):
        lines.append(f"  note: {note}")
    if repro:
        lines.append(f"  reproduce it (KERAS_BACKEND={record['backend']} python repro.py):\n    "
                     + "\n    ".join(repro.strip().splitlines()))
    return "\n".join(lines)


class ParityPlugin:
    """The state of one run: the cell plan, the worker pool, and (in the controller) the reports."""

    def __init__(self, config: pytest.Config, plan: CellPlan, timeout: float, checks: tuple[str, ...],
                 gate: dict | None):
        self.config = config
        self.gate = gate
        self.gate_result: dict | None = None
        self.finished_run: dict | None = None  # `run` of the report written at the end
        self.plan = plan
        self.timeout = timeout
        self.checks = checks
        self.report_dir = os.path.join(config.invocation_params.dir, option(config, "keras_report_dir"))
        self.is_xdist_worker = hasattr(config, "workerinput")
        self.session: ParitySession | None = None
        self.writer: ReportWriter | None = None
        self.selected: dict[str, set[Cell]] | None = None
        self.started = time.time()

    # -- collection --------------------------------------------------------------------

    def pytest_pycollect_makeitem(self, collector, name, obj):
        if not isinstance(obj, Case) or not isinstance(collector, pytest.Module):
            return None
        if getattr(obj.factory, "__module__", None) != collector.obj.__name__:
            return []  # a case imported from another module is collected where it is defined
        plan = case_plan(self.plan, obj)
        reason = obj.skip_reason(plan.reference.id)
        if reason is not None:  # every other cell loads the reference's weights and compares with it
            raise collector.CollectError(
                f"{collector.nodeid}::{name}: its skip patterns match the reference cell "
                f"{plan.reference.id} ({reason!r}), which every other cell is compared with: "
                f"narrow the pattern, or choose another cell with --keras-reference")
        items = []
        for param in [param for param, _ in obj.params] or [None]:
            case = obj.bind(param) if param is not None else obj
            prefix = f"{param}-" if param is not None else ""
            case_ref = CaseRef.from_module(f"{collector.nodeid}::{case.name}", collector.obj, name, param)
            # The node id is given whole, so pytest parses `[cell]` as parameters, as it does
            # for parametrized functions (--lf and --deselect match on that form).
            items += [ParityItem.from_parent(collector, name=f"{name}[{prefix}{cell.id}]",
                                             nodeid=f"{collector.nodeid}::{name}[{prefix}{cell.id}]",
                                             case=case, case_ref=case_ref, cell=cell)
                      for cell in plan.cells]
        return items

    # -- running -----------------------------------------------------------------------

    def record(self, item: ParityItem) -> dict:
        if self.session is None:
            log_dir = os.path.join(self.report_dir, "workers")
            if self.is_xdist_worker:  # each xdist worker has a pool of its own, and logs of its own
                log_dir = os.path.join(log_dir, self.config.workerinput["workerid"])
            # pytest's cache folder (absent under -p no:cacheprovider): --cache-clear runs cold.
            cache = getattr(self.config, "cache", None)
            cache_dir = str(cache.mkdir(compile_cache.CACHE_NAME)) if cache is not None else None
            self.session = ParitySession(self.plan, self.timeout, log_dir, self.checks, cache_dir, self.report_dir,
                                         (self.gate or {}).get("values"))
        if self.selected is None:  # the items left after -k, --lf, deselection
            self.selected = {}
            for other in item.session.items:
                if isinstance(other, ParityItem):
                    self.selected.setdefault(other.case_ref.id, set()).add(other.cell)
        return self.session.record(item.case, item.case_ref, item.cell,
                                   self.selected.get(item.case_ref.id, {item.cell}))

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        """With pytest-xdist, all cells of a case run on one xdist worker."""
        if config.getvalue("dist") in ("load", "worksteal", "loadgroup"):
            from harness.xdist_scheduling import CaseScheduling

            return CaseScheduling(config, log)
        return None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if isinstance(item, ParityItem) and call.when == "call" and item.record is not None:
            report.keras_parity = item.record  # travels to the xdist controller with the report
        return report

    # -- reports (in the process that sees every report: plain pytest or xdist controller)

    def pytest_runtest_logreport(self, report) -> None:
        record = getattr(report, "keras_parity", None)
        if record is None or self.is_xdist_worker:
            return
        if self.writer is None:  # opened at the first cell: a run with no case leaves reports alone
            self.writer = ReportWriter(self.report_dir)
        self.writer.add(record)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.session is not None:
            self.session.close()
        if self.writer is None:
            return
        values.prune(self.report_dir, {record["case"] for record in self.writer.cells})
        run = self.run_info(exitstatus)
        if self.gate is not None:
            self.gate_result = gate_rules.compare_to_baseline(self.gate["baseline"], self.writer.cells,
                                                              self.gate["perf_threshold"], run)
            run["gate"] = {**self.gate_result, "baseline": self.gate["path"]}
            if gate_rules.failed(self.gate_result) or (self.gate["perf_fail"] and self.gate_result["slowdowns"]):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.writer.finish(run)
        self.finished_run = run

    def pytest_unconfigure(self, config) -> None:
        if self.session is not None:  # sessionfinish did not run (an internal error)
            self.session.close()

    def run_info(self, exitstatus) -> dict:
        versions, kernels = {}, {}
        for record in self.writer.cells:
            if record.get("env"):
                continue
            versions.update(record.get("versions", {}))
            if record.get("kernels"):
                kernels[f"{record['backend']}-{record['device']}"] = record["kernels"]
        return {**self.environments_info(), 
            "started": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).isoformat(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "host": platform.node(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "versions": versions,
            "machine": machine.describe(kernels),
            "reference": self.plan.reference.id,
            "cells": [c.id for c in self.plan.cells],
            "skipped_cells": {c.id: r for c, r in self.plan.skipped.items()},
            "options": {name: option(self.config, name) for name, _, _ in OPTIONS},
            "exitstatus": int(exitstatus),
        }

    def environments_info(self) -> dict:
        """With --keras-env: each environment's interpreter and packages (as its workers reported
        them), and what differs from the main one, packages under test first."""
        if not self.plan.envs:
            return {}
        main = machine.packages()
        found = {"main": {"python": sys.executable, "packages": main}}
        for name, python in self.plan.envs.items():
            packages = next((r["packages"] for r in self.writer.cells if r.get("env") == name and r.get("packages")), None)
            found[name] = {"python": python, "packages": packages or {}}
            if packages is None:
                found[name]["differs"] = {"under_test": [], "incidental": [],
                                          "unknown": "no worker of this environment started"}
            else:
                found[name]["differs"] = machine.what_differs(main, packages)
        return {"environments": found}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.writer is None or not self.writer.cells:
            return
        counts: dict[str, int] = {}
        for record in self.writer.cells:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        terminalreporter.write_sep("-", "keras-parity")
        for line in report_tables.environment_lines(self.finished_run or {}):
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            f"{len(self.writer.cells)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f"; reference {report_tables.references({'reference': self.plan.reference.id}, self.writer.cells)}")
        terminalreporter.write_line(f"reports: {self.report_dir}/parity.md, parity.html, parity.json, results.jsonl")
        if self.gate_result is not None:
            lines = gate_rules.describe(self.gate_result)
            terminalreporter.write_sep("-", f"keras-parity gate against {self.gate['path']}: "
                                            + ("FAILED" if gate_rules.failed(self.gate_result) else "passed"))
            for line in lines or ["no cell got worse"]:
                terminalreporter.write_line(line)
