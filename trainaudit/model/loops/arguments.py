"""Which object a helper's parameter is at one call: ``evaluate(ema, loader)`` binds
``evaluate``'s ``model`` to ``ema``, so ``model.eval()`` inside puts ``ema`` in eval mode.

Arguments are named by the object model (``objects.FileObjects.name``: aliases, ``.to()``,
``.module`` and wrappers followed). A parameter the call does not visibly give (a default,
``*args``, an argument after ``*rest``) is ``UNBOUND``: unknown, never a guess by name.
So is an object a helper makes itself (``model = load(path); model.eval()``): the caller's
``model`` is another object, whatever its name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from trainaudit.model.definitions import assignments
from trainaudit.model.loops.records import UNBOUND, CallArguments, ExternalCall, Operation
from trainaudit.model.module import FunctionNode, ModuleFacts, parameter_names, walk_local
from trainaudit.model.objects import file_objects


def call_arguments(module: ModuleFacts, call: ast.Call, caller: str) -> CallArguments:
    """The call's arguments by their object names in ``caller`` (up to a ``*rest``)."""
    objects = file_objects(module)
    positional: list[str] = []
    for arg in call.args:
        if isinstance(arg, ast.Starred):
            break
        positional.append(objects.name(arg, caller))
    keywords = tuple((kw.arg, objects.name(kw.value, caller)) for kw in call.keywords
                     if kw.arg is not None)
    return CallArguments(tuple(positional), keywords)


def rebound_arguments(arguments: CallArguments, objects: Mapping[str, str]) -> CallArguments:
    """A helper's call made with its caller's names (its parameters replaced)."""
    def name(text: str) -> str:
        bound = rebound(text, objects)
        return text if bound is None else bound

    return CallArguments(tuple(name(a) for a in arguments.positional),
                         tuple((k, name(v)) for k, v in arguments.keywords))


def positional_parameters(fn: FunctionNode) -> tuple[str, ...]:
    """The parameters a positional argument can fill, in order (``self`` included)."""
    return tuple(a.arg for a in (*fn.args.posonlyargs, *fn.args.args))


def parameter_objects(positional: Sequence[str], parameters: Collection[str], method: bool,
                      arguments: CallArguments) -> dict[str, str]:
    """Each parameter (``positional`` in order, then the rest of ``parameters``: keyword-only,
    ``*args``, ``**kwargs``) → the caller's name for its argument, or ``UNBOUND``. A method
    called on ``self`` keeps its ``self``."""
    given = dict(arguments.keywords)
    fillable = list(positional[1:] if method else positional)
    bound: dict[str, str] = {}
    for index, name in enumerate(fillable):
        if index < len(arguments.positional):
            bound[name] = arguments.positional[index]
        else:
            bound[name] = given.get(name, UNBOUND)
    for name in parameters:
        if name not in bound and name not in positional:
            bound[name] = given.get(name, UNBOUND)
    return bound


_ROOT = re.compile(r"[A-Za-z_]\w*")


def rebound(subject: str, objects: Mapping[str, str]) -> str | None:
    """``subject`` (``model``, ``model.encoder``) with its parameter root replaced by the
    argument's name; None when its root is no parameter (a global, ``self.x``)."""
    root = _ROOT.match(subject)
    if root is None or root.group() not in objects:
        return None
    argument = objects[root.group()]
    if argument == UNBOUND:
        return UNBOUND
    return argument + subject[root.end():]


def made_here(fn: FunctionNode, subject: str) -> bool:
    """``subject``'s root is a local variable ``fn`` assigns (not a parameter, not declared
    ``global``): the object is the function's own."""
    root = _ROOT.match(subject)
    if root is None:
        return False
    name = root.group()
    if name in parameter_names(fn) or next(assignments(fn.body, name), False) is False:
        return False
    return not any(isinstance(node, ast.Global | ast.Nonlocal) and name in node.names
                   for node in walk_local(fn.body))


def own_objects_unbound(fn: FunctionNode, ops: list[Operation], external: list[ExternalCall]
                        ) -> tuple[list[Operation], list[ExternalCall]]:
    """A helper's events as its callers see them: the objects it makes itself are
    ``UNBOUND`` (no caller's object shares their name)."""
    def seen(text: str) -> str:
        return UNBOUND if made_here(fn, text) else text

    return ([replace(op, bound=seen(op.bound)) if op.bound else op for op in ops],
            [replace(call, arguments=CallArguments(
                tuple(seen(a) for a in call.arguments.positional),
                tuple((k, seen(v)) for k, v in call.arguments.keywords))) for call in external])
