"""`export`: `model.export(format="tf_saved_model")` reloaded through `keras.layers.TFSMLayer`
in a TensorFlow worker, and `format="onnx"` run through onnxruntime, each against the cell's
own outputs (random ones: their law). The two routes are independent: one failing does not
stop the other."""

from __future__ import annotations

import importlib.util
import os

from harness import arrays
from harness.calls import results_of, to_numpy_tree, wrap_layer
from harness.replies import NOT_RUN, compare_files, ran_elsewhere
from harness.statuses import PASS, SKIP, worst
from harness.steps import each_file, route


def run(ctx, obj, kind: str) -> None:
    """A TF SavedModel (reloaded later by a TensorFlow worker through TFSMLayer) and, where
    onnxruntime is installed, an ONNX file run here through onnxruntime."""
    import keras

    ctx.nojit_results(obj, kind)  # what the reloaded exports are judged against
    model = obj if kind == "model" else wrap_layer(obj, ctx.inputs)
    if kind == "layer":
        model(ctx.inputs)  # the ONNX exporter refuses a model that was never called
    signature = None
    if not isinstance(model, (keras.Sequential, keras.src.models.Functional)):
        # A subclassed model has no recorded input structure: give the case's, batch free.
        signature = [keras.tree.map_structure(
            lambda x: keras.InputSpec(shape=(None, *x.shape[1:]), dtype=str(x.dtype)), ctx.inputs)]
    if ctx.backend == "torch" and importlib.util.find_spec("torch_xla") is None:
        saved_model = {"status": SKIP, "reason": "model.export(format='tf_saved_model') under "
                                                 "torch needs torch_xla, which is not installed here"}
    else:
        path = os.path.join(ctx.out_dir, "saved_model")

        def export_saved_model():
            ctx.step("export", "export", lambda: model.export(
                path, format="tf_saved_model", verbose=False, input_signature=signature))
            return {"status": PASS, "file": path, "input_structure": input_structure(model, ctx.inputs)}

        saved_model = route(export_saved_model)
    onnx = route(lambda: export_onnx(ctx, model, signature))  # whatever the SavedModel did
    failures = [r["failure"] for r in (saved_model, onnx) if "failure" in r]
    ctx.checks["export"] = {"status": worst([saved_model["status"], onnx["status"]]),
                            "saved_model": saved_model, "onnx": onnx,
                            **({"failure": failures[0]} if failures else {})}


def export_onnx(ctx, model, signature) -> dict:
    converter = {"jax": "jax2onnx", "tensorflow": "tf2onnx", "torch": "onnxscript"}[ctx.backend]
    missing = [m for m in ("onnxruntime", converter) if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": SKIP, "reason": f"ONNX export needs {' and '.join(missing)}, not installed here"}
    import onnxruntime

    path = os.path.join(ctx.out_dir, "model.onnx")
    ctx.step("export", "export_onnx", lambda: model.export(
        path, format="onnx", verbose=False, input_signature=signature))

    def run():
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [spec.name for spec in session.get_inputs()]
        if isinstance(ctx.inputs, dict):  # named as the model's inputs are, in its order
            feed = {name: ctx.inputs[name] for name in names if name in ctx.inputs}
        else:
            feed = dict(zip(names, arrays.flatten(ctx.inputs)[1]))
        return session.run(None, feed)

    out = os.path.join(ctx.out_dir, "onnx_outputs.npz")
    arrays.save_tree(out, ctx.step("export", "onnxruntime", lambda: results_of(run, ctx.uses_random)))
    return {"status": PASS, "file": out}


def input_structure(model, inputs) -> str:
    """How the exported model takes its inputs at the top: 'list', 'tuple', 'dict' or 'single'.
    A functional model keeps the structure it was built with, which its SavedModel's signature
    has too (a list there refuses a tuple: "Can not cast"); other models take the case's."""
    structure = getattr(model, "_inputs_struct", inputs)
    return {list: "list", tuple: "tuple", dict: "dict"}.get(type(structure), "single")


def as_structure(inputs, structure: str):
    """The case's inputs in the structure a SavedModel was exported with."""
    if structure == "list" and isinstance(inputs, tuple):
        return list(inputs)
    if structure == "tuple" and isinstance(inputs, list):
        return tuple(inputs)
    return inputs


def reload_exports(request: dict) -> dict:
    """Reload SavedModels exported under any backend with TFSMLayer (TensorFlow workers only)."""
    import keras

    inputs = arrays.load_tree(request["inputs"])

    def reload(source, path):
        layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
        out = os.path.join(request["out_dir"], f"export_{source}.npz")
        structured = as_structure(inputs, request["structures"][source])
        arrays.save_tree(out, results_of(lambda: to_numpy_tree(layer(structured)), request["random"][source]))
        return out

    results = each_file(request["files"], "export", "reload_tfsmlayer", reload)
    return {"type": "reloaded", "results": results}


def judge(case_judge, cell, record: dict, replies) -> None:
    checks = record["checks"]
    if "export" not in checks:
        return
    if checks["export"] == NOT_RUN and replies.file_cells.get(cell.worker_key) != cell:
        checks["export"] = ran_elsewhere("export", cell, replies)
    if "saved_model" in checks["export"]:  # it ran: its routes are judged one by one
        checks["export"] = judge_export(case_judge, cell, checks["export"], replies)
    # The reloads run after the cells; their seconds belong to the cell whose export it was.
    reloaded = replies.reloaded.reply if replies.reloaded is not None else None
    if reloaded is not None and cell.id in reloaded["results"]:
        record["timings"]["saved_model_reload_s"] = reloaded["results"][cell.id]["seconds"]


def judge_export(case_judge, cell, export: dict, replies) -> dict:
    export = dict(export)
    expected = replies.nojit_outputs(cell)
    random = replies.check(cell, "outputs").get("random")
    onnx = dict(export["onnx"])
    if onnx.get("status") == PASS:
        onnx = {**compare_files(expected, onnx.pop("file"), case_judge.case.rtol, case_judge.case.atol, random),
                "run_with": "onnxruntime"}
    saved_model = judge_saved_model(case_judge, cell, dict(export["saved_model"]), expected, replies)
    export.update(saved_model=saved_model, onnx=onnx,
                  status=worst([saved_model["status"], onnx["status"]]))
    messages = [f"{name}: {part['message']}" for name, part in (("SavedModel", saved_model), ("ONNX", onnx))
                if part.get("message")]
    if messages:
        export["message"] = "; ".join(messages)
    failures = [part["failure"] for part in (saved_model, onnx) if part.get("failure")]
    if failures:
        export["failure"] = failures[0]
    return export


def judge_saved_model(case_judge, cell, export: dict, expected: str, replies) -> dict:
    """The SavedModel this cell exported, as a TensorFlow worker reloaded it."""
    if export.get("status") != PASS:
        return export
    export.pop("file")
    export.pop("input_structure", None)
    outcome = replies.reloaded
    if outcome is None or outcome.reply is None:
        if outcome is not None:
            export.update(status=outcome.status, reason=outcome.message)
        return export
    result = outcome.reply["results"].get(cell.id)
    if result is None:
        return export
    if result["status"] != PASS:
        export.update(status=result["status"], message=f"TFSMLayer reload: {result['failure']['message']}",
                      hint=result["failure"].get("hint"), failure=result["failure"])
        return export
    export.update(compare_files(expected, result["file"], case_judge.case.rtol, case_judge.case.atol,
                                replies.check(cell, "outputs").get("random")))
    export["reloaded_with"] = "keras.layers.TFSMLayer in a TensorFlow worker"
    return export

