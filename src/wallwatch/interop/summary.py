"""What an import read, wrote and skipped, for every importer alike.

Why one place: OONI, Satellite and packet captures fail in different ways, but a user
reading the summary (and a script reading the ``input_error`` records) wants one
vocabulary -- a count per reason, and one record per skipped line or packet naming
the file and the place.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from wallwatch import records
from wallwatch.records import InputError


@dataclass
class ImportSummary:
    """What one import read, wrote and skipped (and why)."""

    files: int = 0
    documents: int = 0
    measurements: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, importer: str, source: str, line: int, reason: str, error: str,
             raw: bytes = b"") -> InputError:  # fmt: skip
        """Count a skip under ``reason``; the ``input_error`` record that names it."""
        self.skipped[reason] += 1
        return InputError(schema_version=records.SCHEMA_VERSION, report_id=f"import-{importer}",
                          source=source, line=line,
                          text=raw[:200].decode("utf-8", "replace").strip(), error=error)  # fmt: skip

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        why = "; ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return (f"{self.files} file(s), {self.documents} document(s), {self.measurements} "
                f"measurement(s), {skipped} skipped" + (f" ({why})" if why else ""))  # fmt: skip
