"""`train`: a few steps of `fit` on the same data from the same weights, with the model's own
training configuration. Each step's loss, metrics, gradients, optimizer variables and weights
must match the reference cell's; a divergence names its first step and variable.

Randomness: Keras' random layers run as at inference during the compared steps (the record
lists them), so dropout does not switch the comparison off. Draws the user's own code makes
while training (a sampling layer, a dropout of its own) cannot be made inert: PROBE_STEPS more
steps, each from the same starting weights, give the law of the loss under them, compared by
law across backends and between a jit cell and its nojit sibling; a compiled step that
repeats its draws (a Python int seed) is caught against an eager run. Such a model is
compared by that law only, and the record says so.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from harness import arrays, compare
from harness.arbiter import verdict as arbiter
from harness.calls import recording_random_use, wrap_layer
from harness.cells import KERAS2, Cell
from harness.checks import timing
from harness.checks.rng import SEED_GENERATOR_HINT
from harness.statuses import MISMATCH, PASS, SKIP, worst
from harness.steps import StepFailed

TRAIN_STEPS = 4
PROBE_STEPS = 32  # compare.MIN_LAW_SAMPLES: the fewest a comparison of laws takes
EAGER_PROBE_STEPS = 4
QUANTITIES = ("loss", "metric", "gradient", "optimizer", "weight")  # a step's causal order

DATA_HINT = ("{received}, from {call}. The model's train_step unpacks it differently: declare "
             "targets=harness.no_targets where it trains as fit(x), or give targets=, or unpack "
             "with keras.utils.unpack_x_y_sample_weight(data)")
DATA_ERRORS = ("values to unpack", "Iterating over", "iterate over", "expects", "received", "input tensors", "not subscriptable",
               "index out of range", "unexpected keyword")


def step_values(step: int, logs: dict, pending: dict, optimizer: dict, weights: dict) -> dict:
    """One step's values under `"{step}/{quantity}/{name}"`, in a step's order (QUANTITIES): each
    output's own loss (`{output}_loss`, so a divergence is named at the output whose loss departs)
    before their sum, the metrics, the gradients taken at the step's start (`pending`, keyed
    `gradient/{name}`), then the optimizer's variables and the weights after it. A Keras 3 cell
    (`harness.training.StepRecorder`) and a keras2 cell (`harness.keras2.cell`) both write it."""
    prefix = f"{step}/"
    values = {prefix + f"loss/{name}": value for name, value in logs.items() if name.endswith("_loss")}
    values[prefix + "loss/loss"] = logs.get("loss", np.float32(np.nan))
    values.update({prefix + f"metric/{name}": value for name, value in logs.items()
                   if name != "loss" and not name.endswith("_loss")})
    values.update({prefix + key: value for key, value in pending.items()})
    values.update({prefix + f"optimizer/{name}": value for name, value in optimizer.items()})
    values.update({prefix + f"weight/{name}": value for name, value in weights.items()})
    return values


def targets_for(ctx, outputs):
    path = ctx.request.get("targets")
    if path:
        return arrays.load_tree(path)
    rng = np.random.default_rng(ctx.request["seed"] + 1)
    import keras

    return keras.tree.map_structure(
        lambda o: rng.normal(size=o.shape).astype(o.dtype) if o.dtype.kind == "f" else np.zeros_like(o),
        outputs)


def trains_without_targets(case, model, factory_config) -> bool:
    """`fit(x)`: declared, or a model with its own train_step compiled without a loss."""
    from harness import training
    from harness.case import no_targets

    if case.targets is no_targets:
        return True
    return (case.targets is None and training.has_own_training(model)
            and factory_config is not None and factory_config.get("loss") is None)


def run(ctx, obj, kind: str, inputs, outputs) -> None:
    from harness import training

    model = obj if kind == "model" else wrap_layer(obj, inputs)
    factory_config = ctx.factory_compile
    config = ctx.step("train", "configuration", lambda: training.configuration(ctx.case, factory_config, model))
    data = ctx.step("train", "inputs", lambda: training.TrainingData(
        x=inputs, y=None if trains_without_targets(ctx.case, model, factory_config) else targets_for(ctx, outputs),
        sample_weight=arrays.load_tree(ctx.request["sample_weight"]) if ctx.request.get("sample_weight") else None,
        class_weight=ctx.case.class_weight))
    targets_file = None
    if data.y is not None:  # what the float64 arbiter trains on, should this cell's steps need it
        targets_file = os.path.join(ctx.out_dir, "train_targets.npz")
        arrays.save_tree(targets_file, data.y)
    # Gradients are taken eagerly, so a jit cell's would repeat its nojit sibling's work.
    with_gradients = training.uses_keras_train_step(model) and not ctx.cell.jit
    initial = training.weights_of(model)
    inert = training.random_layers(model)

    def compile_model(**overrides):
        model.compile(**config.compile_kwargs, **{"jit_compile": ctx.cell.jit, **overrides})

    wrong_data = []  # the model's train_step failed on the data fit gave it

    def fit(recorder, steps):
        try:
            model.fit(**data.fit_kwargs(), epochs=steps, callbacks=[recorder])
        except Exception as exc:
            if training.has_own_training(model) and any(s in str(exc) for s in DATA_ERRORS):
                wrong_data.append(exc)
            raise

    def eager_step():
        compile_model(jit_compile=False)
        fit(training.StepRecorder(ctx.backend, ctx.device, data, with_gradients=False), 1)

    recorder = training.StepRecorder(ctx.backend, ctx.device, data, with_gradients=with_gradients)
    with training.run_as_at_inference(inert), recording_random_use() as random_use:
        ctx.step("train", "compile", compile_model)
        try:
            ctx.step("train", "train_step", lambda: fit(recorder, TRAIN_STEPS), jit_retry=eager_step)
        except StepFailed as failed:
            if not wrong_data:
                raise
            hint = DATA_HINT.format(received=data.received(), call=data.call())
            raise StepFailed(failed.status, dataclasses.replace(failed.failure, kind="train_step_data",
                                                                hint=hint)) from None
    timing.record_train(ctx, recorder.times)
    path = os.path.join(ctx.out_dir, "train_steps.npz")
    arrays.save_weights(path, ctx.in_keras2_names(recorder.steps))
    result = {
        "status": PASS, "steps": TRAIN_STEPS, "losses": recorder.losses, "file": path, "targets_file": targets_file,
        "configuration": config.describe(model), "data": data.call(),
        "gradients": "by the backend's autodiff" if with_gradients else (
            "in the nojit cell" if ctx.cell.jit and training.uses_keras_train_step(model) else
            "not recorded: the model's own train_step computes them"),
        "randomness": {"made_inert": [f"{layer.name} ({type(layer).__name__})" for layer in inert],
                       "own_draws": random_use["any"]},
    }
    if random_use["any"]:
        probe(ctx, model, data, initial, compile_model, result)
    ctx.checks["train"] = result


def probe(ctx, model, data, initial: dict, compile_model, result: dict) -> None:
    """The law of the loss under the training draws: PROBE_STEPS steps from the same weights,
    Keras' random layers live too; where every step repeats one loss, an eager run says whether the
    draws should have changed."""
    from harness import training

    model.train_function = None  # traced again, with the random layers live
    recorder = training.StepRecorder(ctx.backend, ctx.device, data, with_gradients=False,
                                     record_state=False, frozen=initial)
    ctx.step("train", "draws", lambda: model.fit(**data.fit_kwargs(), epochs=PROBE_STEPS, callbacks=[recorder]))
    losses = np.array(recorder.losses)
    draws_path = os.path.join(ctx.out_dir, "train_draws.npz")
    arrays.save_weights(draws_path, {"loss": losses})
    randomness = result["randomness"]
    randomness.update(draws=draws_path, probe_steps=PROBE_STEPS, draws_advance=bool(np.ptp(losses) > 0))
    if randomness["draws_advance"]:
        return
    compiled = ctx.cell.jit or ctx.backend == "tensorflow"  # TensorFlow traces even without jit
    if compiled:
        compile_model(jit_compile=False, run_eagerly=True)
        eager = training.StepRecorder(ctx.backend, ctx.device, data, with_gradients=False,
                                      record_state=False, frozen=initial)
        ctx.step("train", "eager", lambda: model.fit(**data.fit_kwargs(), epochs=EAGER_PROBE_STEPS, callbacks=[eager]))
        randomness["eager_draws_advance"] = bool(np.ptp(eager.losses) > 0)
    if randomness.get("eager_draws_advance"):
        message = (f"the model draws random numbers while training, and eager steps draw anew each step, "
                   f"but this cell's compiled train step repeated the same draws in all {PROBE_STEPS} "
                   f"steps (loss {losses[0]:.7g} each time)")
        result.update(status=MISMATCH, message=message, failure={
            "check": "train", "phase": "train_step", "kind": "python_int_seed", "exception": None,
            "message": message, "root_cause": None, "hint": SEED_GENERATOR_HINT})


# -- the judge -----------------------------------------------------------------------------

def judge(case_judge, cell, record: dict, replies) -> None:
    checks = record["checks"]
    if checks.get("train", {}).get("status") != PASS:
        return
    train = replies.check(cell, "train")
    if (not_loaded := case_judge.not_loaded(cell, replies)) is not None:
        checks["train"] = not_loaded
    elif (reference := case_judge.against("train", cell, record, replies)) is not None:
        ref_train = replies.check(reference, "train")
        checks["train"] = {**checks["train"], **compare_training(case_judge, cell, reference, ref_train, train, replies),
                           "compared_with": reference.id}
        if "float64_note" in checks["train"]:
            record["notes"].append("train: " + checks["train"].pop("float64_note"))
        if unpaired := checks["train"].get("keras2_only_optimizer_variables"):
            record["notes"].append(f"train: Keras 2's optimizer keeps variables Keras 3's does not make, not compared: "
                                   f"{', '.join(unpaired[:4])}{' ...' if len(unpaired) > 4 else ''}")
        differ = configuration_differences(ref_train.get("configuration"), train.get("configuration"))
        if differ:
            checks["train"]["configuration_differs"] = differ
            record["notes"].append(f"train: the training configuration as built differs from {reference.id}'s: "
                                   + "; ".join(differ))
    elif "train" in replies.arbiter and replies.arbiter["train"].truth() is not None:
        judge_reference(case_judge, cell, checks, replies)
    compare_draws_with_sibling(cell, checks["train"], replies)


def configuration_differences(reference: dict | None, mine: dict | None) -> list[str]:
    """Each optimizer setting and loss that differs as built (a default Keras 2 and Keras 3 set
    apart: the steps then differ by design, and the record says which setting)."""
    if not reference or not mine:
        return []
    differ = []
    ref_opt, opt = reference.get("optimizer", {}), mine.get("optimizer", {})
    for key in sorted(set(ref_opt) | set(opt)):
        a, b = ref_opt.get(key), opt.get(key)
        same = a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                          and np.isclose(a, b, rtol=1e-6, atol=0))
        if not same:
            differ.append(f"optimizer {key}: {b!r} here, {a!r} there")
    aliases = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "mape": "mean_absolute_percentage_error",
               "msle": "mean_squared_logarithmic_error"}  # one loss under Keras' short and long names
    ref_loss, loss = reference.get("loss"), mine.get("loss")
    if isinstance(ref_loss, str) and isinstance(loss, str) and aliases.get(ref_loss, ref_loss) != aliases.get(loss, loss):
        differ.append(f"loss: {mine.get('loss')!r} here, {reference.get('loss')!r} there")
    return differ


def compare_training(case_judge, cell: Cell, reference: Cell, ref_train: dict, train: dict, replies) -> dict:
    ref_random, random = ref_train.get("randomness", {}), train.get("randomness", {})
    verdicts = []
    result = {}
    if ref_random.get("own_draws") or random.get("own_draws"):
        result["compared"] = "the law of the loss under the training draws"
        result["note"] = ("the model's own code draws random numbers while training (not a Keras layer that "
                          "can run as at inference): steps are not compared value by value, the loss over "
                          f"{PROBE_STEPS} steps from the initial weights is compared by law")
    else:
        result.update(compare_steps(case_judge, cell, reference, ref_train, train, replies))
        verdicts.append(result["status"])
    if ref_random.get("draws") and random.get("draws"):
        law = compare_losses_by_law(ref_random["draws"], random["draws"], "the reference cell")
        result["draws_law"] = law
        if law["status"] != SKIP:
            verdicts.append(law["status"])
        if law["status"] == MISMATCH:
            result["message"] = "; ".join(m for m in (result.get("message"), law["message"]) if m)
    if not verdicts:
        return {**result, "status": PASS, "not_compared": True,
                "reason": "training draws random numbers in the model's own code, and no draws to compare by law"}
    return {**result, "status": worst(verdicts)}


def compare_losses_by_law(ref_path: str, path: str, whose: str) -> dict:
    ref, mine = arrays.load_weights(ref_path)["loss"], arrays.load_weights(path)["loss"]
    law = compare.compare_laws(f"loss under the training draws (over {len(mine)} steps from the initial "
                               f"weights, against {whose})", ref, mine)
    return {k: law[k] for k in ("status", "message", "reason", "not_compared", "ks_pvalue", "mean", "std",
                                "reference_mean", "reference_std") if k in law}


def compare_draws_with_sibling(cell: Cell, train: dict, replies) -> None:
    """A jit cell's training draws against its nojit sibling's, by law: a compiler that
    changes the draws' law (or freezes them) is caught within the backend."""
    if not cell.jit or train.get("status") != PASS:
        return
    mine = replies.check(cell, "train").get("randomness", {})
    theirs = replies.check(cell.nojit, "train").get("randomness", {})
    if not (mine.get("draws") and theirs.get("draws")):
        return
    law = compare_losses_by_law(theirs["draws"], mine["draws"], "the nojit sibling")
    train["draws_law_vs_nojit"] = law
    if law["status"] == MISMATCH:
        train.update(status=MISMATCH, message="; ".join(m for m in (train.get("message"), law["message"]) if m))


