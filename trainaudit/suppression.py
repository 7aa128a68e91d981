"""Suppression comments: ``# trainaudit: ignore[TA102]`` and ``# noqa: TA102``."""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass

# Codes may be separated by commas and/or spaces; no codes means "everything".
_PATTERN = re.compile(
    r"#\s*(?:trainaudit\s*:\s*ignore(?:\[(?P<bracket>[^\]]*)\])?|noqa(?:\s*:\s*(?P<noqa>[A-Z0-9,\s]+))?)",
    re.IGNORECASE,
)
_CODE = re.compile(r"[A-Za-z]+[0-9]+")
_OURS = re.compile(r"TA[0-9]", re.IGNORECASE)

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


def suppressing_line(code: str, lines: tuple[int, ...], suppressions: Suppressions) -> int | None:
    """The line of the comment that suppresses ``code`` on one of ``lines``, if any."""
    for line in lines:
        if line in suppressions:
            codes = suppressions[line]
            if codes is None or code in codes:
                return line
    return None


# A directive with codes, exactly as far as its last code (for TA002, which rewrites it).
_DIRECTIVE = re.compile(
    r"#\s*(?:(?P<tool>trainaudit)\s*:\s*ignore\[(?P<bracket>[^\]]*)\]"
    r"|noqa\s*:\s*(?P<noqa>[A-Z]+[0-9]+(?:[,\s]+[A-Z]+[0-9]+)*))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SuppressionComment:
    """One suppression directive that names codes, where it is in the file."""

    line: int
    column: int      # 1-based, the directive's ``#``
    end_column: int  # 1-based, just past its last code (or ``]``)
    text: str        # the directive as written
    trainaudit: bool  # the trainaudit spelling, else the noqa one
    codes: tuple[str, ...]  # every code it lists, upper-case, ours or not
    starts_comment: bool  # its ``#`` begins the comment (text may follow it)


def suppression_comments(source: str) -> tuple[SuppressionComment, ...]:
    """Directives naming one of our codes in real comments (not in strings); () if it does
    not tokenize. Only they can be unused suppressions (TA002 judges our codes), and the
    tokenizer, pure Python, costs more than parsing: a file whose directives name other
    tools' codes only (``# noqa: F401``) is not tokenized."""
    if "noqa" not in source and "trainaudit" not in source:
        return ()
    if not any(_OURS.match(code) for match in _DIRECTIVE.finditer(source)
               for code in _CODE.findall(match.group("bracket") or match.group("noqa") or "")):
        return ()
    found: list[SuppressionComment] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            for match in _DIRECTIVE.finditer(token.string):
                listed = match.group("bracket") if match.group("tool") else match.group("noqa")
                codes = tuple(c.upper() for c in _CODE.findall(listed or ""))
                if codes:
                    row, col = token.start
                    found.append(SuppressionComment(
                        row, col + match.start() + 1, col + match.end() + 1, match.group(0),
                        bool(match.group("tool")), codes, match.start() == 0))
    except (tokenize.TokenError, SyntaxError):
        return ()
    return tuple(found)


def without_codes(comment: SuppressionComment, dropped: frozenset[str]) -> str:
    """The directive with ``dropped`` removed from its codes; "" when none is left."""
    kept = [c for c in comment.codes if c not in dropped]
    if not kept:
        return ""
    if comment.trainaudit:
        return f"# trainaudit: ignore[{', '.join(kept)}]"
    return f"# noqa: {', '.join(kept)}"
