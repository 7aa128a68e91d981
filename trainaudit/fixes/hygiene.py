"""Fixes of the loop-hygiene rules: no_grad evaluation (TA501), restoring train mode (TA502),
detaching accumulated losses (TA503), gradient clipping (TA504)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, block_of, code_of, function_by_name, names, names_in_scope
from trainaudit.fixes.toolkit import (
    Edits,
    as_receiver,
    call_at,
    edit_each,
    expression,
    fresh_name,
    statement,
)
from trainaudit.payloads import (
    ClipBeforeStep,
    DetachAccumulated,
    NoGradFunction,
    RestoreTrainMode,
)


def _decorate(node: Any) -> Any:
    return node.with_changes(decorators=[*node.decorators, cst.Decorator(expression("torch.no_grad()"))])


@fixer("TA501")
def fix_eval_without_no_grad(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding, payload: NoGradFunction) -> str | None:
        fn = function_by_name(located.module, payload.function)
        if fn is None or fn in edits.rewrite:
            return None
        edits.replace(fn, _decorate)
        return f"run `{payload.function}` under @torch.no_grad()"

    return edit_each(source, findings, NoGradFunction, edit, ("import torch", "torch"))


def _leaves_block(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and any(
        isinstance(s, cst.Return | cst.Continue | cst.Break | cst.Raise) for s in stmt.body)


class _Exit(cst.CSTVisitor):
    """Whether a statement may leave the block it is in: a ``return`` outside nested
    functions and classes, a ``break`` or ``continue`` outside nested loops."""

    def __init__(self) -> None:
        self.found = False
        self.loops = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_For(self, node: cst.For) -> None:
        self.loops += 1

    def leave_For(self, original_node: cst.For) -> None:
        self.loops -= 1

    def visit_While(self, node: cst.While) -> None:
        self.loops += 1

    def leave_While(self, original_node: cst.While) -> None:
        self.loops -= 1

    def visit_Return(self, node: cst.Return) -> None:
        self.found = True

    def visit_Break(self, node: cst.Break) -> None:
        self.found = self.found or not self.loops

    def visit_Continue(self, node: cst.Continue) -> None:
        self.found = self.found or not self.loops


def _exits(stmt: cst.CSTNode) -> bool:
    visitor = _Exit()
    stmt.visit(visitor)
    return visitor.found


def _returned_computation(stmt: cst.CSTNode) -> cst.BaseExpression | None:
    """The value of ``return <value>`` when evaluating it may run the model (it calls)."""
    if not isinstance(stmt, cst.SimpleStatementLine) or not isinstance(stmt.body[0], cst.Return):
        return None
    value = stmt.body[0].value
    if value is None:
        return None
    harmless = {"len", "float", "int", "round", "min", "max", "abs", "str", "dict", "list", "tuple"}
    calls = [c for c in names(value).calls
             if not (isinstance(c.func, cst.Name) and c.func.value in harmless)]
    return value if calls else None


@fixer("TA502")
def fix_eval_mode_not_restored(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding, payload: RestoreTrainMode) -> str | None:
        restore = statement(f"{payload.receiver}.train()")
        if payload.after is not None:
            return _restore_after_call(located, edits, payload, restore)
        call = call_at(located, (finding.span.line, finding.span.column))
        if call is None:
            return None
        stmt = located.statement_of(call)
        _, stmts = block_of(located, stmt)
        last = stmts[-1]
        at = next((i for i, s in enumerate(stmts) if s is stmt), len(stmts))
        following = stmts[at + 1:]
        if _leaves_block(last):
            following = following[:-1]  # the restore goes before it
        if any(_exits(s) for s in following):
            return None  # an early exit would skip a restore at the block's end
        if _leaves_block(last) and last is not stmt:
            value = _returned_computation(last)
            if value is not None:
                # ``return f(model(x))`` must still run in eval mode: compute, restore, return.
                name = fresh_name(names_in_scope(located.module), "result", "eval_result")
                edits.remove.add(last)
                edits.insert_after(last, statement(f"{name} = {code_of(value)}"), restore,
                                   statement(f"return {name}"))
            else:
                edits.insert_before(last, restore)
        else:
            edits.insert_after(last, restore)
        return f"put `{payload.receiver}` back in train mode after evaluating"

    return edit_each(source, findings, RestoreTrainMode, edit)


def _restore_after_call(located: Located, edits: Edits, payload: RestoreTrainMode,
                        restore: cst.BaseStatement) -> str | None:
    """``model.train()`` after the enclosing loop's statement that calls the evaluation
    (``val = evaluate(model, loader)``), when it is a plain statement that falls through."""
    assert payload.after is not None
    call = call_at(located, payload.after)
    if call is None:
        return None
    stmt = located.statement_of(call)
    if not isinstance(stmt, cst.SimpleStatementLine) or _leaves_block(stmt):
        return None
    edits.insert_after(stmt, restore)
    return f"put `{payload.receiver}` back in train mode after `{code_of(call.func)}(...)`"


# Calls that take a Python number as well as a 0-d tensor.
_NUMBER_OK = frozenset({"float", "int", "round", "print", "str", "format", "abs", "min", "max"})


class _Uses(cst.CSTVisitor):
    """Whether an accumulator is used as a tensor (``total.item()``, ``torch.stack(total)``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tensor_use = False
        self.number_init = False

    def visit_Attribute(self, node: cst.Attribute) -> None:
        if code_of(node.value) == self.name and node.attr.value not in ("append",):
            self.tensor_use = True

    def visit_Call(self, node: cst.Call) -> None:
        # ``dist.all_reduce(total)``, ``torch.stack(total)``: a tensor (or list) is needed;
        # printing or converting it works on a number too.
        func = node.func
        if isinstance(func, cst.Name) and func.value in _NUMBER_OK:
            return
        if any(code_of(arg.value) == self.name for arg in node.args):
            self.tensor_use = True

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            if code_of(target.target) == self.name:
                value = node.value
                if isinstance(value, cst.Integer | cst.Float):
                    self.number_init = True
                elif not (isinstance(value, cst.BinaryOperation) and code_of(value.left) == self.name):
                    self.tensor_use = True


@fixer("TA503")
def fix_loss_tensor_accumulated(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding, payload: DetachAccumulated) -> str | None:
        nodes = located.at(finding.span.line, finding.span.column, cst.BaseExpression)
        if not nodes:
            return None
        value = nodes[0]
        uses = _Uses(payload.accumulator)
        located.module.visit(uses)
        appended = isinstance(located.parent(value), cst.Arg)
        method = "item" if uses.number_init and not uses.tensor_use and not appended else "detach"
        edits.replace(value, lambda node: cst.Call(
            func=cst.Attribute(value=as_receiver(node), attr=cst.Name(method))))
        return f"accumulate `{code_of(value)}.{method}()` into `{payload.accumulator}`"

    return edit_each(source, findings, DetachAccumulated, edit)


@fixer("TA504")
def fix_no_gradient_clipping(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding, payload: ClipBeforeStep) -> str | None:
        call = call_at(located, (finding.span.line, finding.span.column))
        if call is None:
            return None
        new = []
        # A scaler that steps the optimizer (``self.scaler.step(self.optimizer)``): clipping
        # then needs ``unscale_`` first, or the fix would write a TA303 bug.
        if payload.scaler and not payload.unscaled:
            new.append(statement(f"{payload.scaler}.unscale_({payload.optimizer})"))
        new.append(statement(f"torch.nn.utils.clip_grad_norm_({payload.model}.parameters(), 1.0)"))
        edits.insert_before(located.statement_of(call), *new)
        return f"clip the gradient norm of `{payload.model}` to 1.0 before the step"

    return edit_each(source, findings, ClipBeforeStep, edit, ("import torch", "torch"))
