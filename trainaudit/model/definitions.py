"""Where names get their values: what is assigned to a name in a function's own code."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainaudit.model.module import walk_local


def target_key(node: ast.expr) -> str | None:
    """The name an assignment target binds: ``x`` for ``x`` and for ``self.x`` / ``cls.x``."""
    if isinstance(node, ast.Name):
        return node.id
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")):
        return node.attr
    return None


def assignments(body: list[ast.stmt], name: str) -> Iterator[ast.expr | None]:
    """Values assigned to ``name`` in a body; None for ``name /= k`` (a division)."""
    return iter(_assignment_index(body).get(name, ()))


# Per body (by identity): name -> assigned values, built in one walk. Bounded: bodies of
# files already checked are dropped wholesale.
_INDEXES: dict[int, tuple[list[ast.stmt], dict[str, list[ast.expr | None]]]] = {}


def _assignment_index(body: list[ast.stmt]) -> dict[str, list[ast.expr | None]]:
    cached = _INDEXES.get(id(body))
    if cached is not None and cached[0] is body:
        return cached[1]
    if len(_INDEXES) > 4096:
        _INDEXES.clear()
    index: dict[str, list[ast.expr | None]] = {}
    for node in walk_local(body):
        for name, value in _assigned(node):
            index.setdefault(name, []).append(value)
    _INDEXES[id(body)] = (body, index)
    return index


def _assigned(node: ast.AST) -> Iterator[tuple[str, ast.expr | None]]:
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Name):
                yield target.id, node.value
            elif isinstance(target, ast.Tuple | ast.List):
                for name in dict.fromkeys(e.id for e in target.elts if isinstance(e, ast.Name)):
                    yield name, node.value
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        yield node.target.id, node.value
    elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        yield node.target.id, None if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mult) else node.value
    elif isinstance(node, ast.NamedExpr):
        yield node.target.id, node.value
