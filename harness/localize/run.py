"""The worker's side of a localization: the model run again with every layer call tapped (the
reference's, then each mismatching cell's), this cell's taps compared with the reference's layer by
layer, the first diverging layer run alone on the reference's inputs, and a reproducer written and
checked in fresh processes. This module imports keras through `taps`: workers only.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback

import numpy as np

from harness import arrays, compare
from harness.cells import Cell

#: Earlier top-level layers a functional model's reproducer may start from, when the layer
#: alone does not diverge (a compiler's rewrite across layers).
MOST_PIECES = 4


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
        from harness import training
        from harness.localize import taps
        from harness.calls import (assign_by_key, backend_tensors, build_object, fresh_torch_compiler, kind_of, load_case,
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
        missing = assign_by_key(model.weights, arrays.load_weights(request["weights"]))
        if missing:
            return {"error": f"the weights to localize with lack {', '.join(missing[:3])}"}
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
        from harness.localize import reproducer, taps

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


