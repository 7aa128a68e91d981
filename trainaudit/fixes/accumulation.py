"""Fixes of the accumulation rules (TA201–TA206).

TA201 (feature) turns a loop that steps on every micro-batch into one that
accumulates: a ``for`` loop over a loader iterates windows of micro-batches
(``accumulation_windows(loader, k)``, the last window of an epoch may be
shorter and is still stepped), a ``while`` loop that fetches its own batches
runs the fetch-forward-backward part ``k`` times. The loss is divided by the
window's length; everything after the backward (clipping, the optimizer and
scheduler steps, logging, step counters) then runs once per optimizer step.
When the step lives in a helper (``train_step(model, batch, optimizer, ...)``),
the helper gains ``accumulation_steps=1, sync_gradients=True`` parameters (its
other callers keep their behaviour): it divides the loss and runs its update
part only when ``sync_gradients`` is true.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.accumulation_settings import accumulation_setting, scale_per_step_quantities
from trainaudit.fixes.cst import (
    Located,
    code_of,
    function_by_name,
    method_calls,
    names,
    names_in_scope,
    only_call,
    target_names,
    top_statement,
)
from trainaudit.fixes.loop_steps import divide_backward, no_sync_statement
from trainaudit.fixes.toolkit import (
    Edits,
    add_keywords,
    add_module_function,
    add_parameters,
    call_at,
    ensure_import,
    expression,
    first_without_leading_lines,
    fresh_name,
    indented,
    statement,
)
from trainaudit.payloads import AccumulationRewrite, payload_of

WINDOWS_HELPER = '''def accumulation_windows(iterable, size):
    """Group micro-batches into lists of `size` (gradient accumulation).

    The last list may be shorter.
    """
    window = []
    for item in iterable:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window
'''

_UPDATE_METHODS = frozenset({"step", "zero_grad", "clip_grad_norm_", "clip_grad_value_",
                             "clip_grad_norm", "clip_gradients", "unscale_"})

Rewrite = Callable[[Any], Any]


def _contains(located: Located, outer: cst.CSTNode, line: int, column: int) -> bool:
    pos = located.range(outer)
    start = (pos.start.line, pos.start.column + 1)
    end = (pos.end.line, pos.end.column + 1)
    return start <= (line, column) < end or (line, column) == start


def _index_containing(located: Located, stmts: Sequence[cst.CSTNode], line: int, column: int
                      ) -> int | None:
    for index, stmt in enumerate(stmts):
        if _contains(located, stmt, line, column):
            return index
    return None


def is_update(node: cst.CSTNode, scaler_updates: frozenset[int] = frozenset()) -> bool:
    """Optimizer/scheduler steps, zero_grad, clipping, unscale_, and the scaler's update
    (``scaler_updates``: ids of the calls the loop model found, ``scaler_updates_in``)."""
    for call in names(node).calls:
        func = call.func
        if isinstance(func, cst.Attribute) and (
                func.attr.value in _UPDATE_METHODS or id(call) in scaler_updates):
            return True
    return False


def scaler_updates_in(located: Located, payload: AccumulationRewrite) -> frozenset[int]:
    """The scaler updates of the payload, as ids of the calls of this tree."""
    return frozenset(id(call) for where in payload.scaler_updates
                     if (call := call_at(located, where)) is not None)



# --------------------------------------------------------------------------- TA201


def _enclosing_function(located: Located, node: cst.CSTNode) -> cst.FunctionDef | None:
    current: cst.CSTNode | None = located.parents.get(node)
    while current is not None:
        if isinstance(current, cst.FunctionDef):
            return current
        current = located.parents.get(current)
    return None


def _inner_range(stmts: list[cst.BaseStatement], anchor: int, seeds: set[str],
                 scaler_updates: frozenset[int]) -> tuple[int, int]:
    """The statements of one micro-step around the backward/helper statement ``anchor``:
    back to the earliest statement feeding it (or reading the loop target), forward over
    statements that only read what the micro-step made."""
    used = names(stmts[anchor]).used
    start = anchor
    for index in range(anchor - 1, -1, -1):
        found = names(stmts[index])
        if only_call(stmts[index], "zero_grad"):
            continue
        if found.assigned & used or found.used & seeds:
            start = index
            used |= found.used
    made = set(seeds)
    for stmt in stmts[start: anchor + 1]:
        made |= names(stmt).assigned
    end = anchor
    for index in range(anchor + 1, len(stmts)):
        stmt = stmts[index]
        if is_update(stmt, scaler_updates) or (isinstance(stmt, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Continue | cst.Break | cst.Return) for s in stmt.body)):
            break
        found = names(stmt)
        if not (found.used & made) or not _collects(stmt):
            break
        end = index
        made |= found.assigned
    return start, end


def _collects(stmt: cst.CSTNode) -> bool:
    """``total += loss.item()``, ``n = x.size(0)``, ``losses.append(...)``: per-micro-batch
    bookkeeping that belongs with the micro-step (a print or an ``if`` does not)."""
    if not isinstance(stmt, cst.SimpleStatementLine):
        return False
    for small in stmt.body:
        if isinstance(small, cst.Assign | cst.AugAssign | cst.AnnAssign):
            continue
        if (isinstance(small, cst.Expr) and isinstance(small.value, cst.Call)
                and isinstance(small.value.func, cst.Attribute)
                and small.value.func.attr.value in ("append", "extend", "update", "add_")):
            continue
        return False
    return True


def _split_for(loop: cst.For, window: str, micro: str | None
               ) -> tuple[cst.BaseExpression, cst.BaseAssignTargetExpression, cst.BaseAssignTargetExpression,
                          cst.BaseExpression]:
    """(outer iterable, outer target, inner target, inner iterable) of the windowed loop."""
    iterable = loop.iter
    target = loop.target
    inner_target: cst.BaseAssignTargetExpression = target
    outer_target: cst.BaseAssignTargetExpression = cst.Name(window)
    if (isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name)
            and iterable.func.value == "enumerate" and iterable.args
            and isinstance(target, cst.Tuple) and len(target.elements) == 2):
        source = iterable.args[0]
        wrapped = cst.Call(func=cst.Name("accumulation_windows"),
                           args=[cst.Arg(source.value, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                                 cst.Arg(cst.Name("__STEPS__"))])
        outer_iter: cst.BaseExpression = iterable.with_changes(args=[source.with_changes(value=wrapped),
                                                                     *iterable.args[1:]])
        index_target = target.elements[0].value
        element = target.elements[1].value
        outer_target = cst.Tuple([cst.Element(index_target, comma=cst.Comma(
            whitespace_after=cst.SimpleWhitespace(" "))), cst.Element(cst.Name(window))], lpar=[], rpar=[])
        inner_target = element.with_changes(lpar=[], rpar=[]) if isinstance(element, cst.Tuple) \
            else element  # type: ignore[assignment]
    else:
        outer_iter = cst.Call(func=cst.Name("accumulation_windows"),
                              args=[cst.Arg(iterable, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                                    cst.Arg(cst.Name("__STEPS__"))])
    inner_iter: cst.BaseExpression = cst.Name(window)
    if micro is not None:
        element_target = inner_target
        if isinstance(element_target, cst.Tuple) and not element_target.lpar:
            element_target = element_target.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        inner_target = cst.Tuple([cst.Element(cst.Name(micro), comma=cst.Comma(
            whitespace_after=cst.SimpleWhitespace(" "))), cst.Element(element_target)], lpar=[], rpar=[])
        inner_iter = expression(f"enumerate({window})")
    return outer_iter, outer_target, inner_target, inner_iter


def _replace_steps(node: cst.CSTNode, steps: str) -> Any:
    class Put(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
            return expression(steps) if updated_node.value == "__STEPS__" else updated_node

    return node.visit(Put())


def _helper_edits(located: Located, edits: Edits, helper: cst.FunctionDef,
                  backward: cst.Call, scaler_updates: frozenset[int]) -> bool:
    """Give the helper ``accumulation_steps``/``sync_gradients`` and gate its update part."""
    stmts = list(helper.body.body) if isinstance(helper.body, cst.IndentedBlock) else []
    anchor = top_statement(located, backward, stmts)
    if anchor is None:
        return False
    b = stmts.index(anchor)  # type: ignore[arg-type]
    updates = [i for i in range(b + 1, len(stmts)) if is_update(stmts[i], scaler_updates)]
    if not updates:
        return False
    first, last = updates[0], updates[-1]
    zero_before = [s for s in stmts[:b] if only_call(s, "zero_grad")]
    gated_has_zero = any("zero_grad" in method_calls(s) for s in stmts[first:last + 1])
    edits.replace(backward, lambda call: divide_backward(call, "accumulation_steps"))

    def rewrite(fn: cst.FunctionDef) -> cst.FunctionDef:
        body: list[Any] = list(fn.body.body)  # aligned with ``stmts``
        removed = set() if gated_has_zero else {stmts.index(z) for z in zero_before}
        moved = [body[i].with_changes(leading_lines=[]) for i in sorted(removed)]
        gated, leading = first_without_leading_lines([*body[first:last + 1], *moved])
        gate = cst.If(test=cst.Name("sync_gradients"), body=indented(gated), leading_lines=leading)
        kept: list[Any] = []
        carry: list[cst.EmptyLine] = []
        for i, stmt in enumerate(body[:first]):
            if i in removed:
                carry.extend(getattr(stmt, "leading_lines", []))
                continue
            if carry:
                stmt = stmt.with_changes(leading_lines=[*carry, *getattr(stmt, "leading_lines", [])])
                carry = []
            kept.append(stmt)
        new_body = [*kept, gate, *body[last + 1:]]
        fn = fn.with_changes(body=fn.body.with_changes(body=new_body))
        return add_parameters(fn, [("accumulation_steps", "int", "1"),
                                   ("sync_gradients", "bool", "True")])

    edits.replace(helper, rewrite)
    return True


def _forward_model(located: Located, payload: AccumulationRewrite, helper: cst.FunctionDef | None,
                   call: cst.Call | None) -> str | None:
    """The model expression in the loop's scope (a helper's parameter mapped to its argument)."""
    model = payload.model
    if not model:
        return None
    if helper is None or call is None:
        return model
    params = [p.name.value for p in helper.params.params]
    if isinstance(call.func, cst.Attribute) and params and params[0] in ("self", "cls"):
        params = params[1:]  # a method called through its instance
    head = model.split(".")[0]
    if head in ("self", "cls"):
        return model
    if head not in params:
        return model if head == "self" else None
    index = params.index(head)
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == head:
            return code_of(arg.value) + model[len(head):]
    positional = [a for a in call.args if a.keyword is None and not a.star]
    if index < len(positional):
        return code_of(positional[index].value) + model[len(head):]
    return None


def add_accumulation(source: str, finding: Finding, steps: int) -> FixResult | None:
    """TA201's rewrite of the loop at one finding (None when its shape is not handled)."""
    payload = payload_of(finding, AccumulationRewrite)
    if payload is None:
        return None
    located = Located(source)
    module = located.module
    loops = located.at(finding.span.line, finding.span.column, (cst.For, cst.While))
    if not loops:
        return None
    loop = loops[0]
    assert isinstance(loop, cst.For | cst.While)
    if not isinstance(loop.body, cst.IndentedBlock) or loop.orelse is not None:
        return None
    stmts = list(loop.body.body)
    call_pos, helper_name = payload.call, payload.helper
    anchor_pos = call_pos if helper_name else payload.backward
    if not anchor_pos:
        return None
    anchor = _index_containing(located, stmts, *anchor_pos)
    if anchor is None:
        return None
    backward = call_at(located, payload.backward)
    if backward is None:
        return None
    helper = function_by_name(module, helper_name) if helper_name else None
    helper_call = call_at(located, call_pos) if helper_name and call_pos else None
    if helper_name and (helper is None or helper_call is None):
        return None

    function = _enclosing_function(located, loop)
    taken = names_in_scope(module)
    edits = Edits()
    window = fresh_name(taken, "window", "batch_window", "accumulation_window")
    ddp = payload.ddp
    model = _forward_model(located, payload, helper, helper_call)
    needs_micro = helper is not None or (ddp and model is not None)
    micro = fresh_name(taken, "micro_step", "micro_batch_index") if needs_micro else None

    scaler_updates = scaler_updates_in(located, payload)
    if helper is not None and not _helper_edits(located, edits, helper, backward, scaler_updates):
        return None
    setting, note = accumulation_setting(located, edits, payload, loop, function, steps)

    seeds = target_names(loop.target) if isinstance(loop, cst.For) else set()
    if isinstance(loop, cst.For) and isinstance(loop.iter, cst.Call) and isinstance(loop.iter.func, cst.Name) \
            and loop.iter.func.value == "enumerate" and isinstance(loop.target, cst.Tuple) \
            and len(loop.target.elements) == 2:
        seeds = target_names(loop.target.elements[1].value)
    start, end = _inner_range(stmts, anchor, seeds, scaler_updates)
    hoisted = [i for i in range(start, end + 1) if only_call(stmts[i], "zero_grad")]
    # What the loop bound counts is kept. A loop over data (or over indices the micro-step
    # reads) counts micro-batches: it is cut into windows. A counter loop (``range(max_iters)``
    # whose index the micro-step ignores) or a ``while`` counts optimizer steps: each step
    # runs the micro-step ``k`` times.
    counter = isinstance(loop, cst.For) and _is_range(loop.iter) and not any(
        names(stmts[i]).used & target_names(loop.target) for i in range(start, end + 1))
    is_for = isinstance(loop, cst.For) and not counter
    divisor = f"len({window})" if is_for else setting
    if helper is None:
        edits.replace(backward, lambda call: divide_backward(call, divisor))
    sync = (f"{micro} == len({window}) - 1" if is_for else f"{micro} == {setting} - 1") if micro else ""
    if helper_call is not None:
        edits.replace(helper_call, lambda call: add_keywords(
            call, [("accumulation_steps", divisor), ("sync_gradients", "sync_gradients")]))

    mean = _window_mean(stmts, anchor, end, backward, helper_call, taken, divisor)

    def rewrite_loop(updated: cst.For | cst.While) -> cst.BaseStatement:
        body: list[Any] = list(updated.body.body)
        inner = [body[i] for i in range(start, end + 1) if i not in hoisted]
        lifted = [body[i] for i in hoisted]
        inner, leading = first_without_leading_lines(inner)
        if mean is not None:  # what is logged after the step is the window's mean loss
            name, total, add = mean
            lifted.append(statement(f"{total} = 0.0\n"))
            inner.append(statement(add))
            body[end + 1:] = [_renamed(s, name, total) for s in body[end + 1:]]
        if helper is not None:
            inner = [statement(f"sync_gradients = {sync}\n"), *inner]
        if ddp and model is not None:
            sync_expr = "sync_gradients" if helper is not None else sync
            split = 1 if helper is not None else 0
            inner = [*inner[:split], no_sync_statement(model, sync_expr, inner[split:])]
        if isinstance(updated, cst.For) and is_for:
            outer_iter, outer_target, inner_target, inner_iter = _split_for(updated, window, micro)
            outer_iter = _replace_steps(outer_iter, setting)
            micro_loop: cst.BaseStatement = cst.For(target=inner_target, iter=inner_iter,
                                                    body=indented(inner), leading_lines=leading)
            new_body = [*body[:start], *lifted, micro_loop, *body[end + 1:]]
            return updated.with_changes(target=outer_target, iter=outer_iter,
                                        body=updated.body.with_changes(body=new_body))
        index = micro or "_"
        micro_loop = cst.For(target=cst.Name(index), iter=expression(f"range({setting})"),
                             body=indented(inner), leading_lines=leading)
        new_body = [*body[:start], *lifted, micro_loop, *body[end + 1:]]
        return updated.with_changes(body=updated.body.with_changes(body=new_body))

    edits.replace(loop, rewrite_loop)
    notes = scale_per_step_quantities(edits, function if function is not None else module,
                                 payload.batch_expr, setting)
    if is_for and not _defines(module, "accumulation_windows"):
        add_module_function(edits, module, WINDOWS_HELPER)
    fixed_module = edits.apply(module)
    if ddp and model is not None:
        fixed_module = ensure_import(fixed_module, "import contextlib", "contextlib")
    fixed = fixed_module.code
    bound = code_of(loop.iter) if isinstance(loop, cst.For) else code_of(loop.test)
    if is_for:
        meaning = (f"the loop bound `{bound}` counts micro-batches and still takes each once: "
                   f"it now makes 1/{setting} as many optimizer steps (a last, shorter window "
                   "is stepped too)")
    else:
        meaning = (f"the loop bound `{bound}` counts optimizer steps and still does: each step "
                   f"now takes `{setting}` micro-batches, so the run reads `{setting}` times the data")
    if mean is not None:
        notes.append(f"`{mean[0]}` after the step is now the window's mean loss `{mean[1]}`")
    return FixResult(fixed, [f"accumulate `{setting}` micro-batches per optimizer step ({note})",
                             meaning, *notes])


