"""`parity.html`: one self-contained page (no scripts, fonts or images fetched) with the matrix,
compile failures, a timing chart per case (inline SVG) and every failure's full detail.

Every string that comes from a report (case names, messages, tracebacks, notes) goes through
`esc`, so a user's `<script>` in an exception message is shown, never run.
"""

from __future__ import annotations

import html
import json
import math

from harness.report import tables

STATUS_COLOURS = {
    "pass": "#d7f5dd", "xfail": "#e8e8e8", "skip": "#f4f4f4", "mismatch": "#ffd6d6",
    "error": "#ffc9a8", "compile_error": "#ffe9a8", "crash": "#f2b8ff", "timeout": "#c9d8ff",
}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.cell { white-space: nowrap; }
td.cell a { color: inherit; text-decoration: none; display: block; }
code, pre { font: 12px/1.35 ui-monospace, monospace; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
details { margin: .4em 0 .8em; } summary { cursor: pointer; }
.hint { background: #eef6ff; padding: .3em .6em; border-left: 3px solid #3b82f6; }
.chart { margin: .3em 0 1.2em; }
.muted { color: #666; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def render(report: dict) -> str:
    cells = report["cells"]
    run = report.get("run", {})
    failed = tables.failures(cells)
    anchors = {(c["case"], c["cell"]): f"failure-{i}" for i, c in enumerate(failed, 1)}
    counts = ", ".join(f"{n} {esc(s)}" for s, n in tables.status_counts(cells).items())
    versions = ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted(run.get("versions", {}).items()))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No network: inline style only, and a policy that forbids fetching anything.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        "<title>keras-parity report</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>keras-parity report</h1>",
        "".join(f'<p class="environments"><b>{esc(line)}</b></p>' for line in tables.environment_lines(run)),
        f"<p id=\"summary\">{len(cells)} cells: {counts}. Reference cell: "
        f"<code>{esc(tables.references(run, cells))}</code>.</p>",
        f"<p class=\"muted\">{versions}</p>" if versions else "",
        "".join(f'<p class="muted machine">Machine: {esc(line)}</p>' for line in tables.machines(run)),
        render_gate(run),
        render_matrix(cells, anchors),
        render_failures(cells, anchors),
        render_versions(cells),
        render_localized(cells),
        render_arbitrated(cells),
        render_machine_dependent(cells),
        render_compile_failures(cells),
        render_save_matrix(cells),
        render_coverage(cells),
        render_warnings(cells),
        render_timings(cells),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def status_td(status: str, text: str, link: str | None = None, title: str = "") -> str:
    colour = STATUS_COLOURS.get(status, "#fff")
    body = f'<a href="#{link}">{text}</a>' if link else text
    return f'<td class="cell status-{esc(status)}" style="background:{colour}" title="{esc(title)}">{body}</td>'


def render_matrix(cells: list[dict], anchors: dict) -> str:
    m = tables.matrix(cells)
    head = "".join(f"<th>{esc(c)}</th>" for c in m.cell_ids)
    rows = []
    for case, records in m.rows:
        tds = []
        for record in records:
            if record is None:
                tds.append("<td></td>")
                continue
            text = esc(tables.status_label(record, marks={})) + f' <br><small class="marks">{esc(tables.check_marks(record))}</small>'
            message = "; ".join(f"{name}: {f.get('root_cause') or f.get('message', '')}"
                                for name, f in tables.check_failures(record))
            tds.append(status_td(record["status"], text, anchors.get((case, record["cell"])), message[:300]))
        rows.append(f"<tr><th><code>{esc(case)}</code></th>{''.join(tds)}</tr>")
    return (f'<h2>Matrix</h2><table id="matrix"><thead><tr><th>case</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_gate(run: dict) -> str:
    gate = tables.gate_summary(run)
    if not gate:
        return ""
    return (f'<h2 id="gate">{esc(gate[0])}</h2><ul>' + "".join(f"<li>{esc(line)}</li>" for line in gate[1])
            + "</ul>")


def render_versions(cells: list[dict]) -> str:
    rows = tables.versions_compared(cells)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{esc(r['case'])}</code></td><td>{esc(r['cell'])}</td><td>{esc(r['compared_with'])}</td>"
        f"<td>{esc(r['moved'])}</td><td>{r['count']}</td><td>{esc(r['statuses'])}</td><td>{esc(r['warnings'])}</td></tr>"
        for r in rows)
    return ("<h2>Across environments (version)</h2><p>Each cell of another environment against the main "
            "environment's same cell, from the same inputs and initial weights.</p>"
            '<table id="versions"><thead><tr><th>case</th><th>cell</th><th>compared with</th><th>moved first</th>'
            f"<th>moved</th><th>statuses</th><th>warnings</th></tr></thead><tbody>{body}</tbody></table>")


def render_coverage(cells: list[dict]) -> str:
    backends, rows = tables.coverage(cells)
    if not rows:
        return ""
    head = "".join(f"<th>{esc(b)}</th>" for b in backends)
    body = "".join(
        f"<tr><td>{esc(row['namespace'])}</td><td>{len(row['apis'])}</td><td>{len(row['cases'])}</td>"
        + "".join(f"<td>{len(row['diverging'][b])}<br><small>{esc(', '.join(sorted(row['diverging'][b])))}"
                  "</small></td>" for b in backends) + "</tr>"
        for row in rows)
    return ("<h2>Coverage</h2><p>APIs the cases name in <code>covers</code>; per backend, those with a "
            "cell that failed or is declared to fail.</p>"
            f'<table id="coverage"><thead><tr><th>covered</th><th>APIs</th><th>cases</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def render_machine_dependent(cells: list[dict]) -> str:
    rows = tables.machine_dependent(cells)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{esc(r['case'])}</code></td><td>"
        + "<br>".join(f"{esc(cell)}: <b>{esc(actual)}</b>" + ("" if met else " (not declared: fails)")
                      for cell, actual, met in r["cells"])
        + "</td><td>" + "<br>".join(f"<b>{esc(status)}</b>: {esc(measured)}" for status, measured in r["outcomes"].items())
        + f"</td><td>{esc(r['reason'])}</td></tr>" for r in rows)
    return ("<h2>Machine-dependent outcomes</h2><p>Cells whose outcome depends on the CPU and the kernels "
            "the backends chose for it (see Machine above); any declared outcome is accepted, any other "
            'fails.</p><table id="machine-dependent"><thead><tr><th>case</th><th>this machine</th>'
            "<th>declared outcomes (measured where they happen)</th><th>why</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def render_compile_failures(cells: list[dict]) -> str:
    rows = tables.compile_failures(cells)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{esc(r['case'])}</code></td><td>{esc(r['cell'])}"
        f"{' (declared)' if r['status'] == 'xfail' else ''}</td><td>{esc(r['where'])}</td>"
        f"<td>{esc(r['kind'])}</td><td>{esc(', '.join(r['unsupported_ops']))}</td>"
        f"<td>{esc(r['exception'])}</td><td>{esc(r['hint'])}</td></tr>" for r in rows)
    return ('<h2>Compile failures</h2><table id="compile-failures"><thead><tr><th>case</th><th>cell</th>'
            "<th>where</th><th>kind</th><th>unsupported ops</th><th>exception</th><th>hint</th></tr>"
            f"</thead><tbody>{body}</tbody></table>")


def render_warnings(cells: list[dict]) -> str:
    rows = tables.library_warnings(cells)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{esc(r['message'])}</td><td>{esc(r['category'])}</td><td>{esc(tables.listed(r['cases']))}</td>"
        f"<td>{esc(tables.warned_in(r))}</td><td><b>{esc(', '.join(r['silent_in']))}</b></td></tr>" for r in rows)
    return ("<h2>Warnings</h2><p>What the library warned while the cells ran (Python warnings and logged "
            "warnings), a row per warning; the cells that ran one of its cases without it are marked, first.</p>"
            '<table id="warnings"><thead><tr><th>warning</th><th>category</th><th>cases</th><th>warned in</th>'
            f"<th>not in</th></tr></thead><tbody>{body}</tbody></table>")


def render_timings(cells: list[dict]) -> str:
    rows = tables.timing_rows(cells)
    if not rows:
        return ""
    columns = [c for c in tables.TIMING_COLUMNS if any(c[0] in t for _, _, t in rows)]
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in columns)
    body = "".join(
        f"<tr><td><code>{esc(case)}</code></td><td>{esc(cell)}</td>"
        + "".join(f"<td>{esc(tables.format_figure(t.get(k), unit))}</td>" for k, _, unit in columns) + "</tr>"
        for case, cell, t in rows)
    by_case: dict[str, list[tuple[str, dict]]] = {}
    for case, cell, t in rows:
        by_case.setdefault(case, []).append((cell, t))
    charts = "".join(f'<div class="chart"><h3><code>{esc(case)}</code></h3>{timing_chart(series)}</div>'
                     for case, series in by_case.items())
    return ("<h2>Timings</h2><p>Bars: steady-state medians after a warm-up, with the device "
            "synchronised; whiskers: min to max of the repeats; ◆: the first call, compile "
            "included. Log scale.</p>" + charts
            + f'<details><summary>All figures</summary><table id="timings"><thead><tr><th>case</th>'
              f"<th>cell</th>{head}</tr></thead><tbody>{body}</tbody></table></details>")


