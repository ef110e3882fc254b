"""The reports: `results.jsonl` (a line per finished cell), `parity.json`, `parity.md` and
`parity.html`; merging shards; the `python -m harness.report` command.

`results.jsonl` is appended and flushed as each cell finishes, so a killed run keeps what it
had. The others are written at the end, each through a temporary file and a rename, so a
reader never sees half of one. `parity.md` (for a CI step summary) and `parity.html` (one
self-contained page) are rendered by `report_markdown` and `report_html`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

SCHEMA = 1


def atomic_write(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide reports from CI artifact steps
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class ReportWriter:
    def __init__(self, report_dir: str):
        self.report_dir = report_dir
        os.makedirs(report_dir, exist_ok=True)
        self.cells: list[dict] = []
        self.jsonl = open(os.path.join(report_dir, "results.jsonl"), "w", encoding="utf-8")

    def add(self, record: dict) -> None:
        self.cells.append(record)
        self.jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())

    def finish(self, run: dict) -> dict:
        self.jsonl.close()
        report = {"schema": SCHEMA, "run": run, "cells": self.cells}
        write_report(report, self.report_dir)
        return report


# -- merging shards ------------------------------------------------------------------------

class ReportError(ValueError):
    """An input that is not a keras-parity report; the message names the file and the fix."""


def read_report(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); pass the "
                          f"parity.json a keras-parity run wrote") from None
    if not isinstance(report, dict) or "cells" not in report or "schema" not in report:
        raise ReportError(f"{path}: not a keras-parity report (no 'schema' and 'cells'); pass "
                          f"the parity.json a keras-parity run wrote")
    if report["schema"] != SCHEMA:
        raise ReportError(f"{path}: report schema {report['schema']!r}, this keras-parity reads "
                          f"schema {SCHEMA}")
    for i, cell in enumerate(report["cells"]):
        if not isinstance(cell, dict) or not {"case", "cell", "status"} <= set(cell):
            raise ReportError(f"{path}: cell #{i} lacks case, cell or status")
    return report


def merge_reports(paths: list[str]) -> dict:
    """One report from shards (a CPU job and a GPU job, xdist workers). A cell reported by two
    shards with different statuses is kept once, with the worse status, and flagged."""
    from harness.statuses import FAILING_STATUSES

    severity = {s: i for i, s in enumerate(("pass", "xfail", "skip", *FAILING_STATUSES))}
    reports = [read_report(p) for p in paths]  # all are checked before anything is written
    merged: dict[tuple[str, str], dict] = {}
    sources: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for path, report in zip(paths, reports):
        for cell in report["cells"]:
            key = (cell["case"], cell["cell"])
            sources.setdefault(key, []).append((path, cell["status"]))
            if key not in merged or severity.get(cell["status"], 99) > severity.get(merged[key]["status"], 99):
                merged[key] = cell
    conflicts = []
    for key, seen in sources.items():
        if len({status for _, status in seen}) > 1:
            merged[key] = {**merged[key], "conflict": [{"report": p, "status": s} for p, s in seen]}
            conflicts.append({"case": key[0], "cell": key[1], "statuses": [{"report": p, "status": s} for p, s in seen]})
    versions: dict = {}
    for report in reports:
        versions.update(report.get("run", {}).get("versions", {}))
    run = {"merged_from": [{"report": p, "run": r.get("run", {})} for p, r in zip(paths, reports)],
           "versions": versions, "reference": reports[0].get("run", {}).get("reference") if reports else None,
           "conflicts": conflicts}
    return {"schema": SCHEMA, "run": run, "cells": list(merged.values())}


def write_report(report: dict, out: str) -> str:
    """Write parity.json, parity.md and parity.html into `out` (a folder, or a path ending in
    .json, whose stem the other two share)."""
    from harness.report import html as report_html, markdown as report_markdown

    folder, name = (os.path.dirname(out) or ".", os.path.basename(out)) if out.endswith(".json") else (out, "parity.json")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, name[:-5])
    atomic_write(stem + ".json", json.dumps(report, indent=1, sort_keys=True))
    atomic_write(stem + ".md", report_markdown.render(report))
    atomic_write(stem + ".html", report_html.render(report))
    return stem + ".json"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.report",
                                     description="Work with keras-parity reports.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge shards (parity.json files) into one report")
    merge.add_argument("inputs", nargs="+", metavar="IN", help="parity.json files of the shards")
    merge.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="folder for the merged parity.json and parity.md (or a .json path)")
    gate = commands.add_parser("gate", help="compare a report with a baseline report: exit 1 on a "
                                             "regression (as --keras-baseline does for a run)")
    gate.add_argument("report", help="the parity.json to judge (e.g. the merged shards)")
    gate.add_argument("--baseline", required=True, help="the earlier parity.json")
    gate.add_argument("--perf-threshold", type=float, default=None, metavar="RATIO",
                      help="report steady-state timings slower than RATIO x the baseline's")
    gate.add_argument("--perf-fail", action="store_true", help="fail on a slowdown too")
    args = parser.parse_args(argv)
    if args.command == "gate":
        return run_gate(args)
    try:
        report = merge_reports(args.inputs)
    except ReportError as exc:
        print(f"error: {exc}. Nothing was written.", file=sys.stderr)
        return 2
    written = write_report(report, args.output)
    for conflict in report["run"]["conflicts"]:
        print(f"conflict: {conflict['case']} [{conflict['cell']}]: "
              + ", ".join(f"{s['status']} in {s['report']}" for s in conflict["statuses"]), file=sys.stderr)
    print(f"merged {len(args.inputs)} reports, {len(report['cells'])} cells -> {written}")
    return 0


def run_gate(args) -> int:
    from harness.report import gate

    try:
        report, baseline = read_report(args.report), read_report(args.baseline)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = gate.compare_to_baseline(baseline, report["cells"], args.perf_threshold, report.get("run", {}))
    for line in gate.describe(result) or ["no cell got worse"]:
        print(line)
    return 1 if gate.failed(result) or (args.perf_fail and result["slowdowns"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
