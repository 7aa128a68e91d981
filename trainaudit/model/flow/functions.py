"""Checked functions and classes called with abstract arguments: parameters bound per
call site (defaults, ``*args``, ``**kwargs``), memoised per context, ``__init__`` run on a
fresh instance, dataclass and NamedTuple fields bound."""

from __future__ import annotations

import ast
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

from trainaudit.model.flow import generators
from trainaudit.model.flow.frame import Frame, mark
from trainaudit.model.flow.program import FlowModule
from trainaudit.model.flow.values import (
    UNKNOWN,
    Const,
    FunctionValue,
    Instance,
    Opaque,
    Record,
    Ref,
    Value,
    join,
)
from trainaudit.model.module import parameter_names

if TYPE_CHECKING:
    from trainaudit.model.flow.frame import Evaluator

# Distinct argument contexts one function is interpreted in.
CONTEXTS_PER_FUNCTION = 16


def call_function(interp: Evaluator, ref: Ref, receiver: Value | None, args: list[Value],
                  kwargs: dict[str, Value], node: ast.AST | None, depth: int, *,
                  open_context: bool = False, collect_self: bool = False,
                  free: tuple[tuple[str, Value], ...] = ()) -> Value:
    """Interpret a checked function with its parameters bound (memoised per context);
    ``free``: a closure's free variables (``closure_values``)."""
    found = interp.program.ref_node(ref)
    if found is None or not isinstance(found[1], ast.FunctionDef | ast.AsyncFunctionDef):
        return UNKNOWN
    module, function = found
    assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
    if depth > 6 or ref in interp.active or interp.budget <= 0:
        return Opaque(("result", ref, getattr(node, "lineno", 0)))
    key = (ref, receiver, tuple(args), tuple(sorted(kwargs.items())), open_context, collect_self,
           free)
    if key in interp.memo:
        return interp.memo[key]
    seen = interp.contexts.get(ref, 0)
    if seen >= CONTEXTS_PER_FUNCTION:  # a function called with ever new arguments
        return Opaque(("result", ref, getattr(node, "lineno", 0)))
    interp.contexts[ref] = seen + 1
    interp.memo[key] = Opaque(("result", ref))  # recursion through the memo
    env = {**dict(free), **_bind_parameters(interp, ref, module, function, receiver, args,
                                             kwargs, open_context)}
    params = function.args.posonlyargs + function.args.args
    self_name = params[0].arg if receiver is not None and params else None
    frame = Frame(module, ref, env, depth, self_name,
                  dict(receiver.attrs) if isinstance(receiver, Instance) else None)
    interp.active.append(ref)
    interp.frames.append(frame)
    try:
        interp.exec_block(function.body, frame)
    finally:
        interp.active.pop()
        interp.frames.pop()
    if collect_self and isinstance(receiver, Instance):
        result: Value = replace(receiver, attrs=tuple(sorted((frame.self_attrs or {}).items())))
    else:
        result = Const(None)
        returns = frame.returns
        if generators.is_generator(function):
            result = generators.yielded(frame.yields)
        elif returns:
            result = returns[0]
            for other in returns[1:]:
                result = join(result, other)
        site = module.site(function)
        result = mark(result, replace(site, text=f"returned by {ref.qualname}"))
        interp.listener.record(result, site)
    interp.memo[key] = result
    return result


def closure(function: FunctionValue, node: ast.FunctionDef | ast.AsyncFunctionDef,
            env: dict[str, Value]) -> FunctionValue:
    """A nested function made where the enclosing function's names are ``env``: its free
    variables bound to their values at this point."""
    free = tuple(sorted((name, env[name]) for name in free_names(node) if name in env))
    return FunctionValue(function.ref, free) if free else function


def closure_values(interp: Evaluator, function: FunctionValue) -> tuple[tuple[str, Value], ...]:
    """A closure's free variables when it is called: while its enclosing function still
    runs, the values its names have now (Python binds them late: ``labels`` assigned in
    the loop after the ``def``); after that, those they had where it was made."""
    enclosing = Ref(function.ref.module, function.ref.qualname.rpartition(".")[0])
    frame = next((f for f in reversed(interp.frames) if f.function == enclosing), None)
    found = interp.program.ref_node(function.ref) if frame is not None else None
    if frame is None or found is None or not isinstance(found[1], ast.FunctionDef
                                                        | ast.AsyncFunctionDef):
        return function.free
    now = {**dict(function.free), **{name: frame.env[name] for name in free_names(found[1])
                                      if name in frame.env}}
    return tuple(sorted(now.items()))


