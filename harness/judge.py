"""From the workers' replies for one case to one record per cell.

`Judge` orchestrates, in the pytest process and with numpy only: for each cell it builds the
record, has each check judge its own result against the other cells
(`harness.checks.<check>.judge`, in `harness.checks.JUDGED` order), picks the cell each check is
compared with (the reference cell, or a fallback where the reference failed), gives every
failing check its own failure record, and applies the case's declarations.
"""

from __future__ import annotations

from harness import checks as all_checks
from harness import classify
from harness.report import tables as report_tables
from harness.case import Case
from harness.cells import KERAS2, Cell, CellPlan
from harness.workers.pool import WorkerPool
from harness.replies import NOT_RUN, CaseReplies, fallback_order
from harness.statuses import FAILING_STATUSES, PASS, SKIP, XFAIL, is_failure, worst

CRASH_HINT = ("the worker process died in this cell (a segfault in native code, an abort, or "
              "the out-of-memory killer); its log tail is in the record, and the next cell of "
              "this backend ran in a fresh worker")
TIMEOUT_HINT = ("raise --keras-timeout if the cell is only slow (torch.compile can take "
                "minutes on CPU), or look for a hang in the log tail")
INTERNAL_KEYS = ("variables", "file", "targets_file", "dtypes", "random", "draws", "draws_advance",
                 "eager_draws_advance", "kind", "arbitrable")


class Judge:
    def __init__(self, case: Case, case_ref, plan: CellPlan, pool: WorkerPool, wanted: list[str]):
        self.case = case
        self.case_ref = case_ref
        self.plan = plan
        self.pool = pool
        self.wanted = wanted
        # check -> the cells whose values failed its plain tolerance: the float64 arbiter's work
        self.to_arbitrate: dict[str, set[Cell]] = {}
        self.not_arbitrated: set[str] = set()  # checks judged at the plain tolerance only (keras2)

    def arbitrate(self, check: str, cell: Cell) -> None:
        """Ask for the float64 arbiter on `check`: this cell's values failed the plain tolerance.
        Not against a keras2 reference: the arbiter's float64 run is the case's Keras 3 code."""
        if self.plan.reference.backend == KERAS2:
            self.not_arbitrated.add(check)
            return
        self.to_arbitrate.setdefault(check, set()).add(cell)

    # -- records without a reply -------------------------------------------------------

    def base_record(self, cell: Cell) -> dict:
        return {
            "case": self.case_ref.id, "cell": cell.id, "backend": cell.backend, "device": cell.device,
            "jit": cell.jit, "env": cell.env or None, "reference": self.plan.reference.id, "status": PASS, "checks": {},
            "failure": None, "timings": {}, "notes": [], "versions": self.pool.versions(cell.worker_key),
            "kernels": self.pool.kernels(cell.worker_key),
            "covers": list(self.case.covers),
            # What another environment has installed, once per case (the run's `environments`;
            # the main one's is the pytest process's own).
            **({"packages": self.pool.packages(cell.worker_key)} if cell.env and cell == self.plan.reference else {}),
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
            if reply.get("dynamo"):  # what torch.compile left eager in this jit cell
                record["dynamo"] = reply["dynamo"]
            if reply.get("warnings"):  # what the library warned while the cell ran
                record["warnings"] = reply["warnings"]
            for check in all_checks.JUDGED:
                check.judge(self, cell, record, replies)
            self.note_fallbacks(cell, record, replies)
            for check in sorted(self.not_arbitrated & {n for n, c in record["checks"].items()
                                                     if c.get("status") != PASS}):
                record["notes"].append(f"{check}: judged at the case's plain tolerance, not against float64: the "
                                       f"reference is Keras 2, and the float64 arbiter runs the case's Keras 3 code")
            for check in record["checks"].values():
                for key in INTERNAL_KEYS:
                    check.pop(key, None)
            record["failure"] = self.worst_failure(record["checks"])
            if record["failure"] is not None:
                record["failure"]["log_tail"] = outcome.log_tail
        record["status"] = worst(c["status"] for c in record["checks"].values())
        return self.not_a_pass_without_its_comparisons(self.apply_xfail(cell, record))

    def finish(self, cell: Cell, record: dict) -> dict:
        """The record's status, failure and declarations again, after a check was added to it
        (`version`, judged once both environments' records are made)."""
        record.pop("xfail", None)
        if record["status"] == SKIP and "skip_reason" in record and not record.get("failure") and all(
                c.get("status") == SKIP for n, c in record["checks"].items() if n != "version"):
            return record  # a cell that did not run stays a skip, with its reason
        record.pop("skip_reason", None)
        record["status"] = worst(c["status"] for c in record["checks"].values())
        self.refresh_failure(record)
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

    def refresh_failure(self, record: dict) -> None:
        """The cell's `failure` again, after a check's own record changed (a localization)."""
        tail = (record.get("failure") or {}).get("log_tail")
        record["failure"] = self.worst_failure(record["checks"])
        if record["failure"] is not None and tail is not None:
            record["failure"]["log_tail"] = tail

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

    def against(self, check: str, cell: Cell, record: dict, replies: CaseReplies) -> Cell | None:
        """The cell to compare this cell's `check` with, or None where this cell is that cell
        (it is the reference for it) or there is none (the check is then skipped, saying why).
        A fallback reference is noted in the record."""
        reference = self.reference_for(check, replies)
        if reference is not None and reference != self.plan.reference:
            record.setdefault("fallback_reference", {})[check] = reference.id
        if reference is None:
            # A check that failed in this cell keeps its own failure: a skip would hide it.
            if not is_failure(record["checks"][check].get("status", SKIP)):
                record["checks"][check] = {"status": SKIP, "not_compared": True, "reason": (
                    f"no cell got through {check} with the same initial weights: nothing to compare with")}
        elif reference != cell:
            record["checks"][check]["compared_with"] = reference.id
            return reference
        return None

    @staticmethod
    def not_loaded(cell: Cell, replies: CaseReplies) -> dict | None:
        """The skipped check of a cell that could not load the reference's weights, else None."""
        if replies.reply(cell).get("weights_loaded") is not False:
            return None
        return {"status": SKIP, "not_compared": True,
                "reason": "the reference weights could not be loaded (variable paths differ: see the build check)"}

    def note_fallbacks(self, cell: Cell, record: dict, replies: CaseReplies) -> None:
        """Where the reference cell failed a check, why, and who stood in for it (read from
        copies: the reference's reply is read again for its own record)."""
        fallbacks = record.get("fallback_reference")
        if not fallbacks:
            return
        reference_checks = (replies.reply(self.plan.reference) or {}).get("checks", {})
        failure = self.worst_failure({name: dict(check) for name, check in reference_checks.items()}) or {}
        why = (f"{report_tables.failure_where(failure) or 'it did not run'}: "
               f"{failure.get('root_cause') or failure.get('message', '')}")[:300]
        record["notes"].append(
            f"the reference cell {self.plan.reference.id} failed ({why}): "
            + ", ".join(f"{check}: this cell stands in for it" if ref == cell.id else
                        f"{check} compared with {ref}" for check, ref in fallbacks.items()))

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

