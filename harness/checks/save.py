"""`save`: `.keras` and `.weights.h5` round trips in the cell reproduce its outputs exactly
(random ones: their law), and each backend loads the `.keras` files saved under the others
and reproduces its own outputs (the saved-under x loaded-under matrix)."""

from __future__ import annotations

import os

from harness import arrays
from harness.calls import build_object, custom_objects_of, kind_of, load_case, results_of, same_results, wrap_layer
from harness.replies import NOT_RUN, compare_files, ran_elsewhere
from harness.statuses import MISMATCH, PASS, worst
from harness.steps import each_file


def run(ctx, case, obj, kind: str, inputs) -> None:
    """`.keras` and `.weights.h5` round trips must reproduce this cell's outputs exactly
    (both sides run without jit, so the comparison is bit for bit); random outputs must
    follow the same law over independent calls."""
    import keras

    model = obj if kind == "model" else wrap_layer(obj, inputs)
    expected = ctx.nojit_results(obj, kind)
    keras_path = os.path.join(ctx.out_dir, "model.keras")
    ctx.step("save", "save_keras", lambda: model.save(keras_path))
    custom = custom_objects_of(model)
    reloaded = ctx.step("save", "load_keras", lambda: keras.models.load_model(
        keras_path, custom_objects=custom, compile=False))
    round_trips = {}
    predict_reloaded = ctx.step("save", "load_keras", lambda: ctx.predictor(reloaded, "model", jit=False))
    got = ctx.step("save", "load_keras", lambda: results_of(lambda: predict_reloaded(inputs), ctx.uses_random))
    round_trips["keras"] = same_results(expected, got, ctx.uses_random)

    weights_path = os.path.join(ctx.out_dir, "model.weights.h5")
    ctx.step("save", "save_weights", lambda: model.save_weights(weights_path))

    def reload_weights():
        fresh = case.factory()
        build_object(fresh, kind, inputs)
        fresh_model = fresh if kind == "model" else wrap_layer(fresh, inputs)
        fresh_model.load_weights(weights_path)
        predict = ctx.predictor(fresh, kind, jit=False)
        return results_of(lambda: predict(inputs), ctx.uses_random)

    round_trips["weights_h5"] = same_results(expected, ctx.step("save", "load_weights", reload_weights),
                                             ctx.uses_random)
    bad = [name for name, ok in round_trips.items() if not ok]
    changed = "the law of the outputs' draws" if ctx.uses_random else "the outputs"
    ctx.checks["save"] = {
        "status": MISMATCH if bad else PASS, "round_trips": round_trips, "file": keras_path,
        **({"message": f"{', '.join(bad)} round trip changed {changed}"} if bad else {}),
    }


WEIGHTS_FILE = " .weights.h5"  # the suffix of a `.weights.h5` file's source in the matrix


def load_saved_models(request: dict) -> dict:
    """Load `.keras` files saved under other cells and predict on the case's inputs; and the
    `.weights.h5` files of `weights_files` (another environment's), into the case's own model."""
    import keras

    inputs = arrays.load_tree(request["inputs"])
    custom = {}
    case = None
    try:
        case = load_case(request["case"])
        keras.backend.clear_session(free_memory=False)
        obj = case.factory()
        custom = custom_objects_of(obj)
    except Exception:  # noqa: BLE001 - loading may still work without custom objects
        pass

    def load(source, path):
        model = keras.models.load_model(path, custom_objects=custom, compile=False)
        model.compile(jit_compile=False)
        out = os.path.join(request["out_dir"], f"loaded_from_{source}.npz")
        arrays.save_tree(out, results_of(lambda: model.predict_on_batch(inputs), request["random"]))
        return out

    def load_weights(source, path):
        if case is None:
            raise RuntimeError("the case could not be imported in this worker, so there is no model to load "
                               "the weights into")
        fresh = case.factory()
        kind = kind_of(fresh)
        build_object(fresh, kind, inputs)
        model = fresh if kind == "model" else wrap_layer(fresh, inputs)
        model.load_weights(path)
        model.compile(jit_compile=False)
        out = os.path.join(request["out_dir"], f"weights_from_{source}.npz")
        arrays.save_tree(out, results_of(lambda: model.predict_on_batch(inputs), request["random"]))
        return out

    results = each_file(request["files"], "save", "load_other_backend", load)
    weights = each_file(request.get("weights_files", {}), "save", "load_weights_other_env", load_weights)
    return {"type": "loaded", "results": {**results, **{s + WEIGHTS_FILE: r for s, r in weights.items()}}}


def judge(case_judge, cell, record: dict, replies) -> None:
    checks = record["checks"]
    if "save" not in checks:
        return
    if checks["save"] == NOT_RUN and replies.file_cells.get(cell.worker_key) != cell:
        checks["save"] = ran_elsewhere("save", cell, replies)
    if checks["save"].get("status") == PASS and cell in replies.loaded:
        checks["save"] = judge_loads(case_judge, cell, checks["save"], replies.loaded[cell], replies)
    # The loads run after the cells; their seconds belong to the cell whose worker loaded them.
    loaded = replies.loaded.get(cell)
    if loaded is not None and loaded.reply is not None:
        record["timings"]["load_others_s"] = sum(r["seconds"] for r in loaded.reply["results"].values())


def judge_loads(case_judge, loader, save: dict, outcome, replies) -> dict:
    """This backend loaded the .keras files of the others. Every cell holds the reference's
    weights, so a file that loads correctly reproduces this cell's own outputs (numerical
    parity between backends is the outputs check's business, not the file's)."""
    save = dict(save)
    if outcome.reply is None:
        save.update(status=outcome.status, message=f"loading other backends' files: {outcome.message}")
        return save
    matrix = {}
    for source, result in outcome.reply["results"].items():
        what = ".weights.h5 saved under " + source.removesuffix(WEIGHTS_FILE) if source.endswith(WEIGHTS_FILE) \
            else f".keras saved under {source}"
        if result["status"] != PASS:
            failure = dict(result["failure"])
            if source.partition("@")[2].removesuffix(WEIGHTS_FILE) != loader.env:
                failure["hint"] = (f"the file was written by another environment's release ({source}) and this release "
                                   f"does not read it (the cause names what it rejects): a file moves between releases "
                                   f"only where the reading release knows what the writing one saves; keep such files "
                                   f"with the release that reads them, or rebuild the model in code and load_weights")
            matrix[source] = {"status": result["status"], "message": failure["message"], "hint": failure.get("hint")}
            save.setdefault("failure", {**failure, "message": f"{what}: {failure['message']}"})
            continue
        matrix[source] = compare_files(replies.nojit_outputs(loader), result["file"], case_judge.case.rtol,
                                       case_judge.case.atol,
                                            replies.check(loader, "outputs").get("random"))
    save["loaded_from"] = matrix
    bad = {s: r for s, r in matrix.items() if r["status"] != PASS}
    if bad:
        save["status"] = worst(r["status"] for r in bad.values())
        save["message"] = "; ".join(
            f"{'.weights.h5 saved under ' + s.removesuffix(WEIGHTS_FILE) if s.endswith(WEIGHTS_FILE) else '.keras saved under ' + s}"
            f": {r.get('message', r['status'])}" for s, r in bad.items())
    return save

