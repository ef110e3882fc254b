"""What a report shows, as plain rows: the Markdown and HTML pages render the same tables.

Each function takes the `cells` of a parity.json (one record per case and cell) and returns
rows in a stable order: cases as they were run, cells tensorflow, jax, torch; cpu before gpu;
nojit before jit.
"""

from __future__ import annotations

import dataclasses

from harness import machine

STATUS_MARKS = {
    "pass": "✅ pass",
    "mismatch": "❌ mismatch",
    "error": "💥 error",
    "compile_error": "🛠 compile_error",
    "crash": "☠ crash",
    "timeout": "⏱ timeout",
    "skip": "⏭ skip",
    "xfail": "➖ xfail",
}


def cell_order(cell_id: str) -> tuple:
    """The main environment's cells, then each other environment's, in the same order."""
    base, _, env = cell_id.partition("@")
    backend, device, jit = base.split("-")
    order = {"tensorflow": 0, "jax": 1, "torch": 2, "cpu": 0, "gpu": 1, "nojit": 0, "jit": 1}
    return (env, order.get(backend, 9), backend, order.get(device, 9), order.get(jit, 9))


def versions_compared(cells: list[dict]) -> list[dict]:
    """Each environment cell's `version` check that found something: what moved from the main
    environment's same cell (first, with the count), the checks whose status changed, and the
    warnings only one environment gave."""
    rows = []
    for c in cells:
        version = c.get("checks", {}).get("version")
        if not version or not (version.get("moved") or version.get("statuses_changed")
                               or version.get("warnings_differ") or version.get("status") not in ("pass", "skip")):
            continue
        first = version.get("first_moved") or {}
        where = "" if not first else ("outputs" if first["check"] == "outputs" else
                                      f"train step {first['step']} {first['quantity']} {first['variable']}")
        layer = (version.get("first_divergence") or {}).get("layer")
        rows.append({"case": c["case"], "cell": c["cell"], "status": c["status"],
                     "compared_with": version.get("compared_with", ""),
                     "moved": where + (f", first at layer {layer}" if layer else "")
                     + (f" (max abs err {first['max_abs_err']:.3g})" if first.get("max_abs_err") is not None else ""),
                     "count": version.get("moved_count", 0),
                     "statuses": ", ".join(f"{k} {v}" for k, v in version.get("statuses_changed", {}).items()),
                     "warnings": "; ".join(
                         [f"only here: {w}" for w in version.get("warnings_differ", {}).get("only_here", [])]
                         + [f"only in main: {w}" for w in version.get("warnings_differ", {}).get("only_in_main", [])])})
    return rows


def gate_summary(run: dict) -> tuple[str, list[str]] | None:
    """The gate's outcome against the baseline (a heading) and its lines, where the run had one."""
    from harness.report import gate as gate_rules

    result = run.get("gate")
    if not result:
        return None
    outcome = "FAILED" if gate_rules.failed(result) else "passed"
    return (f"Gate against {result.get('baseline', 'the baseline')}: {outcome}",
            gate_rules.describe(result) or ["no cell got worse"])


def environment_lines(run: dict) -> list[str]:
    """What differs between the environments, one line each, first in every report."""
    lines = []
    for name, env in run.get("environments", {}).items():
        if name == "main":
            continue
        differs = env.get("differs", {})
        what = differs.get("unknown") or machine.differs_line(differs)
        lines.append(f"environment {name} against the main one: {what}")
    return lines


