"""`outputs`: with the reference cell's initial weights and the same inputs, inference outputs
match within tolerance; random outputs follow the same law over independent calls."""

from __future__ import annotations

import os
import time

from harness import arrays, compare
from harness.arbiter import verdict as arbiter
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
        verdict = compare_outputs(case_judge, replies.check(reference, "outputs"), replies.check(cell, "outputs"), record)
        if verdict.get("arbitrable"):
            case_judge.arbitrate("outputs", cell)
            if "outputs" in replies.arbiter:
                verdict = arbitrate(case_judge, cell, reference, verdict, replies)
                if "float64_note" in verdict:
                    record["notes"].append("outputs: " + verdict.pop("float64_note"))
        checks["outputs"] = {**verdict, "compared_with": reference.id}
    elif "outputs" in replies.arbiter and replies.arbiter["outputs"].truth() is not None:
        judge_reference(case_judge, cell, checks, replies)


def compare_outputs(case_judge, ref_outputs: dict, outputs: dict, record: dict) -> dict:
    names, ref_leaves = load(ref_outputs["file"])
    _, leaves = load(outputs["file"])
    if not (ref_outputs.get("random") or outputs.get("random")):
        verdict = compare.compare_outputs(names, ref_leaves, leaves, ref_outputs["dtypes"],
                                          outputs["dtypes"], case_judge.case.rtol, case_judge.case.atol)
        # Values beyond the tolerance, of the same shapes and float dtypes: float64 can say why.
        values = (verdict["status"] == MISMATCH and len(ref_leaves) == len(leaves)
                  and all(r.shape == g.shape and r.dtype == g.dtype and r.dtype.kind == "f"
                          for r, g in zip(ref_leaves, leaves)))
        verdict["arbitrable"] = values and outputs.get("kind") in ("model", "layer")
        if values and outputs.get("kind") == "function":
            verdict["float64"] = {"verdict": "not run: a plain function of keras.ops has no dtype policy to run "
                                             "it in float64 with (its edge values mean other things there); the "
                                             "plain tolerance stands"}
        return verdict
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



# -- the float64 arbiter ---------------------------------------------------------------------

def judgements(case_judge, cell, replies) -> list[tuple[str, object] | None]:
    """Each output leaf of `cell` against float64 (None where it is within the plain tolerance
    of the reference's), with its name. Cached per case: the reference's verdict reads them all."""
    cache = replies.arbiter["outputs"].judged
    if cell not in cache:
        evidence = replies.arbiter["outputs"]
        reference = case_judge.reference_for("outputs", replies)
        names, ref_leaves = load(replies.check(reference, "outputs")["file"])
        _, leaves = load(replies.check(cell, "outputs")["file"])
        truth, own, samples = evidence.truth(), evidence.own(cell.backend), evidence.samples()
        own_samples = evidence.samples(cell.id) if cell.id in evidence.nudged else None
        rtol, atol = case_judge.case.rtol, case_judge.case.atol
        found = []
        for i, (name, ref, got) in enumerate(zip(names, ref_leaves, leaves)):
            plain = compare.compare_arrays(name, ref, got, str(ref.dtype), rtol, atol, own_scale=True)
            if cell == reference or plain["status"] == PASS:
                found.append((name, None))
                continue
            # against float64 at the tolerance the plain comparison used (the values' own scale too)
            found.append((name, arbiter.judge_value(got, ref, truth[i], [s[i] for s in samples],
                                                    None if own is None else own[i], plain["rtol"], plain["atol"],
                                                    own_samples=own_samples and [s[i] for s in own_samples])))
        cache[cell] = found
    return cache[cell]


def compared_cells(replies) -> list:
    return [c for c in replies.outcomes if replies.check(c, "outputs").get("status") == PASS
            and replies.check(c, "outputs").get("file") and not replies.check(c, "outputs").get("random")]


