"""Runs a case across its cells and turns the workers' replies into cell records.

When a case's first item runs, the case's selected cells are run at once: the reference cell
first (its initial weights are what every other cell loads), then every other cell side by
side, one queue per worker. Later items of the case only read their record.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile

from harness import arrays, compare
from harness.case import ALL_CHECKS, Case
from harness.cells import Cell, CellPlan
from harness.pool import Job, Outcome, WorkerPool
from harness.statuses import PASS, SKIP, XFAIL, is_failure, worst

#: Checks implemented by the runner, in the order they run; others are reported as skipped.
IMPLEMENTED_CHECKS = ("build", "outputs", "timing")

CRASH_HINT = ("the worker process died in this cell (a segfault in native code, an abort, or "
              "the out-of-memory killer); its log tail is in the record, and the next cell of "
              "this backend ran in a fresh worker")
TIMEOUT_HINT = ("raise --keras-timeout if the cell is only slow (torch.compile can take "
                "minutes on CPU), or look for a hang in the log tail")


@dataclasses.dataclass(frozen=True)
class CaseRef:
    """Where a worker finds a case: the module as pytest imported it, and the attribute."""

    id: str
    module: str
    file: str
    attr: str
    import_root: str | None

    @classmethod
    def from_module(cls, case_id: str, module, attr: str) -> CaseRef:
        file = os.path.abspath(module.__file__)
        parts = module.__name__.split(".")
        root = file
        for _ in range(len(parts)):
            root = os.path.dirname(root)
        expected = [os.path.join(root, *parts) + ".py", os.path.join(root, *parts, "__init__.py")]
        importable = file in expected and sys.modules.get(module.__name__) is module
        return cls(case_id, module.__name__, file, attr, root if importable else None)


def checks_for(case: Case) -> list[str]:
    wanted = case.checks or ALL_CHECKS
    return [c for c in ALL_CHECKS if c in wanted]


class ParitySession:
    """Owns the worker pool and the records of every case run in this pytest process."""

    def __init__(self, plan: CellPlan, timeout: float, log_dir: str):
        self.plan = plan
        self.timeout = timeout
        self.pool = WorkerPool(log_dir)
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.work_dir = tempfile.mkdtemp(prefix="keras-parity-", dir=shm)
        self.records: dict[tuple[str, str], dict] = {}
        self._case_counter = 0

    def record(self, case: Case, case_ref: CaseRef, cell: Cell, selected: set[Cell]) -> dict:
        if (case_ref.id, cell.id) not in self.records:
            self.run_case(case, case_ref, sorted(selected | {cell}))
        return self.records[(case_ref.id, cell.id)]

    def close(self) -> None:
        self.pool.shutdown()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- running a case ----------------------------------------------------------------

    def run_case(self, case: Case, case_ref: CaseRef, cells: list[Cell]) -> None:
        self._case_counter += 1
        case_dir = os.path.join(self.work_dir, f"case{self._case_counter}")
        os.makedirs(case_dir)
        reference = self.plan.reference
        to_run = [c for c in cells if c != reference and not self.plan.skip_reason(c)]
        for cell in cells:
            if self.plan.skip_reason(cell):
                self.records[(case_ref.id, cell.id)] = self.skip_record(case, case_ref, cell,
                                                                     self.plan.skip_reason(cell))

        seed = case.seed(case_ref.id)
        inputs_path = os.path.join(case_dir, "inputs.npz")
        try:
            arrays.save_tree(inputs_path, case.make_inputs(seed))
        except Exception as exc:  # noqa: BLE001 - the user's inputs callable is user code
            for cell in [reference, *to_run]:
                self.records[(case_ref.id, cell.id)] = self.input_error_record(case, case_ref, cell, exc)
            return

        outcomes: dict[Cell, Outcome] = {}
        weights_path = os.path.join(case_dir, "reference_weights.npz")

        def job(cell: Cell) -> Job:
            out_dir = os.path.join(case_dir, cell.id)
            os.makedirs(out_dir)
            is_reference = cell == reference
            request = {
                "type": "run_cell",
                "case": dataclasses.asdict(case_ref),
                "cell": cell.id,
                "checks": [c for c in checks_for(case) if c in IMPLEMENTED_CHECKS],
                "inputs": inputs_path,
                "seed": seed,
                "out_dir": out_dir,
                "save_weights_to": weights_path if is_reference else None,
                # Without the reference's weights (it failed), a cell keeps its own; its
                # comparisons are then skipped, not failed.
                "load_weights_from": weights_path if not is_reference and os.path.exists(weights_path) else None,
            }
            return Job(cell.worker_key, request, self.timeout, lambda o: outcomes.__setitem__(cell, o))

        # Start every worker the case needs now, so their backends import side by side
        # while the reference cell runs.
        for cell in to_run:
            if cell.worker_key not in self.pool.unavailable:
                self.pool.start(cell.worker_key)
        self.pool.run([job(reference)])
        ref_outcome = outcomes[reference]
        self.pool.run([job(cell) for cell in to_run])

        ref_record = self.cell_record(case, case_ref, reference, ref_outcome, None)
        self.records[(case_ref.id, reference.id)] = ref_record
        for cell in to_run:
            self.records[(case_ref.id, cell.id)] = self.cell_record(
                case, case_ref, cell, outcomes[cell], (ref_record, ref_outcome))

    # -- records -----------------------------------------------------------------------

    def base_record(self, case_ref: CaseRef, cell: Cell) -> dict:
        return {
            "case": case_ref.id,
            "cell": cell.id,
            "backend": cell.backend,
            "device": cell.device,
            "jit": cell.jit,
            "reference": self.plan.reference.id,
            "status": PASS,
            "checks": {},
            "failure": None,
            "timings": {},
            "notes": [],
        }

    def skip_record(self, case: Case, case_ref: CaseRef, cell: Cell, reason: str) -> dict:
        record = self.base_record(case_ref, cell)
        record.update(status=SKIP, skip_reason=reason,
                      checks={c: {"status": SKIP} for c in checks_for(case)})
        return record

    def input_error_record(self, case: Case, case_ref: CaseRef, cell: Cell, exc: Exception) -> dict:
        record = self.base_record(case_ref, cell)
        record["checks"] = {c: {"status": SKIP} for c in checks_for(case)}
        record["checks"]["build"] = {"status": "error"}
        record["failure"] = {
            "check": "build", "phase": "inputs", "kind": "bad_inputs",
            "exception": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
            "hint": f"the inputs of case {case_ref.id} could not be made: fix its inputs= "
                    f"(an array, tuple/list/dict of arrays, harness.spec, or rng -> those)",
        }
        return self.apply_xfail(case, cell, record)

    def cell_record(self, case: Case, case_ref: CaseRef, cell: Cell, outcome: Outcome,
                    reference: tuple[dict, Outcome] | None) -> dict:
        record = self.base_record(case_ref, cell)
        record["versions"] = self.pool.versions(cell.worker_key)
        wanted = checks_for(case)
        if outcome.reply is None:
            if outcome.status == SKIP:
                return self.skip_record(case, case_ref, cell, outcome.message)
            record["checks"] = {c: {"status": outcome.status} for c in wanted}
            record["failure"] = {
                "check": None, "phase": "worker", "kind": outcome.status, "exception": None,
                "message": outcome.message,
                "hint": {"crash": CRASH_HINT, "timeout": TIMEOUT_HINT}.get(outcome.status),
                "log_tail": outcome.log_tail,
            }
        else:
            reply = outcome.reply
            # Copies: the reply's own dicts (variables, files) are read again by later cells.
            record["checks"] = {c: dict(reply["checks"].get(c, {"status": SKIP, "reason": "not implemented yet"}))
                                for c in wanted}
            record["timings"] = reply.get("timings", {})
            record["notes"] = list(reply.get("notes", []))
            if reply.get("failure"):
                record["failure"] = {**reply["failure"], "log_tail": outcome.log_tail}
            if reference is not None:
                self.compare_with_reference(case, record, reply, *reference)
            for check in record["checks"].values():
                check.pop("variables", None)
                check.pop("file", None)
                check.pop("dtypes", None)
        record["status"] = worst(c["status"] for c in record["checks"].values())
        return self.apply_xfail(case, cell, record)

    def compare_with_reference(self, case: Case, record: dict, reply: dict, ref_record: dict,
                               ref_outcome: Outcome) -> None:
        checks = record["checks"]
        ref_reply = ref_outcome.reply
        ref_ok = ref_reply is not None and ref_reply["checks"].get("build", {}).get("status") == PASS
        not_comparable = (f"the reference cell {ref_record['cell']} did not build "
                          f"({ref_record['status']}): nothing to compare against")
        build = checks.get("build")
        if build and build["status"] == PASS:
            if ref_ok:
                checks["build"] = compare.compare_variables(ref_reply["checks"]["build"]["variables"],
                                                            reply["checks"]["build"]["variables"])
            else:
                checks["build"] = {"status": SKIP, "reason": not_comparable}
        outputs = checks.get("outputs")
        if outputs and outputs["status"] == PASS:
            ref_outputs = ref_reply["checks"].get("outputs", {}) if ref_reply else {}
            if ref_outputs.get("status") != PASS:
                checks["outputs"] = {"status": SKIP, "reason": not_comparable.replace(
                    "did not build", "produced no outputs")}
            elif reply.get("weights_loaded") is False:
                checks["outputs"] = {"status": SKIP, "reason": "the reference weights could not be "
                                     "loaded (variable paths differ: see the build check)"}
            else:
                skeleton, ref_leaves = arrays.load_leaves(ref_outputs["file"])
                _, leaves = arrays.load_leaves(outputs["file"])
                checks["outputs"] = compare.compare_outputs(
                    arrays.leaf_names(skeleton), ref_leaves, leaves, ref_outputs["dtypes"],
                    outputs["dtypes"], case.rtol, case.atol)

    def apply_xfail(self, case: Case, cell: Cell, record: dict) -> dict:
        """A declared failure that happens is `xfail`; one that does not is kept and flagged."""
        rule = case.xfail_rule(cell.id)
        if rule is None or record["status"] == SKIP:
            return record
        actual = record["status"]
        met = is_failure(actual) and (rule.status is None or rule.status == actual)
        record["xfail"] = {"pattern": rule.pattern, "expected": rule.status or "any failure",
                           "reason": rule.reason, "actual": actual, "met": met}
        if met:
            record["status"] = XFAIL
        return record
