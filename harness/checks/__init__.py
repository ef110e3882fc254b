"""The checks of the contract, one module each.

Each module holds what a worker runs for its check (`run`, called by `harness.workers.runner.CellRun`
with the cell's context) and how the pytest process judges the result against the other cells
(`judge`, called by `harness.judge.Judge` for each cell's record), so a check's record, its
failures and its hints live together, and a new check is one new module. The modules stand on
the primitives below them (`harness.steps`, `harness.calls`, `harness.replies`,
`harness.compare`, `harness.arrays`, `harness.classify`) and import no orchestrator.
"""

from harness.checks import build, export, outputs, rng, save, timing, train

#: The order the judge goes through them: comparisons with the reference first, then the
#: checks that read the other cells' files.
JUDGED = (build, outputs, train, rng, save, export)

__all__ = ["JUDGED", "build", "export", "outputs", "rng", "save", "timing", "train"]
