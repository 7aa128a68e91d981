"""Suppression comments: ``# trainaudit: ignore[TA102]`` and ``# noqa: TA102``."""

from __future__ import annotations

import re

# Codes may be separated by commas and/or spaces; no codes means "everything".
_PATTERN = re.compile(
    r"#\s*(?:trainaudit\s*:\s*ignore(?:\[(?P<bracket>[^\]]*)\])?|noqa(?:\s*:\s*(?P<noqa>[A-Z0-9,\s]+))?)",
    re.IGNORECASE,
)
_CODE = re.compile(r"[A-Za-z]+[0-9]+")

Suppressions = dict[int, frozenset[str] | None]


def parse_suppressions(source: str) -> Suppressions:
    """Line number → suppressed codes (``None`` suppresses all) for lines with a comment."""
    result: Suppressions = {}
    if "noqa" not in source and "trainaudit" not in source:
        return result
    for number, line in enumerate(source.splitlines(), start=1):
        if "#" not in line:
            continue
        for match in _PATTERN.finditer(line):
            listed = match.group("bracket") if match.group("bracket") is not None else match.group("noqa")
            codes = frozenset(c.upper() for c in _CODE.findall(listed or ""))
            if not codes:
                result[number] = None
            elif number in result and result[number] is None:
                pass
            else:
                result[number] = (result.get(number) or frozenset()) | codes
    return result


def is_suppressed(code: str, lines: tuple[int, ...], suppressions: Suppressions) -> bool:
    """Whether a comment on any of ``lines`` suppresses ``code``."""
    for line in lines:
        if line in suppressions:
            codes = suppressions[line]
            if codes is None or code in codes:
                return True
    return False
