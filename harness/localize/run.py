"""The worker's side of a localization: the model run again with every layer call tapped (the
reference's, then each mismatching cell's), this cell's taps compared with the reference's layer by
layer, the first diverging layer run alone on the reference's inputs, and a reproducer written and
checked in fresh processes. This module imports keras through `taps`: workers only.
"""

from __future__ import annotations

import contextlib
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
        self.training = bool(request.get("training"))  # a training step's forward pass
        self.seconds: dict[str, float] = {}

    def build(self, case, inputs, dtype_policy: str | None = None):
        """The case's model (a layer wrapped in one) with the weights to localize with."""
        from harness.calls import assign_by_key, build_object, kind_of, make_object, wrap_layer

        obj = make_object(case, self.request["seed"], dtype_policy)
        kind = kind_of(obj)
        build_object(obj, kind, inputs)
        model = obj if kind == "model" else wrap_layer(obj, inputs)
        missing = assign_by_key(model.weights, arrays.load_weights(self.request["weights"]),
                                cast=np.float64 if dtype_policy else None)
        if missing:
            raise ValueError(f"the weights to localize with lack {', '.join(missing[:3])}")
        return model

    def tapped(self, model, inputs, jit: bool):
        """One tapped run, in the mode the localized step ran (training: Keras' random layers as
        at inference, as the train check ran them)."""
        from harness import training
        from harness.calls import backend_tensors
        from harness.localize import taps

        with training.run_as_at_inference(training.random_layers(model) if self.training else []):
            return taps.run_tapped(model, backend_tensors(inputs), jit=jit, training=self.training)

    def run(self) -> dict:
        from harness.calls import describe_dynamo, load_case, torch_compiler_watch

        request = self.request
        torch_jit = self.backend == "torch" and self.jit
        t0 = time.perf_counter()
        case = load_case(request["case"])
        inputs = arrays.load_tree(request["inputs"])
        with torch_compiler_watch() if torch_jit else contextlib.nullcontext({}) as dynamo:
            model = self.build(case, inputs)
            self.seconds["setup_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            recorder, results, as_asked = self.tapped(model, inputs, self.jit)
            self.seconds["taps_s"] = time.perf_counter() - t0
        path = os.path.join(request["out_dir"], "taps.npz")
        arrays.save_tree(path, results)
        reply = {"file": path, "calls": [{"key": c.key, "class": type(c.layer).__name__,
                                          "shape": list(np.shape(v["outputs"][0]))}
                                         for c, v in zip(recorder.calls, results["taps"])],
                 "compiled_as_asked": as_asked and not (torch_jit and dynamo["graphs"] == 0),
                 "seconds": self.seconds}
        if torch_jit and (note := describe_dynamo(dynamo)):
            reply["dynamo"] = note
        if request.get("reference") is None:
            if request.get("float64"):
                reply.update(self.float64_taps(case, inputs))
            return reply
        return {**reply, **self.compare(model, recorder, results)}

    def float64_taps(self, case, inputs) -> dict:
        """The reference's tapped run again in float64: each layer's output as float64 computes
        it, for the arbiter's verdict per layer (`harness.arbiter`)."""
        from harness.arbiter.run import FLOAT64, Float64Watch, as_float, float64_mode
        from harness.localize import taps

        t0 = time.perf_counter()
        try:
            inputs = as_float(inputs, np.float64)
            with float64_mode(self.backend):
                model = self.build(case, inputs, FLOAT64)
                watch = Float64Watch(taps.layer_paths(model))
                with watch.casts():
                    _, results, _ = self.tapped(model, inputs, jit=False)
                for values in results["taps"]:
                    for leaf in values["outputs"]:
                        if np.asarray(leaf).dtype.kind == "f" and np.asarray(leaf).dtype != np.float64:
                            watch.note(f"a {np.asarray(leaf).dtype} layer output")
        except Exception as exc:  # noqa: BLE001 - the layers are then judged by the plain tolerance
            return {"float64_error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            self.seconds["float64_s"] = time.perf_counter() - t0
        path = os.path.join(self.request["out_dir"], "taps_float64.npz")
        arrays.save_tree(path, results)
        return {"float64_file": path, "float64_held": not watch.narrowed, "narrowed": sorted(watch.narrowed)[:10]}

    def judge_layer(self, ref_values: dict, values: dict, truth: dict | None, part: str) -> tuple[float, bool, str]:
        """A layer call's `part` ("inputs" or "outputs") here against the reference's: the max abs
        error, whether it agrees, and how (the plain tolerance, or float32 round-off of float64)."""
        from harness.arbiter import verdict as arbiter

        rtol, atol = self.request["rtol"], self.request["atol"]
        err, ok = compare.leaves_error(ref_values[part], values[part], rtol, atol)
        if ok or truth is None:
            return err, ok, "agrees" if ok else "departs"
        for ref, got, exact in zip(ref_values[part], values[part], truth[part]):
            ref, got = np.asarray(ref), np.asarray(got)
            plain = compare.compare_arrays("value", ref, got, str(ref.dtype), rtol, atol, own_scale=True)
            if ref.dtype.kind != "f" or plain["status"] == "pass":
                continue
            judged = arbiter.judge_value(got, ref, exact, [], None, plain["rtol"], plain["atol"])
            if judged.verdict != arbiter.ROUNDOFF:  # diverges, or float32's range decides (not judged)
                return err, False, "departs"
        return err, True, "within round-off"

    def compare(self, model, recorder, results) -> dict:
        """This cell's taps against the reference's, per layer (and against float64 where the
        reference's float64 run held: a layer beyond the plain tolerance but within float32
        round-off of float64 agrees), then the first divergence: the first layer that departs
        while its inputs agree."""
        from harness.localize import taps

        request = self.request
        reference = request["reference"]
        ref_taps = arrays.load_tree(reference["file"])
        float64 = arrays.load_tree(reference["float64_file"])["taps"] if reference.get("float64_file") else None
        mine = dict(zip((c.key for c in recorder.calls), results["taps"]))
        calls = {c.key: c for c in recorder.calls}
        rows, first = [], None
        for index, (ref_call, ref_values) in enumerate(zip(reference["calls"], ref_taps["taps"])):
            key = ref_call["key"]
            values = mine.get(key)
            row = {"layer": layer_path(key), "key": key, "class": ref_call["class"], "shape": ref_call["shape"]}
            if values is None:
                rows.append({**row, "missing": True})
                continue
            truth = float64[index] if float64 is not None else None
            inputs_err, inputs_ok, _ = self.judge_layer(ref_values, values, truth, "inputs")
            output_err, output_ok, how = self.judge_layer(ref_values, values, truth, "outputs")
            rows.append({**row, "inputs_err": inputs_err, "output_err": output_err, "agrees": output_ok,
                         **({"within_roundoff": True} if how == "within round-off" else {})})
            if first is None and not output_ok:
                first = (row, inputs_err, inputs_ok, output_err, ref_values, calls[key])
        final_err, final_ok = compare.leaves_error(arrays.flatten(ref_taps["outputs"])[1],
                                                   arrays.flatten(results["outputs"])[1], request["rtol"], request["atol"])
        found = {"layers": rows, "tapped_outputs_err": final_err, "tapped_outputs_diverge": not final_ok,
                 "judged_with_float64": float64 is not None}
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
        # The layer alone, fed the reference's inputs, run as it ran in place (training mode too).
        local = taps.predict(taps.piece_model(call, ref_values["inputs"]), ref_values["inputs"], jit=self.jit,
                             training=self.training)
        divergence["local_err"], local_ok = compare.leaves_error(ref_values["outputs"], local, request["rtol"],
                                                                 request["atol"])
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
                _, ok = compare.leaves_error(ref_values["outputs"], taps.predict(candidate, values, jit=self.jit,
                                                                                 training=self.training), rtol, atol)
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
                "piece": words, "training": self.training,
                "tolerances": [compare.tolerance(str(np.asarray(e).dtype), rtol, atol) for e in ref_values["outputs"]]}
        if any(not type(layer).__module__.startswith("keras.") for layer in piece._flatten_layers()):
            info.update(module=case["module"], import_root=case.get("import_root") or os.path.dirname(case["file"]))
        try:
            reproducer.write(folder, piece, piece_inputs, ref_values["outputs"], info)
        except Exception as exc:  # noqa: BLE001 - a piece that cannot be saved is said
            return {"written": False, "why": f"the piece could not be saved: {type(exc).__name__}: {exc}"[:300]}
        # Kept only where it departs under this cell's backend and agrees under the reference's:
        # a piece that departs under both does not isolate this cell's divergence.
        verdict = reproducer.check(folder, self.backend, self.jit)
        reference = Cell.parse(self.request["reference_cell"])
        against = reproducer.check(folder, reference.backend, reference.jit) if verdict.get("reproduces") else {}
        if not verdict.get("reproduces") or against.get("reproduces") is not False:
            shutil.rmtree(folder, ignore_errors=True)
            why = (verdict.get("why") or f"in a fresh process the piece agreed with the reference (max abs err "
                                         f"{verdict['max_abs_err']:.3g})") if not verdict.get("reproduces") else (
                against.get("why") or f"under the reference's backend ({reference.id}) the piece departs too (max abs "
                                      f"err {against['max_abs_err']:.3g}): it does not isolate this cell's divergence")
            return {"written": False, "why": why}
        return {"written": True, "folder": folder, "piece": words, "max_abs_err": verdict["max_abs_err"],
                "reference_max_abs_err": against["max_abs_err"], "command": reproducer.command(folder, self.backend, self.jit)}


def layer_path(key: str) -> str:
    return key.split("#", 1)[0]


