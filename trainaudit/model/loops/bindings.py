"""What names are bound to in a file, and small lookups over assignments."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainaudit.model.loops.patterns import last_name
from trainaudit.model.module import FunctionNode, ModuleFacts, walk_local


class Bindings:
    """What names are bound to in a file: ``name`` / ``self.name`` → the call that made it."""

    def __init__(self, module: ModuleFacts) -> None:
        self.calls: dict[str, list[str]] = {}
        for node in module.nodes:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            if value is None:
                continue
            made_by = self._maker(module, value)
            if made_by is None:
                continue
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                for elt in elts:
                    key = target_key(elt)
                    if key:
                        self.calls.setdefault(key, []).append(made_by)

    @staticmethod
    def _maker(module: ModuleFacts, value: ast.expr) -> str | None:
        if isinstance(value, ast.Await):
            value = value.value
        if isinstance(value, ast.Call):
            return module.call_name(value) or last_name(module.segment(value.func))
        if isinstance(value, ast.IfExp):
            # ``no_sync() if k else nullcontext()``; also the callables themselves
            # (``sync = nullcontext if last else ddp.no_sync``, entered as ``with sync():``).
            parts = [p for p in (Bindings._maker(module, value.body) or Bindings._callable(module, value.body),
                                 Bindings._maker(module, value.orelse) or Bindings._callable(module, value.orelse))
                     if p]
            return "|".join(parts) if len(parts) == 2 else None
        return None

    @staticmethod
    def _callable(module: ModuleFacts, value: ast.expr) -> str | None:
        if isinstance(value, ast.Name | ast.Attribute):
            return module.qualname(value) or last_name(module.segment(value))
        return None

    def made_by(self, text: str) -> list[str]:
        key = text[5:] if text.startswith("self.") else text
        return self.calls.get(key, [])


def target_key(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")):
        return node.attr
    return None



def blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        block = getattr(stmt, name, None)
        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
            yield block
    for handler in getattr(stmt, "handlers", ()):
        yield handler.body
    for case in getattr(stmt, "cases", ()):
        yield case.body


def params_of(fn: FunctionNode) -> set[str]:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if args.vararg:
        names.append(args.vararg.arg)
    if args.kwarg:
        names.append(args.kwarg.arg)
    return set(names)


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
