"""Which events of a loop's call tree can run after which, from each function's flow graph.

An *event* is an operation or an external call, known by its ``order`` in the
walk. Each event is anchored at the statement of the walked function that makes
it (its own call, or the call of the helper it was inlined from). Two events of
one helper call are ordered by the helper's own graph; otherwise ``b`` may follow
``a`` when ``a`` can leave its helper normally and ``b``'s statement is reachable
from ``a``'s in the walked function's graph without passing the training loop's
header (the same iteration). The result is plain data (pairs of orders), so it
crosses files in summaries and composes when an imported helper is inlined.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainaudit.model.loops.cfg import FlowGraph


@dataclass(frozen=True)
class Ordering:
    """``follows``: (a, b) pairs of event orders where b may run after a in one pass;
    ``exits``: events after which the walked body can end normally (for callers);
    ``exits_past``: (a, b) where, after a, the function b is in (a helper's call, or the
    walked function) can end normally without running b (``return`` before a restore)."""

    follows: frozenset[tuple[int, int]] = frozenset()
    exits: frozenset[int] = frozenset()
    exits_past: frozenset[tuple[int, int]] = frozenset()

    def renumbered(self, mapping: Mapping[int, int]) -> Ordering:
        """The same relation over new orders (events missing from ``mapping`` dropped)."""
        def pairs(relation: frozenset[tuple[int, int]]) -> frozenset[tuple[int, int]]:
            return frozenset((mapping[a], mapping[b]) for a, b in relation if a in mapping and b in mapping)
        return Ordering(pairs(self.follows), frozenset(mapping[a] for a in self.exits if a in mapping),
                        pairs(self.exits_past))


@dataclass
class EventLog:
    """Collected during one walk: each event's anchor statement, and for events inlined
    from a helper call, the call's group and the helper's own ordering (renumbered)."""

    anchors: dict[int, ast.stmt | None] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)
    inner: dict[int, Ordering] = field(default_factory=dict)  # group -> its ordering

    def record(self, order: int, anchor: ast.stmt | None) -> None:
        self.anchors[order] = anchor

    def inline(self, mapping: Mapping[int, int], anchor: ast.stmt | None, helper: Ordering) -> None:
        """Events of one helper call: ``mapping`` takes the helper's orders to the walk's."""
        group = len(self.inner) + 1
        self.inner[group] = helper.renumbered(mapping)
        for order in mapping.values():
            self.anchors[order] = anchor
            self.groups[order] = group

    def _leaves(self, order: int) -> bool:
        group = self.groups.get(order)
        return group is None or order in self.inner[group].exits

    def ordering(self, graph: FlowGraph, avoid: ast.stmt | None,
                 skippable: frozenset[int] = frozenset()) -> Ordering:
        """The relation over every logged event; ``avoid``: the loop header not to pass;
        ``skippable``: events whose ``exits_past`` pairs a caller asks about (a function's
        own ``train()`` calls), computed for a function's body only (``avoid`` None)."""
        orders = sorted(self.anchors)
        follows: set[tuple[int, int]] = set()
        past: set[tuple[int, int]] = set()
        for a in orders:
            group, leaves, start = self.groups.get(a), self._leaves(a), self.anchors[a]
            # A helper call inside a nested loop runs again: its events follow each other.
            again = leaves and start is not None and graph.reaches(start, start, avoid)
            if again:
                follows.add((a, a))
            for b in orders:
                if a == b:
                    continue
                if group is not None and group == self.groups.get(b):
                    if again or (a, b) in self.inner[group].follows:
                        follows.add((a, b))
                    if (a, b) in self.inner[group].exits_past:
                        past.add((a, b))
                    continue
                if not leaves:
                    continue
                target = self.anchors[b]
                if start is None or target is None or start is target:
                    if a < b:  # one statement: evaluation order
                        follows.add((a, b))
                elif graph.reaches(start, target, avoid):
                    follows.add((a, b))
        # A restore written after ``a`` (not one a loop runs again before a later ``a``)
        # that the function can return without running.
        if avoid is None:
            for a, b in follows:
                start, target = self.anchors[a], self.anchors[b]
                if b in skippable and self.groups.get(b) is None and start is not None \
                        and target is not None and target.lineno > start.lineno and self._leaves(a) \
                        and graph.returns_avoiding(start, target):
                    past.add((a, b))
        exits = frozenset(a for a in orders if self._leaves(a) and self._returns(graph, a))
        return Ordering(frozenset(follows), exits, frozenset(past))

    def _returns(self, graph: FlowGraph, order: int) -> bool:
        anchor = self.anchors[order]
        return anchor is None or graph.returns(anchor)


def merged_ordering(outer: Ordering, inlined: Mapping[int, Ordering],
                    renumber: Mapping[tuple[int, int], int]) -> Ordering:
    """Compose across files. Events are keyed ``(outer order, 0)``, or ``(call, helper
    order)`` for the events of the helper that replaced the external call ``call``
    (``inlined[call]`` is its ordering); ``renumber`` gives each key its new order."""

    def pair(a: tuple[int, int], b: tuple[int, int]) -> bool:
        (ca, ha), (cb, hb) = a, b
        inner_a = inlined.get(ca) if ha else None
        if inner_a is not None and ca == cb and hb:
            return (ha, hb) in inner_a.follows or (
                ha in inner_a.exits and (ca, ca) in outer.follows)
        if inner_a is not None and ha not in inner_a.exits:
            return False
        return (ca, cb) in outer.follows

    def past(a: tuple[int, int], b: tuple[int, int]) -> bool:
        (ca, ha), (cb, hb) = a, b
        inner = inlined.get(ca) if ha and hb and ca == cb else None
        return (ha, hb) in inner.exits_past if inner is not None else (
            not ha and not hb and (ca, cb) in outer.exits_past)

    keys = list(renumber)
    follows = frozenset((renumber[a], renumber[b]) for a in keys for b in keys
                        if a != b and pair(a, b))
    exits = frozenset(renumber[(c, h)] for c, h in keys if c in outer.exits
                      and (not h or h in inlined[c].exits))
    exits_past = frozenset((renumber[a], renumber[b]) for a in keys for b in keys
                           if a != b and past(a, b))
    return Ordering(follows, exits, exits_past)