SERIES = (("predict", "#3b82f6"), ("train", "#f59e0b"))


def timing_chart(series: list[tuple[str, dict]]) -> str:
    """Per cell, one bar per phase (predict, train step) on a shared log-scale time axis."""
    values = [t[f"{phase}_{k}_s"] for _, t in series for phase, _ in SERIES for k in ("min", "max", "first")
              if t.get(f"{phase}_{k}_s")]
    if not values:
        return '<p class="muted">no steady-state timings</p>'
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    label_w, plot_w, bar_h, top = 170, 520, 12, 22
    height = top + len(series) * (2 * bar_h + 10) + 6

    def x(seconds: float) -> float:
        return label_w + plot_w * (math.log10(max(seconds, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 40}" height="{height}" '
           f'role="img" aria-label="timings" font-size="11" font-family="sans-serif">']
    for i, (phase, colour) in enumerate(SERIES):  # the legend, in the label column
        out.append(f'<rect x="{i * 70}" y="{top - 17}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{i * 70 + 13}" y="{top - 8}" fill="#222">{phase}</text>')
    decade = lo
    while decade <= hi * 1.0001:
        out.append(f'<line x1="{x(decade):.1f}" y1="{top - 4}" x2="{x(decade):.1f}" y2="{height - 4}" stroke="#ddd"/>'
                   f'<text x="{x(decade):.1f}" y="{top - 8}" text-anchor="middle" fill="#666">'
                   + (f"{decade * 1000:g} ms" if decade < 1 else f"{decade:g} s") + "</text>")
        decade *= 10
    y = top
    for cell, t in series:
        out.append(f'<text x="0" y="{y + bar_h + 4}" fill="#222">{esc(cell)}</text>')
        for i, (phase, colour) in enumerate(SERIES):
            row_y = y + i * (bar_h + 2)
            median = t.get(f"{phase}_median_s")
            if median:
                low, high = t.get(f"{phase}_min_s", median), t.get(f"{phase}_max_s", median)
                mid = row_y + bar_h / 2
                out.append(f'<rect x="{label_w}" y="{row_y}" width="{x(median) - label_w:.1f}" height="{bar_h}" '
                           f'fill="{colour}"><title>{esc(cell)} {phase} median '
                           f"{esc(tables.format_figure(median, 's'))}</title></rect>"
                           f'<line x1="{x(low):.1f}" y1="{mid}" x2="{x(high):.1f}" y2="{mid}" stroke="#222"/>')
            first = t.get(f"{phase}_first_s")
            if first:
                cx, cy = x(first), row_y + bar_h / 2
                out.append(f'<path d="M{cx:.1f} {cy - 5}l5 5-5 5-5-5z" fill="{colour}" stroke="#222">'
                           f"<title>{esc(cell)} {phase} first call {esc(tables.format_figure(first, 's'))}"
                           "</title></path>")
        y += 2 * bar_h + 10
    out.append("</svg>")
    return "".join(out)


def render_save_matrix(cells: list[dict]) -> str:
    columns, rows = tables.save_matrix(cells)
    if not rows:
        return ""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><td><code>{esc(case)}</code></td><td>{esc(source)}</td>"
        + "".join(status_td(r[col], esc(r[col])) if col in r else "<td>—</td>" for col in columns) + "</tr>"
        for case, source, r in rows)
    return (f'<h2>Files across backends and environments (saved under x loaded under)</h2><table id="save-matrix"><thead><tr><th>case</th>'
            f"<th>saved under</th>{head}</tr></thead><tbody>{body}</tbody></table>")


