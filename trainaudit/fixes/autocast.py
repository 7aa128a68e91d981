"""TA301's fix (feature): the statements from the training forward through the loss computed
from its output go under ``torch.autocast(device_type=..., dtype=torch.bfloat16)``, enabled
where the script's device is CUDA; a loss written inside its backward
(``crit(out, y).backward()``) is computed inside the region and differentiated after it."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, fitted_call, line_length, names_in_scope
from trainaudit.fixes.toolkit import (
    Edits,
    ensure_import,
    fresh_name,
    replace_with,
    statement_at_line,
    unparenthesized,
)
from trainaudit.payloads import AutocastWrap, payload_of

# -- TA301: wrap the training forward in autocast ------------------------------------------


@fixer("TA301")
def fix_no_mixed_precision(source: str, findings: Sequence[Finding],
                           options: Mapping[str, Any]) -> FixResult:
    dtype = str(options.get("autocast-dtype", "bfloat16"))
    if dtype not in ("bfloat16", "float16"):
        return FixResult(source, [f"autocast-dtype {dtype!r} is not bfloat16 or float16; not fixed"])
    located = Located(source)
    edits = Edits()
    notes: list[str] = []
    add_import = False
    for finding in findings:
        data = payload_of(finding, AutocastWrap)
        if data is None:
            continue
        first = statement_at_line(located, data.first_line)
        if first is None:
            continue
        parent = located.parent(first)
        if not isinstance(parent, cst.IndentedBlock | cst.Module):
            continue
        body = list(parent.body)
        start = body.index(first)
        end = start
        while end + 1 < len(body) and located.range(body[end]).end.line < data.last_line:
            end += 1
        torch_name = data.torch_name
        device = data.device_type
        literal = device[:1] in ("'", '"')
        if literal and (device.strip("'\"") != "cuda" or not uses_cuda(source)):
            notes.append(f"line {finding.line}: not fixed: the script never uses a GPU, and "
                         "autocast on a CPU is emulated (slower) or off")
            continue
        arguments = [f"device_type={device}", f"dtype={torch_name}.{dtype}"]
        if not literal:  # the script picks its device: autocast only where it runs on CUDA
            arguments.append(f'enabled={device} == "cuda"')
        head = body[start]
        laid_out = fitted_call(f"{torch_name}.autocast", arguments, prefix="with ", suffix=":",
                               column=located.range(head).start.column,
                               limit=line_length(options))
        context = cst.parse_expression(laid_out[len("with "):-1])
        assert isinstance(head, cst.SimpleStatementLine | cst.BaseCompoundStatement)
        wrapped = [head.with_changes(leading_lines=()), *body[start + 1 : end + 1]]
        if data.inline_loss:
            # ``crit(out, y).backward()``: the loss reads the forward's low-precision output,
            # so it is computed inside the region and differentiated after it.
            split = _split_inline_backward(body[end + 1] if end + 1 < len(body) else None,
                                           data.inline_loss, located)
            if split is None:
                continue
            assignment, backward_statement = split
            wrapped.append(assignment)
            edits.replace(body[end + 1], replace_with(backward_statement))
        block = cst.With(items=[cst.WithItem(context)], body=cst.IndentedBlock(body=wrapped),
                         leading_lines=head.leading_lines)
        edits.replace(head, replace_with(block))
        edits.remove |= set(body[start + 1 : end + 1])
        add_import = add_import or data.add_import
        notes.append(f"line {finding.line}: forward and loss run under "
                     f"torch.autocast({', '.join(arguments)})")
    if edits.empty:
        return FixResult(source)
    module = edits.apply(located.module)
    if add_import:
        module = ensure_import(module, "import torch", "torch")
    return FixResult(module.code, notes)


def _split_inline_backward(stmt: cst.BaseStatement | None, line: int, located: Located
                           ) -> tuple[cst.SimpleStatementLine, cst.SimpleStatementLine] | None:
    """``<expression>.backward()`` at ``line`` as ``loss = <expression>`` and
    ``loss.backward()`` (``loss`` a name free in the whole file)."""
    if not isinstance(stmt, cst.SimpleStatementLine) or located.range(stmt).start.line != line \
            or len(stmt.body) != 1 or not isinstance(stmt.body[0], cst.Expr):
        return None
    call = stmt.body[0].value
    if not (isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)
            and call.func.attr.value == "backward"):
        return None
    name = fresh_name(names_in_scope(located.module), "loss", "step_loss")
    assignment = cst.SimpleStatementLine([cst.Assign(
        targets=[cst.AssignTarget(cst.Name(name))], value=unparenthesized(call.func.value))])
    backward = stmt.with_changes(body=[stmt.body[0].with_changes(value=call.with_changes(
        func=call.func.with_changes(value=cst.Name(name))))])
    return assignment, backward


def uses_cuda(source: str) -> bool:
    """Whether a script names CUDA anywhere (``"cuda"``, ``.cuda()``, ``torch.cuda``): a
    script that never does runs on the CPU, where a ``"cuda"`` autocast is a no-op."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any((isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.startswith("cuda"))
               or (isinstance(node, ast.Attribute) and node.attr == "cuda")
               for node in ast.walk(tree))