@lru_cache(maxsize=1024)
def free_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> frozenset[str]:
    """The names a nested function's body reads but does not bind (parameters,
    assignments, imports, definitions, ``global``): those its enclosing function gives."""
    bound = parameter_names(function)
    loaded: set[str] = set()
    outer: set[str] = set()  # ``nonlocal``: the enclosing function's, even when assigned
    for stmt in function.body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
            elif isinstance(node, ast.Global):
                bound.update(node.names)
            elif isinstance(node, ast.Nonlocal):
                outer.update(node.names)
    return frozenset((loaded - bound) | outer)


def _bind_parameters(interp: Evaluator, ref: Ref, module: object, function: ast.FunctionDef
                     | ast.AsyncFunctionDef, receiver: Value | None, args: list[Value],
                     kwargs: dict[str, Value], open_context: bool) -> dict[str, Value]:
    spec = function.args
    positional = [*spec.posonlyargs, *spec.args]
    env: dict[str, Value] = {}
    given = list(args)
    if receiver is not None and positional:
        env[positional[0].arg] = receiver
        positional = positional[1:]
    defaults = [None] * (len(positional) - len(spec.defaults)) + list(spec.defaults)
    kw_defaults = dict(zip([a.arg for a in spec.kwonlyargs], spec.kw_defaults, strict=True))
    extra = dict(kwargs)
    for index, param in enumerate(positional):
        if index < len(given):
            env[param.arg] = given[index]
        elif param.arg in extra:
            env[param.arg] = extra.pop(param.arg)
        else:
            env[param.arg] = _default(interp, ref, module, param.arg, defaults[index])
    for param in spec.kwonlyargs:
        env[param.arg] = extra.pop(param.arg) if param.arg in extra else _default(
            interp, ref, module, param.arg, kw_defaults.get(param.arg))
    if spec.vararg is not None:
        rest = given[len(positional):]
        env[spec.vararg.arg] = Record("tuple", tuple(enumerate(rest))) if not open_context \
            else Opaque(("param", ref, spec.vararg.arg))
    if spec.kwarg is not None:
        env[spec.kwarg.arg] = Record("dict", tuple(extra.items())) if not open_context \
            else Opaque(("param", ref, spec.kwarg.arg))
    return env


def _default(interp: Evaluator, ref: Ref, module: object, name: str,
             default: ast.expr | None) -> Value:

    if default is None or not isinstance(module, FlowModule):
        return Opaque(("param", ref, name))
    if isinstance(default, ast.Constant) and default.value is None:
        return Opaque(("param", ref, name))
    return interp.eval(default, Frame(module, None, {}))


def instantiate(interp: Evaluator, cls: Ref, args: list[Value], kwargs: dict[str, Value],
                node: ast.AST | None, depth: int, *, open_context: bool = False) -> Value:
    """A checked class called: its ``__init__`` run on a fresh instance, or its fields
    bound (dataclasses, NamedTuples)."""
    found = interp.program.ref_node(cls)
    if found is None or not isinstance(found[1], ast.ClassDef):
        return UNKNOWN
    module, class_node = found
    assert isinstance(class_node, ast.ClassDef)
    identity: tuple[object, ...] = ("obj", cls, getattr(node, "lineno", "open"),
                                    getattr(node, "col_offset", 0))
    instance = Instance(cls, (), identity)
    init = interp.program.method(cls, "__init__")
    if init is not None:
        built = call_function(interp, init, instance, args, kwargs, node, depth,
                              open_context=open_context, collect_self=True)
        return built if isinstance(built, Instance) else instance
    fields = [s for s in class_node.body if isinstance(s, ast.AnnAssign)
              and isinstance(s.target, ast.Name)]
    attrs: dict[str, Value] = {}
    for index, stmt in enumerate(fields):
        assert isinstance(stmt.target, ast.Name)
        name = stmt.target.id
        if index < len(args):
            attrs[name] = args[index]
        elif name in kwargs:
            attrs[name] = kwargs[name]
        elif stmt.value is not None:
            attrs[name] = interp.eval(stmt.value, Frame(module, None, {}))
    return Instance(cls, tuple(sorted(attrs.items())), identity)
