"""Which object a receiver is: ``model``, ``self.student``, ``ddp_model.module`` ...

A receiver's *identity* is the expression it was made from, followed back
through plain aliases (``net = model``), methods that return their receiver
(``.to(device)``, ``.cuda()``, ``.train()``), wrappers that hold it
(``DistributedDataParallel(model)``, ``torch.compile(model)``, ``.module``)
and ``self.x = x`` in ``__init__``. Two calls are on one object when their
identities are equal; a receiver the file cannot follow is its own identity,
so different names stay different objects (never merged by position).
"""

from __future__ import annotations

import ast
import weakref

from trainaudit.model.loops.bindings import assignments, target_key
from trainaudit.model.module import ModuleFacts

# Methods that return the module they are called on.
RETURNS_SELF = frozenset({"to", "cuda", "cpu", "float", "half", "bfloat16", "double", "train",
                          "eval", "requires_grad_", "to_empty"})
# Calls whose first argument is the model they wrap (and whose result runs it).
WRAPPERS = frozenset({"DistributedDataParallel", "DDP", "FullyShardedDataParallel", "FSDP",
                      "DataParallel", "compile"})
DDP_WRAPPERS = frozenset({"DistributedDataParallel", "DDP"})
FSDP_WRAPPERS = frozenset({"FullyShardedDataParallel", "FSDP", "fully_shard"})


def _values(module: ModuleFacts, key: str, function: str) -> list[ast.expr]:
    """What ``key`` (a name or ``self.attr``) is assigned in its function, else in the file
    (module level for a name, any method of the class for ``self.attr``)."""
    fn = module.functions.get(function)
    if key.startswith("self."):
        owner = function.rsplit(".", 1)[0] if "." in function else ""
        return list(_self_attributes(module).get((owner, key[5:]), ())) if owner else []
    local = [v for v in assignments(fn.body, key) if v is not None] if fn is not None else []
    if local or (fn is not None and key in {a.arg for a in (*fn.args.args, *fn.args.kwonlyargs)}):
        return local
    return [v for v in assignments(module.tree.body, key) if v is not None]


_SELF: weakref.WeakKeyDictionary[ModuleFacts, dict[tuple[str, str], list[ast.expr]]] = (
    weakref.WeakKeyDictionary())


def _self_attributes(module: ModuleFacts) -> dict[tuple[str, str], list[ast.expr]]:
    """(class, attribute) -> values of ``self.attribute = value`` in the class's methods."""
    if module not in _SELF:
        found: dict[tuple[str, str], list[ast.expr]] = {}
        for name, method in module.functions.items():
            if "." not in name:
                continue
            owner = name.rsplit(".", 1)[0]
            for node in ast.walk(method):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        attr = target_key(target) if isinstance(target, ast.Attribute) else None
                        if attr:
                            found.setdefault((owner, attr), []).append(node.value)
        _SELF[module] = found
    return _SELF[module]


def _wrapped(module: ModuleFacts, value: ast.expr) -> tuple[ast.expr | None, str]:
    """(the object ``value`` passes through, the wrapper's name) or (None, "")."""
    if isinstance(value, ast.Call):
        func = value.func
        last = (module.call_name(value) or "").rsplit(".", 1)[-1]
        if isinstance(func, ast.Attribute) and func.attr in RETURNS_SELF:
            return func.value, ""
        if last in WRAPPERS | FSDP_WRAPPERS and value.args:
            return value.args[0], last
    if isinstance(value, ast.Attribute) and value.attr == "module":
        return value.value, ""
    if isinstance(value, ast.Name | ast.Attribute):
        return value, ""
    return None, ""


def origin(module: ModuleFacts, expr: ast.expr, function: str, depth: int = 0
           ) -> tuple[ast.expr, frozenset[str]]:
    """The expression ``expr`` was made from, and the wrappers met on the way."""
    made, wrappers, _ = _follow(module, expr, function, depth)
    return made, wrappers