def step_keys(steps: dict) -> list[tuple[int, str, str, str]]:
    """(step, quantity, name, key) in the order a step computes them."""
    keys = []
    for key in steps:
        step, quantity, name = key.split("/", 2)
        keys.append((int(step), QUANTITIES.index(quantity), name, key))
    return [(s, QUANTITIES[q], n, k) for s, q, n, k in sorted(keys, key=lambda t: (t[0], t[1]))]


def compare_steps(case_judge, cell: Cell, reference: Cell, ref_train: dict, train: dict, replies) -> dict:
    """Every recorded quantity of every step, in order; the first that differs is the first
    divergence, with the backend that departs from the others where a third cell says."""
    rtol, atol = case_judge.case.rtol, case_judge.case.atol
    ref, mine = arrays.load_weights(ref_train["file"]), arrays.load_weights(train["file"])
    first, missing, worst_loss = None, [], 0.0
    keras2_only = []  # Keras 2 optimizer slots Keras 3 does not make (SGD's momentum at 0)
    compared = 0
    for step, quantity, name, key in step_keys(ref):
        if key not in mine:
            if quantity == "optimizer" and reference.backend == KERAS2:
                keras2_only.append(name)
            elif quantity != "gradient":  # a jit cell leaves gradients to its nojit sibling
                missing.append(key)
            continue
        # A loss or metric is a result and is compared at its own scale where tiny; gradients
        # and weights that should be zero in exact arithmetic (a bias before a normalization)
        # are float32 noise of 1e-9 in every backend, within atol as they should be.
        verdict = compare.compare_arrays(name, ref[key], mine[key], str(ref[key].dtype), rtol, atol,
                                         own_scale=quantity in ("loss", "metric"))
        compared += 1
        if quantity == "loss":
            worst_loss = max(worst_loss, verdict.get("max_abs_err", np.inf))
        if verdict["status"] != PASS and first is None:
            first = {"step": step, "quantity": quantity, "variable": name,
                     "max_abs_err": verdict.get("max_abs_err"), "message": verdict.get("message")}
            outlier = outlier_backend(key, cell, reference, replies, rtol, atol)
            if outlier:
                first["outlier"] = outlier
    final = {k.split("/", 2)[2]: v for k, v in mine.items() if k.startswith(f"{TRAIN_STEPS}/weight/")}
    ref_final = {k.split("/", 2)[2]: v for k, v in ref.items() if k.startswith(f"{TRAIN_STEPS}/weight/")}
    weights = compare.compare_weight_sets(ref_final, final, rtol, atol)
    result = {"status": MISMATCH if first or missing else PASS, "steps": train["steps"], "compared_values": compared,
              **({"keras2_only_optimizer_variables": sorted(set(keras2_only))} if keras2_only else {}),
              "reference_losses": ref_train["losses"], "loss_max_abs_err": worst_loss,
              "max_abs_err": weights.get("max_abs_err"), "max_rel_err": weights.get("max_rel_err")}
    if first is not None:
        result["first_divergence"] = first
        where = f"step {first['step']}, {first['quantity']} {first['variable']}"
        outlier = (f" ({first['outlier']} {'depart' if ', ' in first['outlier'] else 'departs'} from the other "
                   f"backends)" if first.get("outlier") else "")
        result["message"] = f"training diverges first at {where}{outlier}: {first['message']}"
        if weights.get("message"):
            result["message"] += f"; after {TRAIN_STEPS} steps, {weights['message']}"
    elif missing:
        result["message"] = f"not recorded in this cell: {', '.join(missing[:3])}"
    if first is not None and not missing:  # values beyond the plain tolerance: float64 can say why
        case_judge.arbitrate("train", cell)
        if "train" in replies.arbiter:
            return arbitrate(case_judge, cell, reference, ref, mine, replies, result)
    return result


