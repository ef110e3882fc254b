"""The pre-release gate: this run against a baseline report (`--keras-baseline`).

A regression is a cell that passed in the baseline and no longer does, or a failing cell a
case did not have before. A slowdown is a steady-state timing beyond `--keras-perf-threshold`
times the baseline's, and beyond the noise both runs measured: the fastest repeat now must be
slower than the slowest repeat then, or a noisy machine would fail every release.
"""

from __future__ import annotations

from harness.statuses import is_failure

TIMINGS = (("predict_median_s", "predict_min_s", "predict_max_s"),
           ("train_median_s", "train_min_s", "train_max_s"))


def compare_to_baseline(baseline: dict, cells: list[dict], perf_threshold: float | None) -> dict:
    before = {(c["case"], c["cell"]): c for c in baseline["cells"]}
    regressions, slowdowns = [], []
    for cell in cells:
        key = (cell["case"], cell["cell"])
        old = before.get(key)
        if old is not None and old["status"] == "pass" and cell["status"] != "pass":
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
    return {"regressions": regressions, "slowdowns": slowdowns, "perf_threshold": perf_threshold}


def describe(gate: dict) -> list[str]:
    lines = [f"regression: {r['case']} [{r['cell']}]: {r['was']} -> {r['now']}" for r in gate["regressions"]]
    lines += [f"slowdown: {s['case']} [{s['cell']}] {s['timing']}: {s['ratio']:.2f}x "
              f"({s['baseline_s'] * 1000:.2f} ms -> {s['now_s'] * 1000:.2f} ms)" for s in gate["slowdowns"]]
    return lines
