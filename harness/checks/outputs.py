"""`outputs`: with the reference cell's initial weights and the same inputs, inference outputs
match within tolerance; random outputs follow the same law over independent calls."""

from __future__ import annotations

import os
import time

from harness import arrays, compare
from harness.calls import backend_tensors, draws_of, recording_random_use, same_tree, synchronize, to_numpy_tree
from harness.checks import timing
from harness.replies import load
from harness.statuses import MISMATCH, PASS, SKIP


def run(ctx, obj, kind: str, arrays_in):
    predict = ctx.step("outputs", "compile", lambda: ctx.predictor(obj, kind, jit=ctx.cell.jit))
    inputs = ctx.step("outputs", "inputs", lambda: backend_tensors(arrays_in))
    eager = lambda: ctx.predictor(obj, kind, jit=False)(inputs)  # noqa: E731
    with recording_random_use() as random_use:
        t0 = time.perf_counter()
        outputs = ctx.step("outputs", "predict", lambda: predict(inputs), jit_retry=eager)
        synchronize(ctx.backend, ctx.device)
        ctx.timings["predict_first_s"] = time.perf_counter() - t0
        second = ctx.step("outputs", "predict", lambda: predict(inputs))
    ctx.uses_random = random_use["any"]
    path = os.path.join(ctx.out_dir, "outputs.npz")
    dtypes = arrays.save_tree(path, outputs)
    result = {"status": PASS, "file": path, "dtypes": dtypes, "random": ctx.uses_random, "kind": kind}
    if ctx.uses_random:
        # Draws differ per backend: the pytest process compares laws, not values, over
        # calls that draw anew (the elements of one call are not independent draws).
        result["draws_advance"] = not same_tree(outputs, second)
        if result["draws_advance"]:
            made = [outputs, second]  # the first two calls count among the draws
            result["draws"] = os.path.join(ctx.out_dir, "draws.npz")
            arrays.save_tree(result["draws"], ctx.step("outputs", "draws", lambda: draws_of(
                lambda: made.pop(0) if made else to_numpy_tree(predict(inputs)))))
        eager = ctx.predictor(obj, kind, jit=False) if kind == "function" else (
            lambda x: to_numpy_tree(obj(x, training=False) if kind == "model" else obj(x)))
        result["eager_draws_advance"] = not same_tree(
            ctx.step("outputs", "eager", lambda: eager(inputs)), eager(inputs))
    if "outputs" in ctx.wanted:
        ctx.checks["outputs"] = result
    timing.measure_predict(ctx, lambda: predict(inputs))
    ctx.outputs_result = result
    return outputs


def judge(case_judge, cell, record: dict, replies) -> None:
    checks = record["checks"]
    if checks.get("outputs", {}).get("status") != PASS:
        return
    if (not_loaded := case_judge.not_loaded(cell, replies)) is not None:
        checks["outputs"] = not_loaded
    elif (reference := case_judge.against("outputs", cell, record, replies)) is not None:
        checks["outputs"] = {**compare_outputs(case_judge, replies.check(reference, "outputs"),
                                               replies.check(cell, "outputs"), record),
                             "compared_with": reference.id}


def compare_outputs(case_judge, ref_outputs: dict, outputs: dict, record: dict) -> dict:
    names, ref_leaves = load(ref_outputs["file"])
    _, leaves = load(outputs["file"])
    if not (ref_outputs.get("random") or outputs.get("random")):
        return compare.compare_outputs(names, ref_leaves, leaves, ref_outputs["dtypes"],
                                       outputs["dtypes"], case_judge.case.rtol, case_judge.case.atol)
    # Random at inference: each backend draws its own numbers; compare laws, never values.
    result, how = compare_random_outputs(names, ref_outputs, outputs)
    record["notes"].append(f"outputs draw random numbers at inference: compared by distribution, {how}")
    return result


def compare_random_outputs(names: list[str], reference: dict, mine: dict) -> tuple[dict, str]:
    """Two cells' random outputs by law: over independent calls where both cells draw anew
    at every call; where one repeats its draws (a fixed int seed), over the values of one
    call, which assumes they are independent draws. Returns the verdict and how it was made."""
    if reference.get("draws") and mine.get("draws"):
        per_output = [compare.compare_draws(n, r, g)
                      for n, r, g in zip(names, load(reference["draws"])[1], load(mine["draws"])[1])]
        how = f"over {compare.LAW_CALLS} calls per cell (KS on each call's statistics)"
    else:
        per_output = [compare.compare_laws(n, r, g)
                      for n, r, g in zip(names, load(reference["file"])[1], load(mine["file"])[1])]
        how = ("over the values of one call, as the draws repeat at every call (a fixed seed): "
               "this assumes the values are independent draws")
    bad = [o for o in per_output if o["status"] == MISMATCH]
    result = {"status": MISMATCH if bad else PASS, "compared": "distribution", "outputs": per_output}
    if bad:
        result["message"] = "; ".join(o["message"] for o in bad)
    elif all(o["status"] == SKIP for o in per_output):
        # Too few draws, and no more to be had: a fixed seed repeats them at every call.
        result.update(status=SKIP, not_compared=True, reason="; ".join(o["reason"] for o in per_output)
                      + " (the draws repeat at every call, a fixed seed, so more calls give no more)")
    return result, how