def outlier_backend(key: str, cell: Cell, reference: Cell, replies, rtol, atol) -> str | None:
    """Where this cell and the reference differ on `key`: who departs, by every cell's value
    of it (`compare.outlier`)."""
    values = {}
    for other, outcome in replies.outcomes.items():
        check = (outcome.reply or {}).get("checks", {}).get("train", {})
        if check.get("status") == PASS and check.get("file") and not check.get("randomness", {}).get("own_draws"):
            steps = arrays.load_weights(check["file"])
            if key in steps:
                values[other] = steps[key]
    if reference not in values or cell not in values:
        return None
    return compare.outlier(values, cell, reference, rtol, atol)[0]


# -- the float64 arbiter ---------------------------------------------------------------------

def trained_cells(replies) -> dict:
    """Every cell whose steps were recorded and can be compared value by value: its steps."""
    found = {}
    for other in replies.outcomes:
        check = replies.check(other, "train")
        if check.get("status") == PASS and check.get("file") and not check.get("randomness", {}).get("own_draws"):
            found[other] = arrays.load_weights(check["file"])
    return found


def arbitrate(case_judge, cell: Cell, reference: Cell, ref: dict, mine: dict, replies, plain: dict) -> dict:
    """The steps judged again against the float64 run: each value beyond the plain tolerance
    either within float32 round-off (training amplifies it step by step, as it does the
    reference's and the nudged runs') or the first divergence, introduced at its step."""
    evidence = replies.arbiter["train"]
    account = evidence.describe()
    rtol, atol = case_judge.case.rtol, case_judge.case.atol
    truth = evidence.truth()
    if truth is None:
        account["verdict"] = "not run: no float64 run held end to end, so the plain tolerance stands"
        return {**plain, "float64": account}
    base = {k: v for k, v in plain.items() if k not in ("first_divergence", "message")}
    base["float64"] = account
    account["growth"] = growth(mine, ref, truth, evidence.samples())
    beyond, first = judge_steps(ref, mine, truth, evidence.samples(), evidence.own(cell.backend), rtol, atol,
                                evidence.samples(cell.id) if cell.id in evidence.nudged else None)
    first_judged = beyond[-1][3] if first else None
    widest = max(beyond, key=lambda b: b[3].error / b[3].band if b[3].band else 0, default=None)
    account["beyond_tolerance"] = len(beyond)
    account["roundoff_dominated"] = sum(b[3].why == "roundoff_dominated" for b in beyond)
    if widest:  # the value nearest its band (or past it): the figures the pages show
        account["widest"] = {"step": widest[0], "quantity": widest[1], "variable": widest[2], **widest[3].to_json()}
    if first is None:
        account["verdict"] = arbiter.ROUNDOFF
        note = (f"{len(beyond)} values beyond the plain tolerance, each within float32 round-off of float64"
                + (f" (the widest, step {widest[0]} {widest[1]} {widest[2]}: {widest[3].sentence()})" if widest else ""))
        return {**base, "status": PASS, "float64_note": note}
    account["verdict"] = first_judged.verdict
    outlier = diverging_backends(case_judge, replies, evidence)
    if first["float64"]["why"] == "semantics" or not outlier:
        outlier = outlier_backend(f"{first['step']}/{first['quantity']}/{first['variable']}", cell, reference,
                                  replies, rtol, atol)
    if outlier:
        first["outlier"] = outlier
    where = f"step {first['step']}, {first['quantity']} {first['variable']}"
    introduced = "" if first["step"] == 1 else (f"; introduced at step {first['step']}: every value of the steps "
                                                f"before was within float32 round-off of float64")
    departs = f" ({outlier} {'depart' if ', ' in outlier else 'departs'} from the other backends)" if outlier else ""
    message = (f"training diverges first at {where}{departs}: "
               f"{first['message']}; against float64 it is {first_judged.sentence()}{introduced}")
    return {**base, "status": MISMATCH, "first_divergence": first, "message": message}