def _follow(module: ModuleFacts, expr: ast.expr, function: str, depth: int = 0
            ) -> tuple[ast.expr, frozenset[str], str]:
    """(what ``expr`` was made from, the wrappers met, the last name or ``self.x`` on the way)."""
    wrappers: set[str] = set()
    named = _key(module, expr)
    for _ in range(8):
        inner, wrapper = _wrapped(module, expr)
        if wrapper:
            wrappers.add(wrapper)
        if inner is not None and inner is not expr:
            expr = inner
            named = _key(module, expr) or named
            continue
        key = _key(module, expr)
        values = _values(module, key, function) if key else []
        if len(values) != 1 or depth > 4:
            break
        value = values[0]
        # ``model = DDP(model)``: the wrapped name is the one before this assignment.
        inner, wrapper = _wrapped(module, value)
        if wrapper:
            wrappers.add(wrapper)
        if inner is not None and _key(module, inner) == key:
            break
        if key.startswith("self.") and isinstance(inner, ast.Name):
            break  # ``self.x = x`` in another method: that name is of another scope
        expr = inner if inner is not None else value
        named = _key(module, expr) or named
        if inner is None:
            break
    return expr, frozenset(wrappers), named


def _key(module: ModuleFacts, expr: ast.expr) -> str:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return f"self.{expr.attr}"
    return ""


def identity(module: ModuleFacts, expr: ast.expr, function: str) -> str:
    """A key equal for two receivers that are one object (see the module docstring)."""
    made, _ = origin(module, expr, function)
    key = _key(module, made)
    if key:
        return key
    return module.segment(made)


def object_name(module: ModuleFacts, expr: ast.expr, function: str) -> str:
    """The last name the object of ``expr`` had on the way to what made it (``model`` for
    ``net = model`` after ``model = Net().cuda()``; ``model`` for ``ddp.module`` after
    ``ddp = DDP(model)``): a key equal for one object, and a name the function can use.
    The expression's text when no name is met."""
    _, _, named = _follow(module, expr, function)
    return named or module.segment(expr)


def wrappers_of(module: ModuleFacts, expr: ast.expr, function: str) -> frozenset[str]:
    """The wrappers (``DDP``, ``FSDP``, ``compile``) the object of ``expr`` was passed to,
    here or anywhere in the file (``model = DDP(model)`` after the loop's function got it)."""
    made, wrappers = origin(module, expr, function)
    key = _key(module, made) or _key(module, expr)
    return frozenset(wrappers) | _wrapped_names(module).get(key, frozenset())


_WRAPPED: weakref.WeakKeyDictionary[ModuleFacts, dict[str, frozenset[str]]] = weakref.WeakKeyDictionary()


def _wrapped_names(module: ModuleFacts) -> dict[str, frozenset[str]]:
    """Names (and ``self.x``) passed to a wrapper anywhere in the file, with the wrappers."""
    if module not in _WRAPPED:
        found: dict[str, set[str]] = {}
        for node in module.nodes:
            if isinstance(node, ast.Call) and node.args:
                last = (module.call_name(node) or "").rsplit(".", 1)[-1]
                key = _key(module, node.args[0]) if last in WRAPPERS | FSDP_WRAPPERS else ""
                if key:
                    found.setdefault(key, set()).add(last)
        _WRAPPED[module] = {k: frozenset(v) for k, v in found.items()}
    return _WRAPPED[module]


def made_by_class(module: ModuleFacts, expr: ast.expr, function: str) -> ast.ClassDef | None:
    """The class of this file that made the object (``model = GPT(cfg).cuda()``), if any."""
    made, _ = origin(module, expr, function)
    key = _key(module, made)
    values = _values(module, key, function) if key else [made]
    for value in values:
        while True:
            inner, _ = _wrapped(module, value)
            if inner is None or inner is value or not isinstance(inner, ast.Call):
                break
            value = inner
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            cls = module.classes.get(value.func.id)
            if cls is not None:
                return cls
    return None
