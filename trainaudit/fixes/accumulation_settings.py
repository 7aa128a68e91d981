"""Where TA201's accumulation setting lives (an argparse flag beside the batch size, a
parameter of the loop's function, a module constant), and the per-step quantities
(``tokens_per_step = batch_size * seq_len``) that must count a whole optimizer step."""

from __future__ import annotations

import re
from typing import Any

import libcst as cst

from trainaudit.fixes.cst import Located, code_of, names, top_statement
from trainaudit.fixes.toolkit import Edits, add_parameters, as_receiver, expression, statement
from trainaudit.payloads import AccumulationRewrite


def accumulation_setting(located: Located, edits: Edits, payload: AccumulationRewrite, loop: cst.CSTNode,
             function: cst.FunctionDef | None, steps: int) -> tuple[str, str]:
    """Where the accumulation setting lives: (expression, note). An argparse flag next to the
    batch size, else a parameter of the loop's function, else a module-level constant."""
    module = located.module
    source = payload.batch_source or ""
    match = re.match(r"argparse (--[\w-]+) default", source)
    scope: cst.CSTNode = function if function is not None else module
    if match:
        flag = match.group(1)
        dest = flag.lstrip("-").replace("-", "_")
        namespace = _namespace_of(scope, dest) or _namespace_of(module, dest)
        add_argument = _add_argument_statement(module, flag)
        if namespace and add_argument is not None:
            parser, stmt = add_argument
            new_flag = "--accumulation-steps" if "-" in flag.lstrip("-") else "--accumulation_steps"
            if _add_argument_statement(module, new_flag) is not None:  # a second loop: reuse
                return f"{namespace}.accumulation_steps", f"flag {new_flag}"
            edits.insert_after(stmt, statement(
                f'{parser}.add_argument("{new_flag}", type=int, default={steps}, '
                f'help="micro-batches per optimizer step")\n'))
            return f"{namespace}.accumulation_steps", f"new flag {new_flag} (default {steps})"
    if function is not None:
        if any(p.name.value == "accumulation_steps"
               for p in (*function.params.params, *function.params.kwonly_params)):
            return "accumulation_steps", "parameter accumulation_steps"
        edits.replace(function, lambda fn: add_parameters(
            fn, [("accumulation_steps", "int", str(steps))]))
        return "accumulation_steps", f"new parameter accumulation_steps={steps}"
    if any(isinstance(stmt, cst.SimpleStatementLine) and "accumulation_steps" in names(stmt).assigned
           for stmt in module.body):
        return "accumulation_steps", "setting accumulation_steps"
    body: list[cst.CSTNode] = list(module.body)
    anchor = top_statement(located, loop, body)
    assert anchor is not None
    setting = statement(f"accumulation_steps = {steps}  # micro-batches per optimizer step")
    # With the setup above the loop (the loop keeps the blank line before it).
    index = body.index(anchor)
    if index:
        edits.insert_after(body[index - 1], setting)
    else:
        edits.insert_before(anchor, setting)
    return "accumulation_steps", f"new setting accumulation_steps = {steps}"


def _namespace_of(scope: cst.CSTNode, attr: str) -> str | None:
    """``args`` for ``args.batch_size`` used in a scope."""
    found: list[str] = []

    class Visitor(cst.CSTVisitor):
        def visit_Attribute(self, node: cst.Attribute) -> None:
            if node.attr.value == attr and isinstance(node.value, cst.Name | cst.Attribute):
                found.append(code_of(node.value))

    scope.visit(Visitor())
    return found[0] if found else None


def _add_argument_statement(module: cst.Module, flag: str) -> tuple[str, cst.SimpleStatementLine] | None:
    found: list[tuple[str, cst.SimpleStatementLine]] = []

    class Visitor(cst.CSTVisitor):
        def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
            for small in node.body:
                call = small.value if isinstance(small, cst.Expr) else None
                if (isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)
                        and call.func.attr.value == "add_argument"
                        and any(isinstance(a.value, cst.SimpleString) and a.value.evaluated_value == flag
                                for a in call.args)):
                    found.append((code_of(call.func.value), node))

    module.visit(Visitor())
    return found[0] if found else None


_PER_STEP = re.compile(r"per_(step|iter|update|optimizer_step)s?$")


def scale_per_step_quantities(edits: Edits, scope: cst.CSTNode, batch_expr: str | None,
                         setting: str) -> list[str]:
    """``tokens_per_step = batch_size * seq_len`` counts one micro-batch: scale it to a step."""
    if not batch_expr:
        return []
    found: list[cst.Assign] = []

    class Visitor(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            if (len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name)
                    and _PER_STEP.search(node.targets[0].target.value)
                    and isinstance(node.value, cst.BinaryOperation)
                    and isinstance(node.value.operator, cst.Multiply)
                    and batch_expr in {code_of(n) for n in _factors(node.value)}):
                found.append(node)

        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            return node is scope

    scope.visit(Visitor())
    notes = []
    for assign in found:
        def scaled(node: Any) -> Any:
            return node.with_changes(value=cst.BinaryOperation(
                left=node.value, operator=cst.Multiply(whitespace_before=cst.SimpleWhitespace(" "),
                                                       whitespace_after=cst.SimpleWhitespace(" ")),
                right=as_receiver(expression(setting))))

        edits.replace(assign, scaled)
        notes.append(f"`{code_of(assign.targets[0].target)}` now counts a whole optimizer step")
    return notes


def _factors(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply) and not node.lpar:
        return [*_factors(node.left), *_factors(node.right)]
    return [node]
