"""`train`: a few SGD steps on the same data from the same weights; the loss after each step
and every updated weight must match the reference cell's."""

from __future__ import annotations

import os
import time

import numpy as np

from harness import arrays, compare
from harness.calls import backend_tensors, recording_random_use, synchronize, wrap_layer
from harness.checks import timing
from harness.statuses import PASS, SKIP, worst

TRAIN_STEPS = 4
LEARNING_RATE = 0.01


def targets_for(ctx, outputs):
    path = ctx.request.get("targets")
    if path:
        return arrays.load_tree(path)
    rng = np.random.default_rng(ctx.request["seed"] + 1)
    import keras

    return keras.tree.map_structure(
        lambda o: rng.normal(size=o.shape).astype(o.dtype) if o.dtype.kind == "f" else np.zeros_like(o),
        outputs)


def run(ctx, obj, kind: str, inputs, outputs) -> None:
    import keras

    model = obj if kind == "model" else wrap_layer(obj, inputs)
    inputs, targets = ctx.step("train", "inputs", lambda: (
        backend_tensors(inputs), backend_tensors(targets_for(ctx, outputs))))

    def compile_model():
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                      loss=ctx.case.loss, jit_compile=ctx.cell.jit)

    def eager_step():
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                      loss=ctx.case.loss, jit_compile=False)
        model.train_on_batch(inputs, targets)

    ctx.step("train", "compile", compile_model)
    losses, times = [], []
    with recording_random_use() as random_use:  # dropout draws only while training
        for i in range(TRAIN_STEPS):
            t0 = time.perf_counter()
            loss = ctx.step("train", "train_step", lambda: model.train_on_batch(inputs, targets),
                            jit_retry=eager_step if i == 0 else None)
            synchronize(ctx.backend, ctx.device)
            times.append(time.perf_counter() - t0)
            losses.append(float(np.asarray(loss).reshape(-1)[0]))
    timing.record_train(ctx, times)
    path = os.path.join(ctx.out_dir, "trained_weights.npz")
    arrays.save_weights(path, {v.path: np.asarray(keras.ops.convert_to_numpy(v.value))
                               for v in model.weights})
    ctx.checks["train"] = {"status": PASS, "losses": losses, "file": path, "steps": TRAIN_STEPS,
                           "random": random_use["any"]}


def judge(case_judge, cell, record: dict, replies) -> None:
    checks = record["checks"]
    if checks.get("train", {}).get("status") != PASS:
        return
    train = replies.check(cell, "train")
    if (not_loaded := case_judge.not_loaded(cell, replies)) is not None:
        checks["train"] = not_loaded
    elif (reference := case_judge.against("train", cell, record, replies)) is not None:
        ref_train = replies.check(reference, "train")
        if ref_train.get("random") or train.get("random"):
            checks["train"] = {**checks["train"], "status": SKIP, "not_compared": True, "reason": (
                "training draws random numbers (dropout, noise), which differ per backend: "
                "losses and weights are not compared across backends")}
        else:
            checks["train"] = {**compare_training(case_judge, ref_train, train), "compared_with": reference.id}


def compare_training(case_judge, ref_train: dict, train: dict) -> dict:
    losses = compare.compare_arrays("loss per step", np.array(ref_train["losses"]),
                                    np.array(train["losses"]), "float32", case_judge.case.rtol, case_judge.case.atol)
    weights = compare.compare_weight_sets(arrays.load_weights(ref_train["file"]),
                                          arrays.load_weights(train["file"]), case_judge.case.rtol, case_judge.case.atol)
    result = {"status": worst([losses["status"], weights["status"]]), "steps": train["steps"],
              "losses": train["losses"], "reference_losses": ref_train["losses"],
              "loss_max_abs_err": losses.get("max_abs_err"),
              "max_abs_err": weights.get("max_abs_err"), "max_rel_err": weights.get("max_rel_err")}
    messages = [m for m in (losses.get("message"), weights.get("message")) if m]
    if messages:
        result["message"] = "after training, " + "; ".join(messages)
    return result

