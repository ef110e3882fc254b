"""From the workers' replies for one case to one record per cell.

Every comparison between cells happens here, in the pytest process, with numpy only: a cell
against the reference cell (variables, outputs, training, laws of initial weights), a jit
cell against its nojit sibling (seeded draws), and the cross-backend save and export files.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from harness import arrays, classify, compare, report_tables
from harness.case import Case
from harness.cells import Cell, CellPlan
from harness.pool import Outcome, WorkerPool
from harness.statuses import FAILING_STATUSES, MISMATCH, PASS, SKIP, XFAIL, is_failure, worst

CRASH_HINT = ("the worker process died in this cell (a segfault in native code, an abort, or "
              "the out-of-memory killer); its log tail is in the record, and the next cell of "
              "this backend ran in a fresh worker")
TIMEOUT_HINT = ("raise --keras-timeout if the cell is only slow (torch.compile can take "
                "minutes on CPU), or look for a hang in the log tail")
SEED_GENERATOR_HINT = (
    "a layer passes a Python int seed to keras.random: a compiled call bakes the first seed in, "
    "so every call repeats the same draws. Hold a keras.random.SeedGenerator(seed) in "
    "__init__ and pass it as seed=")
NOT_RUN = {"status": SKIP, "reason": "not run"}
INTERNAL_KEYS = ("variables", "file", "dtypes", "random", "draws", "draws_advance", "eager_draws_advance")


@dataclasses.dataclass
class CaseReplies:
    """Everything the workers answered for one case."""

    file_cells: dict[tuple[str, str], Cell]
    outcomes: dict[Cell, Outcome] = dataclasses.field(default_factory=dict)
    loaded: dict[Cell, Outcome] = dataclasses.field(default_factory=dict)
    reloaded: Outcome | None = None
    weights_from: Cell | None = None  # the cell whose initial weights the others loaded

    def reply(self, cell: Cell) -> dict | None:
        outcome = self.outcomes.get(cell)
        return outcome.reply if outcome else None

    def check(self, cell: Cell, name: str) -> dict:
        reply = self.reply(cell)
        return (reply or {}).get("checks", {}).get(name, {})

    def saved_files(self) -> dict[Cell, str]:
        """Each file cell's .keras file, where its save check passed."""
        return {cell: self.check(cell, "save")["file"] for cell in self.file_cells.values()
                if self.check(cell, "save").get("status") == PASS}

    def exported_files(self) -> dict[Cell, dict]:
        """Each file cell's SavedModel (folder and input structure), where it was written."""
        found = {cell: self.check(cell, "export").get("saved_model", {}) for cell in self.file_cells.values()}
        return {cell: sm for cell, sm in found.items() if sm.get("status") == PASS}

    def nojit_outputs(self, cell: Cell) -> str:
        folder = os.path.dirname(self.check(cell, "outputs").get("file") or "")
        path = os.path.join(folder, "outputs_nojit.npz")
        return path if os.path.exists(path) else os.path.join(folder, "outputs.npz")


def fallback_order(plan: CellPlan) -> list[Cell]:
    """The reference cell, then the others in the plan's order with nojit cells first: an
    eager cell is the likelier stand-in for the reference than a compiler's output."""
    return [plan.reference] + sorted((c for c in plan.cells if c != plan.reference), key=lambda c: c.jit)


def load(path: str):
    skeleton, leaves = arrays.load_leaves(path)
    return arrays.leaf_names(skeleton), leaves