FIRST_ROW = f'<tr class="first" style="background:{STATUS_COLOURS["mismatch"]}">'


def render_localized(cells: list[dict]) -> str:
    found = tables.localized(cells)
    if not found:
        return ""
    parts = ["<h2>Localized divergences</h2><p>Where each mismatching cell first departs from the reference, "
             "layer by layer in the reference's order (max abs errors; growth: the output's error over its "
             "inputs'; output: within the case's tolerance of the reference's, beyond it but within float32 round-off of "
             "float64, or departing). The chart: each layer's output error, log scale.</p>"]
    for i, d in enumerate(found, 1):
        rows = "".join(
            f'<tr class="gap"><td colspan="7" class="muted">... {row["gap"]} more layers in parity.json</td></tr>'
            if "gap" in row else
            (FIRST_ROW if row["key"] == d.first_key else "<tr>")
            + f"<td><code>{esc(row['key'])}</code></td><td>{esc(row['class'])}</td><td>{esc(tuple(row['shape']))}</td>"
            f"<td>{esc(tables.format_error(row.get('inputs_err')))}</td>"
            f"<td>{esc(tables.format_error(row.get('output_err')))}</td><td>{esc(row['growth'])}</td>"
            f"<td>{'departs first' if row['key'] == d.first_key else esc(row['verdict'])}</td></tr>"
            for row in d.layers)
        reproduce = f"<p>Reproduce: <code>{esc(d.reproducer)}</code></p>" if d.reproducer else ""
        parts.append(f'<section id="localized-{i}" class="localized"><h3><code>{esc(d.case)}</code> '
                     f"[{esc(d.cell)}] {esc(d.check)}</h3><p>{esc(d.summary)}</p>{reproduce}"
                     f'<div class="chart">{error_chart([r for r in d.layers if "gap" not in r])}</div>'
                     f"<table><thead><tr><th>layer</th><th>class</th><th>output shape</th><th>inputs err</th>"
                     f"<th>output err</th><th>growth</th><th>output</th></tr></thead><tbody>{rows}</tbody></table></section>")
    return "".join(parts)


