"""Errors a user can act on.

Anything raised as a `UserError` is printed as its message (no traceback) and the
command exits with code 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A mistake in a config, a dataset or a path, explained in one message."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a data file: where it is and what is wrong."""

    file: str
    record: int | None  # 0-based index of the record in its file; None for the whole file
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.record is not None:
            where += f", record {self.record}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class DataError(UserError):
    """One or more problems in the data; all of them, not just the first. For data too large to
    list every problem (the Arrow path), `problems` holds the first of each kind and `totals`
    counts every problem by kind (a kind's message with its numbers and quoted values left out)."""

    def __init__(self, problems: list[Problem], limit: int = 20, totals: dict[str, int] | None = None):
        self.problems = problems
        self.totals = totals or {}
        count = sum(self.totals.values()) if self.totals else len(problems)
        shown = "\n".join(f"  - {p}" for p in problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        by_kind = "".join(f"\n  {n:,} in all: {kind}" for kind, n in self.totals.items())
        super().__init__(f"{count:,} problem(s) in the data:\n{shown}{more}"
                         + (f"\nby kind:{by_kind}" if by_kind else ""))