class Judge:
    def __init__(self, case: Case, case_ref, plan: CellPlan, pool: WorkerPool, wanted: list[str]):
        self.case = case
        self.case_ref = case_ref
        self.plan = plan
        self.pool = pool
        self.wanted = wanted

    # -- records without a reply -------------------------------------------------------

    def base_record(self, cell: Cell) -> dict:
        return {
            "case": self.case_ref.id, "cell": cell.id, "backend": cell.backend, "device": cell.device,
            "jit": cell.jit, "reference": self.plan.reference.id, "status": PASS, "checks": {},
            "failure": None, "timings": {}, "notes": [], "versions": self.pool.versions(cell.worker_key),
            "kernels": self.pool.kernels(cell.worker_key),
            "covers": list(self.case.covers),
        }

    def skip_record(self, cell: Cell, reason: str) -> dict:
        record = self.base_record(cell)
        record.update(status=SKIP, skip_reason=reason, checks={c: {"status": SKIP} for c in self.wanted})
        return record

    def input_error_record(self, cell: Cell, exc: Exception) -> dict:
        record = self.base_record(cell)
        record["failure"] = {
            "check": "build", "phase": "inputs", "kind": "bad_inputs",
            "exception": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
            "root_cause": classify.root_cause(exc),
            "hint": f"the inputs or targets of case {self.case_ref.id} could not be made: fix "
                    f"inputs=/targets= (an array, tuple/list/dict of arrays, harness.spec, or rng -> those)",
        }
        record["checks"] = {c: {"status": SKIP, "reason": "not run: the case's inputs could not be made"}
                            for c in self.wanted}
        record["checks"]["build"] = {"status": "error", "failure": dict(record["failure"])}
        record["status"] = "error"
        return self.apply_xfail(cell, record)

    # -- a cell's record ---------------------------------------------------------------

    def cell_record(self, cell: Cell, replies: CaseReplies) -> dict:
        outcome = replies.outcomes[cell]
        record = self.base_record(cell)
        if outcome.reply is None:
            if outcome.status == SKIP:
                return self.skip_record(cell, outcome.message)
            failure = {
                "check": None, "phase": "worker", "kind": outcome.status, "exception": None,
                "message": outcome.message, "root_cause": outcome.message,
                "hint": {"crash": CRASH_HINT, "timeout": TIMEOUT_HINT}.get(outcome.status),
            }
            record["checks"] = {c: {"status": outcome.status, "failure": {**failure, "check": c}}
                                for c in self.wanted}
            record["failure"] = {**failure, "log_tail": outcome.log_tail}
        else:
            reply = outcome.reply
            # Copies: the reply's own dicts are read again for other cells.
            record["checks"] = {c: dict(reply["checks"].get(c, NOT_RUN)) if self.case.runs_in(c, cell.id)
                                else {"status": SKIP, "reason": "not run in this cell: the case's cell_checks"}
                                for c in self.wanted}
            record["timings"] = reply.get("timings", {})
            record["notes"] = list(reply.get("notes", []))
            self.compare_with_reference(cell, record, replies)
            self.check_seed_footgun(cell, record, replies)
            self.compare_with_sibling(cell, record, replies)
            self.judge_files(cell, record, replies)
            for check in record["checks"].values():
                for key in INTERNAL_KEYS:
                    check.pop(key, None)
            record["failure"] = self.worst_failure(record["checks"])
            if record["failure"] is not None:
                record["failure"]["log_tail"] = outcome.log_tail
        record["status"] = worst(c["status"] for c in record["checks"].values())
        return self.not_a_pass_without_its_comparisons(self.apply_xfail(cell, record))

    @staticmethod
    def not_a_pass_without_its_comparisons(record: dict) -> dict:
        """A cell whose checks passed, but some comparison it asked for did not happen (nothing
        to compare with, random training), is `skip` with the reasons, not `pass`: a pass says
        something was compared. A declared failure that did not happen stays flagged."""
        declared = record.get("xfail")
        if record["status"] != PASS or (declared and not declared["met"]):
            return record
        missing = [f"{name}: {check['reason']}" for name, check in record["checks"].items() if check.get("not_compared")]
        if missing:
            record.update(status=SKIP, skip_reason="checks passed, but not every comparison happened: "
                                                   + "; ".join(missing))
        return record

    @staticmethod
    def worst_failure(checks: dict[str, dict]) -> dict | None:
        """Every failing check carries its own failure record (a comparison's is made from its
        message); the cell's `failure` is a copy of the worst one, the first in check order."""
        failing = []
        for name, check in checks.items():
            if not is_failure(check["status"]):
                continue
            check.setdefault("failure", {
                "check": name, "phase": "compare", "kind": check["status"], "exception": None,
                "message": check.get("message", check["status"]), "root_cause": None,
                "hint": check.get("hint")})
            failing.append(check)
        if not failing:
            return None
        return dict(max(failing, key=lambda c: FAILING_STATUSES.index(c["status"]))["failure"])

    def reference_for(self, check: str, replies: CaseReplies) -> Cell | None:
        """The cell a check is compared with: the run's reference cell where it got through
        the check, else the first cell that did with the same initial weights, nojit cells
        before compiled ones (a fallback reference, named in the record); None where none did."""
        for candidate in fallback_order(self.plan):
            mine, reply = replies.check(candidate, check), replies.reply(candidate)
            if reply is None or not (mine.get("status") == PASS or (check == "build" and "variables" in mine)):
                continue
            if (candidate == replies.weights_from or reply.get("weights_loaded")
                    or not replies.check(candidate, "build").get("variables")):
                return candidate
        return None

    def compare_with_reference(self, cell: Cell, record: dict, replies: CaseReplies) -> None:
        checks = record["checks"]
        mine = replies.reply(cell)
        comparable = mine.get("weights_loaded") is not False
        not_loaded = {"status": SKIP, "not_compared": True, "reason": "the reference weights could not be "
                                                                     "loaded (variable paths differ: see the build check)"}

        fallbacks: dict[str, Cell] = {}

        def against(check: str) -> Cell | None:
            """The cell to compare `check` with, or None when this cell is that cell (it is the
            reference for it) or there is none (the check is then skipped, saying why)."""
            reference = self.reference_for(check, replies)
            if reference is not None and reference != self.plan.reference:
                fallbacks[check] = reference
            if reference is None:
                checks[check] = {"status": SKIP, "not_compared": True, "reason": f"no cell got through {check} with the "
                                                           f"same initial weights: nothing to compare with"}
            elif reference != cell:
                checks[check]["compared_with"] = reference.id
                return reference
            return None

        build = checks.get("build", {})
        if "variables" in build and (reference := against("build")) is not None:
            verdict = compare.compare_variables(replies.check(reference, "build")["variables"], build["variables"])
            if build["status"] == PASS or verdict["status"] != PASS:  # an untracked-state finding stays
                checks["build"] = {**build, **verdict, **({"failure": build["failure"]} if "failure" in build else {})}
                if build["status"] != PASS:
                    checks["build"]["status"] = worst([build["status"], verdict["status"]])

        if checks.get("outputs", {}).get("status") == PASS:
            if not comparable:
                checks["outputs"] = dict(not_loaded)
            elif (reference := against("outputs")) is not None:
                checks["outputs"] = {**self.compare_outputs(replies.check(reference, "outputs"),
                                                            replies.check(cell, "outputs"), record),
                                     "compared_with": reference.id}

        if checks.get("train", {}).get("status") == PASS:
            train = replies.check(cell, "train")
            if not comparable:
                checks["train"] = dict(not_loaded)
            elif (reference := against("train")) is not None:
                ref_train = replies.check(reference, "train")
                if ref_train.get("random") or train.get("random"):
                    checks["train"] = {**checks["train"], "status": SKIP, "not_compared": True, "reason": (
                        "training draws random numbers (dropout, noise), which differ per backend: "
                        "losses and weights are not compared across backends")}
                else:
                    checks["train"] = {**self.compare_training(ref_train, train), "compared_with": reference.id}

        if checks.get("rng", {}).get("status") == PASS and cell != replies.weights_from:
            self.compare_initializer_laws(cell, record, replies)
        if fallbacks:
            failure = self.worst_failure(dict(replies.reply(self.plan.reference) or {}).get("checks", {})) or {}
            why = f"{report_tables.failure_where(failure) or 'it did not run'}: {failure.get('root_cause') or failure.get('message', '')}"[:300]
            record["notes"].append(
                f"the reference cell {self.plan.reference.id} failed ({why}): "
                + ", ".join(f"{check}: this cell stands in for it" if ref == cell else
                            f"{check} compared with {ref.id}" for check, ref in fallbacks.items()))
            record["fallback_reference"] = {check: ref.id for check, ref in fallbacks.items()}

    def compare_outputs(self, ref_outputs: dict, outputs: dict, record: dict) -> dict:
        names, ref_leaves = load(ref_outputs["file"])
        _, leaves = load(outputs["file"])
        if not (ref_outputs.get("random") or outputs.get("random")):
            return compare.compare_outputs(names, ref_leaves, leaves, ref_outputs["dtypes"],
                                           outputs["dtypes"], self.case.rtol, self.case.atol)
        # Random at inference: each backend draws its own numbers; compare laws, never values.
        result, how = self.compare_random_outputs(names, ref_outputs, outputs)
        record["notes"].append(f"outputs draw random numbers at inference: compared by distribution, {how}")
        return result

    @staticmethod
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
        bad = [o for o in per_output if o["status"] != PASS]
        result = {"status": MISMATCH if bad else PASS, "compared": "distribution", "outputs": per_output}
        if bad:
            result["message"] = "; ".join(o["message"] for o in bad)
        return result, how

    def compare_training(self, ref_train: dict, train: dict) -> dict:
        losses = compare.compare_arrays("loss per step", np.array(ref_train["losses"]),
                                        np.array(train["losses"]), "float32", self.case.rtol, self.case.atol)
        weights = compare.compare_weight_sets(arrays.load_weights(ref_train["file"]),
                                              arrays.load_weights(train["file"]), self.case.rtol, self.case.atol)
        result = {"status": worst([losses["status"], weights["status"]]), "steps": train["steps"],
                  "losses": train["losses"], "reference_losses": ref_train["losses"],
                  "loss_max_abs_err": losses.get("max_abs_err"),
                  "max_abs_err": weights.get("max_abs_err"), "max_rel_err": weights.get("max_rel_err")}
        messages = [m for m in (losses.get("message"), weights.get("message")) if m]
        if messages:
            result["message"] = "after training, " + "; ".join(messages)
        return result

    def compare_initializer_laws(self, cell: Cell, record: dict, replies: CaseReplies) -> None:
        """Each cell's own initial weights must follow the same law as the reference's."""
        folder = os.path.dirname(replies.check(cell, "outputs").get("file") or "")
        own_path = os.path.join(folder, "initial_weights.npz")
        ref_path = os.path.join(os.path.dirname(folder), "reference_weights.npz")
        if not (os.path.exists(own_path) and os.path.exists(ref_path)):
            return
        reference, own = arrays.load_weights(ref_path), arrays.load_weights(own_path)
        laws = [compare.compare_laws(path, reference[path], own[path]) for path in reference if path in own]
        bad = [law for law in laws if law["status"] != PASS]
        rng = record["checks"]["rng"]
        rng["initializers_compared"] = sum("ks_pvalue" in law for law in laws)
        if bad:
            rng.update(status=MISMATCH, initializer_laws=bad,
                       message="initial weights follow a different law than the reference "
                               "cell's: " + "; ".join(law["message"] for law in bad[:3]))

    def check_seed_footgun(self, cell: Cell, record: dict, replies: CaseReplies) -> None:
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

    def compare_with_sibling(self, cell: Cell, record: dict, replies: CaseReplies) -> None:
        """A jit cell's seeded draws against its nojit sibling's, in the same backend."""
        rng = record["checks"].get("rng")
        sibling = Cell(cell.backend, cell.device, False)
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
        verdict, how = self.compare_random_outputs(names, eager_outputs, outputs)
        rng["jit_matches_eager"] = "distribution"
        record["notes"].append(f"seeded draws differ between jit and eager in {cell.backend} "
                               f"(its compiler has its own RNG); compared by distribution, {how}")
        if verdict["status"] != PASS:
            rng.update(status=MISMATCH, message="jit draws follow a different law than eager: " + verdict["message"])

    # -- save and export across backends -----------------------------------------------

    def judge_files(self, cell: Cell, record: dict, replies: CaseReplies) -> None:
        checks = record["checks"]
        file_cell = replies.file_cells.get(cell.worker_key)
        for name in ("save", "export"):
            if name in checks and file_cell != cell and checks[name] == NOT_RUN:
                checks[name] = {"status": SKIP, "reason": f"{name} does not depend on jit: it ran "
                                                          f"once, in {file_cell.id if file_cell else 'no cell'}"}
        if checks.get("save", {}).get("status") == PASS and cell in replies.loaded:
            checks["save"] = self.judge_loads(cell, checks["save"], replies.loaded[cell], replies)
        if "saved_model" in checks.get("export", {}):  # it ran: its routes are judged one by one
            checks["export"] = self.judge_export(cell, checks["export"], replies)
        # The cross-backend loads and reloads run after the cells; their seconds belong to
        # the cell whose worker loaded the others' files, and to the cell whose export it was.
        loaded = replies.loaded.get(cell)
        if loaded is not None and loaded.reply is not None:
            record["timings"]["load_others_s"] = sum(r["seconds"] for r in loaded.reply["results"].values())
        reloaded = replies.reloaded.reply if replies.reloaded is not None else None
        if reloaded is not None and cell.id in reloaded["results"]:
            record["timings"]["saved_model_reload_s"] = reloaded["results"][cell.id]["seconds"]

    def judge_loads(self, loader: Cell, save: dict, outcome: Outcome, replies: CaseReplies) -> dict:
        """This backend loaded the .keras files of the others. Every cell holds the reference's
        weights, so a file that loads correctly reproduces this cell's own outputs (numerical
        parity between backends is the outputs check's business, not the file's)."""
        save = dict(save)
        if outcome.reply is None:
            save.update(status=outcome.status, message=f"loading other backends' files: {outcome.message}")
            return save
        matrix = {}
        for source, result in outcome.reply["results"].items():
            if result["status"] != PASS:
                matrix[source] = {"status": result["status"], "message": result["failure"]["message"],
                                  "hint": result["failure"].get("hint")}
                save.setdefault("failure", {**result["failure"], "message": f".keras saved under {source}: "
                                                                             f"{result['failure']['message']}"})
                continue
            matrix[source] = self.compare_files(replies.nojit_outputs(loader), result["file"],
                                                replies.check(loader, "outputs").get("random"))
        save["loaded_from"] = matrix
        bad = {s: r for s, r in matrix.items() if r["status"] != PASS}
        if bad:
            save["status"] = worst(r["status"] for r in bad.values())
            save["message"] = "; ".join(f".keras saved under {s}: {r.get('message', r['status'])}"
                                        for s, r in bad.items())
        return save

    def judge_export(self, cell: Cell, export: dict, replies: CaseReplies) -> dict:
        export = dict(export)
        expected = replies.nojit_outputs(cell)
        random = replies.check(cell, "outputs").get("random")
        onnx = dict(export["onnx"])
        if onnx.get("status") == PASS:
            onnx = {**self.compare_files(expected, onnx.pop("file"), random), "run_with": "onnxruntime"}
        saved_model = self.judge_saved_model(cell, dict(export["saved_model"]), expected, replies)
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

    def compare_files(self, expected_path: str, got_path: str, random: bool = False) -> dict:
        """A round trip's outputs against the cell's own; for random outputs both files hold
        the draws of independent calls, compared by law."""
        names, expected = load(expected_path)
        got = load(got_path)[1]
        if random:
            laws = [compare.compare_draws(n, e, g) for n, e, g in zip(names, expected, got)]
            bad = [law["message"] for law in laws if law["status"] != PASS]
            return {"status": MISMATCH if bad else PASS, "compared": "distribution",
                    **({"message": "; ".join(bad)} if bad else {})}
        verdict = compare.compare_outputs(names, expected, got, [str(a.dtype) for a in expected],
                                          [str(a.dtype) for a in got], self.case.rtol, self.case.atol)
        return {k: verdict[k] for k in ("status", "max_abs_err", "message") if k in verdict}

    def judge_saved_model(self, cell: Cell, export: dict, expected: str, replies: CaseReplies) -> dict:
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
        export.update(self.compare_files(expected, result["file"], replies.check(cell, "outputs").get("random")))
        export["reloaded_with"] = "keras.layers.TFSMLayer in a TensorFlow worker"
        return export

    # -- declared failures -------------------------------------------------------------

    def apply_xfail(self, cell: Cell, record: dict) -> dict:
        """A declared failure that happens is `xfail`; one that does not is kept and flagged.
        A machine-dependent declaration accepts any of its outcomes: a failure among them is
        `xfail`, a pass stays `pass`, and the record says which one this machine gave."""
        rule = self.case.xfail_rule(cell.id)
        if rule is None or record["status"] == SKIP:
            return record
        actual = record["status"]
        actual_kind = (record.get("failure") or {}).get("kind")
        met = rule.allows(actual, actual_kind)
        record["xfail"] = {"pattern": rule.pattern, "expected": rule.expected,
                           "reason": rule.reason, "actual": actual, "met": met}
        if rule.kind is not None:
            record["xfail"].update(expected_kind=rule.kind, actual_kind=actual_kind)
        if rule.outcomes:
            record["xfail"]["outcomes"] = dict(rule.outcomes)
        if met and is_failure(actual):
            record["status"] = XFAIL
        return record
