"""The human renderer: rich, with the source line under each finding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainaudit.catalogue import BY_CODE
from trainaudit.diagnostics import FixClass, Severity
from trainaudit.engine import CheckResult
from trainaudit.notebook import notebook_cell_lines

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _source_line(path: str, cell: int | None, line: int, cache: dict[str, list[str]]
                 ) -> str | None:
    if path not in cache:
        try:
            cache[path] = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            cache[path] = []
    if cell is not None:  # the cell's lines, as the finding counts them
        key = f"{path}:cell {cell}"
        if key not in cache:
            cache[key] = notebook_cell_lines("\n".join(cache[path]), cell)
        path = key
    lines = cache[path]
    text = lines[line - 1] if 0 < line <= len(lines) else None
    return text if text is not None and _printable(text) else None


def _printable(text: str) -> bool:
    """Whether a line is text a terminal can show: binary content (control bytes, bytes
    that did not decode) is never printed in a frame."""
    return "\ufffd" not in text and not any(
        (ord(c) < 32 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in text)


def render_text(result: CheckResult, console: Console, *, quiet: bool = False,
                statistics: bool = False, unsafe_fixes: bool = False,
                overlay: dict[str, list[str]] | None = None) -> None:
    """Print findings, then (unless quiet) a one-line summary."""
    cache: dict[str, list[str]] = dict(overlay or {})
    for f in result.findings:
        style = _STYLE[f.severity]
        console.print(
            f"[bold]{escape(f.location)}[/]:{f.line}:{f.column}: [{style}]{f.code}[/] "
            f"[dim]\\[{f.severity.value}][/] {escape(f.message)}", highlight=False, soft_wrap=True)
        if quiet:
            continue
        text = _source_line(f.path, f.cell, f.line, cache)
        if text is not None:
            gutter = f"{f.line:>5} | "
            console.print(f"[dim]{gutter}[/]{escape(text.rstrip())}", highlight=False, soft_wrap=True)
            width = (f.span.end_column - f.column) if f.span.end_line == f.line else len(text) - f.column + 1
            console.print(" " * (len(gutter) - 2) + "| " + " " * (f.column - 1)
                          + f"[{style}]" + "^" * max(1, width) + "[/]", highlight=False)
        for rel in f.related:
            where = rel.path if rel.cell is None else f"{rel.path}:cell {rel.cell}"
            console.print(f"      [dim]= related:[/] {escape(where)}:{rel.line}:{rel.column}: "
                          f"{escape(rel.message)}", highlight=False, soft_wrap=True)
        if f.fix is not None:
            how = "--apply --unsafe-fixes" if f.fix is FixClass.FEATURE else "--apply"
            console.print(f"      [dim]= fix ({f.fix.value}): trainaudit fix {how}[/]", highlight=False)
    if statistics and result.findings:
        table = Table(title="statistics", show_edge=False)
        for column in ("count", "code", "name", "severity", "fix"):
            table.add_column(column)
        for code, count in Counter(f.code for f in result.findings).most_common():
            info = BY_CODE[code]
            table.add_row(str(count), code, info.name, info.severity.value,
                          info.fix.value if info.fix else "-")
        console.print(table)
    if quiet:
        return
    counts = Counter(f.severity for f in result.findings)
    fixable = sum(1 for f in result.findings if f.fix in (FixClass.SAFE, FixClass.CORRECTIVE)
                  or (unsafe_fixes and f.fix is FixClass.FEATURE))
    feature = sum(1 for f in result.findings if f.fix is FixClass.FEATURE) if not unsafe_fixes else 0
    summary = (f"{len(result.findings)} finding{'s' if len(result.findings) != 1 else ''} "
               f"({counts[Severity.ERROR]} error, {counts[Severity.WARNING]} warning, "
               f"{counts[Severity.INFO]} info) in {result.files_checked} checked of "
               f"{result.files_seen} files")
    if result.files_cached:
        summary += f", {result.files_cached} cached"
    summary += f" [{result.seconds:.2f}s]."
    if fixable:
        summary += f" {fixable} fixable with `trainaudit fix --apply`"
        summary += f" ({feature} more with --unsafe-fixes)." if feature else "."
    elif feature:
        summary += f" {feature} fixable with `trainaudit fix --apply --unsafe-fixes`."
    console.print(("[green]All checks passed.[/] " if not result.findings else "") + summary,
                  highlight=False, soft_wrap=True)
    if result.advice_not_shown:
        console.print(advice_line(result.advice_not_shown), highlight=False, soft_wrap=True,
                      markup=False)


def advice_line(hidden: dict[str, int]) -> str:
    """How many findings of unselected advice rules were not shown, and how to see them."""
    total = sum(hidden.values())
    each = ", ".join(f"{code} x{count}" if count > 1 else code for code, count in hidden.items())
    codes = ",".join(hidden)
    return (f"{total} advice finding{'s' if total != 1 else ''} not shown ({each}): "
            f"`--extend-select {codes}` shows {'them' if total != 1 else 'it'}, "
            f"`select = [\"ALL\"]` every rule.")


def summary_line(result: CheckResult) -> str:
    """The run in one line (files seen / checked / cached, findings, seconds), for stderr."""
    n = len(result.findings)
    return (f"trainaudit: {n} finding{'s' if n != 1 else ''}; {result.files_seen} files seen, "
            f"{result.files_checked} checked, {result.files_cached} cached [{result.seconds:.2f}s]")


def render_fixes(fixed: Mapping[str, Mapping[str, int]], console: Console, *,
                 applied: bool) -> None:
    """``--show-fixes``: the findings the fixes removed, per file and code (as ruff lists
    them); ``applied``: written (else what ``--apply`` would fix)."""
    total = sum(sum(codes.values()) for codes in fixed.values())
    if not total:
        console.print("No fixes applied." if applied else "No fixes available.", highlight=False)
        return
    verb = "Fixed" if applied else "Would fix"
    console.print(f"{verb} {total} finding{'s' if total != 1 else ''}:", highlight=False)
    for path, codes in sorted(fixed.items()):
        if not codes:
            continue
        console.print(f"- {path}:", markup=False, highlight=False)
        for code, count in sorted(codes.items()):
            console.print(f"    {count} × {code} ({BY_CODE[code].name})", markup=False,
                          highlight=False)
