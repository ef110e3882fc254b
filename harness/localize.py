"""Where a model diverges: the first layer whose output departs from the reference's while its
inputs agree, what that layer does alone, which backend is the odd one out, and a reproducer.

It runs only for cells whose `outputs` mismatched, or whose `train` check first diverged in
the loss of a step (the forward pass of that step, in training mode, from the reference's
weights at its start). The reference cell runs the model once more with every layer call
tapped (`harness.taps`); then each such cell does, given the reference's taps: it compares
them layer by layer in the reference's order, feeds the first diverging layer the reference's
inputs (`local_err`: the layer's own error, telling a layer that introduces error from one
that amplifies what it received), and writes a reproducer (`harness.reproducer`). The pytest
process then says which backend departs (`outlier`) and whether the compiler is the cause
(a jit cell whose nojit sibling agrees), and adds it all to the cell's record.

`serve` is the worker's side (it imports keras); the rest runs in the pytest process.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import traceback

import numpy as np

from harness import arrays, compare
from harness.cells import Cell
from harness.statuses import MISMATCH, PASS

#: Earlier top-level layers a functional model's reproducer may start from, when the layer
#: alone does not diverge (a compiler's rewrite across layers).
MOST_PIECES = 4
COMPILERS = {"tensorflow": "XLA", "jax": "jax.jit's XLA", "torch": "torch.compile's inductor"}
TAPPED_UNDER_COMPILER = ("tapped under the compiler: every layer's output is returned from the compiled "
                         "step, which cuts fusion across layers there, so a fusion bug can hide")


# -- the worker's side -----------------------------------------------------------------------

def serve(request: dict, backend: str) -> dict:
    """A `localize` request in a worker: the reply, or why the model could not be localized."""
    try:
        return {"type": "localized", **Localization(request, backend).run()}
    except Exception as exc:  # noqa: BLE001 - a localization that fails is said, never a crash
        return {"type": "localized", "error": f"{type(exc).__name__}: {exc}"[:500],
                "traceback": traceback.format_exc()[-3000:]}


class Localization:
    def __init__(self, request: dict, backend: str):
        self.request, self.backend = request, backend
        self.jit = Cell.parse(request["cell"]).jit
        self.seconds: dict[str, float] = {}

    def run(self) -> dict:
        from harness import taps, training
        from harness.calls import (backend_tensors, build_object, fresh_torch_compiler, kind_of, load_case,
                                   make_object, torch_graphs_compiled, wrap_layer)

        request = self.request
        torch_jit = self.backend == "torch" and self.jit
        graphs_before = fresh_torch_compiler() if torch_jit else None
        t0 = time.perf_counter()
        case = load_case(request["case"])
        inputs = arrays.load_tree(request["inputs"])
        obj = make_object(case, request["seed"])
        kind = kind_of(obj)
        build_object(obj, kind, inputs)
        model = obj if kind == "model" else wrap_layer(obj, inputs)
        weights = arrays.load_weights(request["weights"])
        missing = [v.path for v in model.weights if v.path not in weights]
        if missing:
            return {"error": f"the weights to localize with lack {', '.join(missing[:3])}"}
        for v in model.weights:
            v.assign(np.array(weights[v.path]))
        self.seconds["setup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        training_mode = bool(request.get("training"))
        with training.run_as_at_inference(training.random_layers(model) if training_mode else []):
            recorder, results, as_asked = taps.run_tapped(model, backend_tensors(inputs), jit=self.jit,
                                                          training=training_mode)
        self.seconds["taps_s"] = time.perf_counter() - t0
        if torch_jit and torch_graphs_compiled() == graphs_before:
            as_asked = False  # dynamo ran the tapped step eagerly
        path = os.path.join(request["out_dir"], "taps.npz")
        arrays.save_tree(path, results)
        reply = {"file": path, "calls": [{"key": c.key, "class": type(c.layer).__name__,
                                          "shape": list(np.shape(v["outputs"][0]))}
                                         for c, v in zip(recorder.calls, results["taps"])],
                 "compiled_as_asked": as_asked, "seconds": self.seconds}
        if request.get("reference") is None:
            return reply
        return {**reply, **self.compare(model, recorder, results, taps)}

    def compare(self, model, recorder, results, taps) -> dict:
        """This cell's taps against the reference's: per layer, then the first divergence."""
        request = self.request
        reference = request["reference"]
        ref_taps = arrays.load_tree(reference["file"])
        mine = dict(zip((c.key for c in recorder.calls), results["taps"]))
        calls = {c.key: c for c in recorder.calls}
        rtol, atol = request["rtol"], request["atol"]
        rows, first = [], None
        for ref_call, ref_values in zip(reference["calls"], ref_taps["taps"]):
            key = ref_call["key"]
            values = mine.get(key)
            row = {"layer": layer_path(key), "key": key, "class": ref_call["class"], "shape": ref_call["shape"]}
            if values is None:
                rows.append({**row, "missing": True})
                continue
            inputs_err, inputs_ok = compare.leaves_error(ref_values["inputs"], values["inputs"], rtol, atol)
            output_err, output_ok = compare.leaves_error(ref_values["outputs"], values["outputs"], rtol, atol)
            rows.append({**row, "inputs_err": inputs_err, "output_err": output_err, "agrees": output_ok})
            if first is None and not output_ok:
                first = (row, inputs_err, inputs_ok, output_err, ref_values, calls[key])
        final_err, final_ok = compare.leaves_error(arrays.flatten(ref_taps["outputs"])[1],
                                           arrays.flatten(results["outputs"])[1], rtol, atol)
        found = {"layers": rows, "tapped_outputs_err": final_err, "tapped_outputs_diverge": not final_ok}
        if first is None:
            return found
        row, inputs_err, inputs_ok, output_err, ref_values, call = first
        divergence = {"layer": row["layer"], "class": row["class"], "inputs_err": inputs_err, "output_err": output_err}
        if row["key"] != row["layer"]:
            divergence["call"] = row["key"]
        if not inputs_ok:
            divergence["between_layers"] = True  # its inputs differ, yet every tapped layer before agreed
            return {**found, "first_divergence": divergence}
        t0 = time.perf_counter()
        local = taps.predict(taps.piece_model(call, ref_values["inputs"]), ref_values["inputs"], jit=self.jit)
        divergence["local_err"], local_ok = compare.leaves_error(ref_values["outputs"], local, rtol, atol)
        divergence["introduced"] = not local_ok
        self.seconds["local_s"] = time.perf_counter() - t0
        if request.get("repro_dir"):
            t0 = time.perf_counter()
            found["reproducer"] = self.reproduce(model, recorder, call, ref_values, ref_taps, reference,
                                                 not local_ok, divergence)
            self.seconds["reproducer_s"] = time.perf_counter() - t0
        return {**found, "first_divergence": divergence}

    def reproduce(self, model, recorder, call, ref_values, ref_taps, reference, alone: bool, divergence) -> dict:
        """The smallest piece that still diverges, written and checked in a fresh process."""
        from harness import reproducer, taps

        rtol, atol = self.request["rtol"], self.request["atol"]
        piece, piece_inputs, words = None, None, None
        if alone:
            piece, piece_inputs, words = taps.piece_model(call, ref_values["inputs"]), ref_values["inputs"], "the layer alone"
        else:
            by_key = dict(zip((c["key"] for c in reference["calls"]), ref_taps["taps"]))
            for start, candidate in taps.functional_pieces(model, recorder.calls, call, MOST_PIECES):
                values = by_key.get(start, {}).get("inputs")
                if values is None:
                    continue
                _, ok = compare.leaves_error(ref_values["outputs"], taps.predict(candidate, values, jit=self.jit), rtol, atol)
                if not ok:
                    piece, piece_inputs, words = candidate, values, f"the sub-model from {layer_path(start)}'s inputs to it"
                    break
        if piece is None:
            return {"written": False, "why": (
                "the layer alone, fed the reference's inputs, agrees with the reference, and no sub-model of "
                f"up to {MOST_PIECES} layers before it diverges" if not alone else "")
                or "no piece of the model diverges alone"}
        folder = self.request["repro_dir"]
        case = self.request["case"]
        cell = self.request["cell"]
        info = {"what": f"{divergence['layer']} ({divergence['class']}) of {case['id']}, as {cell} computes it",
                "backend": self.backend, "jit": self.jit, "reference": self.request["reference_cell"],
                "piece": words, "tolerances": [compare.tolerance(str(np.asarray(e).dtype), rtol, atol)
                                               for e in ref_values["outputs"]]}
        if any(not type(layer).__module__.startswith("keras.") for layer in piece._flatten_layers()):
            info.update(module=case["module"], import_root=case.get("import_root") or os.path.dirname(case["file"]))
        try:
            reproducer.write(folder, piece, piece_inputs, ref_values["outputs"], info)
        except Exception as exc:  # noqa: BLE001 - a piece that cannot be saved is said
            return {"written": False, "why": f"the piece could not be saved: {type(exc).__name__}: {exc}"[:300]}
        verdict = reproducer.check(folder, self.jit)
        if not verdict.get("reproduces"):
            shutil.rmtree(folder, ignore_errors=True)
            return {"written": False, "why": verdict.get("why") or (
                f"in a fresh process the piece agreed with the reference (max abs err {verdict['max_abs_err']:.3g})")}
        return {"written": True, "folder": folder, "piece": words, "max_abs_err": verdict["max_abs_err"],
                "command": reproducer.command(folder, self.backend, self.jit)}


def layer_path(key: str) -> str:
    return key.split("#", 1)[0]


# -- the pytest process's side ---------------------------------------------------------------

def wanted(records: dict[Cell, dict], replies) -> dict[tuple, list[Cell]]:
    """The cells to localize, by what is localized: ("outputs",) or ("train", step). Outputs
    that draw random numbers are compared by law, and a plain function has no layers: neither
    is localized."""
    found: dict[tuple, list[Cell]] = {}
    for cell, record in records.items():
        mine = replies.check(cell, "outputs")
        if (record["checks"].get("outputs", {}).get("status") == MISMATCH and not mine.get("random")
                and mine.get("kind") in ("model", "layer")):
            found.setdefault(("outputs",), []).append(cell)
        first = record["checks"].get("train", {}).get("first_divergence") or {}
        if first.get("quantity") == "loss":
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
        sibling = records.get(Cell(cell.backend, cell.device, False))
        sibling_agrees = bool(sibling) and sibling["checks"].get(check, {}).get("status") == PASS
        merge(records[cell], check, reply, cell, reference, name, sibling_agrees)
        seconds = reply.get("seconds", {})
        records[cell]["timings"].update({f"localize_{k}": v for k, v in seconds.items()})
    if reference in records and reference_reply.get("seconds"):
        records[reference]["timings"].update(
            {f"localize_reference_{k}": v for k, v in reference_reply["seconds"].items()})


def merge(record: dict, check: str, reply: dict, cell: Cell, reference: Cell, outlier_name: str | None,
          sibling_agrees: bool) -> None:
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
    if not reply.get("compiled_as_asked", True):
        localization["tapped"] = ("the tapped model ran without a compiler (Keras refused jit for it, or dynamo "
                                  "compiled no graph of it)")
    if outlier_name:
        first["outlier"] = outlier_name
    if cell.jit and sibling_agrees:
        first.update(cause="compiler", compiler=COMPILERS.get(cell.backend, "the compiler"),
                     agrees_without_jit=Cell(cell.backend, cell.device, False).id)
    if reply.get("reproducer"):
        first["reproducer"] = reply["reproducer"]
    if not first.get("layer") and not first.get("between_layers"):
        if check == "outputs" and not reply.get("tapped_outputs_diverge"):
            first["hidden_by_tapping"] = True
        elif check == "train":
            first["in"] = "the loss"
    localization["first_divergence"] = first
    summary = localization["summary"] = describe(first, check, cell)
    entry["localization"] = localization
    if check == "outputs":
        entry["first_divergence"] = first
    else:
        entry["first_divergence"] = {**entry["first_divergence"], "forward": first}
    if check == "outputs":
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
