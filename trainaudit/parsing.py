"""Parsing a file's analysed source: its tree, or the TA001 findings that say why not."""

from __future__ import annotations

import ast
from pathlib import PurePosixPath

from trainaudit.catalogue import BY_CODE
from trainaudit.diagnostics import Finding, Span
from trainaudit.notebook import without_unparsable_cells


def module_name_for(display: str) -> tuple[str, bool]:
    """A dotted module name guessed from a path (``pkg/data/x.py`` → ``pkg.data.x``)."""
    parts = [p for p in PurePosixPath(display).parts if p not in ("/", ".")]
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index("..") :]
    if not parts:
        return "", False
    stem = parts[-1].rsplit(".", 1)[0]
    is_package = stem == "__init__"
    parts = parts[:-1] if is_package else [*parts[:-1], stem]
    return ".".join(p for p in parts if p.isidentifier()), is_package


def syntax_finding(path: str, message: str, line: int = 1, column: int = 1) -> Finding:
    """A TA001 finding at a position."""
    info = BY_CODE["TA001"]
    return Finding(info.code, info.name, info.severity, path,
                   Span(line, max(column, 1), line, max(column, 1)), message, None)


def parse_or_report(path: str, text: str) -> ast.Module | Finding:
    """The module's tree, or the TA001 finding that says why it does not parse."""
    try:
        return ast.parse(text, filename=path)
    except SyntaxError as exc:
        return syntax_finding(path, f"syntax error: {exc.msg}", exc.lineno or 1, exc.offset or 1)
    except (ValueError, RecursionError, MemoryError) as exc:
        return syntax_finding(path, f"cannot parse: {exc}")


def parse_source(path: str, text: str, *, notebook: bool
                 ) -> tuple[ast.Module | Finding, str, list[Finding]]:
    """The tree of an analysed source (or its TA001), the text it was parsed from, and
    the TA001 of each notebook cell that does not parse: those cells are left out and
    the notebook's other cells analysed."""
    tree = parse_or_report(path, text)
    if not (isinstance(tree, Finding) and notebook):
        return tree, text, []
    without, broken = without_unparsable_cells(text)
    if not broken:
        return tree, text, []
    rest = parse_or_report(path, without)
    if isinstance(rest, Finding):  # the cells parse alone, not together: one finding
        return tree, text, []
    return rest, without, [syntax_finding(path, f"syntax error: {message}", line, column)
                           for line, column, message in broken]
