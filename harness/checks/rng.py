"""`rng`: seeded randomness is reproducible in a fresh Keras session; a compiled call that
repeats its draws (the guide's Python int seed) is caught with the fix; a jit cell's draws
match its nojit sibling's, by value or by law; each cell's own initial weights follow the
reference's law."""

from __future__ import annotations

import os

import numpy as np

from harness import arrays, compare
from harness.calls import build_object, kind_of, make_object, same_tree
from harness.cells import Cell
from harness.checks.outputs import compare_random_outputs
from harness.replies import load
from harness.statuses import MISMATCH, PASS, SKIP

SEED_GENERATOR_HINT = (
    "a layer passes a Python int seed to keras.random: a compiled call bakes the first seed in, "
    "so every call repeats the same draws. Hold a keras.random.SeedGenerator(seed) in "
    "__init__ and pass it as seed=")


def run(ctx, case, inputs) -> None:
    """The same seed in a fresh Keras session gives bit-identical draws."""
    if not ctx.uses_random:
        ctx.checks["rng"] = {"status": PASS, "random": False}
        return

    def again():
        obj = make_object(case, ctx.request["seed"])
        kind = kind_of(obj)
        build_object(obj, kind, inputs)
        if ctx.request.get("load_weights_from") and kind != "function":
            ctx.load_reference_weights(obj)
        return ctx.predictor(obj, kind, jit=ctx.cell.jit)(inputs)

    first = arrays.load_tree(ctx.outputs_result["file"])
    repeat = ctx.step("rng", "reseed", again)
    reproducible = same_tree(first, repeat)
    ctx.checks["rng"] = {
        "status": PASS if reproducible else MISMATCH, "random": True, "reproducible": reproducible,
        "draws_advance": ctx.outputs_result["draws_advance"],
        "eager_draws_advance": ctx.outputs_result["eager_draws_advance"],
        **({} if reproducible else {"message": "the same seed in a fresh Keras session gave "
                                               "different draws"}),
    }


def judge(case_judge, cell, record: dict, replies) -> None:
    if record["checks"].get("rng", {}).get("status") == PASS and cell != replies.weights_from:
        compare_initializer_laws(cell, record, replies)
    check_seed_footgun(cell, record, replies)
    compare_with_sibling(cell, record, replies)


def compare_initializer_laws(cell: Cell, record: dict, replies) -> None:
    """Each cell's own initial weights must follow the same law as the reference's."""
    folder = os.path.dirname(replies.check(cell, "outputs").get("file") or "")
    own_path = os.path.join(folder, "initial_weights.npz")
    ref_path = os.path.join(os.path.dirname(folder), "reference_weights.npz")
    if not (os.path.exists(own_path) and os.path.exists(ref_path)):
        return
    reference, own = arrays.load_weights(ref_path), arrays.load_weights(own_path)
    laws = [compare.compare_laws(path, reference[path], own[path]) for path in reference if path in own]
    bad = [law for law in laws if law["status"] == MISMATCH]
    rng = record["checks"]["rng"]
    rng["initializers_compared"] = sum("ks_pvalue" in law for law in laws)
    if bad:
        rng.update(status=MISMATCH, initializer_laws=bad,
                   message="initial weights follow a different law than the reference "
                           "cell's: " + "; ".join(law["message"] for law in bad[:3]))


def check_seed_footgun(cell: Cell, record: dict, replies) -> None:
    """The guide's footgun: eager calls draw anew each call, compiled calls repeat."""
    rng, mine = record["checks"].get("rng"), replies.check(cell, "rng")
    if rng is None or not mine.get("random"):
        return
    if mine.get("eager_draws_advance") and not mine.get("draws_advance"):
        message = ("eager calls draw new numbers each call, but this cell's compiled calls "
                   "repeat the same draws")
        rng.update(status=MISMATCH, seed_footgun=True, message=message, failure={
            "check": "rng", "phase": "predict", "kind": "python_int_seed", "exception": None,
            "message": message, "root_cause": None, "hint": SEED_GENERATOR_HINT})


def compare_with_sibling(cell: Cell, record: dict, replies) -> None:
    """A jit cell's seeded draws against its nojit sibling's, in the same backend."""
    rng = record["checks"].get("rng")
    sibling = cell.nojit
    if not cell.jit or rng is None or rng.get("status") != PASS:
        return
    mine, theirs = replies.check(cell, "rng"), replies.check(sibling, "rng")
    if not (mine.get("random") and theirs.get("random")):
        return
    outputs, eager_outputs = replies.check(cell, "outputs"), replies.check(sibling, "outputs")
    names, first = load(outputs["file"])
    _, eager_first = load(eager_outputs["file"])
    if all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, eager_first)):
        rng["jit_matches_eager"] = "values"
        return
    verdict, how = compare_random_outputs(names, eager_outputs, outputs)
    rng["jit_matches_eager"] = "distribution"
    record["notes"].append(f"seeded draws differ between jit and eager in {cell.backend} "
                           f"(its compiler has its own RNG); compared by distribution, {how}")
    if verdict["status"] == MISMATCH:
        rng.update(status=MISMATCH, message="jit draws follow a different law than eager: " + verdict["message"])
    elif verdict["status"] == SKIP:
        rng.update(jit_matches_eager=None, not_compared=True, reason=f"jit against eager draws: {verdict['reason']}")

