"""Findings as data, kept apart from how they are printed."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum


class Severity(str, Enum):
    """How bad a finding is; ordered ``info < warning < error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    @classmethod
    def parse(cls, value: str) -> Severity:
        try:
            return cls(value.lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {value!r} (expected one of: {names})") from None


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class FixClass(str, Enum):
    """What applying a fix does to behaviour (SPEC §5)."""

    SAFE = "safe"
    CORRECTIVE = "corrective"
    FEATURE = "feature"


@dataclass(frozen=True)
class Span:
    """A range in a file; lines and columns are 1-based, columns count characters."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Related:
    """Another place that takes part in a finding (the second shift, the loss site...)."""

    path: str
    line: int
    column: int
    message: str
    cell: int | None = None  # in a notebook: the cell, and ``line`` is within it


@dataclass(frozen=True)
class FixPayload:
    """Base of the typed facts a rule hands its fixer (see ``trainaudit.payloads``)."""


@dataclass(frozen=True)
class Finding:
    """One problem at one place. ``payload`` (typed, ``trainaudit.payloads``) carries
    what its fixer needs; it is not printed."""

    code: str
    name: str
    severity: Severity
    path: str
    span: Span
    message: str
    fix: FixClass | None = None
    related: tuple[Related, ...] = ()
    payload: FixPayload | None = field(default=None, compare=False, hash=False)
    # In a notebook (once placed for output): the cell, 1-based among all the notebook's
    # cells, and ``span`` is within that cell.
    cell: int | None = None

    @property
    def line(self) -> int:
        return self.span.line

    @property
    def column(self) -> int:
        return self.span.column

    @property
    def location(self) -> str:
        """The path as printed: ``train.py``, or ``train.ipynb:cell 3`` in a notebook."""
        return self.path if self.cell is None else f"{self.path}:cell {self.cell}"

    def sort_key(self) -> tuple[str, int, int, int, str]:
        return (self.path, self.cell or 0, self.span.line, self.span.column, self.code)

    def with_severity(self, severity: Severity) -> Finding:
        return replace(self, severity=severity)