def _is_range(iterable: cst.BaseExpression) -> bool:
    return (isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name)
            and iterable.func.value == "range")


def _window_mean(stmts: Sequence[cst.BaseStatement], anchor: int, end: int, backward: cst.Call,
                 helper_call: cst.Call | None, taken: set[str], divisor: str
                 ) -> tuple[str, str, str] | None:
    """(loss name, total name, statement adding to it) when the loss of a micro-step is read
    after the step (logged, returned): it then reads the mean over the window instead of
    the last micro-batch's loss. None when nothing reads it there."""
    if helper_call is not None:  # ``loss = train_step(...)``: the helper's return value
        anchor_stmt = stmts[anchor]
        small = anchor_stmt.body[0] if isinstance(anchor_stmt, cst.SimpleStatementLine) else None
        if not (isinstance(small, cst.Assign) and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Name)):
            return None
        loss, value = small.targets[0].target.value, f"{small.targets[0].target.value}"
    else:
        receiver = backward.func.value if isinstance(backward.func, cst.Attribute) else None
        if not isinstance(receiver, cst.Name):
            return None
        loss, value = receiver.value, f"{receiver.value}.detach()"
    after = stmts[end + 1:]
    if not any(loss in names(s).used for s in after) or any(loss in names(s).assigned for s in after):
        return None
    total = fresh_name(taken, "window_loss", "mean_loss")
    return loss, total, f"{total} += {value} / {divisor}\n"


def _renamed(stmt: cst.CSTNode, old: str, new: str) -> Any:
    """A statement with every read of the name ``old`` reading ``new``."""
    class Rename(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
            return updated_node.with_changes(value=new) if updated_node.value == old else updated_node

    return stmt.visit(Rename())


def _defines(module: cst.Module, name: str) -> bool:
    return any(isinstance(s, cst.FunctionDef) and s.name.value == name for s in module.body)


@fixer("TA201")
def fix_no_accumulation(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    steps = int(options.get("accumulation-steps", 8))
    for finding in findings:
        result = add_accumulation(source, finding, steps)
        if result is not None:
            return result
    return FixResult(source)


