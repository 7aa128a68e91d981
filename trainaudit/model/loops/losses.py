"""What a backward differentiates: the loss expression, and whether it is divided."""

from __future__ import annotations

import ast
import re

from trainaudit.model.loops.bindings import assignments, params_of
from trainaudit.model.loops.classify import CallClassifier
from trainaudit.model.loops.patterns import first_line, names_in
from trainaudit.model.loops.records import LossSite
from trainaudit.model.module import walk_local


class LossReader(CallClassifier):
    """Reads loss expressions back through assignments and local helpers."""

    def loss_site(self, expr: ast.expr | None, function: str) -> LossSite | None:
        if expr is None:
            return None
        fn = self.module.functions.get(function)
        body: list[ast.stmt] = fn.body if fn is not None else self.module.tree.body
        params = params_of(fn) if fn is not None else set()
        scaled, divisor = self._scaling(expr, body, params, depth=0)
        return LossSite(first_line(self.module.segment(expr)), scaled, divisor)

    def _scaling(self, expr: ast.expr, body: list[ast.stmt], params: set[str],
                 depth: int) -> tuple[bool | None, str | None]:
        module = self.module
        if depth > 4:
            return None, None
        if isinstance(expr, ast.BinOp):
            if isinstance(expr.op, ast.Div | ast.FloorDiv):
                return True, module.segment(expr.right)
            if isinstance(expr.op, ast.Mult):
                for side in (expr.left, expr.right):
                    if isinstance(side, ast.BinOp) and isinstance(side.op, ast.Div):
                        return True, module.segment(side.right)
                    if any(re.search(r"accum|scale|inv|recip", n, re.I) for n in names_in(side)):
                        return True, module.segment(side)
            results = [self._scaling(side, body, params, depth + 1) for side in (expr.left, expr.right)]
            if any(r[0] for r in results):
                return next(r for r in results if r[0])
            if all(r[0] is False for r in results):
                return False, None
            return None, None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            if expr.func.attr in ("div", "div_", "true_divide"):
                return True, module.segment(expr.args[0]) if expr.args else None
            if expr.func.attr in ("mean", "sum", "float", "contiguous", "squeeze", "to"):
                return self._scaling(expr.func.value, body, params, depth + 1)
        if isinstance(expr, ast.Name):
            if expr.id in params:
                return None, None
            sources = list(assignments(body, expr.id))
            if not sources:
                return None, None
            verdicts = []
            for source in sources:
                if source is None:  # an augmented division
                    return True, None
                verdicts.append(self._scaling(source, body, params, depth + 1))
            if any(v[0] for v in verdicts):
                return next(v for v in verdicts if v[0])
            if all(v[0] is False for v in verdicts):
                return False, None
            return None, None
        if isinstance(expr, ast.Subscript):
            return self._scaling(expr.value, body, params, depth + 1)
        if isinstance(expr, ast.Attribute) and expr.attr == "loss":
            return self._scaling(expr.value, body, params, depth + 1)
        if isinstance(expr, ast.Call):
            return self._call_scaling(expr, params, depth)
        return None, None

    def _call_scaling(self, call: ast.Call, params: set[str], depth: int) -> tuple[bool | None, str | None]:
        module = self.module
        name = module.call_name(call) or ""
        if name.startswith("torch.nn.functional.") or (name.startswith("torch.") and "loss" in name.lower()):
            return False, None
        if isinstance(call.func, ast.Name) and call.func.id in module.functions:
            fn = module.functions[call.func.id]
            returns = [n.value for n in walk_local(fn.body)
                       if isinstance(n, ast.Return) and n.value is not None]
            verdicts = [self._scaling(r, fn.body, params_of(fn), depth + 1) for r in returns]
            if verdicts and any(v[0] for v in verdicts):
                return next(v for v in verdicts if v[0])
            if verdicts and all(v[0] is False for v in verdicts):
                return False, None
            return None, None
        classified = self.classify(call, "")
        if classified is not None and classified[0] == "forward":
            return False, None
        text = module.segment(call.func)
        if text.split(".")[0] in params:
            return None, None
        made = self.bindings.made_by(text)
        if made and all(m.rsplit(".", 1)[-1].endswith("Loss") or m.startswith("torch.nn.") for m in made):
            return False, None
        return None, None

    # -- loops --------------------------------------------------------------------

