"""Gradient mode as a fact of a region: ``with torch.no_grad()``, ``inference_mode``, the
decorators, ``no_grad() if flag else nullcontext()``, a context bound to a name.

A context is named as the loop model names it (``torch.no_grad``; alternatives of a
conditional or of a name bound in two places joined by ``|``). A region is
``disabled`` when every alternative of some enclosing context turns gradients off
(and no inner ``enable_grad`` turns them back on), ``maybe`` when only some do, else
``enabled``. Rules treat ``maybe`` as unknown: silence.
"""

from __future__ import annotations

import ast

from trainaudit.model.loops.patterns import GradMode, grad_mode
from trainaudit.model.loops.scan import FileScan

__all__ = ["GradMode", "contexts_at", "grad_mode", "grad_mode_at"]

def contexts_at(scan: FileScan, node: ast.AST) -> tuple[str, ...]:
    """The ``with`` items and function decorators around ``node`` within its function
    (outermost first), named as the loop model names them."""
    found: list[str] = []
    for ancestor in scan.module.ancestors(node):
        if isinstance(ancestor, ast.With | ast.AsyncWith):
            found.extend(scan.context_name(item.context_expr) for item in reversed(ancestor.items))
        elif isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if not isinstance(ancestor, ast.Lambda):
                found.extend(scan.context_name(d) for d in reversed(ancestor.decorator_list))
            break
    return tuple(reversed(found))


def grad_mode_at(scan: FileScan, node: ast.AST) -> GradMode:
    """The gradient mode where ``node`` runs, as far as its own function shows."""
    return grad_mode(contexts_at(scan, node))
