"""Generator functions: a function whose own body yields is called to an iterable of
what it yields (an ``IterableDataset.__iter__``, a ``get_batch`` generator)."""

from __future__ import annotations

import ast
from functools import lru_cache

from trainaudit.model.flow.values import ListOf, Opaque, Value, join_all


@lru_cache(maxsize=4096)
def is_generator(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """The function's own body yields (not a nested definition's)."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                          | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))
    return False


def yielded(values: list[Value]) -> Value:
    """What iterating a generator gives: each value it yields, joined."""
    return ListOf(join_all(values) if values else Opaque(("empty-generator",)))
