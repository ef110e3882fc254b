"""What the workers answered for one case, and reading it: the pytest-process primitives the
checks' judges and the judge stand on (files of arrays, which cell did what, file round trips
compared)."""

from __future__ import annotations

import dataclasses
import os

from harness import arrays, compare
from harness.cells import Cell, CellPlan
from harness.workers.pool import Outcome
from harness.statuses import MISMATCH, PASS, SKIP

NOT_RUN = {"status": SKIP, "reason": "not run"}


@dataclasses.dataclass
class CaseReplies:
    """Everything the workers answered for one case."""

    file_cells: dict[tuple[str, str], Cell]
    outcomes: dict[Cell, Outcome] = dataclasses.field(default_factory=dict)
    loaded: dict[Cell, Outcome] = dataclasses.field(default_factory=dict)
    reloaded: Outcome | None = None
    weights_from: Cell | None = None  # the cell whose initial weights the others loaded
    arbiter: dict = dataclasses.field(default_factory=dict)  # check -> harness.arbiter.verdict.Evidence

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


def ran_elsewhere(check: str, cell: Cell, replies: CaseReplies) -> dict:
    """save and export depend on the file, not on jit: they ran once per backend and device."""
    file_cell = replies.file_cells.get(cell.worker_key)
    return {"status": SKIP, "reason": f"{check} does not depend on jit: it ran once, in "
                                      f"{file_cell.id if file_cell else 'no cell'}"}


def compare_files(expected_path: str, got_path: str, rtol: float | None, atol: float | None,
                  random: bool = False) -> dict:
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
                                      [str(a.dtype) for a in got], rtol, atol)
    return {k: verdict[k] for k in ("status", "max_abs_err", "message") if k in verdict}
