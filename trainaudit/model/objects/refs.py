"""References: the places an object can live, read from spellings, and groups of them."""

from __future__ import annotations

import ast
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from trainaudit.model.flow.operations import PASS_ARGUMENTS
from trainaudit.model.module import ModuleFacts, parameter_names

# Values that are never an object (arithmetic, literals, comparisons, comprehensions).
NO_OBJECT = (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.JoinedStr,
             ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class Ref(NamedTuple):
    """One place an object can live: ``scope`` is a function, a class (for ``self.``
    attributes) or ``''`` (module globals); ``spelled`` as written there (``[]`` for the
    elements of a container). A tuple: refs are hashed millions of times on a big tree."""

    scope: str
    spelled: str


class UnionFind:
    """Refs joined into groups."""

    def __init__(self) -> None:
        self.parent: dict[Ref, Ref] = {}

    def find(self, ref: Ref) -> Ref:
        root = self.parent.setdefault(ref, ref)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[ref] = root
        return root

    def union(self, a: Ref, b: Ref) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self, *more: Iterable[Ref]) -> dict[Ref, set[Ref]]:
        """Root → every ref of its group (``more``: refs to count in though never joined)."""
        found: dict[Ref, set[Ref]] = {}
        for ref in [*self.parent, *(r for refs in more for r in refs)]:
            found.setdefault(self.find(ref), set()).add(ref)
        return found


class Refs(UnionFind):
    """Spellings to refs, and the union-find of one object's refs. ``scope_at`` is the
    function each line of the file runs in (None in a class body)."""

    def __init__(self, module: ModuleFacts, scope_at: list[str | None]) -> None:
        super().__init__()
        self.module = module
        self._locals: dict[str, set[str]] = {name: parameter_names(fn) for name, fn in module.functions.items()}
        declared_global: dict[str, set[str]] = {}
        by_type = module.nodes_by_type
        for node in by_type.get(ast.Name, ()):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                function = scope_at[node.lineno] if node.lineno < len(scope_at) else None
                if function:
                    self._locals[function].add(node.id)
        for kind in (ast.Global, ast.Nonlocal):
            for node in by_type.get(kind, ()):
                if not isinstance(node, ast.Global | ast.Nonlocal):
                    continue
                function = scope_at[node.lineno] if node.lineno < len(scope_at) else None
                if function:
                    declared_global.setdefault(function, set()).update(node.names)
        for function, names in declared_global.items():
            self._locals[function] -= names
        self._classes: dict[str, str | None] = {}

    def _class_of(self, function: str) -> str | None:
        if function not in self._classes:
            fn = self.module.functions.get(function)
            cls = self.module.enclosing_class(fn) if fn is not None else None
            self._classes[function] = self.module.scope_name(cls) if cls is not None else None
        return self._classes[function]

    def resolve(self, spelled: str, function: str) -> Ref | None:
        root = spelled.split(".", 1)[0].split("[", 1)[0]
        if root in ("self", "cls"):
            cls = self._class_of(function)
            return Ref(cls, spelled) if cls is not None else None
        scope = function
        while scope:
            names = self._locals.get(scope)
            if names is not None and root in names:
                return Ref(scope, spelled)
            scope = scope.rpartition(".")[0]
        return Ref("", spelled)


@dataclass(frozen=True)
class ObjectCall:
    """``<object>.<method>(...)`` in a function ('' for module level)."""

    method: str
    call: ast.Call
    function: str


def spelling(node: ast.AST) -> str | None:
    """The source spelling of a ``Name``/``Attribute`` chain (``self.scaler``), with a
    subscript as its container's elements (``optimizers[]``), or as one entry where a
    string key names it (``state["optimizer"]``: a record of different objects); no
    aliasing."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = spelling(node.value)
        return f"{base}.{node.attr}" if base and "[" not in base else None
    if isinstance(node, ast.Subscript):
        base = spelling(node.value)
        key = node.slice
        entry = f"[{key.value!r}]" if isinstance(key, ast.Constant) and isinstance(key.value, str) else "[]"
        return f"{base}{entry}" if base and "[" not in base else None
    return None


def origin_name(group: Iterable[Ref], built: Container[Ref], aliases: Container[Ref]) -> str:
    """The name of a group of refs where its object was made: a ref a construction was
    assigned to, else one no other ref was assigned to (a parameter, a global), else any;
    a plain name before ``self.x``, then the first alphabetically (stable)."""
    refs = list(group)
    pool = [r for r in refs if r in built] or [r for r in refs if r not in aliases] or refs
    return min(pool, key=lambda r: (r.spelled.startswith("self."), "[" in r.spelled,
                                    r.spelled, r.scope)).spelled


def last_name(spelled: str) -> str:
    """``opt`` of ``self.opt``, ``optimizers`` of ``optimizers[]``, ``optimizer`` of
    ``state["optimizer"]``."""
    if spelled.endswith("']"):
        return spelled.rsplit("['", 1)[-1][:-2]
    return spelled.rsplit(".", 1)[-1].replace("[]", "")


def handed_back(value: ast.expr) -> list[ast.expr] | None:
    """The values a tuple assignment unpacks one by one: a tuple display, or a framework
    call handing its arguments back (``accelerator.prepare(model, opt)``)."""
    if isinstance(value, ast.Tuple | ast.List):
        return list(value.elts)
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
            and value.func.attr in PASS_ARGUMENTS and not value.keywords:
        return list(value.args)
    return None


def scopes_by_line(module: ModuleFacts) -> list[str | None]:
    """Line → the function whose own code that line is (``''`` at module level, None in a
    class body), innermost definitions last so they win."""
    scopes: list[str | None] = [""] * (len(module.lines) + 2)
    spans: list[tuple[int, int, str | None]] = [
        (cls.lineno, cls.end_lineno or cls.lineno, None) for cls in module.nodes_by_type.get(ast.ClassDef, ())
        if isinstance(cls, ast.ClassDef)]
    spans += [(fn.body[0].lineno if fn.body else fn.lineno, fn.end_lineno or fn.lineno, name)
              for name, fn in module.functions.items()]
    # Outer definitions first: a nested one starts later (or on the same line and ends sooner).
    for start, end, name in sorted(spans, key=lambda s: (s[0], -s[1])):
        scopes[start:end + 1] = [name] * (end + 1 - start)
    return scopes


def reach_of(refs: Iterable[Ref], calling: set[str], module: ModuleFacts) -> set[str]:
    """The functions that can see an object: those calling its methods (``calling``), its
    locals' and parameters' scopes, the methods of the class holding it (every function,
    for a module global)."""
    reach = set(calling)
    for ref in refs:
        if ref.scope == "":
            return reach | {"", *module.functions}
        if ref.spelled.startswith(("self.", "cls.")):
            reach |= {name for name in module.functions if name.startswith(ref.scope + ".")}
        else:
            reach.add(ref.scope)
    return reach


def declared_type(module: ModuleFacts, annotation: ast.expr | None, depth: int = 0) -> str | None:
    """The qualified name of the type an annotation names: through ``X | None``,
    ``Optional[X]`` and a string annotation; a union of two types names none."""
    if annotation is None or depth > 3:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        sides = [side for side in (annotation.left, annotation.right)
                 if not (isinstance(side, ast.Constant) and side.value is None)]
        return declared_type(module, sides[0], depth + 1) if len(sides) == 1 else None
    if isinstance(annotation, ast.Subscript) and \
            (module.qualname(annotation.value) or "").endswith("Optional"):
        return declared_type(module, annotation.slice, depth + 1)
    return module.qualname(annotation)