def arbitrate(case_judge, cell, reference, plain: dict, replies) -> dict:
    """The outputs' plain mismatch judged again against float64: a pass where every output
    beyond the tolerance is within float32 round-off, else a mismatch saying why."""
    evidence = replies.arbiter["outputs"]
    account = evidence.describe()
    if evidence.truth() is None:
        account["verdict"] = "not run: no float64 run held end to end, so the plain tolerance stands"
        return {**plain, "float64": account}
    judged = [(name, j) for name, j in judgements(case_judge, cell, replies) if j is not None]
    account["outputs"] = {name: j.to_json() for name, j in judged}
    diverging = [(name, j) for name, j in judged if j.verdict != arbiter.ROUNDOFF]
    far = reference_far(case_judge, replies)
    if far:
        account["reference_far"] = far
    if not diverging:
        account["verdict"] = arbiter.ROUNDOFF
        widest = max(judged, key=lambda nj: nj[1].error / nj[1].band if nj[1].band else 0)
        note = (f"beyond the plain tolerance ({plain.get('message', '')[:200]}), but {widest[0]} is "
                f"{widest[1].sentence()}")
        if far:
            note = f"the reference cell is the one far from float64 ({far}); " + note
        result = {k: v for k, v in plain.items() if k not in ("message", "worst_index", "worst_value", "worst_reference")}
        return {**result, "status": PASS, "float64": account, "float64_note": note}
    name, first = next(((n, j) for n, j in diverging if j.verdict == arbiter.DIVERGES), diverging[0])
    account["verdict"] = first.verdict
    # A backend whose float32 computation departs is named here; where the backends compute
    # different things, the localization names who departs by the groups that agree.
    outlier = diverging_backends(case_judge, replies) if first.why == "numerical" else None
    if outlier:
        account["outlier"] = outlier
    return {**plain, "float64": account, "message": f"{plain.get('message', '')}; against float64, {name} is {first.sentence()}"
            + (f" ({outlier} departs)" if outlier else "")}


def diverging_backends(case_judge, replies) -> str | None:
    """The backends every compared cell of which diverges from float64 (by the cells of the
    case, each judged on its own)."""
    by_backend: dict[str, list[bool]] = {}
    for other in compared_cells(replies):
        found = [j for _, j in judgements(case_judge, other, replies) if j is not None]
        by_backend.setdefault(other.backend, []).append(any(j.verdict == arbiter.DIVERGES for j in found))
    named = [b for b, flags in by_backend.items() if flags and all(flags)]
    return ", ".join(named) or None


def reference_far(case_judge, replies) -> str | None:
    """Where the reference cell itself is the one far from float64, on which output and how far."""
    evidence = replies.arbiter["outputs"]
    reference = case_judge.reference_for("outputs", replies)
    truth = evidence.truth()
    names, ref_leaves = load(replies.check(reference, "outputs")["file"])
    others = [load(replies.check(c, "outputs")["file"])[1] for c in compared_cells(replies) if c.backend != reference.backend]
    if not others:
        return None
    for i, (name, ref) in enumerate(zip(names, ref_leaves)):
        tol = compare.tolerance(str(ref.dtype), case_judge.case.rtol, case_judge.case.atol)
        mine = arbiter.error(ref, truth[i])
        theirs = [arbiter.error(leaves[i], truth[i]) for leaves in others]
        samples = [mine] + [arbiter.error(sample[i], truth[i]) for sample in evidence.samples()]
        if arbiter.reference_far(samples, theirs, *tol, truth[i]):
            return (f"{name}: its RMSE against float64 is {mine:.3g}, the other backends' at most "
                    f"{max(theirs):.3g}")
    return None


def judge_reference(case_judge, cell, checks: dict, replies) -> None:
    """The reference cell's own outputs against float64: a mismatch where it is the one far."""
    if cell != case_judge.reference_for("outputs", replies) or not (far := reference_far(case_judge, replies)):
        return
    message = (f"the reference cell is the one far from float64, while the other backends are close to it: {far}")
    checks["outputs"] = {**checks["outputs"], "status": MISMATCH, "message": message,
                         "float64": {**replies.arbiter["outputs"].describe(), "verdict": arbiter.DIVERGES,
                                     "reference_far": far, "outlier": f"{cell.backend} (the reference)"}}