def error_chart(rows: list[dict]) -> str:
    """Each layer's output error as a bar on a log scale, in the reference's order; nil errors
    sit at the floor, infinite ones reach the top."""
    finite = [r["output_err"] for r in rows if r.get("output_err") and math.isfinite(r["output_err"])]
    lo = 10 ** math.floor(math.log10(min(finite))) if finite else 1e-8
    hi = 10 ** math.ceil(math.log10(max(finite))) if finite else 1.0
    lo, hi = min(lo, 1e-8), max(hi, lo * 10)
    width, height, left, bottom = max(160, 18 * len(rows)) + 50, 140, 50, 16

    def y(err) -> float:
        if not err:
            return height - bottom
        if not math.isfinite(err):
            return 4.0
        return 4 + (height - bottom - 4) * (math.log10(hi) - math.log10(max(err, lo))) / (math.log10(hi) - math.log10(lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="error by layer" font-size="10" font-family="sans-serif">']
    for decade in (lo, math.sqrt(lo * hi), hi):
        out.append(f'<line x1="{left}" y1="{y(decade):.1f}" x2="{width}" y2="{y(decade):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{y(decade) + 3:.1f}" text-anchor="end" fill="#666">{decade:.0e}</text>')
    for i, row in enumerate(rows):
        err = row.get("output_err")
        top = y(err)
        colour = "#ef4444" if row.get("agrees") is False else "#22c55e"
        out.append(f'<rect x="{left + 18 * i + 3}" y="{top:.1f}" width="12" height="{height - bottom - top:.1f}" '
                   f'fill="{colour}"><title>{esc(row["key"])} ({esc(row["class"])}): '
                   f"{esc(tables.format_error(err))}</title></rect>")
    out.append("</svg>")
    return "".join(out)


def render_failure(name: str, f: dict) -> str:
    """One failing check: where and what, its message, root cause, hint, ops and traceback."""
    where = tables.failure_where({**f, "check": f.get("check") or name})
    parts = [f'<div class="check-failure"><h4>{esc(name)}: {esc(f.get("kind", ""))} in {esc(where)}</h4>',
             f'<pre class="message">{esc(f.get("exception") or "")}{": " if f.get("exception") else ""}'
             f'{esc(f.get("message", ""))}</pre>']
    if tables.cause_to_show(f):
        parts.append(f'<p class="cause">Cause: <code>{esc(tables.cause_to_show(f))}</code></p>')
    if f.get("unsupported_ops"):
        parts.append(f"<p>Unsupported ops: {esc(', '.join(f['unsupported_ops']))}</p>")
    if f.get("hint"):
        parts.append(f'<p class="hint">Hint: {esc(f["hint"])}</p>')
    if f.get("traceback"):
        parts.append(f"<details><summary>Traceback</summary><pre>{esc(f['traceback'])}</pre></details>")
    return "".join(parts) + "</div>"


def render_properties(properties: list[dict]) -> str:
    if not properties:
        return ""
    parts = ['<h2>Properties of the models</h2><p class="muted">Failures every cell that ran the check '
             "shares, the reference included: the model's, not a divergence between backends.</p>"]
    for i, p in enumerate(properties, 1):
        parts.append(f'<section id="property-{i}" class="property"><h3><code>{esc(p["case"])}</code>, in '
                     f'{len(p["cells"])} cells <small class="muted">({esc(", ".join(p["cells"]))})</small></h3>'
                     f"{render_failure(p['check'], p['failure'])}</section>")
    return "".join(parts)


def render_arbitrated(cells: list[dict]) -> str:
    rows = tables.arbitrated(cells)
    if not rows:
        return ""
    body = []
    for r in rows:
        widest = r["widest"] or {}
        figures = f"{widest['error']:.3g} / {widest['band']:.3g} ({widest['why']})" if widest else ""
        if r["chaotic"]:
            figures += f"; {r['chaotic']} of {r['beyond']} beyond tolerance dominated by round-off"
        departs = r["outlier"] or ("the reference: " + r["reference_far"] if r["reference_far"] else "")
        body.append(f"<tr><td><code>{esc(r['case'])}</code></td><td>{esc(r['cell'])}</td><td>{esc(r['check'])}</td>"
                    f"<td>{esc(r['verdict'])}</td><td>{esc(r['truth'] or 'none held')}</td><td>{esc(figures)}</td>"
                    f"<td>{esc(departs)}</td></tr>")
    return ('<h2>Judged against float64</h2><p class="muted">Checks whose values failed the plain tolerance, judged '
            "again against the case run in float64: within float32 round-off (RMSE against float64 within the band, "
            "3x the widest of the reference's and its nudged runs'), or diverging.</p>"
            '<table id="float64"><thead><tr><th>case</th><th>cell</th><th>check</th><th>verdict</th><th>float64 from</th>'
            "<th>widest value: RMSE vs float64 / band</th><th>departs</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def render_failures(cells: list[dict], anchors: dict) -> str:
    properties = tables.model_properties(cells)
    parts = [render_properties(properties)]
    groups = tables.failure_groups(cells, properties)
    if groups:
        parts.append('<h2>Failures</h2><p class="muted">Divergences first (values that differ), then errors by '
                     "the check that failed.</p>")
    for title, failed in groups:
        parts.append(f"<h3>{esc(title)}</h3>")
        for c, bad in failed:
            parts.append(render_cell_failures(c, bad, properties, anchors))
    return "".join(parts)


def render_cell_failures(c: dict, bad: list, properties: list[dict], anchors: dict) -> str:
    f = c.get("failure") or {}
    parts = [f'<section id="{anchors[(c["case"], c["cell"])]}" class="failure">'
             f"<h3><code>{esc(c['case'])}</code> [{esc(c['cell'])}] {esc(c['status'])}</h3>"]
    if c.get("xfail"):
        x = c["xfail"]
        parts.append(f"<p>Declared: {esc(x.get('expected'))} ({esc(x.get('reason'))}); "
                     f"got {esc(x.get('actual'))}.</p>")
    for name, failure in bad:
        parts.append(render_failure(name, failure))
    shared = [(i, p) for i, p in enumerate(properties, 1) if p["case"] == c["case"] and c["cell"] in p["cells"]]
    if shared:
        links = ", ".join(f'<a href="#property-{i}">{esc(p["check"])}: {esc(p["failure"].get("kind", ""))}</a>'
                          for i, p in shared)
        parts.append(f'<p class="muted">Failing as in every cell of the case (the model\'s): {links}</p>')
    for note in c.get("notes", []):
        parts.append(f'<p class="muted">Note: {esc(note)}</p>')
    if f.get("log_tail"):
        parts.append(f"<details><summary>Worker log</summary><pre>{esc(f['log_tail'])}</pre></details>")
    parts.append("<details><summary>Checks</summary><pre>"
                 f"{esc(json.dumps(c.get('checks', {}), indent=1, sort_keys=True))}</pre></details></section>")
    return "".join(parts)