def status_counts(cells: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return dict(sorted(counts.items()))


@dataclasses.dataclass
class Matrix:
    cell_ids: list[str]
    rows: list[tuple[str, list[dict | None]]]  # (case, the record of each cell or None)


def matrix(cells: list[dict]) -> Matrix:
    cell_ids = sorted({c["cell"] for c in cells}, key=cell_order)
    by_key = {(c["case"], c["cell"]): c for c in cells}
    cases = list(dict.fromkeys(c["case"] for c in cells))
    return Matrix(cell_ids, [(case, [by_key.get((case, cell)) for cell in cell_ids]) for case in cases])


def failures(cells: list[dict]) -> list[dict]:
    """Every record that did not simply pass or skip, declared failures included."""
    return [c for c in cells if c.get("failure") or c["status"] not in ("pass", "skip")]


FAILING = ("mismatch", "error", "compile_error", "crash", "timeout")

#: One letter per check in the matrix, and one mark per check status.
CHECK_LETTERS = {"build": "B", "outputs": "O", "train": "T", "legacy_load": "L", "rng": "R", "save": "S", "export": "E",
                 "timing": "t", "version": "V"}
CHECK_MARKS = {"pass": "✓", "skip": "·", "mismatch": "≠", "error": "✗", "compile_error": "✗",
               "crash": "✗", "timeout": "✗"}


def references(run: dict, cells: list[dict]) -> str:
    """The run's reference cell, and the keras2 cell that stands in for it in the cases with
    Keras 2 code."""
    own = run.get("reference", "?")
    others = sorted({c.get("reference") for c in cells if c.get("reference") not in (None, own)})
    return own + "".join(f" ({other} for the cases with Keras 2 code)" for other in others)


def diverged(record: dict) -> list[str]:
    """The checks whose values diverge in this cell (outputs or training first), declared or not."""
    return [name for name, check in record.get("checks", {}).items() if check.get("status") == "mismatch"]


def status_label(record: dict, marks: dict = STATUS_MARKS) -> str:
    """The matrix's headline for a cell: its status (with its mark from `marks`), led by the
    divergence where its values diverge and a worse failure (an exporter's error) sets the status."""
    status = record["status"]
    values = [n for n in diverged(record) if n in ("outputs", "train", "version")]
    if values and status not in ("mismatch", "xfail"):
        return f"{marks.get('mismatch', 'mismatch')} ({', '.join(values)}) · {marks.get(status, status)}"
    return marks.get(status, status)


def failure_groups(cells: list[dict], properties: list[dict]) -> list[tuple[str, list[tuple[dict, list]]]]:
    """The failing cells in the order the pages list them, each with its failing checks (the
    model's properties left out): the cells whose values diverge first, then the cells with
    errors only, grouped by the check that failed first; last, declared failures that did
    not happen, and the cells that fail only as every cell of their case does (`PROPERTIES_ONLY`).
    Within a cell, divergences come before errors."""
    order = list(CHECK_LETTERS)
    groups: dict[str, list] = {"Divergences": []}
    declared_only, properties_only = [], []
    for c in failures(cells):
        bad = divergences(c, properties)
        bad.sort(key=lambda nf: (c["checks"][nf[0]].get("status") != "mismatch", order.index(nf[0]) if nf[0] in order else 99))
        if not bad:
            (declared_only if c.get("xfail") else properties_only).append((c, bad))
            continue
        if c["checks"][bad[0][0]].get("status") == "mismatch":
            groups["Divergences"].append((c, bad))
        else:
            groups.setdefault(f"Errors in {bad[0][0]}", []).append((c, bad))
    errors = sorted((g for g in groups if g != "Divergences"), key=lambda g: order.index(g.split()[-1])
                    if g.split()[-1] in order else 99)
    found = [(g, groups[g]) for g in ["Divergences", *errors] if groups[g]]
    return found + [(title, rows) for title, rows in (("Declared, and not as declared", declared_only),
                                                      (PROPERTIES_ONLY, properties_only)) if rows]


PROPERTIES_ONLY = "Failing only as the model does in every cell"


def arbitrated(cells: list[dict]) -> list[dict]:
    """Every check the float64 arbiter judged: case, cell, check, its verdict, the float64 it was
    judged against, and the widest value's figures."""
    rows = []
    for c in cells:
        for name, check in c.get("checks", {}).items():
            account = check.get("float64")
            if not account or "truth" not in account:  # not run (a plain function): the plain verdict
                continue
            judged = list((account.get("outputs") or {}).values())
            first = check.get("first_divergence", {}).get("float64")
            widest = first or account.get("widest") or max(
                judged, key=lambda j: j["error"] / j["band"] if j["band"] else 0, default=None)
            rows.append({"case": c["case"], "cell": c["cell"], "check": name, "status": c["status"],
                         "verdict": account.get("verdict", ""), "truth": account.get("truth"),
                         "outlier": account.get("outlier") or check.get("first_divergence", {}).get("outlier"),
                         "widest": widest, "reference_far": account.get("reference_far"),
                         "beyond": account.get("beyond_tolerance"), "chaotic": account.get("roundoff_dominated")})
    return rows


def check_marks(record: dict) -> str:
    """The matrix's per-check summary of a cell: `B✓ O✓ 2.1e-07 T✓ S✗ E·` (✓ passed, ≠
    mismatched, ✗ failed, · skipped or not run), the outputs error beside O (relative to the
    values' largest magnitude, `rel`, where they were compared at their own scale)."""
    marks = []
    checks = record.get("checks", {})
    for name in sorted(checks, key=lambda n: list(CHECK_LETTERS).index(n) if n in CHECK_LETTERS else 99):
        check = checks[name]
        mark = CHECK_LETTERS.get(name, name) + CHECK_MARKS.get(check.get("status"), "?")
        if name == "outputs" and "max_scaled_err" in check:  # tiny values, compared at their own scale
            mark += f" {check['max_scaled_err']:.1e} rel"
        elif name == "outputs" and check.get("max_abs_err"):
            mark += f" {check['max_abs_err']:.1e}"
        marks.append(mark)
    return " ".join(marks)


def fallback_references(cells: list[dict]) -> list[tuple[str, str]]:
    """(case, what was compared with which cell) where the reference cell failed and another
    cell stood in for it."""
    found = {}
    for c in cells:
        if c.get("fallback_reference"):
            found[c["case"]] = ", ".join(f"{check} with {ref}" for check, ref in c["fallback_reference"].items())
    return list(found.items())


def check_failures(record: dict) -> list[tuple[str, dict]]:
    """(check, failure record) for every failing check of a cell, in check order; a check
    without a record of its own (an older report) gets one from its message."""
    found = []
    checks = record.get("checks", {})
    for name in sorted(checks, key=lambda n: list(CHECK_LETTERS).index(n) if n in CHECK_LETTERS else 99):
        check = checks[name]
        if check.get("status") in FAILING:
            found.append((name, check.get("failure") or {
                "check": name, "kind": check["status"], "message": check.get("message", check["status"])}))
    return found


def cause_to_show(failure: dict) -> str | None:
    """The root cause, where the message does not already say it."""
    cause = failure.get("root_cause")
    if not cause or cause.split(": ", 1)[-1] in failure.get("message", ""):
        return None
    return cause


def failure_key(failure: dict) -> tuple:
    """What makes two cells' failures the same failure: where, what kind, and the cause."""
    return (failure.get("check"), failure.get("phase"), failure.get("kind"),
            failure.get("root_cause") or failure.get("message"))


def model_properties(cells: list[dict]) -> list[dict]:
    """Failures that every cell of a case that ran the check shares, the reference included: a
    property of the model (it cannot be saved on any backend), reported once rather than per
    cell. Rows: case, check, the failure, and the cells that share it."""
    by_case: dict[str, list[dict]] = {}
    for c in cells:
        by_case.setdefault(c["case"], []).append(c)
    rows = []
    for case, records in by_case.items():
        reference = next((r for r in records if r["cell"] == r.get("reference")), None)
        if reference is None:
            continue
        for key, failure in {failure_key(f): f for _, f in check_failures(reference)}.items():
            ran = [r for r in records if r.get("checks", {}).get(key[0], {}).get("status", "skip") != "skip"]
            if len(ran) >= 2 and all(key in {failure_key(f) for _, f in check_failures(r)} for r in ran):
                rows.append({"case": case, "check": key[0], "failure": failure, "cells": [r["cell"] for r in ran]})
    return rows


def divergences(record: dict, properties: list[dict]) -> list[tuple[str, dict]]:
    """A cell's failing checks less the model's properties (those are reported once)."""
    shared = {failure_key(p["failure"]) for p in properties if p["case"] == record["case"]}
    return [(name, f) for name, f in check_failures(record) if failure_key(f) not in shared]


def machine_dependent(cells: list[dict]) -> list[dict]:
    """Declarations of machine-dependent outcomes, one row per case and declaration: the cells it
    covers with what this machine gave each (`cells`: [(cell, outcome, declared or not)]), and every
    allowed outcome with what was measured where it happens."""
    rows: dict[tuple, dict] = {}
    for c in cells:
        declared = c.get("xfail") or {}
        if declared.get("outcomes"):
            key = (c["case"], declared["reason"], tuple(declared["outcomes"].items()))
            row = rows.setdefault(key, {"case": c["case"], "outcomes": declared["outcomes"],
                                        "reason": declared["reason"], "cells": []})
            row["cells"].append((c["cell"], declared["actual"], declared["met"]))
    for row in rows.values():
        row["cells"].sort(key=lambda cell: cell_order(cell[0]))
    return list(rows.values())


def machines(run: dict) -> list[str]:
    """One line per machine the report ran on (one per shard of a merged report)."""
    return [machine.summary(m) for m in machine.of_run(run)]


def failure_where(failure: dict) -> str:
    """'outputs/predict': the check and phase a failure happened in."""
    return "/".join(str(x) for x in (failure.get("check"), failure.get("phase")) if x)


def compile_failures(cells: list[dict]) -> list[dict]:
    """Cells whose jit compiler failed (status compile_error, or declared as such)."""
    rows = []
    for c in cells:
        actual = (c.get("xfail") or {}).get("actual", c["status"])
        if "compile_error" not in (c["status"], actual):
            continue
        f = c.get("failure") or {}
        rows.append({"case": c["case"], "cell": c["cell"], "status": c["status"],
                     "where": failure_where(f),
                     "kind": f.get("kind", ""), "exception": f.get("exception", ""),
                     "unsupported_ops": f.get("unsupported_ops", []), "hint": f.get("hint") or ""})
    return rows


def library_warnings(cells: list[dict]) -> list[dict]:
    """What the library warned, a row per distinct warning: the cases that gave it, the cells
    that warned it (with how often, over those cases) and the cells that ran one of those cases
    without it (`silent_in`), since a warning one backend or release gives and another does not
    often marks a behaviour that differs."""
    rows: dict[tuple[str, str], dict] = {}
    ran: dict[str, set[str]] = {}
    for c in sorted(cells, key=lambda c: (c["case"], cell_order(c["cell"]))):
        if c["status"] != "skip":
            ran.setdefault(c["case"], set()).add(c["cell"])
        for w in c.get("warnings", []):
            row = rows.setdefault((w["category"], w["message"]),
                                  {"category": w["category"], "message": w["message"], "cases": {}, "cells": {}})
            row["cases"].setdefault(c["case"], set()).add(c["cell"])
            row["cells"][c["cell"]] = row["cells"].get(c["cell"], 0) + w["count"]
    for row in rows.values():
        silent = {cell for case, warned in row["cases"].items() for cell in ran.get(case, set()) - warned}
        row["silent_in"] = sorted(silent, key=cell_order)
        row["cases"] = sorted(row["cases"])
    return sorted(rows.values(), key=lambda r: (not r["silent_in"], len(r["cases"]), r["message"]))


def warned_in(row: dict) -> str:
    return ", ".join(f"{cell} x{n}" if n > 1 else cell for cell, n in sorted(row["cells"].items(),
                                                                             key=lambda item: cell_order(item[0])))


def listed(names: list[str], shown: int = 6) -> str:
    """A long list of names as its count and first few."""
    return f"{len(names)}: " + ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


TIMING_COLUMNS = (  # (key in `timings`, heading, unit)
    ("build_s", "build", "s"),
    ("predict_first_s", "predict first", "s"),
    ("predict_median_s", "predict median", "s"),
    ("train_first_s", "train first", "s"),
    ("train_median_s", "train step median", "s"),
    ("save_s", "save check", "s"),
    ("export_s", "export check", "s"),
    ("cpu_s", "cell CPU", "s"),
    ("worker_peak_rss_mb", "worker peak RSS", "MB"),
    ("gpu_peak_mb", "GPU peak", "MB"),
)


def timing_rows(cells: list[dict]) -> list[tuple[str, str, dict]]:
    """(case, cell, timings) for every cell that measured any."""
    rows = [(c["case"], c["cell"], c["timings"]) for c in cells if c.get("timings")]
    cases = list(dict.fromkeys(case for case, _, _ in rows))
    return sorted(rows, key=lambda r: (cases.index(r[0]), cell_order(r[1])))


def format_figure(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.2f} s"


def format_error(value: float | None) -> str:
    return "" if value is None else "0" if value == 0 else f"{value:.2g}"


def save_matrix(cells: list[dict]) -> tuple[list[str], list[tuple[str, str, dict[str, str]]]]:
    """`.keras` files saved under one cell and loaded under another: loader columns and
    rows of (case, saved under, {loader: status})."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    loaders: set[str] = set()
    for c in cells:
        for source, result in c.get("checks", {}).get("save", {}).get("loaded_from", {}).items():
            rows.setdefault((c["case"], source), {})[c["cell"]] = result["status"]
            loaders.add(c["cell"])
    return sorted(loaders, key=cell_order), [(case, source, r) for (case, source), r in rows.items()]


def namespace(api: str) -> str:
    """'keras.layers.Dense' -> 'keras.layers'; 'migration.pitfall05' -> 'migration'."""
    return api.rsplit(".", 1)[0] if "." in api else api


def coverage(cells: list[dict]) -> tuple[list[str], list[dict]]:
    """What the cases' `covers` names add up to, per namespace: APIs and cases covered, and per
    backend the APIs with a cell that failed or was declared to fail (a divergence found).
    Returns (backends, rows)."""
    backends = sorted({c["backend"] for c in cells if c.get("covers")}, key=lambda b: cell_order(f"{b}-cpu-nojit"))
    rows: dict[str, dict] = {}
    for c in cells:
        for api in c.get("covers") or ():
            row = rows.setdefault(namespace(api), {"namespace": namespace(api), "apis": set(), "cases": set(),
                                                   "diverging": {b: set() for b in backends}})
            row["apis"].add(api)
            row["cases"].add(c["case"])
            if c["status"] not in ("pass", "skip"):
                row["diverging"][c["backend"]].add(api.rsplit(".", 1)[-1])
    return backends, [rows[k] for k in sorted(rows)]


LAYER_ROWS = 40  # of a localized divergence's per-layer table; the rest in parity.json
LEAD_ROWS = 10  # where the table is cut: rows kept before the first departing one


@dataclasses.dataclass
class Localized:
    case: str
    cell: str
    check: str
    summary: str  # the layer, the outlier, the cause, in one sentence
    reproducer: str | None  # the command that reproduces it
    layers: list[dict]  # per layer: layer, class, shape, inputs_err, output_err, growth, verdict; {"gap": n} between
    first_key: str | None  # the call of the first diverging layer


def growth(row: dict) -> str:
    """How a layer changes the error it receives: `new` where its inputs agree exactly and its
    output does not, `x12` its output's error over its inputs', `-` where both are nil."""
    inputs, output = row.get("inputs_err"), row.get("output_err")
    if inputs is None or output is None:
        return "missing here" if row.get("missing") else "-"
    if output == 0:
        return "-"
    if inputs == 0:
        return "new"
    return f"x{output / inputs:.3g}"


def verdict(row: dict) -> str:
    """Whether the layer's output is within the case's tolerance of the reference's, or beyond
    it but within float32 round-off of float64, or departs."""
    if row.get("missing"):
        return "missing here"
    if row.get("within_roundoff"):
        return "within round-off"
    return "agrees" if row.get("agrees") else "departs"


def window(rows: list[dict], first: int | None, limit: int = LAYER_ROWS) -> list[dict]:
    """A long table cut to `limit` rows, never hiding the first departing one: the rows up to
    the limit where it is among them, else the first LEAD_ROWS, then the rows from LEAD_ROWS
    before it; `{"gap": n}` stands for the rows left out."""
    if len(rows) <= limit:
        return rows
    if first is None or first < limit - LEAD_ROWS:
        return rows[:limit] + [{"gap": len(rows) - limit}]
    start = first - LEAD_ROWS
    shown = rows[:LEAD_ROWS] + [{"gap": start - LEAD_ROWS}] + rows[start:start + limit - LEAD_ROWS]
    rest = len(rows) - (start + limit - LEAD_ROWS)
    return shown + ([{"gap": rest}] if rest > 0 else [])


def localized(cells: list[dict]) -> list[Localized]:
    """Every cell whose divergence was localized, with its per-layer table (cut where long)."""
    found = []
    for c in cells:
        for check in ("outputs", "train", "version"):
            localization = c.get("checks", {}).get(check, {}).get("localization")
            if not localization or not localization.get("layers"):
                continue
            first = localization.get("first_divergence", {})
            first_key = first.get("call", first.get("layer"))
            rows = [{**row, "growth": growth(row), "verdict": verdict(row)} for row in localization["layers"]]
            index = next((i for i, row in enumerate(rows) if row["key"] == first_key), None)
            found.append(Localized(c["case"], c["cell"], check, localization.get("summary", ""),
                                   (first.get("reproducer") or {}).get("command"), window(rows, index), first_key))
    return found
