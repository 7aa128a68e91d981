"""LibCST helpers shared by the fixers: finding nodes by position, building code."""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, ParentNodeProvider, PositionProvider

from trainaudit.diagnostics import Finding


class Located:
    """A parsed module with positions and parents, for locating the nodes findings point at."""

    def __init__(self, source: str) -> None:
        self.wrapper = MetadataWrapper(cst.parse_module(source))
        self.module = self.wrapper.module
        self.positions = self.wrapper.resolve(PositionProvider)
        self.parents = self.wrapper.resolve(ParentNodeProvider)

    def range(self, node: cst.CSTNode) -> CodeRange:
        return self.positions[node]

    def at(self, line: int, column: int, kind: type[cst.CSTNode] | tuple[type[cst.CSTNode], ...]
           ) -> list[cst.CSTNode]:
        """Nodes of a type starting at a 1-based line and column, outermost first."""
        found = [
            node for node, pos in self.positions.items()
            if isinstance(node, kind) and pos.start.line == line and pos.start.column == column - 1
        ]
        return sorted(found, key=lambda n: (self.positions[n].end.line, self.positions[n].end.column),
                      reverse=True)

    def statement_of(self, node: cst.CSTNode) -> cst.CSTNode:
        """The simple or compound statement that contains a node."""
        current: cst.CSTNode = node
        while not isinstance(current, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            current = self.parents[current]
        return current

    def parent(self, node: cst.CSTNode) -> cst.CSTNode:
        return self.parents[node]


def code_of(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def findings_for(findings: Sequence[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]
