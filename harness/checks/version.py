"""`version`: a cell of another environment (`--keras-env NAME=PYTHON`: another keras, TensorFlow,
JAX or torch release) against the same cell of the main environment, by value, from the same
inputs and the main environment's initial weights, at the case's tolerances: inference outputs,
each training step's losses, metrics, gradients, optimizer variables and weights, and seeded draws
(by value where the backend's random stream is unchanged, else by law, said in a note).

A change that moves every backend alike stays invisible to the cross-backend checks; this one
sees it. It runs in the pytest process over both environments' replies; what the library warns
in one environment and not in the other is listed beside it. The first layer whose output moved
is found by the localization (`harness.session`), with the main cell as the reference.
"""

from __future__ import annotations

import numpy as np

from harness import arrays, compare
from harness.checks.outputs import compare_random_outputs
from harness.replies import load
from harness.report import values
from harness.statuses import MISMATCH, PASS, SKIP

NAME = "version"
MOVED_LISTED = 12  # quantities listed in the record; the count says how many moved in all


def judge(case, cell, record: dict, replies, main_cell, main_replies, main_record: dict | None,
          same_weights: bool) -> None:
    """Adds `version` to an environment cell's record. `same_weights`: this environment's cells
    loaded the main environment's initial weights."""
    rtol, atol = case.rtol, case.atol
    compared, moved, notes, reasons = [], [], [], []
    main_id = main_cell.id
    if main_record is None or main_replies.reply(main_cell) is None:
        reasons.append(f"the main environment's {main_id} did not run")
    elif replies.reply(cell) is None:
        reasons.append("this cell did not run")
    elif not (same_weights and replies.reply(cell).get("weights_loaded") is not False
              and main_replies.reply(main_cell).get("weights_loaded") is not False):
        reasons.append("the cells do not hold the same initial weights (the main environment's could not be "
                       "loaded: see the build check)")
    else:
        for name, compare_check in (("outputs", compare_outputs), ("train", compare_training)):
            mine, theirs = replies.check(cell, name), main_replies.check(main_cell, name)
            if not (mine.get("status") == PASS and theirs.get("status") == PASS and mine.get("file")
                    and theirs.get("file")):
                if name in record["checks"]:
                    reasons.append(f"{name}: not compared ({describe_statuses(theirs, mine)})")
                continue
            found = compare_check(theirs, mine, rtol, atol, notes)
            if found is None:
                reasons.append(f"{name}: not compared by value (the model's own code draws random numbers)")
                continue
            compared.append(name)
            moved += found
    result = {"status": PASS, "compared_with": main_id, "compared": compared}
    changed = changed_statuses(record, main_record)
    if changed:
        result["statuses_changed"] = changed
    differ = warnings_differ(record, main_record)
    if differ:
        result["warnings_differ"] = differ
    if moved:
        result.update(status=MISMATCH, moved=moved[:MOVED_LISTED], moved_count=len(moved),
                      first_moved=moved[0], message=describe_moved(moved, main_id))
    elif not compared:
        result.update(status=SKIP, not_compared=True,
                      reason=f"nothing compared with {main_id}: " + ("; ".join(reasons) or "no values recorded"))
    elif reasons:
        result["not_compared"] = reasons
    for note in notes:
        record["notes"].append(f"version: {note}")
    record["checks"][NAME] = result


def describe_statuses(main: dict, mine: dict) -> str:
    return f"main {main.get('status', 'not run')}, here {mine.get('status', 'not run')}"


def compare_outputs(main: dict, mine: dict, rtol, atol, notes: list) -> list[dict]:
    names, expected = load(main["file"])
    _, got = load(mine["file"])
    if main.get("random") or mine.get("random"):
        if len(expected) == len(got) and all(e.shape == g.shape and np.array_equal(e, g)
                                             for e, g in zip(expected, got)):
            return []
        verdict, how = compare_random_outputs(names, main, mine)
        notes.append(f"the seeded draws at inference differ by value from the main environment's (the "
                     f"backend's random stream changed), so they are compared by law, {how}")
        if verdict["status"] == MISMATCH:
            return [{"check": "outputs", "quantity": "law of the draws", "message": verdict["message"]}]
        return []
    verdict = compare.compare_outputs(names, expected, got, main["dtypes"], mine["dtypes"], rtol, atol)
    if verdict["status"] == PASS:
        return []
    return [{"check": "outputs", "quantity": "output", **{k: verdict[k] for k in (
        "max_abs_err", "max_rel_err", "message") if k in verdict}}]


def compare_training(main: dict, mine: dict, rtol, atol, notes: list) -> list[dict] | None:
    """Every step's quantities, in the order a step computes them: each one that moved."""
    if main.get("randomness", {}).get("own_draws") or mine.get("randomness", {}).get("own_draws"):
        return None
    renamed = values.paired_renames(arrays.load_weights(main["file"]), arrays.load_weights(mine["file"]))
    if renamed:
        shown = sorted({f"{a.split('/', 2)[2]} -> {b.split('/', 2)[2]}" for a, b in renamed.items()})
        notes.append(f"variables are named otherwise in this environment, matched by order and shape: "
                     f"{', '.join(shown[:6])}{' ...' if len(shown) > 6 else ''}")
    return values.compare_file("train", main["file"], mine["file"], rtol, atol)


def describe_moved(moved: list[dict], main_id: str) -> str:
    first = moved[0]
    where = "outputs" if first["check"] == "outputs" else (
        f"training step {first['step']}, {first['quantity']} {first['variable']}")
    more = f" ({len(moved)} quantities moved in all)" if len(moved) > 1 else ""
    return f"moved from the main environment's {main_id}: first at {where}: {first.get('message', '')}{more}"


def changed_statuses(record: dict, main_record: dict | None) -> dict[str, str]:
    """Checks whose status differs between the environments: 'main -> here'."""
    if main_record is None:
        return {}
    return {name: f"{main_record['checks'][name].get('status')} -> {check.get('status')}"
            for name, check in record["checks"].items()
            if name in main_record["checks"] and name != NAME
            and check.get("status") != main_record["checks"][name].get("status")}


def warnings_differ(record: dict, main_record: dict | None) -> dict[str, list[str]]:
    """What the library warned in one environment's cell and not in the other's."""
    def messages(r):
        return {f"{w.get('category', 'warning')}: {w['message']}" for w in (r or {}).get("warnings", [])}

    here, there = messages(record), messages(main_record)
    found = {}
    if here - there:
        found["only_here"] = sorted(here - there)
    if there - here:
        found["only_in_main"] = sorted(there - here)
    return found
