"""Under pytest-xdist, every cell of a case goes to the same xdist worker.

A case's cells run together (the reference cell first, then the others side by side, then the
cross-backend loads), so an xdist worker given any one cell of a case runs all of them. xdist's
default `load` scheduling hands out items one by one, which would have both xdist workers run
most cases in full. This scheduler hands out whole cases instead, the way `--dist loadscope`
hands out whole modules; other tests keep their `xdist_group` under `--dist loadgroup`.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from harness.cells import Cell, UsageError


class CaseScheduling(LoadScopeScheduling):
    """`--dist load`, `worksteal` or `loadgroup` for a parity run: the unit of work is a case."""

    def _split_scope(self, nodeid: str) -> str:
        _, bracket, tail = nodeid.rpartition("]")
        if "@" in (tail if bracket else nodeid):  # --dist loadgroup: `...]@group` (a cell's own `@env` is inside)
            return nodeid.rsplit("@", 1)[-1]
        case, _, inner = nodeid.rpartition("[")
        cell = "-".join(inner.removesuffix("]").split("-")[-3:])  # `[cell]` or `[param-cell]`
        try:
            Cell.parse(cell)
        except UsageError:
            return nodeid  # neither a cell item nor grouped: scheduled alone, as under `load`
        param = inner.removesuffix("]")[:-len(cell)].removesuffix("-")
        return f"{case}[{param}]" if param else case
