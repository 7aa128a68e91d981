"""Counts of a micro-batch's own elements: what makes a summed loss its mean."""

from __future__ import annotations

import ast

# Calls that count a tensor's elements: ``labels.numel()``, ``mask.sum()``, ``(y != -100).sum()``.
_COUNTING_METHODS = frozenset({"numel", "nelement", "count_nonzero", "sum"})
# Wrappers that keep a count a count: ``.item()``, ``float(n)``, ``n.clamp(min=1)``, ``max(n, 1)``.
_KEEPING_METHODS = frozenset({"item", "float", "clamp", "clamp_min", "to", "detach"})


def counts_elements(expr: ast.expr) -> bool:
    """Whether ``expr`` counts the elements of a tensor at hand (``y.numel()``,
    ``(labels != -100).sum()``, ``y.size(0)``, ``y.shape[0]``), not a number made elsewhere
    (a token count of the whole window is a plain name, ``len(loader)`` a count of batches:
    not these)."""
    if isinstance(expr, ast.Subscript):  # y.shape[0], y.size()[0]
        value = expr.value
        return (isinstance(value, ast.Attribute) and value.attr == "shape") or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
            and value.func.attr == "size")
    if not isinstance(expr, ast.Call):
        return False
    func = expr.func
    if isinstance(func, ast.Name):
        if func.id in ("float", "int", "max") and expr.args:
            return counts_elements(expr.args[0])
        return False
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr in _COUNTING_METHODS and not expr.args and not expr.keywords:
        return True
    if func.attr == "size" and len(expr.args) == 1:
        return True
    if func.attr in _KEEPING_METHODS:
        return counts_elements(func.value)
    return False
