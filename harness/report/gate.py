"""The pre-release gate: this run against a baseline report (`--keras-baseline`).

A regression is a cell that passed in the baseline and no longer does, or a failing cell a
case did not have before. Against a baseline folder with its values, every cell starts from the
baseline's inputs and initial weights, and a value that moved beyond the case's tolerances is
listed (`moved`, its figures from each record's `baseline_values`) and fails the gate as a
regression does: a release that moves every backend alike changes no status. A cell that failed
there and passes now is `fixed`. A cell declared machine-dependent that moved between its allowed
outcomes is not one: it is listed with the machines' differences, which the gate reports
whenever the baseline came from another machine (CPU, kernels, GPU, packages). A slowdown is a
steady-state timing beyond `--keras-perf-threshold` times the baseline's, and beyond the noise
both runs measured: the fastest repeat now must be slower than the slowest repeat then, or a
noisy machine would fail every release.
"""

from __future__ import annotations

from harness import machine
from harness.statuses import is_failure

MOVED_SHOWN = 40  # cells whose values moved, a line each, in the terminal and the pages
TIMINGS = (("predict_median_s", "predict_min_s", "predict_max_s"),
           ("train_median_s", "train_min_s", "train_max_s"))


def machine_changes(baseline_run: dict, run: dict) -> list[str]:
    before, now = machine.of_run(baseline_run), machine.of_run(run)
    if not before or not now:
        return [] if before == now else ["the baseline or this run records no machine (an older report)"]
    if len(before) != len(now):
        return [f"the baseline ran on {len(before)} machine(s), this run on {len(now)}"]
    lines = []
    for i, (old, new) in enumerate(zip(before, now)):
        prefix = f"shard {i + 1}: " if len(now) > 1 else ""
        lines += [prefix + line for line in machine.differences(old, new)]
    return lines


def compare_to_baseline(baseline: dict, cells: list[dict], perf_threshold: float | None,
                        run: dict | None = None) -> dict:
    before = {(c["case"], c["cell"]): c for c in baseline["cells"]}
    regressions, machine_dependent, slowdowns = [], [], []
    for cell in cells:
        key = (cell["case"], cell["cell"])
        old = before.get(key)
        declared = cell.get("xfail") or {}
        if declared.get("outcomes") and declared["met"]:
            if old is not None and old["status"] != cell["status"]:
                machine_dependent.append({"case": key[0], "cell": key[1], "was": old["status"],
                                          "now": cell["status"], "allowed": declared["expected"]})
        elif old is not None and old["status"] == "pass" and cell["status"] != "pass":
            regressions.append({"case": key[0], "cell": key[1], "was": "pass", "now": cell["status"]})
        elif is_failure(cell["status"]) and (old is None or not is_failure(old["status"])):
            regressions.append({"case": key[0], "cell": key[1], "was": old["status"] if old else "absent",
                                "now": cell["status"]})
        if perf_threshold and old is not None:
            for median, fastest, slowest in TIMINGS:
                now, then = cell.get("timings", {}), old.get("timings", {})
                if not (now.get(median) and then.get(median)):
                    continue
                ratio = now[median] / then[median]
                beyond_noise = now.get(fastest, now[median]) > then.get(slowest, then[median])
                if ratio > perf_threshold and beyond_noise:
                    slowdowns.append({"case": key[0], "cell": key[1], "timing": median, "ratio": round(ratio, 3),
                                      "now_s": now[median], "baseline_s": then[median]})
    changes = machine_changes(baseline.get("run", {}), run) if run is not None else []
    fixed = [{"case": c["case"], "cell": c["cell"], "was": before[(c["case"], c["cell"])]["status"]}
             for c in cells if c["status"] == "pass" and (c["case"], c["cell"]) in before
             and (is_failure(before[(c["case"], c["cell"])]["status"]) or before[(c["case"], c["cell"])]["status"] == "xfail")]
    moved = [{"case": c["case"], "cell": c["cell"], **m} for c in cells for m in c.get("baseline_values", {}).get("moved", [])]
    compared = sum(bool(c.get("baseline_values", {}).get("compared")) for c in cells)
    return {"regressions": regressions, "slowdowns": slowdowns, "perf_threshold": perf_threshold,
            "machine_changes": changes, "machine_dependent": machine_dependent, "moved": moved, "fixed": fixed,
            "values_compared": compared if any("baseline_values" in c for c in cells) else None}


def failed(gate: dict) -> bool:
    return bool(gate["regressions"] or gate.get("moved"))


def describe(gate: dict) -> list[str]:
    lines = [f"the baseline came from another machine or set-up: {line}" for line in gate.get("machine_changes", [])]
    lines += [f"regression: {r['case']} [{r['cell']}]: {r['was']} -> {r['now']}" for r in gate["regressions"]]
    lines += [f"machine-dependent, not a regression: {m['case']} [{m['cell']}]: {m['was']} -> {m['now']} "
              f"(declared outcomes: {m['allowed']})" for m in gate.get("machine_dependent", [])]
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for m in gate.get("moved", []):
        by_cell.setdefault((m["case"], m["cell"]), []).append(m)
    for (case, cell), moved in list(by_cell.items())[:MOVED_SHOWN]:
        first = moved[0]
        figures = f" (max abs err {first['max_abs_err']:.3g})" if first.get("max_abs_err") is not None else ""
        lines.append(f"moved: {case} [{cell}]: {len(moved)} quantit{'y' if len(moved) == 1 else 'ies'}, first "
                     f"{where_moved(first)}{figures}: {first.get('message', '')[:200]}")
    if len(by_cell) > MOVED_SHOWN:
        lines.append(f"moved: {len(by_cell) - MOVED_SHOWN} more cells (every quantity in parity.json's run.gate.moved)")
    lines += [f"fixed: {f['case']} [{f['cell']}]: {f['was']} -> pass" for f in gate.get("fixed", [])]
    if gate.get("values_compared") is not None:
        lines.append(f"values compared with the baseline's in {gate['values_compared']} cells")
    lines += [f"slowdown: {s['case']} [{s['cell']}] {s['timing']}: {s['ratio']:.2f}x "
              f"({s['baseline_s'] * 1000:.2f} ms -> {s['now_s'] * 1000:.2f} ms)" for s in gate["slowdowns"]]
    return lines


def where_moved(moved: dict) -> str:
    if moved.get("step") is not None:
        return f"{moved['check']} step {moved['step']} {moved['quantity']} {moved['variable']}"
    return f"{moved['check']} {moved.get('variable') or moved.get('quantity', '')}".strip()