def judge_steps(ref: dict, mine: dict, truth: dict, samples: list[dict], own: dict | None, rtol, atol,
                own_samples: list[dict] | None = None):
    """Every recorded value of a cell beyond the plain tolerance of the reference's, in a step's
    order, judged against float64 (`harness.arbiter.verdict`; `own` and `own_samples`: this
    cell's backend's float64 run and its nudged runs, where they ran): the judged values as (step,
    quantity, name, judgement), up to the first that diverges, and that first divergence (None
    where every one is within float32 round-off)."""
    beyond, carried = [], {}
    # The size of the terms a value is computed from: the largest of its layer's values of the
    # same step and quantity (a bias's gradient is a sum of what its kernel's gradient is made of).
    scales: dict[str, float] = {}
    for key, value in truth.items():
        group = key.rsplit("/", 1)[0]
        finite = np.abs(value[np.isfinite(value)]) if np.size(value) else np.zeros(0)
        scales[group] = max(scales.get(group, 0.0), float(finite.max()) if finite.size else 0.0)
    for step, quantity, name, key in step_keys(ref):
        if key not in mine or key not in truth:
            continue
        if step not in carried:  # how far from float64 this cell's weights started the step
            before = [k for k in truth if k.startswith(f"{step - 1}/weight/") and k in mine and k in ref]
            carried[step] = arbiter.distance_ratio(mine, ref, truth, samples, before)
        verdict = compare.compare_arrays(name, ref[key], mine[key], str(ref[key].dtype), rtol, atol,
                                         own_scale=quantity in ("loss", "metric"))
        if verdict["status"] == PASS:
            continue
        judged = arbiter.judge_value(mine[key], ref[key], truth[key], [s[key] for s in samples if key in s],
                                     None if own is None or key not in own else own[key],
                                     verdict["rtol"], verdict["atol"], carried=carried[step],
                                     own_samples=own_samples and [s[key] for s in own_samples if key in s],
                                     scale=scales.get(key.rsplit("/", 1)[0]))
        beyond.append((step, quantity, name, judged))
        if judged.verdict != arbiter.ROUNDOFF:
            return beyond, {"step": step, "quantity": quantity, "variable": name,
                            "max_abs_err": verdict.get("max_abs_err"), "message": verdict.get("message"),
                            "float64": judged.to_json(), "introduced_at_step": step}
    return beyond, None


