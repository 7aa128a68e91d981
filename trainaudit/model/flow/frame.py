"""What every part of the interpreter shares, below all of them: the frame of a function
being interpreted, what a family listens to, and the evaluator's interface that the call,
library and function semantics use (``Interpreter`` implements it), so none of them
imports the interpreter back."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from typing import Protocol

from trainaudit.model.flow.program import FlowModule, Program
from trainaudit.model.flow.values import (
    Logits,
    LossValue,
    MaskValue,
    OneOf,
    Record,
    Ref,
    Site,
    Tokens,
    Value,
)


class Listener(Protocol):
    """What a family learns from the interpreter (the label family implements it)."""

    def loss(self, site: Site, logits: Value, labels: Value, ignore: MaskValue,
             per_token: bool, internal: bool, roots: tuple[Site | None, Site | None]) -> None:
        ...

    def record(self, value: Value, site: Site) -> None: ...

    def masked(self, loss: LossValue, mask: Value) -> None: ...

    def iterated(self, site: Site, value: Value) -> None: ...


@dataclass
class Frame:
    """One function (or module body) being interpreted."""

    module: FlowModule
    function: Ref | None
    env: dict[str, Value]
    depth: int = 0
    self_name: str | None = None
    self_attrs: dict[str, Value] | None = None
    returns: list[Value] = field(default_factory=list)
    yields: list[Value] = field(default_factory=list)  # a generator's values
    statement: ast.stmt | None = None

    def assigned_to(self, node: ast.expr) -> ast.expr | None:
        """The one target of ``target = node`` when ``node`` is the statement's whole
        right-hand side (a fix may rewrite it; a message may name the target)."""
        stmt = self.statement
        if isinstance(stmt, ast.Assign) and stmt.value is node and len(stmt.targets) == 1:
            return stmt.targets[0]
        return None


class Evaluator(Protocol):
    """The interpreter as the call, library and function semantics see it."""

    program: Program
    listener: Listener
    memo: dict[tuple[object, ...], Value]
    active: list[Ref]
    contexts: dict[Ref, int]
    frames: list[Frame]
    budget: int

    def eval(self, node: ast.expr, frame: Frame) -> Value: ...

    def bind(self, target: ast.expr, value: Value, frame: Frame) -> None: ...

    def exec_block(self, body: list[ast.stmt], frame: Frame) -> None: ...

    def resolve_qualified(self, qualified: str, importer: str) -> Value: ...

    def element_of(self, value: Value, node: ast.expr, frame: Frame) -> Value:
        """What ``for x in value`` binds ``x`` to."""
        ...

    def apply(self, callee: Value, args: list[Value], kwargs: dict[str, Value],
              node: ast.Call, frame: Frame) -> Value:
        """``callee(*args, **kwargs)`` at ``node``."""
        ...


def mark(value: Value, site: Site) -> Value:
    """The value, with every token tensor in it having passed ``site``."""
    if isinstance(value, Tokens):
        return value.moved(site)
    if isinstance(value, Record):
        return Record(value.kind, tuple((k, mark(v, site)) for k, v in value.items))
    if isinstance(value, OneOf):
        return OneOf(tuple(mark(o, site) for o in value.options))
    if isinstance(value, Logits):
        return replace(value, inputs=value.inputs.moved(site))
    return value
