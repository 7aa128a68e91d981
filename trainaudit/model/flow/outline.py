"""A module's outline, made in phase 1 so that the project phase parses only what a query
reaches: where each top-level definition's text lies, which nested definitions it holds,
and a skeleton of the module body with every definition reduced to one line.

Phase 1 has the tree already; the project phase would otherwise re-parse every module the
flow model touches in full (on the torch package, 20 MB of source for a few hundred
functions read). The outline holds positions only (the text is read again in the project
phase); the skeleton keeps every line number and column, so positions and sites are
those of the real file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass

DefinitionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
# (first line with decorators, last line, indentation, end column), as the parser counts
Span = tuple[int, int, int, int]


@dataclass(frozen=True)
class Outline:
    """``owners``: the definitions parsed one at a time, by dotted path, with their
    ``Span``: those at module level (also in an ``if``, ``try``, loop or ``with`` body)
    and the members of such classes, methods included; ``children``: a class owner's
    member owners, stubbed when the class is parsed; ``members``: every definition's
    dotted path to the owner whose text holds it, and whether it is a class; ``top``:
    the module-level owners, which the skeleton of the module body stubs."""

    owners: dict[str, Span]
    children: dict[str, tuple[str, ...]]
    members: dict[str, tuple[str, bool]]
    top: tuple[str, ...]

    def skeleton(self, lines: list[str]) -> str:
        """The module's source with every module-level owner reduced to a one-line stub:
        the module body, with every line where it is."""
        return "".join(stubbed(lines, _stubs(self.top, self.owners, self.members), 1, len(lines)))


def outline_of(tree: ast.Module) -> Outline:
    """The outline of a parsed module (the visit of ``definitions_in``, owner by owner)."""
    owners: dict[str, Span] = {}
    children: dict[str, list[str]] = {}
    members: dict[str, tuple[str, bool]] = {}

    def visit(body: list[ast.stmt], prefix: str, parent: str | None, owner_level: bool,
              holder: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + stmt.name
                is_class = isinstance(stmt, ast.ClassDef)
                if owner_level:
                    first = min([stmt.lineno, *(d.lineno for d in stmt.decorator_list)])
                    owners[name] = (first, stmt.end_lineno or stmt.lineno, stmt.col_offset,
                                   stmt.end_col_offset or 0)
                    children.setdefault(parent or "", []).append(name)
                held_by = name if owner_level else holder
                members[name] = (held_by, is_class)
                inner = owner_level and is_class  # a class owner's members are owners
                visit(stmt.body, f"{name}.", name if inner else None, inner, held_by)
            elif isinstance(stmt, _BLOCK_STATEMENTS):
                for block in _blocks(stmt):
                    visit(block, prefix, parent, owner_level, holder)

    visit(tree.body, "", None, True, "")
    top = tuple(children.pop("", []))
    return Outline(owners, {k: tuple(v) for k, v in children.items()}, members, top)


def definitions_in(body: list[ast.stmt], prefix: str = "") -> dict[str, DefinitionNode]:
    """Functions, classes and methods by dotted path (``Trainer.step``); the last
    definition of a name wins, as at run time."""
    found: dict[str, DefinitionNode] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found[prefix + stmt.name] = stmt
                visit(stmt.body, f"{prefix}{stmt.name}.")  # methods, nested functions
            elif isinstance(stmt, _BLOCK_STATEMENTS):
                for block in _blocks(stmt):
                    visit(block, prefix)

    visit(body, prefix)
    return found


def parse_owner(lines: list[str], outline: Outline, owner: str,
                filename: str) -> DefinitionNode | None:
    """Parse one owner's text alone, its member owners stubbed, at the line numbers and
    columns it has in the file: empty lines before it, and an indented one inside
    ``if 1:``, which keeps its columns."""
    first, last, column, end_column = outline.owners[owner]
    inner = _stubs(outline.children.get(owner, ()), outline.owners, outline.members)
    text = "".join(stubbed(lines, inner, first, last))
    lead = "\n" * (first - 2) + "if 1:\n" if column else "\n" * (first - 1)
    try:
        tree = ast.parse(lead + text, filename=filename)
    except (SyntaxError, ValueError, RecursionError):
        return None
    body = tree.body[0].body if column and isinstance(tree.body[0], ast.If) else tree.body
    node = body[0] if body else None
    if isinstance(node, ast.ClassDef):  # it ends where its last member does, not its stub
        node.end_lineno, node.end_col_offset = last, end_column
    return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else None


# A function defined in a branch, a loop or a ``with`` body is a definition too (a closure).
_BLOCK_STATEMENTS = (ast.If, ast.Try, ast.For, ast.While, ast.With)


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    return [getattr(stmt, "body", []), getattr(stmt, "orelse", []),
            *[h.body for h in getattr(stmt, "handlers", [])]]


def stubbed(lines: list[str], stubs: list[tuple[Span, str]], first: int,
            last: int) -> list[str]:
    """Lines ``first``..``last`` with each definition's span replaced by its one-line stub
    (``def name(): ...``, which binds the name where the definition did) and empty lines."""
    starts = {span[0]: (span, head) for span, head in stubs}
    out: list[str] = []
    number = first
    while number <= last and number <= len(lines):
        found = starts.get(number)
        if found is None:
            out.append(lines[number - 1])
            number += 1
            continue
        (_, end, column, _), head = found
        out.append(f"{lines[number - 1][:column]}{head} ...\n" + "\n" * (end - number))
        number = end + 1
    return out


def _stubs(names: Iterable[str], owners: dict[str, Span],
           members: dict[str, tuple[str, bool]]) -> list[tuple[Span, str]]:
    found = []
    for name in names:
        short = name.rsplit(".", 1)[-1]
        found.append((owners[name], f"class {short}:" if members[name][1] else f"def {short}():"))
    return found