def growth(mine: dict, ref: dict, truth: dict, samples: list) -> list[dict]:
    """Per step, how far this cell's weights are from the reference's and from float64 (the median
    over weights of each one's RMSE relative to its size), beside the reference's and the nudged
    runs' distance from float64, and the ratio of this cell's distance to theirs at its worst
    (`ratio`, capped at the multiple): round-off that training amplifies grows in all of them alike."""
    rows = []
    steps = sorted({int(k.split("/", 1)[0]) for k in truth if "/weight/" in k})
    for step in steps:
        keys = [k for k in truth if k.startswith(f"{step}/weight/") and k in mine and k in ref
                and np.asarray(truth[k]).dtype.kind == "f"]
        if not keys:
            continue

        def relative(a: dict, b: dict) -> float:
            return float(np.median([arbiter.error(a[k], b[k]) / (arbiter.size_of(b[k]) or 1.0) for k in keys]))

        rows.append({"step": step, "vs_reference": relative(mine, ref), "vs_float64": relative(mine, truth),
                     "reference_vs_float64": relative(ref, truth),
                     "nudged_vs_float64": max((relative(s, truth) for s in samples), default=None),
                     "ratio": arbiter.distance_ratio(mine, ref, truth, samples, keys)})
    return rows


def first_divergences(case_judge, replies, evidence) -> dict:
    """Every trained cell's first divergence against float64 (None where it has none), judged as
    its own check is; cached on the evidence, as the outlier needs every cell's."""
    if "first divergences" not in evidence.judged:
        steps = trained_cells(replies)
        reference = case_judge.reference_for("train", replies)
        found = {}
        for other, values in steps.items():
            if other != reference and reference in steps:
                found[other] = judge_steps(steps[reference], values, evidence.truth(), evidence.samples(),
                                           evidence.own(other.backend), case_judge.case.rtol, case_judge.case.atol,
                                           evidence.samples(other.id) if other.id in evidence.nudged else None)[1]
        evidence.judged["first divergences"] = found
    return evidence.judged["first divergences"]


