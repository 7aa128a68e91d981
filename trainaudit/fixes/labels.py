"""Fixes of the label rules: roll → slicing, removing a second shift, ignore values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, code_of
from trainaudit.fixes.toolkit import Edits, call_at, edit_each, replace_with, statement
from trainaudit.payloads import IgnoreValue, LossShift, RollToSlice, ShiftRemoval


def _replace_statement(edits: Edits, original: cst.SimpleStatementLine, codes: Sequence[str]) -> None:
    """Put statements in place of a simple statement, keeping its comments."""
    new = [statement(code) for code in codes]
    new[0] = new[0].with_changes(leading_lines=original.leading_lines,
                                 trailing_whitespace=original.trailing_whitespace)
    edits.remove.add(original)
    edits.insert_after(original, *new)


def _roll_call(located: Located, finding: Finding) -> tuple[cst.Call, cst.SimpleStatementLine] | None:
    call = call_at(located, (finding.span.line, finding.span.column))
    if call is None:
        return None
    statement = located.statement_of(call)
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    assign = statement.body[0]
    if not isinstance(assign, cst.Assign) or len(assign.targets) != 1 or assign.value is not call:
        return None
    return call, statement


def _roll_parts(call: cst.Call) -> tuple[str, str, str, int | None] | None:
    """(target-less input source, copy method, index prefix, dim) of a roll call."""
    func = call.func
    args = list(call.args)
    numpy = False
    if isinstance(func, cst.Attribute) and func.attr.value == "roll" and (
            code_of(func.value) in ("torch", "np", "numpy", "jnp")
            or code_of(func.value).endswith("torch")):
        numpy = code_of(func.value) in ("np", "numpy", "jnp")
        source_arg = next((a for a in args if a.keyword is None or a.keyword.value in ("input", "a")), None)
        rest = [a for a in args if a is not source_arg]
        if source_arg is None:
            return None
        source = code_of(source_arg.value)
    elif isinstance(func, cst.Attribute) and func.attr.value == "roll":
        source = code_of(func.value)
        rest = args
    elif isinstance(func, cst.Name):  # from torch import roll as r
        if not args:
            return None
        source = code_of(args[0].value)
        rest = args[1:]
    else:
        return None
    dim: int | None = None
    positional = [a for a in rest if a.keyword is None]
    dims_arg = next((a for a in rest if a.keyword is not None
                     and a.keyword.value in ("dims", "axis")), None)
    if dims_arg is None and len(positional) >= 2:
        dims_arg = positional[1]
    if dims_arg is not None:
        text = code_of(dims_arg.value).strip()
        try:
            dim = int(text)
        except ValueError:
            return None
    prefix = "" if dim == 0 else "..., "
    return source, "copy" if numpy else "clone", prefix, dim


def _target_code(statement: cst.SimpleStatementLine) -> str:
    assign = statement.body[0]
    assert isinstance(assign, cst.Assign)
    return code_of(assign.targets[0].target)


def _lines(located: Located, spans: Sequence[tuple[int, int]]) -> set[cst.CSTNode]:
    wanted = set(spans)
    found: set[cst.CSTNode] = set()
    for node, pos in located.positions.items():
        if isinstance(node, cst.SimpleStatementLine) and (pos.start.line, pos.end.line) in wanted:
            found.add(node)
    return found


def _rewrite_rolls(source: str, findings: Sequence[Finding], keep_tail: bool) -> FixResult:
    def edit(located: Located, edits: Edits, finding: Finding, payload: RollToSlice) -> str | None:
        found = _roll_call(located, finding)
        if found is None or (payload.ignore is None) != keep_tail:
            return None
        call, statement = found
        parts = _roll_parts(call)
        if parts is None:
            return None
        src, copy, prefix, _ = parts
        target = _target_code(statement)
        lines = [f"{target} = {src}.{copy}()", f"{target}[{prefix}:-1] = {src}[{prefix}1:]"]
        if payload.ignore is not None:
            lines.append(f"{target}[{prefix}-1] = {payload.ignore}")
        _replace_statement(edits, statement, lines)
        return (f"line {finding.span.line}: roll → slicing"
                + ("" if keep_tail else " with the ignore value on the tail"))

    return edit_each(source, findings, RollToSlice, edit)


@fixer("TA101")
def fix_circular_shift(source: str, findings: Sequence[Finding],
                       options: Mapping[str, Any]) -> FixResult:
    """``labels = roll(x, -1)`` → ``labels = x.clone(); labels[:-1] = x[1:]; labels[-1] = -100``."""
    return _rewrite_rolls(source, findings, keep_tail=False)


@fixer("TA103")
def fix_roll_shift(source: str, findings: Sequence[Finding],
                   options: Mapping[str, Any]) -> FixResult:
    """``labels = roll(x, -1)`` (tail already handled) → ``labels = x.clone(); labels[:-1] = x[1:]``."""
    return _rewrite_rolls(source, findings, keep_tail=True)


@fixer("TA102")
def fix_double_shift(source: str, findings: Sequence[Finding],
                     options: Mapping[str, Any]) -> FixResult:
    """Remove the shift where the labels are made, so the loss-side shift is the only one."""
    def edit(located: Located, edits: Edits, finding: Finding, payload: ShiftRemoval) -> str | None:
        nodes = located.at(finding.span.line, finding.span.column, cst.BaseExpression)
        if not nodes:
            return None
        statement = located.statement_of(nodes[0])
        if not isinstance(statement, cst.SimpleStatementLine):
            return None
        if payload.replacement:
            assign = statement.body[0]
            if not isinstance(assign, cst.Assign) or len(statement.body) != 1:
                return None
            _replace_statement(edits, statement,
                               [f"{code_of(assign.targets[0].target)} = {payload.replacement}"])
        edits.remove |= _lines(located, payload.delete)
        return payload.note

    return edit_each(source, findings, ShiftRemoval, edit)


@fixer("TA104")
def fix_ignore_mismatch(source: str, findings: Sequence[Finding],
                        options: Mapping[str, Any]) -> FixResult:
    """Write the loss's ignore value where the labels are masked."""
    def edit(located: Located, edits: Edits, finding: Finding, payload: IgnoreValue) -> str | None:
        value = payload.value
        lines = [n for n in located.at(finding.span.line, finding.span.column, cst.SimpleStatementLine)]
        statement = lines[0] if lines else None
        if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
            return None
        assign = statement.body[0]
        if not isinstance(assign, cst.Assign):
            return None
        node: cst.CSTNode = assign.value
        if isinstance(assign.value, cst.Call):
            call = assign.value
            name = code_of(call.func).rsplit(".", 1)[-1]
            arg = None
            if name in ("masked_fill", "masked_fill_"):
                arg = next((a for a in call.args if a.keyword and a.keyword.value == "value"),
                           call.args[1] if len(call.args) > 1 else None)
            elif name == "pad":
                arg = next((a for a in call.args if a.keyword and a.keyword.value == "value"), None)
            elif name == "where" and len(call.args) == 3:
                arg = call.args[1]
            if arg is None:
                return None
            node = arg.value
        edits.replace(node, replace_with(cst.parse_expression(value)))
        return f"line {finding.span.line}: mask value → {value}"

    return edit_each(source, findings, IgnoreValue, edit)


