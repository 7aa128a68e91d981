"""TA002 (safe): drop the unused codes from a suppression comment, or the comment itself.

A comment is not code, so this edits the line's text at the directive the finding
points at (located by tokenizing, never inside a string); behaviour cannot change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.payloads import SuppressionEdit, payload_of


@fixer("TA002")
def remove_unused_suppressions(source: str, findings: Sequence[Finding],
                               options: Mapping[str, Any]) -> FixResult:
    """Rewrite each directive without its unused codes; delete a line left empty."""
    lines = source.splitlines(keepends=True)
    notes: list[str] = []
    # Right to left on a line, so earlier columns stay valid.
    for finding in sorted(findings, key=lambda f: (f.line, f.column), reverse=True):
        payload = payload_of(finding, SuppressionEdit)
        index, start, end = finding.line - 1, finding.column - 1, finding.span.end_column - 1
        if payload is None or index >= len(lines) or lines[index][start:end] != payload.directive:
            continue  # the line changed since it was checked
        line = lines[index]
        head, rest = line[:start], line[end:]
        replacement = payload.replacement
        body = rest.rstrip("\r\n")
        if replacement:
            lines[index] = head + replacement + rest
        elif body.strip():  # more comment text follows the directive: keep it a comment
            lines[index] = head + "#" + rest if payload.starts_comment else head.rstrip() + rest
        elif head.strip():
            lines[index] = head.rstrip() + rest[len(body):]
        else:
            lines[index] = ""  # the line held only the directive
        notes.append(f"line {finding.line}: {payload.directive!r} -> "
                     f"{replacement or 'removed'!r}")
    return FixResult("".join(lines), notes[::-1])
