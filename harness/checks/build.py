"""`build`: the object builds; its variables (paths, shapes, dtypes, trainable) match the
reference cell's; state Keras does not track is a finding that stops no other check. The cell
also writes (the reference) or loads (the others) the initial weights here."""

from __future__ import annotations

import os

from harness import arrays, classify, compare
from harness.calls import repeated_paths, variable_keys, weights_by_key
from harness.statuses import ERROR, PASS, worst
from harness.steps import StepFailed


def run(ctx, obj, kind: str) -> None:
    ctx.checks["build"] = {"status": PASS, "variables": variables(obj, kind)}
    try:  # a finding about the model's state: the other checks still run
        check_untracked_state(obj, kind)
    except StepFailed as failed:
        ctx.fail(failed)
    ctx.step("build", "weights", lambda: exchange_weights(ctx, obj, kind))


def variables(obj, kind: str) -> list[dict]:
    if kind == "function":
        return []
    return [
        {"path": key, "shape": list(v.shape), "dtype": str(v.dtype), "trainable": bool(v.trainable)}
        for key, v in zip(variable_keys(obj.weights), obj.weights)
    ]


def untracked_state(obj) -> list[str]:
    """Attributes that hold trainable state Keras does not track: framework variables and
    parameters. Constants (arrays, tensors: a graph's edges, a lookup table) are not state."""
    import keras

    found = []
    layers = list(obj._flatten_layers()) if hasattr(obj, "_flatten_layers") else [obj]
    for layer in layers:
        if type(layer).__module__.startswith("keras."):
            continue
        # Under torch a layer is a torch.nn.Module, which files a Parameter attribute away in
        # its own `_parameters` registry (Keras keeps its variables under `_torch_params`).
        tracked = {id(v.value) for v in layer.weights}
        for attr, param in getattr(layer, "_parameters", {}).items():
            if param is not None and id(param) not in tracked:
                found.append(f"{layer.name}.{attr} is a torch.nn.Parameter")
        for attr, value in vars(layer).items():
            if attr.startswith("_") or isinstance(value, keras.Variable):
                continue
            library = type(value).__module__.split(".")[0]
            name = type(value).__name__
            if library == "tensorflow" and "Variable" in name:
                found.append(f"{layer.name}.{attr} is a tf.Variable")
            elif library == "torch" and (name == "Parameter" or getattr(value, "requires_grad", False)):
                found.append(f"{layer.name}.{attr} is a torch.nn.Parameter")
    return found


def check_untracked_state(obj, kind: str) -> None:
    if kind == "function":
        return
    found = untracked_state(obj)
    if found:
        raise StepFailed(ERROR, classify.Failure(
            check="build", phase="build", kind="untracked_state", exception=None,
            message="state Keras does not track (it is not trained, saved or loaded): "
                    + "; ".join(found),
            hint=classify.UNTRACKED_STATE_HINT))


def exchange_weights(ctx, obj, kind: str) -> None:
    """The reference cell writes its initial weights; every other cell keeps a copy of its
    own (their law is compared in the rng check) and loads the reference's."""
    if kind == "function":
        return
    own = weights_by_key(obj.weights)
    save_to, load_from = ctx.request.get("save_weights_to"), ctx.request.get("load_weights_from")
    if repeated := repeated_paths(obj.weights):
        ctx.notes.append(f"variables share a path ({', '.join(repeated[:3])}{' ...' if len(repeated) > 3 else ''}): "
                         f"they are matched across cells by path and order of appearance ('#2' for the second)")
    if save_to:
        arrays.save_weights(save_to, own)
    if load_from:
        arrays.save_weights(os.path.join(ctx.out_dir, "initial_weights.npz"), own)
        missing = ctx.load_reference_weights(obj)
        ctx.weights_loaded = not missing
        if ctx.keras2_names:  # compared with the keras2 cell's variables, under their Keras 2 names
            for variable in ctx.checks["build"]["variables"]:
                variable["path"] = ctx.keras2_names.get(variable["path"], variable["path"])
        if missing:
            ctx.notes.append(
                f"reference weights not loaded: {len(missing)} variable path(s) differ "
                f"from the reference cell (first: {missing[0]})")


def judge(case_judge, cell, record: dict, replies) -> None:
    """The variables against the reference cell's (an untracked-state finding stays)."""
    build = record["checks"].get("build", {})
    if "variables" not in build or (reference := case_judge.against("build", cell, record, replies)) is None:
        return
    verdict = compare.compare_variables(replies.check(reference, "build")["variables"], build["variables"])
    if build["status"] == PASS or verdict["status"] != PASS:
        record["checks"]["build"] = {**build, **verdict, "compared_with": reference.id,
                                     **({"failure": build["failure"]} if "failure" in build else {})}
        if build["status"] != PASS:
            record["checks"]["build"]["status"] = worst([build["status"], verdict["status"]])
