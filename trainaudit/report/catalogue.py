"""``trainaudit rules`` and ``explain``: the catalogue and rule pages, printed whole.

On a terminal wide enough for them, the table and the rendered page; piped, or on a
terminal too narrow for the longest code line, plain text that nothing cuts: the page's
own Markdown (prose already wrapped, code as written) and one line per rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

# Code, name, severity, fix, summary: the columns of `trainaudit rules`.
RuleRow = tuple[str, str, str, str, str]
HEADER: RuleRow = ("code", "name", "severity", "fix", "finds")
# The "finds" column needs this much room before the table is worth drawing.
MIN_SUMMARY_WIDTH = 30
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def print_rules(rows: Sequence[RuleRow], console: Console) -> None:
    """The catalogue as a table on a wide terminal, else as aligned plain lines."""
    widths = [max(len(row[i]) for row in (HEADER, *rows)) for i in range(4)]
    fixed = sum(widths) + 2 * 4  # rich pads each column by one character on each side
    if console.is_terminal and console.width >= fixed + MIN_SUMMARY_WIDTH:
        table = Table(show_edge=False, header_style="bold")
        for column in HEADER[:4]:
            table.add_column(column, no_wrap=True)
        table.add_column(HEADER[4], overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    for row in (HEADER, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        console.file.write("  ".join([*cells, row[4]]).rstrip() + "\n")


def print_page(markdown: str, console: Console) -> None:
    """A rule page rendered on a terminal whose width holds every code line; otherwise
    (piped, or too narrow) its Markdown as written."""
    code_width = max((len(line) for block in _FENCE.findall(markdown)
                      for line in block.splitlines()), default=0)
    if console.is_terminal and console.width >= code_width + 4:  # Syntax pads both sides
        Console(file=console.file, width=console.width, force_terminal=True,
                highlight=False, emoji=False).print(Markdown(markdown))
        return
    console.file.write(markdown if markdown.endswith("\n") else markdown + "\n")
