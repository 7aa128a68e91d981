"""Fixes of the loop-hygiene rules: no_grad evaluation (TA501), restoring train mode (TA502),
detaching accumulated losses (TA503), gradient clipping (TA504)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.accumulation import (
    Edits,
    all_names,
    block_of,
    call_at,
    ensure_import,
    expression,
    fresh_name,
    function_by_name,
    names,
    statement,
)
from trainaudit.fixes.cst import Located, code_of


def _decorate(node: Any) -> Any:
    return node.with_changes(decorators=[*node.decorators, cst.Decorator(expression("torch.no_grad()"))])


@fixer("TA501")
def fix_eval_without_no_grad(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        name = finding.fix_data.get("function")
        fn = function_by_name(located.module, name) if isinstance(name, str) else None
        if fn is None or fn in edits.rewrite:
            continue
        edits.rewrite[fn] = _decorate
        notes.append(f"run `{name}` under @torch.no_grad()")
    if not notes:
        return FixResult(source)
    ensure_import(edits, located.module, "torch")
    return FixResult(edits.apply(located.module).code, notes)


def _leaves_block(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and any(
        isinstance(s, cst.Return | cst.Continue | cst.Break | cst.Raise) for s in stmt.body)


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
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        receiver = finding.fix_data.get("receiver")
        call = call_at(located, finding.span.line, finding.span.column)
        if not receiver or call is None:
            continue
        stmt = located.statement_of(call)
        _, stmts = block_of(located, stmt)
        restore = statement(f"{receiver}.train()\n")
        last = stmts[-1]
        if _leaves_block(last) and last is not stmt:
            value = _returned_computation(last)
            if value is not None:
                # ``return f(model(x))`` must still run in eval mode: compute, restore, return.
                taken = all_names(located.module)
                name = fresh_name(taken, "result", "eval_result")
                edits.remove.add(last)
                edits.insert_after(last, statement(f"{name} = {code_of(value)}\n"), restore,
                                   statement(f"return {name}\n"))
            else:
                edits.insert_before(last, restore)
        else:
            edits.insert_after(last, restore)
        notes.append(f"put `{receiver}` back in train mode after evaluating")
    if not notes:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


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
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        accumulator = finding.fix_data.get("accumulator")
        nodes = located.at(finding.span.line, finding.span.column, cst.BaseExpression)
        if not isinstance(accumulator, str) or not nodes:
            continue
        value = nodes[0]
        uses = _Uses(accumulator)
        located.module.visit(uses)
        parent = located.parent(value)
        appended = isinstance(parent, cst.Arg)
        method = "item" if uses.number_init and not uses.tensor_use and not appended else "detach"

        def converted(node: Any, m: str = method) -> Any:
            target = node if isinstance(node, cst.Name | cst.Attribute | cst.Call | cst.Subscript) \
                else node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
            return cst.Call(func=cst.Attribute(value=target, attr=cst.Name(m)))

        edits.rewrite[value] = converted
        notes.append(f"accumulate `{code_of(value)}.{method}()` into `{accumulator}`")
    if not notes:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


@fixer("TA504")
def fix_no_gradient_clipping(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        data = finding.fix_data
        model, optimizer, scaler = data.get("model"), data.get("optimizer"), data.get("scaler")
        call = call_at(located, finding.span.line, finding.span.column)
        if not model or call is None:
            continue
        step_stmt = located.statement_of(call)
        new = []
        if scaler and not data.get("unscaled"):
            new.append(statement(f"{scaler}.unscale_({optimizer})\n"))
        new.append(statement(f"torch.nn.utils.clip_grad_norm_({model}.parameters(), 1.0)\n"))
        edits.insert_before(step_stmt, *new)
        edits.rewrite[step_stmt] = lambda node: node.with_changes(leading_lines=[])
        first = new[0]
        leading = getattr(step_stmt, "leading_lines", [])
        new[0] = first.with_changes(leading_lines=leading)
        edits.before[step_stmt] = new
        notes.append(f"clip the gradient norm of `{model}` to 1.0 before the step")
    if not notes:
        return FixResult(source)
    ensure_import(edits, located.module, "torch")
    return FixResult(edits.apply(located.module).code, notes)
