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

import ast
from collections.abc import Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located
from trainaudit.fixes.precision import (
    Edits,
    append_args,
    arg_with_comma,
    bound_names,
    call_by_span,
    ensure_import,
    keyword_arg,
    parse_facts,
    replace_with,
    simple_statement,
    statement,
    statement_at_line,
)
from trainaudit.model.checkpointing import BlockStack, CheckpointingFacts, block_stack_at
from trainaudit.model.module import ModuleFacts

GUARD = "self.gradient_checkpointing and self.training"
ENABLE_METHOD = '''
def gradient_checkpointing_enable(self, enable: bool = True) -> None:
    """Recompute each block's activations during backward instead of keeping them."""
    self.gradient_checkpointing = enable
'''


def _span(finding: Finding) -> tuple[int, int, int, int]:
    s = finding.span
    return (s.line, s.column, s.end_line, s.end_column)


def _checkpoint_function(facts: ModuleFacts, source: str) -> tuple[str, str | None, str]:
    """How to spell ``checkpoint`` here: (expression, import to add, name the import binds)."""
    aliases = facts.imports.aliases
    for local, target in aliases.items():
        if target == "torch.utils.checkpoint.checkpoint":
            return local, None, local
    for local, target in aliases.items():
        if target == "torch.utils.checkpoint" and local != "torch":
            return f"{local}.checkpoint", None, local
    if "checkpoint" not in bound_names(source):
        return "checkpoint", "from torch.utils.checkpoint import checkpoint", "checkpoint"
    return "torch.utils.checkpoint.checkpoint", "import torch.utils.checkpoint", "torch.utils.checkpoint"


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
    argument = cst.Module([]).code_for_node(call.args[0].value)
    small = stmt.body[0] if len(stmt.body) == 1 else None
    block = next(n for n in ("block", "layer", "module_", "block_") if n not in taken)
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


def _class_node(located: Located, facts: ModuleFacts, class_name: str) -> cst.ClassDef | None:
    node = facts.classes.get(class_name)
    if node is None:
        return None
    stmt = statement_at_line(located, node.lineno)
    if isinstance(stmt, cst.ClassDef):
        return stmt
    for candidate, pos in located.positions.items():  # decorated classes start at the decorator
        if isinstance(candidate, cst.ClassDef) and candidate.name.value == node.name \
                and pos.start.line <= node.lineno <= pos.end.line:
            return candidate
    return None


def _has_attribute(cls: ast.ClassDef) -> bool:
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and node.attr == "gradient_checkpointing" \
                and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "gradient_checkpointing"
                                                for t in node.targets):
            return True
    return False


def _plan_class(located: Located, facts: ModuleFacts, stack: BlockStack, edits: Edits,
                default: bool) -> None:
    """The attribute (after the stack is built) and the enable method (after ``__init__``)."""
    cls_ast = facts.classes[stack.class_name]
    cls = _class_node(located, facts, stack.class_name)
    if cls is None or not isinstance(cls.body, cst.IndentedBlock):
        return
    methods = {s.name.value: s for s in cls.body.body if isinstance(s, cst.FunctionDef)}
    init = methods.get("__init__")
    if not _has_attribute(cls_ast):
        attribute = statement(f"self.gradient_checkpointing = {default}")
        anchor: cst.CSTNode | None = None
        if init is not None and stack.init_assignment is not None:
            candidate = statement_at_line(located, stack.init_assignment.lineno)
            if candidate is not None and isinstance(init.body, cst.IndentedBlock) \
                    and candidate in init.body.body:
                anchor = candidate
        if anchor is not None:
            edits.after.setdefault(id(anchor), []).append(attribute)
        elif init is not None and isinstance(init.body, cst.IndentedBlock):
            edits.after.setdefault(id(init.body.body[-1]), []).append(attribute)
        else:  # no __init__: a class attribute, after the docstring
            body = list(cls.body.body)
            docstring = isinstance(body[0], cst.SimpleStatementLine) and isinstance(
                body[0].body[0], cst.Expr) and isinstance(body[0].body[0].value, cst.SimpleString)
            if docstring and len(body) > 1:
                edits.before.setdefault(id(body[1]), []).append(
                    statement(f"gradient_checkpointing = {default}"))
            else:
                edits.after.setdefault(id(body[0]), []).append(
                    statement(f"gradient_checkpointing = {default}"))
    if "gradient_checkpointing_enable" not in methods:
        method = cst.parse_statement(ENABLE_METHOD.lstrip("\n"))
        assert isinstance(method, cst.FunctionDef)
        method = method.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        if init is not None:
            edits.after.setdefault(id(init), []).append(method)
        elif "forward" in methods:
            forward = methods["forward"]
            inner = edits.replace.get(id(forward))

            def before_forward(updated: cst.FunctionDef) -> cst.FlattenSentinel[cst.BaseStatement]:
                if inner is not None:
                    updated = inner(updated)
                return cst.FlattenSentinel([
                    method.with_changes(leading_lines=updated.leading_lines),
                    updated.with_changes(leading_lines=[cst.EmptyLine(indent=False)])])

            edits.replace[id(forward)] = before_forward


@fixer("TA401")
def fix_no_activation_checkpointing(source: str, findings: Sequence[Finding],
                                    options: Mapping[str, Any]) -> FixResult:
    facts = parse_facts(source)
    checkpointing = CheckpointingFacts(facts)
    located = Located(source)
    edits = Edits()
    notes: list[str] = []
    function, import_code, binds = _checkpoint_function(facts, source)
    default = bool(options.get("checkpointing-default", True))
    taken = bound_names(source)
    planned: set[str] = set()
    for finding in findings:
        stack = block_stack_at(checkpointing, finding.span)
        call = call_by_span(located, _span(finding))
        stmt = simple_statement(located, call) if call is not None else None
        if stack is None or call is None or stmt is None:
            continue
        if stack.kind == "sequential":
            branch = _sequential_branch(stmt, call, stack.stack, function, taken)
            if branch is None:
                continue
        else:
            swapped = stmt.visit(_SwapCall(call, _checkpointed_call(call, function)))
            assert isinstance(swapped, cst.SimpleStatementLine)
            branch = [swapped.with_changes(leading_lines=())]
        edits.replace[id(stmt)] = replace_with(_guarded(stmt, branch))
        if stack.class_name not in planned:
            _plan_class(located, facts, stack, edits, default)
            planned.add(stack.class_name)
        notes.append(f"line {finding.line}: {stack.class_name} checkpoints each block of "
                     f"{stack.stack} (self.gradient_checkpointing = {default})")
    if edits.empty:
        return FixResult(source)
    module = located.module.visit(edits)
    if import_code is not None and import_code not in source:
        module = ensure_import(module, import_code, binds, set())
    return FixResult(module.code, notes)


@fixer("TA402")
def fix_use_reentrant(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    for finding in findings:
        call = call_by_span(located, _span(finding))
        if call is not None:
            edits.replace[id(call)] = lambda c: append_args(
                c, [keyword_arg("use_reentrant", cst.Name("False"))])
    if edits.empty:
        return FixResult(source)
    return FixResult(located.module.visit(edits).code,
                     [f"line {f.line}: use_reentrant=False" for f in findings])


@fixer("TA403")
def fix_use_cache(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    for finding in findings:
        for node in located.at(finding.line, finding.column, cst.Name):
            if isinstance(node, cst.Name) and node.value == "True":
                edits.replace[id(node)] = lambda n: n.with_changes(value="False")
    if edits.empty:
        return FixResult(source)
    return FixResult(located.module.visit(edits).code,
                     [f"line {f.line}: use_cache=False" for f in findings])
