"""Fixes of the loop-ordering rules (TA202–TA206): divide the loss, move a scheduler step,
clip or ``zero_grad`` next to the optimizer step, add a ``zero_grad``, wrap the
non-boundary micro-batches in ``no_sync``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import (
    Located,
    block_of,
    code_of,
    names,
    target_names,
    top_statement,
)
from trainaudit.fixes.toolkit import (
    Edits,
    as_receiver,
    call_at,
    edit_each,
    ensure_import,
    expression,
    first_without_leading_lines,
    indented,
    simple_statement,
    statement,
)
from trainaudit.payloads import (
    DivideLoss,
    MoveToStep,
    NoSyncWrap,
    Position,
    ZeroGradAfterStep,
    payload_of,
)

Rewrite = Callable[[Any], Any]
# What a move takes: the statement, the guard ``if`` holding only it, or the loop over the
# objects it steps (``for s in schedulers: s.step()``).
Movable = cst.SimpleStatementLine | cst.If | cst.For


def divided(expr: cst.BaseExpression, divisor: str) -> cst.BinaryOperation:
    return cst.BinaryOperation(left=as_receiver(expr), operator=cst.Divide(
        whitespace_before=cst.SimpleWhitespace(" "), whitespace_after=cst.SimpleWhitespace(" ")),
        right=as_receiver(expression(divisor)))


def divide_backward(call: cst.Call, divisor: str) -> cst.Call:
    """``loss.backward()`` → ``(loss / k).backward()``; ``scaler.scale(loss)`` keeps the scale."""
    func = call.func
    if isinstance(func, cst.Attribute) and func.attr.value == "backward" and not call.args:
        value = func.value
        if (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)
                and value.func.attr.value == "scale" and value.args):
            first = value.args[0]
            scaled = value.with_changes(args=[first.with_changes(value=divided(first.value, divisor)),
                                              *value.args[1:]])
            return call.with_changes(func=func.with_changes(value=scaled))
        quotient = divided(value, divisor).with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        return call.with_changes(func=func.with_changes(value=quotient))
    if call.args:  # accelerator.backward(loss), torch.autograd.backward(loss)
        first = call.args[0]
        return call.with_changes(args=[first.with_changes(value=divided(first.value, divisor)),
                                       *call.args[1:]])
    return call


def no_sync_statement(model: str, sync: str, body: list[cst.BaseStatement]) -> cst.With:
    """``with <no_sync unless sync>:`` around statements (a model without ``no_sync`` syncs)."""
    body, leading = first_without_leading_lines(body)
    manager = expression(
        f'contextlib.nullcontext() if {sync} or not hasattr({model}, "no_sync") else {model}.no_sync()')
    return cst.With(items=[cst.WithItem(manager)], body=indented(body), leading_lines=leading)


def _divider(divisor: str) -> Rewrite:
    return lambda node: divide_backward(node, divisor)


@fixer("TA202")
def fix_unscaled_loss(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding, payload: DivideLoss) -> str | None:
        call = call_at(located, finding.span)
        if call is None:
            return None
        edits.replace(call, _divider(payload.divisor))
        return f"divide the loss by {payload.divisor} (line {finding.line})"

    return edit_each(source, findings, DivideLoss, edit)


def _call_statement(located: Located, where: tuple[int, int]) -> cst.SimpleStatementLine | None:
    """The simple statement of the call starting at a position."""
    call = call_at(located, where)
    return None if call is None else simple_statement(located, call)


def _after_step(located: Located, step_stmt: cst.CSTNode, run: Sequence[Position]) -> cst.CSTNode:
    """The last statement of the step's run: the step, then the statements right after it
    that hold the calls the loop model says finish it (``run``: the scaler's update, the
    scheduler's step)."""
    _, stmts = block_of(located, step_stmt)
    index = stmts.index(step_stmt)  # type: ignore[arg-type]
    finishing = {id(top) for where in run if (call := call_at(located, where)) is not None
                 and (top := top_statement(located, call, stmts)) is not None}
    last = step_stmt
    for stmt in stmts[index + 1:]:
        if id(stmt) not in finishing:
            break
        last = stmt
    return last


def _moved(stmt: Movable) -> Movable:
    """A statement to re-insert elsewhere: its comment lines go with it, blank lines do not."""
    return stmt.with_changes(leading_lines=[line for line in stmt.leading_lines if line.comment])


def _drop_if_emptied(located: Located, edits: Edits, stmt: cst.CSTNode) -> None:
    """An ``else:`` left empty by moving its only statement goes (not a ``pass``)."""
    block = located.parent(stmt)
    holder = located.parent(block)
    if isinstance(holder, cst.Else) and isinstance(block, cst.IndentedBlock) \
            and len(block.body) == 1 and isinstance(located.parent(holder), cst.If):
        edits.replace(located.parent(holder), lambda node: node.with_changes(orelse=None))


def _move_to_step(source: str, findings: Sequence[Finding], note: Callable[[str], str]
                  ) -> FixResult:
    """Move each finding's statement next to its optimizer step (``MoveToStep``): a clip
    just before the step, anything else after the step's run. What moves keeps its guards
    (``if sched is not None:`` moves whole), and it goes where every path of the step
    passes (after an ``if scaler: scaler.step(o) else: o.step()`` inside the accumulation
    gate, not into one of its branches). Where a guard holds other statements too, or the
    statement is inside a ``with``/``try``, nothing is moved."""

    def edit(located: Located, edits: Edits, finding: Finding, payload: MoveToStep) -> str | None:
        op_stmt = _call_statement(located, (finding.span.line, finding.span.column))
        step_stmt = _call_statement(located, payload.step)
        if op_stmt is None or step_stmt is None or op_stmt is step_stmt \
                or op_stmt in edits.remove or len(op_stmt.body) != 1:
            return None
        gate = _gate_at(located, payload.gate)
        unit = _movable_unit(located, op_stmt, step_stmt, gate)
        if unit is None:
            return None
        anchor = _step_anchor(located, step_stmt, unit, gate)
        moved = _moved(unit)
        edits.remove.add(unit)
        _drop_if_emptied(located, edits, unit)
        if payload.kind == "clip":
            edits.insert_before(anchor, moved)
        else:
            edits.insert_after(_after_step(located, anchor, payload.run)
                               if anchor is step_stmt else anchor, moved)
        return note(code_of(op_stmt.body[0]).strip())

    return edit_each(source, findings, MoveToStep, edit)


def _gate_at(located: Located, where: tuple[int, int] | None) -> cst.If | None:
    """The accumulation gate: the ``if`` whose test starts at ``where``."""
    if where is None:
        return None
    for node in located.at(*where, cst.BaseExpression):
        parent = located.parents.get(node)
        if isinstance(parent, cst.If) and parent.test is node:
            return parent
    return None


def _ancestors(located: Located, node: cst.CSTNode) -> list[cst.CSTNode]:
    found = []
    current = located.parents.get(node)
    while current is not None:
        found.append(current)
        current = located.parents.get(current)
    return found


def _movable_unit(located: Located, op_stmt: cst.SimpleStatementLine, step_stmt: cst.CSTNode,
                  gate: cst.If | None) -> Movable | None:
    """The statement to move: ``op_stmt``, or the guard ``if`` around it that holds nothing
    else (its test kept), or the loop that binds what it steps and holds nothing else; None
    when a guard the step does not share holds more, or a ``with``/``try`` holds it. Other
    loops (a micro-batch loop) and the gate's other branch are what it leaves."""
    shared = set(_ancestors(located, step_stmt))
    unit: Movable = op_stmt
    read = names(op_stmt).used
    for ancestor in _ancestors(located, op_stmt):
        if ancestor in shared:
            return unit
        if isinstance(ancestor, cst.With | cst.Try | cst.ExceptHandler | cst.Finally):
            return None
        binds = isinstance(ancestor, cst.For) and bool(target_names(ancestor.target) & read)
        if not (isinstance(ancestor, cst.If) or binds) or ancestor is gate:
            continue
        assert isinstance(ancestor, cst.If | cst.For)
        body = ancestor.body
        if (ancestor.orelse is not None or not isinstance(body, cst.IndentedBlock)
                or len(body.body) != 1 or body.body[0] is not unit):
            return None  # a guard or loop shared with other statements, or an else: keep it
        if isinstance(ancestor, cst.For):
            read |= names(ancestor.iter).used
        unit = ancestor
    return unit


def _step_anchor(located: Located, step_stmt: cst.CSTNode, unit: cst.CSTNode,
                 gate: cst.If | None) -> cst.CSTNode:
    """The statement the moved one goes next to: the step, or the outermost statement
    around it inside the gate (below what the step shares with ``unit``) that is not the
    gate itself: an ``if``/``else`` choosing how to step runs on every path once left."""
    shared = set(_ancestors(located, unit))
    anchor = step_stmt
    for ancestor in _ancestors(located, step_stmt):
        if ancestor in shared or ancestor is gate:
            break
        if isinstance(ancestor, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            anchor = ancestor
    return anchor


@fixer("TA203")
def fix_per_micro_batch_update(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    return _move_to_step(source, findings, lambda code: f"run `{code}` once per optimizer step")


@fixer("TA204")
def fix_missing_zero_grad(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding,
             payload: ZeroGradAfterStep) -> str | None:
        step_stmt = _call_statement(located, (finding.span.line, finding.span.column))
        if step_stmt is None:
            return None
        edits.insert_after(_after_step(located, step_stmt, payload.run),
                           statement(f"{payload.optimizer}.zero_grad(set_to_none=True)"))
        return f"clear gradients after each step ({payload.optimizer}.zero_grad)"

    return edit_each(source, findings, ZeroGradAfterStep, edit)


def _sync_expression(located: Located, payload: NoSyncWrap, backward: cst.Call) -> str | None:
    """Source of the test that is true on the micro-batch that ends a window."""
    gate = payload.gate
    if gate is not None:
        tests = located.at(gate[0], gate[1], cst.BaseExpression)
        if not tests:
            return None
        test = code_of(tests[0]).strip()
        simple = re.fullmatch(r"[\w.\[\]() %+\-*/=<>!]+", test) is not None and " or " not in test \
            and " and " not in test
        if gate[2]:
            return f"not {test}" if simple and " " not in test else f"not ({test})"
        return test if simple else f"({test})"
    current: cst.CSTNode | None = backward
    while current is not None and not isinstance(current, cst.For):
        current = located.parents.get(current)
    if not isinstance(current, cst.For):
        return None
    iterable, target = current.iter, current.target
    if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) and iterable.args:
        if iterable.func.value == "range" and isinstance(target, cst.Name) and len(iterable.args) == 1:
            return f"{target.value} == {code_of(iterable.args[0].value)} - 1"
        if iterable.func.value == "enumerate" and isinstance(target, cst.Tuple) \
                and isinstance(target.elements[0].value, cst.Name) and len(iterable.args) == 1:
            return f"{code_of(target.elements[0].value)} == len({code_of(iterable.args[0].value)}) - 1"
    return None


@fixer("TA205")
def fix_ddp_no_sync(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    for finding in findings:
        payload = payload_of(finding, NoSyncWrap)
        if payload is None:
            continue
        model = payload.model
        backward = call_at(located, (finding.span.line, finding.span.column))
        forward = call_at(located, payload.forward)
        if backward is None or forward is None:
            continue
        sync = _sync_expression(located, payload, backward)
        if sync is None:
            continue
        # The smallest block holding both the forward and the backward statements.
        back_stmt = located.statement_of(backward)
        block, stmts = block_of(located, back_stmt)
        first = top_statement(located, forward, stmts)
        while first is None and not isinstance(block, cst.Module):
            holder = located.parent(block)
            block, stmts = block_of(located, holder)
            back_stmt = holder
            first = top_statement(located, forward, stmts)
        if first is None:
            continue
        i, j = stmts.index(first), stmts.index(back_stmt)  # type: ignore[arg-type]
        if i > j:
            continue
        edits = Edits()
        holder_block = block

        def rewrite(node: Any, lo: int = i, hi: int = j, model: str = model, sync: str = sync) -> Any:
            body = list(node.body)
            wrapped = no_sync_statement(model, sync, body[lo:hi + 1])
            return node.with_changes(body=[*body[:lo], wrapped, *body[hi + 1:]])

        edits.replace(holder_block, rewrite)
        fixed = ensure_import(edits.apply(located.module), "import contextlib", "contextlib")
        return FixResult(fixed.code,
                         [f"skip the all-reduce on non-boundary micro-batches ({model}.no_sync())"])
    return FixResult(source)


@fixer("TA206")
def fix_zero_grad_before_step(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    return _move_to_step(source, findings, lambda _: "clear gradients after the step, not before it")