@fixer("TA105")
def fix_missing_shift(source: str, findings: Sequence[Finding],
                      options: Mapping[str, Any]) -> FixResult:
    """Shift at the loss: ``logits[..., :-1, :]`` against ``labels[..., 1:]``."""
    def edit(located: Located, edits: Edits, finding: Finding, payload: LossShift) -> str | None:
        logits_at, labels_at = payload.logits, payload.labels
        kinds = (cst.Name, cst.Attribute, cst.Subscript)
        logits = [n for n in located.at(logits_at[0], logits_at[1], kinds)
                  if code_of(n) == logits_at[2]]
        labels = [n for n in located.at(labels_at[0], labels_at[1], kinds)
                  if code_of(n) == labels_at[2]]
        if not logits or not labels:
            return None
        # Only where the loss flattens the logits itself, so the root is still (B, T, V).
        parent = located.parent(logits[0])
        if not (isinstance(parent, cst.Attribute) and parent.attr.value in ("view", "reshape", "flatten")):
            return None
        for root, shifted in ((logits[0], "[..., :-1, :]"), (labels[0], "[..., 1:]")):
            edits.replace(root, replace_with(
                cst.parse_expression(f"{code_of(root)}{shifted}.contiguous()")))
        return f"line {finding.span.line}: shift at the loss"

    return edit_each(source, findings, LossShift, edit)