def diverging_backends(case_judge, replies, evidence) -> str | None:
    """The backends every trained cell of which diverges from float64."""
    by_backend: dict[str, list[bool]] = {}
    for other, first in first_divergences(case_judge, replies, evidence).items():
        by_backend.setdefault(other.backend, []).append(first is not None)
    named = [b for b, flags in by_backend.items() if flags and all(flags)]
    return ", ".join(named) or None


def judge_reference(case_judge, cell: Cell, checks: dict, replies) -> None:
    """The reference cell's own steps against float64: a mismatch at the first value where it
    is the one far from float64 while the other backends are close to it."""
    evidence = replies.arbiter["train"]
    steps = trained_cells(replies)
    if cell != case_judge.reference_for("train", replies) or cell not in steps:
        return
    truth, mine = evidence.truth(), steps[cell]
    others = [values for other, values in steps.items() if other.backend != cell.backend]
    if not others:
        return
    for step, quantity, name, key in step_keys(mine):
        if key not in truth:
            continue
        rtol, atol = compare.tolerance(str(mine[key].dtype), case_judge.case.rtol, case_judge.case.atol)
        error = arbiter.error(mine[key], truth[key])
        samples = [error] + [arbiter.error(s[key], truth[key]) for s in evidence.samples() if key in s]
        if max(samples) > arbiter.ROUNDOFF_DOMINATES * arbiter.size_of(truth[key]):
            continue  # chaotic there: no cell can be told from another
        theirs = [arbiter.error(values[key], truth[key]) for values in others if key in values]
        if arbiter.reference_far(samples, theirs, rtol, atol, truth[key]):
            far = (f"step {step}, {quantity} {name}: its RMSE against float64 is {error:.3g}, the other "
                   f"backends' at most {max(theirs):.3g}")
            checks["train"] = {**checks["train"], "status": MISMATCH,
                               "message": f"the reference cell is the one far from float64, while the other "
                                          f"backends are close to it: {far}",
                               "first_divergence": {"step": step, "quantity": quantity, "variable": name,
                                                    "outlier": f"{cell.backend} (the reference)"},
                               "float64": {**evidence.describe(), "verdict": arbiter.DIVERGES, "reference_far": far}}
            return
