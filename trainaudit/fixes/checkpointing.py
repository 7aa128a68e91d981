"""Fixes of the checkpointing rules (TA401–TA403).

- TA401 (feature): in the model's ``forward``, run each block through
  ``checkpoint(block, *args, use_reentrant=False)`` when
  ``self.gradient_checkpointing and self.training``; add that attribute
  (default: the ``checkpointing-default`` fix option) and a
  ``gradient_checkpointing_enable()`` method. Extra block arguments, keyword
  arguments and tuple results pass through unchanged.
- TA402: add ``use_reentrant=False``.
- TA403: ``use_cache=True`` → ``use_cache=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, code_of
from trainaudit.fixes.toolkit import (
    Edits,
    append_args,
    arg_with_comma,
    bound_names,
    call_at,
    ensure_import,
    fresh_name,
    keyword_arg,
    replace_with,
    simple_statement,
    statement,
    statement_at_line,
)
from trainaudit.payloads import CheckpointStack, payload_of

GUARD = "self.gradient_checkpointing and self.training"
ENABLE_METHOD = '''
def gradient_checkpointing_enable(self, enable: bool = True) -> None:
    """Recompute each block's activations in backward instead of keeping them."""
    self.gradient_checkpointing = enable
'''


def _checkpointed_call(call: cst.Call, function: str) -> cst.Call:
    """``block(x, mask=m)`` → ``checkpoint(block, x, mask=m, use_reentrant=False)``."""
    first = cst.Arg(call.func.with_changes(lpar=[], rpar=[]) if hasattr(call.func, "lpar") else call.func)
    args = [arg_with_comma(first), *call.args] if call.args else [first]
    new = cst.Call(func=cst.parse_expression(function), args=args,
                   whitespace_before_args=call.whitespace_before_args)
    return append_args(new, [keyword_arg("use_reentrant", cst.Name("False"))])


class _SwapCall(cst.CSTTransformer):
    def __init__(self, target: cst.Call, replacement: cst.Call) -> None:
        super().__init__()
        self.target, self.replacement = target, replacement

    def on_leave(self, original_node: Any, updated_node: Any) -> Any:
        return self.replacement if original_node is self.target else updated_node


def _guarded(stmt: cst.SimpleStatementLine, checkpointed: Sequence[cst.BaseStatement]) -> cst.If:
    plain = stmt.with_changes(leading_lines=())
    return cst.If(test=cst.parse_expression(GUARD), body=cst.IndentedBlock(body=list(checkpointed)),
                  orelse=cst.Else(body=cst.IndentedBlock(body=[plain])),
                  leading_lines=stmt.leading_lines)


def _sequential_branch(stmt: cst.SimpleStatementLine, call: cst.Call, stack: str, function: str,
                       taken: set[str]) -> list[cst.BaseStatement] | None:
    """``x = self.blocks(h)`` → ``x = h`` + ``for block in self.blocks: x = checkpoint(block, x, ...)``."""
    if len(call.args) != 1 or call.args[0].keyword is not None or call.args[0].star:
        return None
    argument = code_of(call.args[0].value)
    small = stmt.body[0] if len(stmt.body) == 1 else None
    block = fresh_name(taken, "block", "layer", "module_", "block_")
    if isinstance(small, cst.Assign) and len(small.targets) == 1 and \
            isinstance(small.targets[0].target, cst.Name) and small.value is call:
        name = small.targets[0].target.value
        lines = [] if name == argument else [f"{name} = {argument}"]
        lines.append(f"for {block} in {stack}:\n"
                     f"    {name} = {function}({block}, {name}, use_reentrant=False)")
        return [statement(line) for line in lines]
    if isinstance(small, cst.Return) and small.value is call and isinstance(call.args[0].value, cst.Name):
        return [statement(f"for {block} in {stack}:\n"
                          f"    {argument} = {function}({block}, {argument}, use_reentrant=False)"),
                statement(f"return {argument}")]
    return None


def _class_node(located: Located, stack: CheckpointStack) -> cst.ClassDef | None:
    stmt = statement_at_line(located, stack.class_line)
    if isinstance(stmt, cst.ClassDef):
        return stmt
    name = stack.class_name.rsplit(".", 1)[-1]
    for candidate, pos in located.positions.items():  # decorated classes start at the decorator
        if isinstance(candidate, cst.ClassDef) and candidate.name.value == name \
                and pos.start.line <= stack.class_line <= pos.end.line:
            return candidate
    return None


def _plan_class(located: Located, stack: CheckpointStack, edits: Edits, default: bool) -> None:
    """The attribute (after the stack is built) and the enable method (after ``__init__``)."""
    cls = _class_node(located, stack)
    if cls is None or not isinstance(cls.body, cst.IndentedBlock):
        return
    methods = {s.name.value: s for s in cls.body.body if isinstance(s, cst.FunctionDef)}
    init = methods.get("__init__")
    if not stack.has_flag:
        attribute = statement(f"self.gradient_checkpointing = {default}")
        anchor: cst.CSTNode | None = None
        if init is not None and stack.init_line is not None:
            candidate = statement_at_line(located, stack.init_line)
            if candidate is not None and isinstance(init.body, cst.IndentedBlock) \
                    and candidate in init.body.body:
                anchor = candidate
        if anchor is not None:
            edits.insert_after(anchor, attribute)
        elif init is not None and isinstance(init.body, cst.IndentedBlock):
            edits.insert_after(init.body.body[-1], attribute)
        else:  # no __init__: a class attribute, after the docstring
            body = list(cls.body.body)
            docstring = isinstance(body[0], cst.SimpleStatementLine) and isinstance(
                body[0].body[0], cst.Expr) and isinstance(body[0].body[0].value, cst.SimpleString)
            if docstring and len(body) > 1:
                edits.insert_before(body[1], statement(f"gradient_checkpointing = {default}"))
            else:
                edits.insert_after(body[0], statement(f"gradient_checkpointing = {default}"))
    if "gradient_checkpointing_enable" not in methods:
        method = cst.parse_statement(ENABLE_METHOD.lstrip("\n"))
        assert isinstance(method, cst.FunctionDef)
        method = method.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        if init is not None:
            edits.insert_after(init, method)
        elif "forward" in methods:
            def before_forward(updated: cst.FunctionDef) -> cst.FlattenSentinel[cst.BaseStatement]:
                return cst.FlattenSentinel([
                    method.with_changes(leading_lines=updated.leading_lines),
                    updated.with_changes(leading_lines=[cst.EmptyLine(indent=False)])])

            edits.replace(methods["forward"], before_forward)


@fixer("TA401")
def fix_no_activation_checkpointing(source: str, findings: Sequence[Finding],
                                    options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes: list[str] = []
    default = bool(options.get("checkpointing-default", True))
    taken = bound_names(source)
    planned: set[str] = set()
    imports: set[tuple[str, str]] = set()
    for finding in findings:
        stack = payload_of(finding, CheckpointStack)
        call = call_at(located, finding.span) if stack is not None else None
        stmt = simple_statement(located, call) if call is not None else None
        if stack is None or call is None or stmt is None:
            continue
        if stack.kind == "sequential":
            branch = _sequential_branch(stmt, call, stack.stack, stack.checkpoint, taken)
            if branch is None:
                continue
        else:
            swapped = stmt.visit(_SwapCall(call, _checkpointed_call(call, stack.checkpoint)))
            assert isinstance(swapped, cst.SimpleStatementLine)
            branch = [swapped.with_changes(leading_lines=())]
        edits.replace(stmt, replace_with(_guarded(stmt, branch)))
        if stack.class_name not in planned:
            _plan_class(located, stack, edits, default)
            planned.add(stack.class_name)
        if stack.checkpoint_import is not None:
            imports.add((stack.checkpoint_import, stack.checkpoint_binds))
        notes.append(f"line {finding.line}: {stack.class_name} checkpoints each block of "
                     f"{stack.stack} (self.gradient_checkpointing = {default})")
    if edits.empty:
        return FixResult(source)
    module = edits.apply(located.module)
    for code, binds in sorted(imports):
        if code not in source:
            module = ensure_import(module, code, binds)
    return FixResult(module.code, notes)


@fixer("TA402")
def fix_use_reentrant(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    for finding in findings:
        call = call_at(located, finding.span)
        if call is not None:
            edits.replace(call, lambda c: append_args(
                c, [keyword_arg("use_reentrant", cst.Name("False"))]))
    if edits.empty:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code,
                     [f"line {f.line}: use_reentrant=False" for f in findings])


@fixer("TA403")
def fix_use_cache(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    for finding in findings:
        for node in located.at(finding.line, finding.column, cst.Name):
            if isinstance(node, cst.Name) and node.value == "True":
                edits.replace(node, lambda n: n.with_changes(value="False"))
    if edits.empty:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code,
                     [f"line {f.line}: use_cache=False" for f in findings])
