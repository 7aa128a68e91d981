"""Jupyter notebooks as Python source, and back (as ruff reads them).

The code cells are joined in order into one *analysed source*: each cell starts with
a marker comment line, so that a position in it maps back to ``cell N`` (1-based,
counting every cell, as ruff does) and a line within that cell, even after a fix
has added or removed lines. IPython lines that are not Python (``%magic``,
``!shell``, ``obj?``, ``x = !cmd``, whole ``%%cell`` magics) become placeholder
comments that keep the line numbers and are put back, unchanged, when fixed cells
are written into the notebook. Outputs, metadata and other cells are kept as
they are.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from trainaudit.diagnostics import Finding, Span

SUFFIX = ".ipynb"
MARKER = "# trainaudit: cell {}"
_MARKER_LINE = re.compile(r"^# trainaudit: cell (\d+)$")
_PLACEHOLDER = "# trainaudit: ipython {}"
# A one-line IPython statement is a statement: `pass` keeps a block whose body it is
# (`for url in urls:` / `    !wget {url}`) valid Python.
_STATEMENT_PLACEHOLDER = "pass  " + _PLACEHOLDER
_PLACEHOLDER_LINE = re.compile(r"^[ \t]*(?:pass  )?# trainaudit: ipython (\d+)$")
# Line magics, shell escapes, help (``?obj``, ``obj?``) and captured ones (``x = !ls``).
_IPYTHON_LINE = re.compile(
    r"^[ \t]*(?:[%!?]|[\w.]+\?{1,2}[ \t]*$|[\w.]+(?:[ \t]*,[ \t]*[\w.]+)*[ \t]*=[ \t]*[%!])")


# (line of a cell's marker in the analysed source, cell number), in order.
CellStarts = tuple[tuple[int, int], ...]


class NotebookError(ValueError):
    """The file is not a notebook we can read (not JSON, no cells)."""


def is_notebook(path: str) -> bool:
    return path.endswith(SUFFIX)


@dataclass
class Notebook:
    """A parsed notebook, its analysed source, and the IPython lines that source hides."""

    data: dict[str, Any]
    source: str
    hidden: list[str]
    indent: int | None
    trailing_newline: bool

    @classmethod
    def parse(cls, text: str) -> Notebook:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NotebookError(f"not a notebook (invalid JSON: {exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            raise NotebookError("not a notebook (no list of cells)")
        hidden: list[str] = []
        parts: list[str] = []
        if _is_python(data):
            for number, cell in enumerate(data["cells"], start=1):
                if isinstance(cell, dict) and cell.get("cell_type") == "code":
                    parts.append(MARKER.format(number) + "\n")
                    parts.extend(_analysable(_cell_text(cell), hidden))
        return cls(data, "".join(parts), hidden, _indent_of(text), text.endswith("\n"))

    def with_source(self, source: str) -> str:
        """The notebook's JSON text with its code cells replaced by ``source``'s (a fixed
        analysed source): outputs and metadata untouched."""
        cells = split_cells(source)
        for number, cell in enumerate(self.data["cells"], start=1):
            if number in cells:
                restored = [self._restore(line) for line in cells[number]]
                text = "".join(restored)
                original = _cell_text(cell)
                if not original.endswith("\n"):  # Jupyter's last line has no newline
                    text = text[:-1] if text.endswith("\n") else text
                lines = text.splitlines(keepends=True)
                cell["source"] = lines if isinstance(cell.get("source"), list) else text
        dumped = json.dumps(self.data, indent=self.indent, ensure_ascii=False)
        return dumped + ("\n" if self.trailing_newline else "")

    def cell_diff(self, display: str, before: str, after: str) -> str:
        """A unified diff per changed cell of two analysed sources, headed
        ``a/train.ipynb:cell 3``, with IPython lines shown as written."""
        old, new = split_cells(before), split_cells(after)
        chunks = []
        for number in sorted(set(old) | set(new)):
            if old.get(number) != new.get(number):
                chunks.append("".join(difflib.unified_diff(
                    [self._restore(line) for line in old.get(number, [])],
                    [self._restore(line) for line in new.get(number, [])],
                    fromfile=f"a/{display}:cell {number}", tofile=f"b/{display}:cell {number}")))
        return "".join(chunks)

    def _restore(self, line: str) -> str:
        body = line.rstrip("\r\n")
        match = _PLACEHOLDER_LINE.match(body)
        if match is None or int(match.group(1)) >= len(self.hidden):
            return line
        return self.hidden[int(match.group(1))] + line[len(body):]


def split_cells(source: str) -> dict[int, list[str]]:
    """An analysed source's lines by cell number (the markers dropped). Lines a fix put
    above the first marker (an import) belong to the first cell."""
    cells: dict[int, list[str]] = {}
    preamble: list[str] = []
    current = preamble
    for line in source.splitlines(keepends=True):
        match = _MARKER_LINE.match(line.rstrip("\r\n"))
        if match is not None:
            current = cells.setdefault(int(match.group(1)), [])
            if preamble and len(cells) == 1:
                current.extend(preamble)
        else:
            current.append(line)
    return cells


def cell_starts(source: str) -> CellStarts:
    """(line of the marker, cell number) for each cell of an analysed source."""
    return tuple((index, int(m.group(1))) for index, line in enumerate(source.splitlines(), 1)
                 if (m := _MARKER_LINE.match(line)))


def locate(line: int, starts: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """(cell number, line within the cell) of a line of the analysed source."""
    index = bisect.bisect_left(starts, (line, 0)) - 1
    if index < 0:
        return None
    marker, number = starts[index]
    return number, line - marker


def _cell_text(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _analysable(text: str, hidden: list[str]) -> list[str]:
    """A cell's lines with IPython syntax swapped for placeholders; ends with a newline."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    first = next((line for line in lines if line.strip()), "")
    whole_cell = first.lstrip().startswith("%%")
    result = []
    continued = False  # the previous IPython line ended with a backslash
    for line in lines:
        if whole_cell or continued or _IPYTHON_LINE.match(line):
            # A whole-cell magic's lines and a continued line are not statements: comments.
            statement = not (whole_cell or continued)
            continued = line.rstrip("\r\n").endswith("\\")
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            placeholder = _STATEMENT_PLACEHOLDER if statement else _PLACEHOLDER
            result.append(indent + placeholder.format(len(hidden)) + "\n")
            hidden.append(line.rstrip("\r\n"))
        else:
            result.append(line)
    return result


