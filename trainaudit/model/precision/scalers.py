"""GradScaler objects of one file, each tied to the places that name it.

A scaler is an *object*, not a name: ``scaler`` in ``train_amp`` and ``scaler``
in ``train_plain`` are different things, and ``self.scaler`` belongs to its
class. Each spelling is resolved to a ``ScalerRef`` (a function's local or
parameter, a class's ``self.`` attribute, a module global); refs are joined
when one is assigned to another (``scaler = self.scaler``) or passed into a
parameter at a call of this file (``train_step(model, batch, scaler)``,
``Trainer(scaler=scaler)``). A ``ScalerObject`` is one such group that is built
from ``GradScaler(...)`` or used as one (``unscale_``, ``scale(loss).backward()``,
a ``scaler`` spelling with the scaler's methods).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from trainaudit.model.module import FunctionNode, ModuleFacts, keyword, parameter_names, walk_local
from trainaudit.model.precision.api import dotted, nodes_by_type

SCALER_METHODS = ("scale", "unscale_", "step", "update")


@dataclass(frozen=True)
class ScalerRef:
    """One place a scaler can live: ``scope`` is a function, a class (for ``self.``
    attributes) or ``''`` (module globals); ``spelled`` as written there."""

    scope: str
    spelled: str


@dataclass(frozen=True)
class ScalerCall:
    """``scaler.<method>(...)`` in a function ('' for module level)."""

    method: str
    call: ast.Call
    function: str


@dataclass
class ScalerObject:
    """One GradScaler: the refs that name it, where it is built and how it is used."""

    refs: set[ScalerRef]
    constructions: list[ast.Call] = field(default_factory=list)
    calls: list[ScalerCall] = field(default_factory=list)
    # Functions that can see it: its locals' and parameters' scopes, the methods of
    # the class holding it, and functions that name it.
    reach: set[str] = field(default_factory=set)

    def uses(self, method: str) -> list[ScalerCall]:
        return [c for c in self.calls if c.method == method]

    @property
    def disabled(self) -> bool:
        """Built only with ``enabled=False``: a no-op."""
        return bool(self.constructions) and all(
            isinstance(e := keyword(c, "enabled"), ast.Constant) and e.value is False
            for c in self.constructions)

    def spelling_in(self, function: str) -> str | None:
        """How code in ``function`` names this scaler, if it can."""
        for ref in sorted(self.refs, key=lambda r: (r.scope != function, r.spelled)):
            if ref.scope == function or ref.scope == "" or (
                    ref.spelled.startswith("self.") and function.startswith(ref.scope + ".")):
                return ref.spelled
        return None


@dataclass(frozen=True)
class ScalerFacts:
    """GradScalers of a file: the objects, and (for rules reading the whole file) the
    spellings that build them, every method call on them, and every spelling."""

    objects: tuple[ScalerObject, ...]
    constructed: dict[str, list[ast.Call]]
    calls: dict[str, list[ast.Call]]
    receivers: set[str]

    def exists(self) -> bool:
        return bool(self.objects)

    def uses(self, method: str) -> list[ast.Call]:
        return self.calls.get(method, [])


class _Refs:
    """Resolution of spellings to refs, and a union-find over refs."""

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self.parent: dict[ScalerRef, ScalerRef] = {}
        self._locals: dict[str, set[str]] = {}

    def local_names(self, function: str) -> set[str]:
        if function not in self._locals:
            fn = self.module.functions[function]
            names = parameter_names(fn)
            declared_global: set[str] = set()
            for node in walk_local(fn.body):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
                elif isinstance(node, ast.Global | ast.Nonlocal):
                    declared_global.update(node.names)
            self._locals[function] = names - declared_global
        return self._locals[function]

    def resolve(self, spelled: str, function: str) -> ScalerRef | None:
        root = spelled.split(".", 1)[0]
        module = self.module
        if root in ("self", "cls"):
            fn = module.functions.get(function)
            cls = module.enclosing_class(fn) if fn is not None else None
            return ScalerRef(module.scope_name(cls), spelled) if cls is not None else None
        scope = function
        while scope:
            if scope in module.functions and root in self.local_names(scope):
                return ScalerRef(scope, spelled)
            scope = scope.rpartition(".")[0]
        return ScalerRef("", spelled)

    def find(self, ref: ScalerRef) -> ScalerRef:
        root = self.parent.setdefault(ref, ref)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[ref] = root
        return root

    def union(self, a: ScalerRef, b: ScalerRef) -> None:
        self.parent[self.find(a)] = self.find(b)


def _function_of(module: ModuleFacts, node: ast.AST) -> str:
    fn = module.enclosing_function(node)
    return module.scope_name(fn) if fn is not None else ""


def _parameters(fn: FunctionNode, skip_self: bool) -> list[str]:
    positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    return positional[1:] if skip_self else positional


def _callee_parameters(module: ModuleFacts, call: ast.Call, caller: str
                       ) -> tuple[str, list[str], set[str]] | None:
    """The local function or class a call enters: (scope, positional params, keyword params)."""
    callee = module.local_callee(call, caller)
    skip_self = callee is not None and isinstance(call.func, ast.Attribute)
    if callee is None and isinstance(call.func, ast.Name) and call.func.id in module.classes:
        callee, skip_self = f"{call.func.id}.__init__", True
    if callee is None or callee not in module.functions:
        return None
    fn = module.functions[callee]
    names = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    return callee, _parameters(fn, skip_self), names


def _is_construction(module: ModuleFacts, node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and \
        (module.call_name(node) or "").rsplit(".", 1)[-1].endswith("GradScaler")


def find_scalers(module: ModuleFacts) -> ScalerFacts:
    """Every GradScaler object of a file (see the module docstring)."""
    refs = _Refs(module)
    constructions: dict[ScalerRef, list[ast.Call]] = {}
    calls: dict[ScalerRef, list[ScalerCall]] = {}
    index = nodes_by_type(module)
    for node in [*index.get(ast.Assign, []), *index.get(ast.AnnAssign, [])]:
        assert isinstance(node, ast.Assign | ast.AnnAssign)
        if node.value is None:
            continue
        function = _function_of(module, node)
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        built = [c for c in ast.walk(node.value) if _is_construction(module, c)]
        source = dotted(node.value)
        for target in targets:
            spelled = dotted(target)
            ref = refs.resolve(spelled, function) if spelled is not None else None
            if ref is None:
                continue
            for call in built:
                assert isinstance(call, ast.Call)
                constructions.setdefault(ref, []).append(call)
            if source is not None and (other := refs.resolve(source, function)) is not None:
                refs.union(ref, other)  # ``scaler = self.scaler``
    for caller, caller_calls in module.calls_by_function.items():
        for call in caller_calls:
            _join_arguments(module, refs, call, caller)
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in SCALER_METHODS:
                spelled = dotted(func.value)
                ref = refs.resolve(spelled, caller) if spelled is not None else None
                if ref is not None:
                    calls.setdefault(ref, []).append(ScalerCall(func.attr, call, caller))
    return _objects(module, refs, constructions, calls)


def _join_arguments(module: ModuleFacts, refs: _Refs, call: ast.Call, caller: str) -> None:
    """Join each dotted argument with the parameter it is passed into."""
    target = _callee_parameters(module, call, caller)
    if target is None:
        return
    callee, positional, names = target
    pairs: list[tuple[ast.expr, str]] = [
        (arg, positional[i]) for i, arg in enumerate(call.args)
        if i < len(positional) and not isinstance(arg, ast.Starred)]
    pairs += [(kw.value, kw.arg) for kw in call.keywords if kw.arg is not None and kw.arg in names]
    for value, parameter in pairs:
        spelled = dotted(value)
        ref = refs.resolve(spelled, caller) if spelled is not None else None
        if ref is not None:
            refs.union(ref, ScalerRef(callee, parameter))


def _used_as_scaler(group: set[ScalerRef], group_calls: list[ScalerCall], module: ModuleFacts) -> bool:
    for scaler_call in group_calls:
        if scaler_call.method == "unscale_":
            return True
        parent = module.parents.get(scaler_call.call)
        if scaler_call.method == "scale" and isinstance(parent, ast.Attribute) \
                and parent.attr == "backward":
            return True
    return bool(group_calls) and any("scaler" in r.spelled.rsplit(".", 1)[-1].lower() for r in group)


def _objects(module: ModuleFacts, refs: _Refs, constructions: dict[ScalerRef, list[ast.Call]],
             calls: dict[ScalerRef, list[ScalerCall]]) -> ScalerFacts:
    groups: dict[ScalerRef, set[ScalerRef]] = {}
    for ref in [*refs.parent, *constructions, *calls]:
        groups.setdefault(refs.find(ref), set()).add(ref)
    objects: list[ScalerObject] = []
    for group in groups.values():
        built = [c for r in group for c in constructions.get(r, [])]
        used = sorted((c for r in group for c in calls.get(r, [])),
                      key=lambda c: (c.call.lineno, c.call.col_offset))
        if not built and not _used_as_scaler(group, used, module):
            continue
        scaler = ScalerObject(group, built, used)
        scaler.reach = _reach(module, scaler)
        objects.append(scaler)
    constructed: dict[str, list[ast.Call]] = {}
    by_method: dict[str, list[ast.Call]] = {}
    receivers: set[str] = set()
    for scaler in objects:
        for ref in scaler.refs:
            receivers.add(ref.spelled)
            if ref in constructions:
                constructed.setdefault(ref.spelled, []).extend(constructions[ref])
        for scaler_call in scaler.calls:
            by_method.setdefault(scaler_call.method, []).append(scaler_call.call)
    for method_calls in by_method.values():
        method_calls.sort(key=lambda c: (c.lineno, c.col_offset))
    return ScalerFacts(tuple(objects), constructed, by_method, receivers)


def _reach(module: ModuleFacts, scaler: ScalerObject) -> set[str]:
    reach = {c.function for c in scaler.calls}
    for ref in scaler.refs:
        if ref.scope == "":
            return reach | {"", *module.functions}  # a module global: every function sees it
        if ref.spelled.startswith(("self.", "cls.")):
            reach |= {name for name in module.functions if name.startswith(ref.scope + ".")}
        else:
            reach.add(ref.scope)
    return reach
