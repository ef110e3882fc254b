"""The reports and the gate, in the process that sees every cell's record.

- `files`: `results.jsonl`, `parity.json`, merging shards, and the `python -m harness.report`
  command (`merge`, `gate`).
- `tables`: what the pages show, as plain rows; `markdown` and `html` render them as
  `parity.md` and `parity.html`.
- `gate`: `--keras-baseline`, a run against an earlier one.
"""

from harness.report.files import ReportError, ReportWriter, merge_reports, read_report, write_report

__all__ = ["ReportError", "ReportWriter", "merge_reports", "read_report", "write_report"]