def _is_python(data: dict[str, Any]) -> bool:
    """Whether the notebook's kernel is Python (unknown counts as Python)."""
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        return True
    for table, key in (("kernelspec", "language"), ("language_info", "name")):
        entry = metadata.get(table)
        if isinstance(entry, dict) and isinstance(entry.get(key), str):
            return bool(entry[key].lower() == "python")
    return True


def _indent_of(text: str) -> int | None:
    """The JSON indentation the notebook was written with (nbformat writes 1)."""
    match = re.search(r"\{\s*\n([ ]+)\"", text)
    return len(match.group(1)) if match else None


def in_cells(finding: Finding, starts_of: Callable[[str], CellStarts]) -> Finding:
    """A finding (and its related places) with lines counted within notebook cells."""
    related = tuple(
        replace(r, cell=placed[0], line=placed[1])
        if (placed := locate(r.line, starts_of(r.path))) else r
        for r in finding.related)
    start = locate(finding.span.line, starts_of(finding.path))
    if start is None:
        return replace(finding, related=related) if related != finding.related else finding
    end = locate(finding.span.end_line, starts_of(finding.path))
    cell, line = start
    end_line = end[1] if end is not None and end[0] == cell else line
    span = Span(line, finding.span.column, end_line, finding.span.end_column)
    return replace(finding, span=span, cell=cell, related=related)


def cell_note(note: str, starts: CellStarts) -> str:
    """A fix's note with its ``line N`` (of the analysed source) as ``cell C line L``."""
    def placed(match: re.Match[str]) -> str:
        where = locate(int(match.group(1)), starts)
        return match.group(0) if where is None else f"cell {where[0]} line {where[1]}"

    return re.sub(r"\bline (\d+)", placed, note)


def notebook_cell_lines(text: str, cell: int) -> list[str]:
    """The lines of one cell of a notebook's JSON text, as its findings count them
    (IPython lines shown as placeholders); [] when it cannot be read."""
    try:
        source = Notebook.parse(text).source
    except NotebookError:
        return []
    return [line.rstrip("\r\n") for line in split_cells(source).get(cell, [])]


# What replaces each line of a cell that does not parse: the line count is kept, so the
# other cells' positions do not move.
_UNPARSED_LINE = "# trainaudit: cell not parsed\n"


def without_unparsable_cells(source: str) -> tuple[str, list[tuple[int, int, str]]]:
    """An analysed source whose cells that do not parse on their own are commented out,
    and (line, column, message) of each one's syntax error in the analysed source: one
    broken cell is reported where it is, and the notebook's other cells still analysed."""
    import ast

    lines = source.splitlines(keepends=True)
    starts = cell_starts(source)
    errors: list[tuple[int, int, str]] = []
    for index, (marker, _number) in enumerate(starts):
        end = starts[index + 1][0] - 1 if index + 1 < len(starts) else len(lines)
        body = "".join(lines[marker:end])  # lines after the marker (1-based marker line)
        try:
            ast.parse(body)
        except SyntaxError as exc:
            errors.append((marker + (exc.lineno or 1), exc.offset or 1, exc.msg))
        except (ValueError, RecursionError, MemoryError) as exc:
            errors.append((marker + 1, 1, str(exc)))
        else:
            continue
        lines[marker:end] = [_UNPARSED_LINE] * (end - marker)
    return "".join(lines), errors
