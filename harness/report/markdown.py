"""`parity.md`: the report as GitHub-flavoured Markdown, short enough for a CI step summary."""

from __future__ import annotations

from harness.report import tables

MESSAGE_CHARS = 300  # the full message is in parity.json and parity.html


def escape(text) -> str:
    """User text inside a table cell or list item: no pipes, newlines, backticks or markup
    (a Markdown viewer would render an exception message's `<img ...>`)."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " ").replace("`", "'"))


def render(report: dict) -> str:
    cells = report["cells"]
    run = report.get("run", {})
    lines = ["# keras-parity report", ""]
    # '>' alone opens no tag: the arrows stay as the terminal prints them.
    lines += [f"**{escape(line).replace('-&gt;', '->')}**" for line in tables.environment_lines(run)]
    if run.get("versions"):
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(run["versions"].items())))
    for line in tables.machines(run):
        lines.append(f"Machine: {escape(line)}")
    lines.append(f"Reference cell: `{tables.references(run, cells)}`. "
                 + ", ".join(f"{n} {s}" for s, n in tables.status_counts(cells).items()))
    gate = tables.gate_summary(run)
    if gate:
        lines += ["", f"## {escape(gate[0])}", ""] + [f"- {escape(line)}" for line in gate[1]]
    lines += render_matrix(cells)
    for case, compared in tables.fallback_references(cells):
        lines.append(f"\nFallback reference for `{escape(case)}` (its reference cell failed): {escape(compared)}")
    # What matters first: what failed (divergences before errors), where it diverges, what the
    # float64 arbiter said; then the tables about the run.
    lines += render_failures(cells)
    lines += render_versions(cells)
    lines += render_localized(cells)
    lines += render_arbitrated(cells)
    lines += render_machine_dependent(cells)
    lines += render_compile_failures(cells)
    lines += render_save_matrix(cells)
    lines += render_coverage(cells)
    lines += render_warnings(cells)
    lines += render_timings(cells)
    return "\n".join(lines) + "\n"


def render_matrix(cells: list[dict]) -> list[str]:
    m = tables.matrix(cells)
    lines = ["", "Each cell: its status, then a mark per check (B build, O outputs with its max abs "
             "error, T train, L legacy_load, R rng, S save, E export, t timing, V version; ✓ passed, ≠ mismatched, ✗ failed, "
             "· skipped or not run).", "",
             "| case | " + " | ".join(m.cell_ids) + " |", "|---" * (len(m.cell_ids) + 1) + "|"]
    for case, records in m.rows:
        row = []
        for record in records:
            if record is None:
                row.append("")
                continue
            row.append(tables.status_label(record) + f"<br>{escape(tables.check_marks(record))}")
        lines.append(f"| `{escape(case)}` | " + " | ".join(row) + " |")
    return lines


def render_coverage(cells: list[dict]) -> list[str]:
    backends, rows = tables.coverage(cells)
    if not rows:
        return []
    lines = ["", "## Coverage", "",
             "APIs the cases name in `covers`; per backend, those with a cell that failed or is "
             "declared to fail.", "",
             "| covered | APIs | cases | " + " | ".join(backends) + " |", "|---" * (len(backends) + 3) + "|"]
    for row in rows:
        lines.append(f"| {escape(row['namespace'])} | {len(row['apis'])} | {len(row['cases'])} | "
                     + " | ".join(diverging_summary(row["diverging"][b]) for b in backends) + " |")
    return lines


def diverging_summary(names: set[str], shown: int = 6) -> str:
    if not names:
        return "0"
    listed = sorted(names)
    return f"{len(listed)}: " + escape(", ".join(listed[:shown]) + (", ..." if len(listed) > shown else ""))


def render_machine_dependent(cells: list[dict]) -> list[str]:
    rows = tables.machine_dependent(cells)
    if not rows:
        return []
    lines = ["", "## Machine-dependent outcomes", "",
             "Cells whose outcome depends on the CPU and the kernels the backends chose for it "
             "(see Machine above); any declared outcome is accepted, any other fails.", "",
             "| case | this machine | declared outcomes (measured where they happen) |", "|---|---|---|"]
    for r in rows:
        declared = "; ".join(f"**{status}**: {escape(measured)}" for status, measured in r["outcomes"].items())
        got = ", ".join(f"{cell} {actual}" + ("" if met else " (not declared: fails)") for cell, actual, met in r["cells"])
        lines.append(f"| `{escape(r['case'])}` | {escape(got)} | {declared} |")
    return lines


def render_compile_failures(cells: list[dict]) -> list[str]:
    rows = tables.compile_failures(cells)
    if not rows:
        return []
    lines = ["", "## Compile failures", "", "| case | cell | where | kind | unsupported ops | hint |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{escape(r['case'])}` | {r['cell']}{' (declared)' if r['status'] == 'xfail' else ''} "
                     f"| {escape(r['where'])} | {escape(r['kind'])} | {escape(', '.join(r['unsupported_ops']))} "
                     f"| {escape(r['hint'])} |")
    return lines


def render_warnings(cells: list[dict]) -> list[str]:
    rows = tables.library_warnings(cells)
    if not rows:
        return []
    lines = ["", "## Warnings", "", "What the library warned while the cells ran (Python warnings and "
             "logged warnings), a row per warning; the cells that ran one of its cases without it are marked, "
             "first.", "", "| warning | category | cases | warned in | not in |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {escape(r['message'])} | {escape(r['category'])} | {escape(tables.listed(r['cases']))} "
                     f"| {escape(tables.warned_in(r))} | {'**' + escape(', '.join(r['silent_in'])) + '**' if r['silent_in'] else ''} |")
    return lines


def render_timings(cells: list[dict]) -> list[str]:
    rows = tables.timing_rows(cells)
    if not rows:
        return []
    columns = [c for c in tables.TIMING_COLUMNS if any(c[0] in t for _, _, t in rows)]
    lines = ["", "## Timings", "",
             "First calls include compiling; medians are steady state after a warm-up, with the "
             "device synchronised. Peak RSS is the worker's so far.", "",
             "| case | cell | " + " | ".join(heading for _, heading, _ in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for case, cell, timings in rows:
        lines.append(f"| `{escape(case)}` | {cell} | "
                     + " | ".join(tables.format_figure(timings.get(key), unit) for key, _, unit in columns) + " |")
    return lines


def render_versions(cells: list[dict]) -> list[str]:
    rows = tables.versions_compared(cells)
    if not rows:
        return []
    lines = ["", "## Across environments (version)", "",
             "Each cell of another environment against the main environment's same cell, from the same inputs "
             "and initial weights: what moved first (and how many quantities moved), the checks whose status "
             "changed, and what the library warned in one environment only.", "",
             "| case | cell | compared with | moved first | moved | statuses | warnings |", "|---" * 7 + "|"]
    for r in rows:
        lines.append(f"| `{escape(r['case'])}` | {r['cell']} | {r['compared_with']} | {escape(r['moved'])} | "
                     f"{r['count']} | {escape(r['statuses'])} | {escape(r['warnings'][:MESSAGE_CHARS])} |")
    return lines


def render_save_matrix(cells: list[dict]) -> list[str]:
    columns, rows = tables.save_matrix(cells)
    if not rows:
        return []
    lines = ["", "## Files across backends and environments (saved under x loaded under)", "",
             "| case | saved under | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for case, source, results in rows:
        lines.append(f"| `{escape(case)}` | {source} | "
                     + " | ".join(tables.STATUS_MARKS.get(results.get(col, ""), "—") for col in columns) + " |")
    return lines


def render_localized(cells: list[dict]) -> list[str]:
    found = tables.localized(cells)
    if not found:
        return []
    lines = ["", "## Localized divergences", "",
             "Where each mismatching cell first departs from the reference, layer by layer in the "
             "reference's order (max abs errors; growth: the output's error over its inputs'; output: "
             "within the case's tolerance of the reference's, beyond it but within float32 round-off of "
             "float64, or departing).", ""]
    for d in found:
        lines.append(f"- `{escape(d.case)}` [{d.cell}] {d.check}: {escape(d.summary)}")
        if d.reproducer:
            lines.append(f"  - reproduce: `{escape(d.reproducer)}`")
        lines += ["", "  | layer | class | output shape | inputs err | output err | growth | output |",
                  "  |---|---|---|---|---|---|---|"]
        for row in d.layers:
            if "gap" in row:
                lines.append(f"  | ... {row['gap']} more layers in parity.json | | | | | | |")
                continue
            mark = "**departs first**" if row["key"] == d.first_key else row["verdict"]
            lines.append(f"  | `{escape(row['key'])}` | {escape(row['class'])} | {tuple(row['shape'])} | "
                         f"{tables.format_error(row.get('inputs_err'))} | {tables.format_error(row.get('output_err'))} "
                         f"| {row['growth']} | {mark} |")
        lines.append("")
    return lines


def render_failure(name: str, f: dict) -> list[str]:
    """One failing check: where, what, the message (whole where it is the root cause, else its
    start and then the root cause whole), the hint."""
    where = tables.failure_where({**f, "check": f.get("check") or name})
    message, cause = f.get("message", ""), f.get("root_cause")
    is_the_cause = bool(cause) and cause.split(": ", 1)[-1] == message
    shown = message if is_the_cause else message[:MESSAGE_CHARS]
    lines = [f"  - **{escape(name)}** ({escape(where)}, {escape(f.get('kind', ''))}): {escape(shown)}"]
    cause = None if is_the_cause else tables.cause_to_show({**f, "message": shown})
    if cause:
        lines.append(f"    - cause: {escape(cause)}")
    if f.get("hint"):
        lines.append(f"    - hint: {escape(f['hint'])}")
    return lines


def render_properties(properties: list[dict]) -> list[str]:
    if not properties:
        return []
    lines = ["", "## Properties of the models", "",
             "Failures every cell that ran the check shares, the reference included: the model's, "
             "not a divergence between backends.", ""]
    for p in properties:
        lines.append(f"- `{escape(p['case'])}` in {len(p['cells'])} cells ({escape(', '.join(p['cells']))})")
        lines += render_failure(p["check"], p["failure"])
    return lines


def render_failures(cells: list[dict]) -> list[str]:
    properties = tables.model_properties(cells)
    lines = render_properties(properties)
    groups = [(title, rows) for title, rows in tables.failure_groups(cells, properties) if title != tables.PROPERTIES_ONLY]
    if not groups:
        return lines
    lines += ["", "## Failures", "", "Divergences first (values that differ), then errors by the check that failed."]
    for title, failed in groups:
        lines += ["", f"### {title}", ""]
        for c, bad in failed:
            lines.append(f"- `{escape(c['case'])}` [{c['cell']}] **{c['status']}**")
            for name, f in bad:
                lines += render_failure(name, f)
            if c.get("xfail"):
                lines.append(f"  - declared: {escape(c['xfail']['expected'])} ({escape(c['xfail']['reason'])})")
    return lines


def render_arbitrated(cells: list[dict]) -> list[str]:
    rows = tables.arbitrated(cells)
    if not rows:
        return []
    lines = ["", "## Judged against float64", "",
             "Checks whose values failed the plain tolerance, judged again against the case run in float64: "
             "within float32 round-off (RMSE against float64 within the band, 3x the widest of the reference's "
             "and its nudged runs'), or diverging.", "",
             "| case | cell | check | verdict | float64 from | widest value: RMSE vs float64, band | departs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        widest = r["widest"] or {}
        figures = (f"{widest['error']:.3g}, {widest['band']:.3g} ({escape(widest['why'])})" if widest else "")
        if r["chaotic"]:
            figures += f"; {r['chaotic']} of {r['beyond']} beyond tolerance dominated by round-off"
        departs = r["outlier"] or ("the reference: " + r["reference_far"] if r["reference_far"] else "")
        lines.append(f"| `{escape(r['case'])}` | {r['cell']} | {r['check']} | {escape(r['verdict'])} | "
                     f"{escape(r['truth'] or 'none held')} | {figures} | {escape(departs)} |")
    return lines
