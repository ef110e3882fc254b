"""`legacy_load`: in every Keras 3 cell of a case with Keras 2 code, the Keras 2 model's `.h5` file
(as Keras 2 saved it, compiled where it was) through `keras.models.load_model` (with the Keras 3
code's own classes as `custom_objects`, as a team passes its custom layers), then the
fallbacks a team reaches for (`compile=False`; the config keys Keras 3 refuses dropped), each
attempt recorded; the loaded model's outputs against Keras 2's; and, where the case trains, the
file Keras 2 saved after training loaded again to resume it: its optimizer state must be Keras 2's.

The file must load as saved: a fallback that works still fails the check (`error`), with the
cause and the fix, and the outputs and the resumed state are still compared.
"""

from __future__ import annotations

import numpy as np

from harness import arrays, classify, compare
from harness.keras2 import migrate
from harness.replies import load
from harness.statuses import ERROR, MISMATCH, PASS, SKIP, worst

NAME = "legacy_load"
RESUME_HINT = ("Keras 3 does not restore a Keras 2 file's optimizer state: resumed training starts its "
               "optimizer afresh. Save a checkpoint with Keras 3 (model.save('model.keras')) to resume from, "
               "or expect the first steps after the move to differ from Keras 2's")


def run(ctx, obj, inputs) -> None:
    from harness.calls import custom_objects_of

    files = ctx.request["keras2"]
    custom_objects = custom_objects_of(obj)
    if not files.get("model"):
        ctx.checks[NAME] = {"status": SKIP, "not_compared": True, "reason": (
            "Keras 2 wrote no .h5 of this model (a subclassed model has none: see the keras2 cell's notes)")}
        return
    model, attempts = migrate.load_keras2_model(files["model"], ctx.out_dir, custom_objects)
    result = {"status": PASS, "attempts": [a.to_json() for a in attempts],
              "loaded_by": attempts[-1].how if model is not None else None}
    statuses = []
    if attempts[0].error is not None:
        statuses.append(ERROR)
        error = attempts[0].error
        result["failure"] = classify.Failure(
            check=NAME, phase="load_model", kind="keras2_file", exception=f"{type(error).__module__}.{type(error).__name__}",
            message=f"keras.models.load_model of the Keras 2 .h5 failed: {type(error).__name__}: {str(error)[:500]}"
                    + (f"; it loads by {result['loaded_by']}" if model is not None else "; no fallback loaded it"),
            root_cause=str(error)[:300], hint=migrate.hint_for(attempts)).to_json()
        if any(a.dropped for a in attempts):
            result["dropped_config_keys"] = next(a.dropped for a in attempts if a.dropped)
    if model is not None and files.get("random"):
        result["outputs"] = {"status": SKIP, "reason": "Keras 2's outputs draw random numbers: the outputs check "
                                                       "compares them by law, with the case's own model"}
    elif model is not None:
        verdict = compare_with_keras2(ctx, model, inputs, files["outputs"])
        result["outputs"] = verdict
        statuses.append(verdict["status"])
    if files.get("trained_model") and files.get("train_steps"):
        result["resume"] = resume(ctx, files, custom_objects)
        statuses.append(result["resume"]["status"])
    result["status"] = worst([PASS, *statuses])
    if result["status"] == MISMATCH and "failure" not in result:
        message = "; ".join(v["message"] for v in (result.get("outputs", {}), result.get("resume", {}))
                            if v.get("status") == MISMATCH)
        result["message"] = message
        result["hint"] = RESUME_HINT if result.get("resume", {}).get("status") == MISMATCH else None
    ctx.checks[NAME] = result


def compare_with_keras2(ctx, model, inputs, keras2_outputs: str) -> dict:
    try:
        outputs = ctx.predictor(model, "model", jit=ctx.cell.jit)(inputs)
    except Exception as exc:  # noqa: BLE001 - the loaded model's own fault is a result
        return {"status": ERROR, "message": f"the loaded model failed to predict: {type(exc).__name__}: {exc}"[:500]}
    path = f"{ctx.out_dir}/legacy_load_outputs.npz"
    arrays.save_tree(path, outputs)
    names, expected = load(keras2_outputs)
    got = load(path)[1]
    verdict = compare.compare_outputs(names, expected, got, [str(a.dtype) for a in expected],
                                      [str(a.dtype) for a in got], ctx.case.rtol, ctx.case.atol)
    found = {k: verdict[k] for k in ("status", "max_abs_err", "message") if k in verdict}
    if found.get("message"):
        found["message"] = "the loaded model's outputs differ from Keras 2's: " + found["message"]
    return found


def resume(ctx, files: dict, custom_objects: dict) -> dict:
    """The file Keras 2 saved after training, loaded to resume: its optimizer state against the
    keras2 cell's after its last step."""
    from harness import training

    model, attempts = migrate.load_keras2_model(files["trained_model"], ctx.out_dir, custom_objects)
    found = {"loaded_by": attempts[-1].how if model is not None else None,
             "attempts": [a.to_json() for a in attempts]}
    if model is None:
        return {**found, "status": ERROR, "message": "the Keras 2 file saved after training did not load"}
    steps = arrays.load_weights(files["train_steps"])
    last = max(int(key.split("/", 1)[0]) for key in steps)
    keras2 = {key.split("/", 2)[2]: value for key, value in steps.items() if key.startswith(f"{last}/optimizer/")}
    optimizer = getattr(model, "optimizer", None)
    mine = training.optimizer_state(optimizer) if optimizer is not None and optimizer.built else {}
    pairs = migrate.optimizer_names(mine, keras2)
    if not mine or not pairs:
        how = "its optimizer was not built" if optimizer is not None else (
            "loaded without its training configuration (load_model with it: "
            f"{type(attempts[0].error).__name__}: {str(attempts[0].error)[:200]})")
        return {**found, "status": MISMATCH, "restored": False,
                "message": f"training cannot resume from the Keras 2 file: {how}, so Keras 2's "
                           f"optimizer state ({len(keras2)} variables after step {last}) was not restored"}
    differ = [f"{name} (Keras 2: {pairs[name]})" for name in pairs
              if not np.allclose(np.asarray(mine[name], np.float64), np.asarray(keras2[pairs[name]], np.float64),
                                 rtol=1e-6, atol=1e-7)]
    if differ:
        return {**found, "status": MISMATCH, "restored": False, "compared": len(pairs),
                "message": f"training resumed from the Keras 2 file starts from another optimizer state: "
                           f"{len(differ)} of {len(pairs)} optimizer variables are not Keras 2's after step "
                           f"{last} (first: {differ[0]})"}
    return {**found, "status": PASS, "restored": True, "compared": len(pairs)}
