"""The pytest process's side of a localization: which cells to localize, and what their replies
add to the records (the outlier at the first diverging layer, the compiler as the cause, the
per-layer table and the sentence that leads the failure's message).
"""

from __future__ import annotations

import os
import re

from harness import arrays, compare
from harness.cells import Cell
from harness.statuses import MISMATCH, PASS

COMPILERS = {"tensorflow": "XLA", "jax": "jax.jit's XLA", "torch": "torch.compile's inductor"}
TAPPED_UNDER_COMPILER = ("tapped under the compiler: every layer's output is returned from the compiled "
                         "step, which cuts fusion across layers there, so a fusion bug can hide")


def wanted(records: dict[Cell, dict], replies) -> dict[tuple, list[Cell]]:
    """The cells to localize, by what is localized: ("outputs",) or ("train", step). Outputs
    that draw random numbers are compared by law, and a plain function has no layers: neither
    is localized; nor is a reference cell that the float64 arbiter found to be the one far from
    float64, which was compared with no cell."""
    found: dict[tuple, list[Cell]] = {}
    for cell, record in records.items():
        mine = replies.check(cell, "outputs")
        outputs, train = record["checks"].get("outputs", {}), record["checks"].get("train", {})
        if (outputs.get("status") == MISMATCH and "compared_with" in outputs and not mine.get("random")
                and mine.get("kind") in ("model", "layer")):
            found.setdefault(("outputs",), []).append(cell)
        first = train.get("first_divergence") or {}
        if first.get("quantity") == "loss" and "compared_with" in train:
            found.setdefault(("train", first["step"]), []).append(cell)
    return found


def judge(records: dict[Cell, dict], check: str, reference: Cell, cells: list[Cell], found: dict[Cell, dict],
          reference_reply: dict, case) -> None:
    """Each localized cell's record gets its localization, with the outlier at its first
    diverging layer: the reference's and the localized cells' values there, and the backends
    whose cells all passed the check taken to side with the reference."""
    tapped = {cell: reply for cell, reply in found.items() if not reply.get("error")}
    if not reference_reply.get("error"):
        tapped[reference] = reference_reply
    loaded = {cell: (reply["calls"], arrays.load_tree(reply["file"])["taps"]) for cell, reply in tapped.items()}
    passed = frozenset(cell for cell, record in records.items() if record["checks"].get(check, {}).get("status") == PASS)
    for cell in cells:
        reply = found[cell]
        first = dict(reply.get("first_divergence") or {})
        name = None
        if first.get("layer") and reference in loaded:
            key = first.get("call", first["layer"])
            values = {other: taps[[c["key"] for c in calls].index(key)]["outputs"]
                      for other, (calls, taps) in loaded.items() if key in [c["key"] for c in calls]}
            if cell in values and reference in values:
                name, first["agree"] = compare.outlier(values, cell, reference, case.rtol, case.atol, passed)
                reply = {**reply, "first_divergence": first}
        sibling = records.get(cell.nojit)
        sibling_agrees = bool(sibling) and sibling["checks"].get(check, {}).get("status") == PASS
        merge(records[cell], check, reply, cell, reference, name, sibling_agrees, reference_reply)
        seconds = reply.get("seconds", {})
        records[cell]["timings"].update({f"localize_{k}": v for k, v in seconds.items()})
    if reference in records and reference_reply.get("seconds"):
        records[reference]["timings"].update(
            {f"localize_reference_{k}": v for k, v in reference_reply["seconds"].items()})


