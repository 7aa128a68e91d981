"""The interpreter: statements and expressions of the checked program, evaluated to
abstract values, on demand, memoised per function and call context.

Entries are the functions that hold a sink (phase 1 lists them); each runs once in an
open context (parameters opaque) and again from every call that reaches it with known
arguments, to a small depth. Branches are joined; a loop body runs once. What the
interpreter cannot follow becomes ``Opaque`` (identity kept) or ``UNKNOWN``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable

from trainaudit.model.flow import calls, comprehensions, functions
from trainaudit.model.flow.frame import Frame, Listener, mark
from trainaudit.model.flow.program import FlowModule, Program
from trainaudit.model.flow.scope import ModuleScope
from trainaudit.model.flow.tensors import (
    as_tokens,
    elements,
    is_drop_last,
    is_last,
    slice_logits,
    slice_tokens,
    write_into,
)
from trainaudit.model.flow.values import (
    UNKNOWN,
    BoundMethod,
    CausalLM,
    ClassValue,
    Const,
    FunctionValue,
    Instance,
    Library,
    ListOf,
    Loader,
    Logits,
    LossValue,
    OneOf,
    Opaque,
    Record,
    Ref,
    Site,
    Tokens,
    Value,
    join,
    join_all,
    options_of,
)

MAX_DEPTH = 6  # calls followed below an entry
STATEMENT_BUDGET = 200_000  # statements interpreted in one run, over all entries
ENTRY_BUDGET = 5_000  # statements one entry may take (with everything it calls)
_STOP = (ast.Return, ast.Raise, ast.Continue, ast.Break)


class Interpreter(ModuleScope):
    """Evaluates the program for one listener."""

    def __init__(self, program: Program, listener: Listener) -> None:
        self.program = program
        self.listener = listener
        self.memo: dict[tuple[object, ...], Value] = {}
        self.active: list[Ref] = []
        self.module_envs: dict[str, dict[str, Value]] = {}
        self.budget = STATEMENT_BUDGET
        self.errors: list[str] = []
        self.contexts: dict[Ref, int] = {}
        self.frames: list[Frame] = []  # the functions being interpreted, innermost last
        self.resolving: set[tuple[str, str]] = set()  # globals read through imports now

    # -- the evaluator's interface (frame.Evaluator) ----------------------------------

    def element_of(self, value: Value, node: ast.expr, frame: Frame) -> Value:
        return calls.element_of(self, value, node, frame)

    def apply(self, callee: Value, args: list[Value], kwargs: dict[str, Value],
              node: ast.Call, frame: Frame) -> Value:
        return calls.apply(self, callee, args, kwargs, node, frame)

    def calls_in_progress(self) -> tuple[Site, ...]:
        """The statements of the calling frames now running, outermost first."""
        return tuple(frame.module.site(frame.statement) for frame in self.frames[:-1]
                     if frame.statement is not None)

    # -- entries -------------------------------------------------------------------

    def run(self) -> None:
        """Interpret every entry of the program."""
        for module in self.program.modules_with_entries():
            for qualname in module.entries:  # "" (a script's body) first where it is one
                self._guarded(module, qualname)

    def _guarded(self, module: FlowModule, qualname: str) -> None:
        """One entry; a construct the interpreter mishandles costs that entry, not the run
        (``TRAINAUDIT_DEBUG=1`` raises instead, as the tests do)."""
        saved = self.budget
        self.budget = min(saved, ENTRY_BUDGET)
        try:
            if qualname:
                self.run_entry(module, qualname)
            else:
                self.module_env(module)
        except Exception as exc:
            if os.environ.get("TRAINAUDIT_DEBUG"):
                raise
            self.errors.append(f"{module.path}:{qualname or '<module>'}: {exc!r}")
        finally:
            used = min(saved, ENTRY_BUDGET) - self.budget
            self.budget = saved - used

    def run_entry(self, module: FlowModule, qualname: str) -> None:
        node = module.function(qualname)
        if node is None:
            return
        ref = Ref(module.name, qualname)
        receiver: Value | None = None
        owner = qualname.rsplit(".", 1)[0] if "." in qualname else None
        if owner is not None and module.defines_class(owner) and not _is_static(node):
            receiver = self.open_instance(Ref(module.name, owner))
        functions.call_function(self, ref, receiver, [], {}, None, 0, open_context=True)

    def open_instance(self, cls: Ref) -> Value:
        """An instance of a checked class built from unknown arguments."""
        key = ("open-instance", cls)
        if key not in self.memo:
            self.memo[key] = UNKNOWN
            self.memo[key] = functions.instantiate(self, cls, [], {}, None, 0, open_context=True)
        return self.memo[key]

    # -- module scope (the rest in scope.ModuleScope) ----------------------------------

    def module_env(self, module: FlowModule) -> dict[str, Value]:
        """The module's globals; its body is interpreted once (partial while it runs)."""
        env = self.module_envs.get(module.name)
        if env is None:
            env = {}
            self.module_envs[module.name] = env
            frame = Frame(module, None, env)
            self.exec_block(module.facts.tree.body, frame)
        return env

    # -- statements ---------------------------------------------------------------------

    def exec_block(self, body: Iterable[ast.stmt], frame: Frame) -> None:
        for stmt in body:
            if self.budget <= 0:
                return
            self.budget -= 1
            frame.statement = stmt
            self.exec_statement(stmt, frame)
            if isinstance(stmt, _STOP):
                return

    def exec_statement(self, stmt: ast.stmt, frame: Frame) -> None:
        if isinstance(stmt, ast.Assign):
            value = self.eval(stmt.value, frame)
            for target in stmt.targets:
                self.bind(target, value, frame)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self.bind(stmt.target, self.eval(stmt.value, frame), frame)
        elif isinstance(stmt, ast.AugAssign):
            added = self.eval(stmt.value, frame)
            if isinstance(stmt.target, ast.Name):
                frame.env[stmt.target.id] = calls.augmented(
                    frame.env.get(stmt.target.id), stmt.op, added,
                    Opaque(("aug", frame.module.name, stmt.lineno, stmt.col_offset)))
        elif isinstance(stmt, ast.Expr):
            self.eval(stmt.value, frame)
        elif isinstance(stmt, ast.Return):
            value = self.eval(stmt.value, frame) if stmt.value is not None else Const(None)
            frame.returns.append(value)
        elif isinstance(stmt, ast.If):
            self.eval(stmt.test, frame)
            self._branches([stmt.body, stmt.orelse], frame)
        elif isinstance(stmt, ast.For | ast.AsyncFor):
            iterable = self.eval(stmt.iter, frame)
            self.listener.iterated(frame.module.site(stmt), calls.iterated_source(iterable))
            element = calls.element_of(self, iterable, stmt.iter, frame)
            before = dict(frame.env)
            self.bind(stmt.target, element, frame)
            self.exec_block(stmt.body, frame)
            self._join_into(frame, before)
            self.exec_block(stmt.orelse, frame)
        elif isinstance(stmt, ast.While):
            self.eval(stmt.test, frame)
            before = dict(frame.env)
            self.exec_block(stmt.body, frame)
            self._join_into(frame, before)
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                context = self.eval(item.context_expr, frame)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, calls.entered(context, item), frame)
            self.exec_block(stmt.body, frame)
        elif isinstance(stmt, ast.Try):
            self._branches([stmt.body, *[h.body for h in stmt.handlers]], frame)
            self.exec_block(stmt.orelse, frame)
            self.exec_block(stmt.finalbody, frame)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualname = f"{frame.function.qualname}.{stmt.name}" if frame.function else stmt.name
            if frame.module.has_definition(qualname):
                made = self._definition(frame.module, qualname)
                if frame.function is not None and isinstance(made, FunctionValue) \
                        and not isinstance(stmt, ast.ClassDef):
                    made = functions.closure(made, stmt, frame.env)
                frame.env[stmt.name] = made

    def _branches(self, blocks: list[list[ast.stmt]], frame: Frame) -> None:
        """Each block from the same bindings, then their join, written back into the
        frame's own dict (a module's globals and a closure's scope are that object)."""
        scope = frame.env
        before = dict(scope)
        ends: list[dict[str, Value]] = []
        for block in blocks:
            frame.env = dict(before)
            self.exec_block(block, frame)
            if not (block and isinstance(block[-1], _STOP)):
                ends.append(frame.env)
        merged = dict(ends[0]) if ends else before
        for other in ends[1:]:
            for name in set(merged) | set(other):
                merged[name] = join(merged.get(name, self._before(name, before, frame)),
                                    other.get(name, self._before(name, before, frame)))
        scope.clear()
        scope.update(merged)
        frame.env = scope

    def _before(self, name: str, before: dict[str, Value], frame: Frame) -> Value:
        """A name's value on a path that did not bind it: in a module body, a name no
        statement bound yet still has what its definition or import gives it."""
        if name in before:
            return before[name]
        if frame.function is None:
            return self._declared(frame.module, name) or UNKNOWN
        return UNKNOWN

    def _join_into(self, frame: Frame, before: dict[str, Value]) -> None:
        for name, value in list(frame.env.items()):
            if name in before:
                frame.env[name] = join(before[name], value)

    # -- binding ------------------------------------------------------------------------

    def bind(self, target: ast.expr, value: Value, frame: Frame) -> None:
        if isinstance(target, ast.Name):
            frame.env[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            for index, element in enumerate(target.elts):
                if isinstance(element, ast.Starred):
                    self.bind(element.value, UNKNOWN, frame)
                    continue
                self.bind(element, calls.unpack(value, index), frame)
        elif isinstance(target, ast.Attribute):
            if (isinstance(target.value, ast.Name) and target.value.id == frame.self_name
                    and frame.self_attrs is not None):
                frame.self_attrs[target.attr] = value
        elif isinstance(target, ast.Subscript):
            self.store(target, value, frame)

    def store(self, target: ast.Subscript, value: Value, frame: Frame) -> None:
        """``x[key] = value``: a record gets the key, a token tensor is written into."""
        container = self.eval(target.value, frame)
        updated = self._stored(container, target, value, frame)
        if updated is not None and updated is not container:
            if isinstance(target.value, ast.Name):
                frame.env[target.value.id] = updated
            elif isinstance(target.value, ast.Subscript):
                self.store(target.value, updated, frame)
            elif isinstance(target.value, ast.Attribute):
                self.bind(target.value, updated, frame)

    def _stored(self, container: Value, target: ast.Subscript, value: Value,
                frame: Frame) -> Value | None:
        if isinstance(container, Record | Opaque):
            key = calls.constant_key(target.slice)
            if key is None:
                return None
            record = container if isinstance(container, Record) else Record("dict", (), container)
            return record.set(key, value)
        if isinstance(container, LossValue):
            # Per-token losses with the last position overwritten (``losses[:, -1] = nan``):
            # whatever that position's label was, it does not count.
            if any(is_last(e) for e in elements(target)):
                self.listener.masked(container, value)
            return None
        tokens = container if isinstance(container, Tokens) else None
        if tokens is None:
            return None
        assert frame.statement is not None
        return write_into(tokens, target, value, calls.mask_value(value, target, frame),
                          frame.module, frame.statement)

    # -- expressions ----------------------------------------------------------------------

    def eval(self, node: ast.expr, frame: Frame) -> Value:
        if isinstance(node, ast.Constant):
            return Const(node.value)
        if isinstance(node, ast.Name):
            return self.lookup(node.id, frame)
        if isinstance(node, ast.Attribute):
            if (isinstance(node.value, ast.Name) and node.value.id == frame.self_name
                    and frame.self_attrs is not None and node.attr in frame.self_attrs):
                return frame.self_attrs[node.attr]
            return calls.attribute(self, self.eval(node.value, frame), node.attr, node, frame)
        if isinstance(node, ast.Subscript):
            return self.subscript(self.eval(node.value, frame), node, frame)
        if isinstance(node, ast.Call):
            return calls.call(self, node, frame)
        if isinstance(node, ast.Tuple | ast.List):
            kind = "tuple" if isinstance(node, ast.Tuple) else "list"
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return Opaque(("seq", frame.module.name, node.lineno, node.col_offset))
            return Record(kind, tuple((i, self.eval(e, frame)) for i, e in enumerate(node.elts)))
        if isinstance(node, ast.Dict):
            return self._dict(node, frame)
        if isinstance(node, ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp):
            return comprehensions.evaluate(self, node, frame)
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return self._yield(node, frame)
        if isinstance(node, ast.IfExp):
            self.eval(node.test, frame)
            return join(self.eval(node.body, frame), self.eval(node.orelse, frame))
        if isinstance(node, ast.BoolOp):
            result = self.eval(node.values[0], frame)
            for other in node.values[1:]:
                result = join(result, self.eval(other, frame))
            return result
        if isinstance(node, ast.BinOp):
            return calls.binary(self, node, self.eval(node.left, frame),
                                self.eval(node.right, frame), frame)
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand, frame)
            if isinstance(node.op, ast.USub) and isinstance(operand, Const) \
                    and type(operand.value) in (int, float):
                return Const(-operand.value)  # type: ignore[operator]
            return Opaque(("unary", frame.module.name, node.lineno, node.col_offset))
        if isinstance(node, ast.Await):
            return self.eval(node.value, frame)
        if isinstance(node, ast.NamedExpr):
            value = self.eval(node.value, frame)
            self.bind(node.target, value, frame)
            return value
        if isinstance(node, ast.Compare):
            for part in (node.left, *node.comparators):
                self.eval(part, frame)
        return Opaque(("expr", frame.module.name, getattr(node, "lineno", 0),
                       getattr(node, "col_offset", 0)))

    def lookup(self, name: str, frame: Frame) -> Value:
        if name in frame.env:
            return frame.env[name]
        if frame.function is None:  # module body: names not bound yet are not known
            return self.global_value(frame.module, name)
        return self.global_value(frame.module, name)

    def subscript(self, value: Value, node: ast.Subscript, frame: Frame) -> Value:
        if isinstance(value, OneOf):
            return join_all(self.subscript(option, node, frame) for option in value.options)
        if isinstance(value, Record):
            key = calls.constant_key(node.slice)
            item = value.get(key) if key is not None else None
            if item is not None:
                return item
            if value.kind in ("tuple", "list") and isinstance(node.slice, ast.Slice):
                return Opaque(("part", frame.module.name, node.lineno, node.col_offset))
            if key is None and _is_table(value):  # ``MODEL_CLASSES[name]``: one of them
                return join_all(value.values())
            return UNKNOWN if key is not None else Opaque(("item", frame.module.name,
                                                             node.lineno, node.col_offset))
        if isinstance(value, ListOf):
            return value.element if not isinstance(node.slice, ast.Slice) else value
        if isinstance(value, Tokens):
            return slice_tokens(value, node, frame.module, frame.assigned_to(node) is not None)
        if isinstance(value, Logits):
            return slice_logits(value, node, frame.module)
        if isinstance(value, LossValue):
            if any(is_drop_last(e) for e in elements(node)):
                self.listener.masked(value, UNKNOWN)  # the last position's loss is dropped
            return value
        if isinstance(value, Instance):
            method = self.program.method(value.cls, "__getitem__")
            if method is not None:
                index = self.eval(node.slice, frame)
                return functions.call_function(self, method, value, [index], {}, node,
                                           frame.depth + 1)
            return Opaque((*value.identity, "item"))
        if isinstance(value, Opaque):
            key = calls.constant_key(node.slice)
            if key is not None:
                return value.child("key", key)
            if isinstance(node.slice, ast.Slice | ast.Tuple):
                tokens = as_tokens(value)
                assert tokens is not None
                return slice_tokens(tokens, node, frame.module, frame.assigned_to(node) is not None)
            return value.child("sub", frame.module.text(node.slice))
        if isinstance(value, CausalLM | Loader | Library | ClassValue | FunctionValue
                      | BoundMethod | Const):
            return Opaque(("item", frame.module.name, node.lineno, node.col_offset))
        return UNKNOWN

    def _dict(self, node: ast.Dict, frame: Frame) -> Value:
        record = Record("dict", ())
        for key, value in zip(node.keys, node.values, strict=True):
            evaluated = self.eval(value, frame)
            if key is None:
                if isinstance(evaluated, Record):
                    for k, v in evaluated.items:
                        record = record.set(k, v)
                    continue
                return Opaque(("dict", frame.module.name, node.lineno, node.col_offset))
            name = calls.constant_key(key)
            if name is None:
                return Opaque(("dict", frame.module.name, node.lineno, node.col_offset))
            record = record.set(name, evaluated)
        return record

    def _yield(self, node: ast.Yield | ast.YieldFrom, frame: Frame) -> Value:
        """A generator's ``yield x`` (what iterating it gives) or ``yield from xs``."""
        if node.value is not None:
            value = self.eval(node.value, frame)
            if isinstance(node, ast.YieldFrom):
                value = calls.element_of(self, value, node.value, frame)
            frame.yields.append(value)
        return Opaque(("sent", frame.module.name, node.lineno, node.col_offset))


def _is_table(record: Record) -> bool:
    """A dict of classes or functions (a registry a name picks from)."""
    return record.kind == "dict" and record.base is None and 0 < len(record.items) <= 4 \
        and all(isinstance(v, Library | ClassValue | FunctionValue | CausalLM)
                for v in record.values())


def _is_static(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod")
               for d in node.decorator_list)


__all__ = ["Frame", "Interpreter", "Listener", "mark", "options_of"]
