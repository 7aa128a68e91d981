"""Control flow of one function body: which statements can run after which.

A statement-level graph (one node per statement; a compound statement's node is
its header: the ``if`` test, the loop's next item, the ``with`` items) with the
edges Python gives it: both arms of an ``if``, a loop's body and its exit,
``continue`` to the loop header, ``break`` past the loop, ``return`` and
``raise`` to the end, every statement of a ``try`` body to its handlers, each
``match`` case. The loop model asks two questions of it: can ``b`` run after
``a`` without passing a given loop header (in the same iteration), and can ``a``
reach the normal end of the function (so a caller's later statements run).

Unknown is never invented: ``assert`` and calls that may raise are ordinary
statements (their exception edges are left out, which only adds paths that can
run), a ``while True`` loop without ``break`` has no exit.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field

# The two ends of a function: falling off its end / returning, and raising out of it.
RETURN = ast.Pass()
RAISE = ast.Pass()


@dataclass
class _Loop:
    head: ast.stmt
    after: ast.stmt


@dataclass
class FlowGraph:
    """Successors of each statement of one body (nested functions and classes are opaque)."""

    successors: dict[ast.stmt, set[ast.stmt]] = field(default_factory=dict)
    entry: ast.stmt = RETURN
    _reached: dict[tuple[int, int], frozenset[ast.stmt]] = field(default_factory=dict)
    # Where a ``return`` goes: the end, or the ``finally`` blocks it runs on the way.
    _return_to: list[ast.stmt] = field(default_factory=list)

    @classmethod
    def of(cls, body: Sequence[ast.stmt]) -> FlowGraph:
        graph = cls()
        graph.entry = graph._block(body, RETURN, None, ())
        return graph

    # -- building ----------------------------------------------------------------

    def _edge(self, node: ast.stmt, *targets: ast.stmt) -> None:
        self.successors.setdefault(node, set()).update(targets)

    def _block(self, stmts: Sequence[ast.stmt], follow: ast.stmt, loop: _Loop | None,
               handlers: tuple[ast.stmt, ...]) -> ast.stmt:
        """Add the edges of a block; returns its first node (``follow`` when it is empty)."""
        entry = follow
        for stmt in reversed(stmts):
            entry = self._statement(stmt, entry, loop, handlers)
        return entry

    def _statement(self, stmt: ast.stmt, follow: ast.stmt, loop: _Loop | None,
                   handlers: tuple[ast.stmt, ...]) -> ast.stmt:
        # Any statement of a try body may raise into its handlers.
        self._edge(stmt, *handlers)
        if isinstance(stmt, ast.If):
            self._edge(stmt, self._block(stmt.body, follow, loop, handlers),
                       self._block(stmt.orelse, follow, loop, handlers))
        elif isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
            inner = _Loop(stmt, follow)
            self._edge(stmt, self._block(stmt.body, stmt, inner, handlers))
            endless = (isinstance(stmt, ast.While) and isinstance(stmt.test, ast.Constant)
                       and bool(stmt.test.value))
            if not endless:
                self._edge(stmt, self._block(stmt.orelse, follow, loop, handlers))
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            self._edge(stmt, self._block(stmt.body, follow, loop, handlers))
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            self._try(stmt, follow, loop, handlers)
        elif isinstance(stmt, ast.Match):
            self._edge(stmt, follow, *(self._block(case.body, follow, loop, handlers)
                                       for case in stmt.cases))
        elif isinstance(stmt, ast.Return):
            self._edge(stmt, self._return_to[-1] if self._return_to else RETURN)
        elif isinstance(stmt, ast.Raise):
            self._edge(stmt, *(handlers or (RAISE,)))
        elif isinstance(stmt, ast.Continue) and loop is not None:
            self._edge(stmt, loop.head)
        elif isinstance(stmt, ast.Break) and loop is not None:
            self._edge(stmt, loop.after)
        else:
            self._edge(stmt, follow)
        return stmt

    def _try(self, stmt: ast.stmt, follow: ast.stmt, loop: _Loop | None,
             handlers: tuple[ast.stmt, ...]) -> None:
        finalbody = getattr(stmt, "finalbody", [])
        final = self._block(finalbody, follow, loop, handlers)
        if finalbody:
            # An exception the handlers do not catch still runs the finally block first,
            # and so does a ``return`` (the block's last statement may then end the body:
            # its nodes are shared, so this only adds paths).
            self._return_to.append(self._block(finalbody, self._return_to[-1] if self._return_to
                                               else RETURN, loop, handlers))
            handlers = (final,)
        caught = tuple(self._block(h.body, final, loop, handlers)
                       for h in getattr(stmt, "handlers", []))
        after_body = self._block(getattr(stmt, "orelse", []), final, loop, handlers)
        body = self._block(getattr(stmt, "body", []), after_body, loop, caught or handlers)
        if finalbody:
            self._return_to.pop()
        self._edge(stmt, body)

    # -- questions ----------------------------------------------------------------

    def _from(self, start: ast.stmt, avoid: ast.stmt | None) -> frozenset[ast.stmt]:
        """Every node reachable from ``start``'s successors, never entering ``avoid``."""
        key = (id(start), id(avoid))
        if key not in self._reached:
            seen: set[ast.stmt] = set()
            stack = list(self.successors.get(start, ()))
            while stack:
                node = stack.pop()
                if node in seen or node is avoid:
                    continue
                seen.add(node)
                stack.extend(self.successors.get(node, ()))
            self._reached[key] = frozenset(seen)
        return self._reached[key]

    def reaches(self, start: ast.stmt, target: ast.stmt, avoid: ast.stmt | None = None) -> bool:
        """Whether ``target`` can run after ``start`` without passing ``avoid`` (a loop's
        header: within one iteration of that loop)."""
        return target in self._from(start, avoid)

    def returns(self, start: ast.stmt) -> bool:
        """Whether the body can end normally (fall off or ``return``) after ``start``."""
        return RETURN in self._from(start, None)

    def returns_avoiding(self, start: ast.stmt, avoid: ast.stmt) -> bool:
        """Whether the body can end normally after ``start`` without running ``avoid``."""
        return RETURN in self._from(start, avoid)