def merge(record: dict, check: str, reply: dict, cell: Cell, reference: Cell, outlier_name: str | None,
          sibling_agrees: bool, reference_reply: dict) -> None:
    """Add a localization to the cell's record: `first_divergence` (with the outlier and, for a
    jit cell whose nojit sibling agrees, the compiler as the cause), the per-layer table, and
    the failure's message, which names the layer and the outlier first."""
    entry = record["checks"][check]
    if reply.get("error"):
        entry["localization"] = {"error": reply["error"]}
        return
    first = dict(reply.get("first_divergence") or {})
    localization = {"layers": reply.get("layers", []), "compared_with": reference.id, "tapped": (
        TAPPED_UNDER_COMPILER if cell.jit else "tapped without a compiler, as the cell runs")}
    if check == "train":
        localization["mode"] = "training: the step's forward pass, its layers (and the layer alone) in training mode"
    if not reply.get("compiled_as_asked", True):
        localization["tapped"] = ("the tapped model ran without a compiler (Keras refused jit for it, or dynamo "
                                  "compiled no graph of it)")
    if reply.get("dynamo"):
        localization["dynamo"] = reply["dynamo"]
    if reply.get("judged_with_float64"):
        localization["float64"] = ("each layer beyond the plain tolerance was judged against the reference's float64 "
                                   "run too: within float32 round-off of it, a layer agrees")
    else:
        why = reference_reply.get("float64_error") or "; ".join(reference_reply.get("narrowed", [])) or "not run"
        localization["float64"] = f"layers judged by the plain tolerance alone (float64 did not hold: {why})"
    if outlier_name:
        first["outlier"] = outlier_name
    if cell.jit and sibling_agrees:
        first.update(cause="compiler", compiler=COMPILERS.get(cell.backend, "the compiler"),
                     agrees_without_jit=cell.nojit.id)
    if reply.get("reproducer"):
        first["reproducer"] = reply["reproducer"]
    if not first.get("layer") and not first.get("between_layers"):
        if check != "train" and not reply.get("tapped_outputs_diverge"):
            first["hidden_by_tapping"] = True
        elif check == "train":
            first["in"] = "the loss"
    localization["first_divergence"] = first
    summary = localization["summary"] = describe(first, check, cell)
    entry["localization"] = localization
    if check != "train":  # outputs, or outputs that moved from the main environment (version)
        entry["first_divergence"] = first
    else:
        entry["first_divergence"] = {**entry["first_divergence"], "forward": first}
    if check != "train":
        entry["message"] = f"{summary}; {entry.get('message', '')}"
    else:  # after the step and variable it names, before their figures
        head, _, figures = entry.get("message", "").partition(": ")
        entry["message"] = f"{head}; {summary}: {figures}"
    if "failure" in entry:
        entry["failure"]["message"] = entry["message"]


def describe(first: dict, check: str, cell: Cell) -> str:
    """The localization in one sentence: the layer, its errors, the outlier, the cause."""
    where = "in the forward pass of the step, " if check == "train" else ""
    if first.get("hidden_by_tapping"):
        text = (f"{where}tapping every layer hid the divergence (with every layer's output returned, the step "
                f"agrees with the reference): a rewrite across layers (a compiler's fusion, TensorFlow's graph "
                f"optimizer) that returned outputs prevent is the likely cause")
    elif first.get("in") == "the loss":
        text = "the forward pass of the step agrees layer by layer: the loss computed from the outputs departs"
    elif not first.get("layer"):
        text = (f"{where}every tapped layer agrees with the reference (within float32 round-off of float64), "
                f"while the outputs depart: the code outside layers departs")
    elif first.get("between_layers"):
        text = (f"{where}diverges between layers: the inputs of {first['layer']} ({first['class']}) already differ "
                f"(max abs err {first['inputs_err']:.3g}) while every layer before it agreed, so the code outside "
                f"layers in its parent's call() departs")
    else:
        local = first.get("local_err")
        alone = "" if local is None else f"; alone on the reference's inputs, {local:.3g} " + (
            "(it introduces the error)" if first.get("introduced") else
            "(it amplifies the difference it received, within tolerance)" if first["inputs_err"] else
            "(alone it agrees: the divergence needs the layers before it, compiled together with it)")
        text = (f"{where}diverges first at layer {first['layer']} ({first['class']}): output max abs err "
                f"{first['output_err']:.3g} while its inputs agree (max abs err {first['inputs_err']:.3g}){alone}")
    if first.get("outlier"):
        text += f"; {first['outlier']} {'depart' if ', ' in first['outlier'] else 'departs'} from the others"
    elif len(first.get("agree", [])) > 1:
        text += "; no single backend departs (the cells that agree there: " + " / ".join(
            ", ".join(group) for group in first["agree"]) + ")"
    if first.get("cause") == "compiler":
        text += (f"; only with jit: {first['agrees_without_jit']}, the same backend without jit, agrees with the "
                 f"reference, so the compiler ({first['compiler']}) is the cause")
    return text


def step_weights(reference_train_file: str, step: int, initial_weights: str, out_path: str) -> str:
    """The weights the reference started step `step` from: the initial ones, or those it
    recorded after the step before."""
    if step == 1:
        return initial_weights
    prefix = f"{step - 1}/weight/"
    recorded = arrays.load_weights(reference_train_file)
    arrays.save_weights(out_path, {k[len(prefix):]: v for k, v in recorded.items() if k.startswith(prefix)})
    return out_path


def repro_folder(report_dir: str, case_id: str, cell: Cell, check: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id.split("::")[-1]).strip("_")
    module = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(case_id.split("::")[0])[0]).strip("_")
    return os.path.join(report_dir, "repro", module, name, f"{cell.id}-{check}")
