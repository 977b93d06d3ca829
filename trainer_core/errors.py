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
    """One or more problems in the data; all of them, not just the first."""

    def __init__(self, problems: list[Problem], limit: int = 20):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")
