"""What a backward differentiates: the loss expression, and whether it is divided."""

from __future__ import annotations

import ast
import re
from functools import cached_property

from trainaudit.model.definitions import assignments
from trainaudit.model.loops.classify import CallClassifier
from trainaudit.model.loops.counting import counts_elements
from trainaudit.model.loops.criteria import held_parameters, names_loss_class, reduction_keyword
from trainaudit.model.loops.patterns import first_line, names_in
from trainaudit.model.loops.records import LossSite
from trainaudit.model.module import parameter_names, walk_local
from trainaudit.model.objects import file_objects


class LossReader(CallClassifier):
    """Reads loss expressions back through assignments and local helpers."""

    def loss_site(self, expr: ast.expr | None, function: str, backward: bool = True) -> LossSite | None:
        """What ``expr`` is as a loss; ``backward``: it is differentiated here (a returned
        loss is not: the parameters its callable may be are only read for a backward)."""
        if expr is None:
            return None
        fn = self.module.functions.get(function)
        body: list[ast.stmt] = fn.body if fn is not None else self.module.tree.body
        scaled, divisor = self._scaling(expr, function, depth=0)
        reduction = self.reduction(expr, function)
        helper = self._imported_helper(expr, body) if scaled is None else None
        held, per_element = held_parameters(self.module, expr, function) \
            if scaled is None and helper is None and backward else ((), False)
        return LossSite(first_line(self.module.segment(expr)), scaled, divisor, reduction,
                        counter=divisor is not None and _counts_up(body, divisor),
                        helper=helper, parameters=held, per_element=per_element)

    def _imported_helper(self, expr: ast.expr, body: list[ast.stmt]) -> str | None:
        """The imported function a loss is the plain result of (``loss_fn(out, y)``, or a
        name every assignment of which is such a call), qualified."""
        calls = [expr] if isinstance(expr, ast.Call) else []
        if isinstance(expr, ast.Name):
            sources = list(assignments(body, expr.id))
            if not sources or not all(isinstance(v, ast.Call) for v in sources):
                return None
            calls = [v for v in sources if isinstance(v, ast.Call)]
        names = {self.module.call_name(call) if isinstance(call.func, ast.Name)
                 and self.module.is_imported(call.func.id) else None for call in calls}
        name = names.pop() if len(names) == 1 else None
        return name if name is not None and "." in name else None

    def returned_loss(self, function: str) -> LossSite | None:
        """For a top-level function that returns a torch loss: whether what it returns is
        divided, and how it is reduced (what a loop in another file calling it reads)."""
        fn = self.module.functions.get(function)
        if fn is None:
            return None
        returns = [n.value for n in walk_local(fn.body) if isinstance(n, ast.Return)
                   and n.value is not None]
        if len(returns) != 1 or not _MAY_REDUCE.search(self._text(fn)) \
                or self.reduction(returns[0], function) is None:
            return None  # no torch loss (text first, then the cheaper question)
        return self.loss_site(returns[0], function, backward=False)

    def reduction(self, expr: ast.expr, function: str, depth: int = 0) -> str | None:
        """How the loss ``expr`` is reduced over its elements: "mean", "sum" or "none", read
        back through assignments, ``.sum()``/``.mean()``, criteria, local helpers and the
        ``forward`` of a model class defined in this file; None when not visible. A sum
        anywhere wins: such a loss is normalised by its author (by a token count, or summed
        across ranks on purpose)."""
        if depth > 6:
            return None
        module = self.module
        found: list[str | None] = []
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div) \
                and counts_elements(expr.right):
            # ``sum / labels.numel()``: the micro-batch's mean, spelled out.
            left = self.reduction(expr.left, function, depth + 1)
            return "mean" if left == "sum" else left
        if isinstance(expr, ast.BinOp):
            found = [self.reduction(expr.left, function, depth + 1),
                     self.reduction(expr.right, function, depth + 1)]
        elif isinstance(expr, ast.Tuple):
            found = [self.reduction(e, function, depth + 1) for e in expr.elts]
        elif isinstance(expr, ast.Subscript) or (isinstance(expr, ast.Attribute) and expr.attr == "loss"):
            return self.reduction(expr.value, function, depth + 1)
        elif isinstance(expr, ast.Name):
            fn = module.functions.get(function)
            body = fn.body if fn is not None else module.tree.body
            found = [self.reduction(v, function, depth + 1) for v in assignments(body, expr.id)
                     if v is not None]
        elif isinstance(expr, ast.Call):
            return self._call_reduction(expr, function, depth)
        return merge_reductions(found)

    @cached_property
    def _may_build_losses(self) -> bool:
        """A loss class named in the file, or a class of its own (a model whose ``forward``
        may return the loss): else no object here is a criterion to ask about."""
        return names_loss_class(self.module) or bool(self.module.classes)

    def _call_reduction(self, call: ast.Call, function: str, depth: int) -> str | None:
        module = self.module
        func = call.func
        name = module.call_name(call) or ""
        if isinstance(func, ast.Attribute) and func.attr in ("sum", "mean") and not call.args \
                and not name.startswith("torch."):
            return func.attr
        if isinstance(func, ast.Attribute) and func.attr in ("float", "contiguous", "squeeze", "to"):
            return self.reduction(func.value, function, depth + 1)
        if name.startswith("torch.nn.functional.") and name.rsplit(".", 1)[-1] in LOSS_FUNCTIONS:
            return reduction_keyword(call) or "mean"
        if isinstance(func, ast.Name) and func.id in module.functions:
            return self._returned_reduction(func.id, depth)
        if not self._may_build_losses:
            return None  # no loss class built here, no model class to read: no object to ask
        criterion = self._criterion(func, function)
        if criterion is not None:
            return reduction_keyword(criterion) or "mean"
        cls = file_objects(module).made_by_class(func, function)
        if cls is not None:
            forward = f"{module.scope_name(cls)}.forward" if module.scope_name(cls) else f"{cls.name}.forward"
            if forward in module.functions:
                return self._returned_reduction(forward, depth)
        return None

    def _returned_reduction(self, function: str, depth: int) -> str | None:
        fn = self.module.functions[function]
        returns = [n.value for n in walk_local(fn.body) if isinstance(n, ast.Return) and n.value is not None]
        return merge_reductions([self.reduction(r, function, depth + 1) for r in returns])

    def _criterion(self, func: ast.expr, function: str) -> ast.Call | None:
        """The ``nn.CrossEntropyLoss(...)`` call a criterion name was made by."""
        found = file_objects(self.module).object_of(func, function)
        for made in found.constructions if found is not None else ():
            name = self.module.call_name(made) or ""
            if name.startswith("torch.nn.") and name.endswith("Loss"):
                return made
        return None

    def _scaling(self, expr: ast.expr, function: str, depth: int) -> tuple[bool | None, str | None]:
        module = self.module
        fn = module.functions.get(function)
        body: list[ast.stmt] = fn.body if fn is not None else module.tree.body
        params = parameter_names(fn) if fn is not None else set()
        if depth > 4:
            return None, None
        if isinstance(expr, ast.BinOp):
            if isinstance(expr.op, ast.Div) and counts_elements(expr.right):
                # Normalised by the micro-batch's own element count (a summed loss made a
                # mean): not a division by the accumulation steps.
                return self._scaling(expr.left, function, depth + 1)
            if isinstance(expr.op, ast.Div | ast.FloorDiv):
                return True, module.segment(expr.right)
            if isinstance(expr.op, ast.Mult):
                for side in (expr.left, expr.right):
                    if isinstance(side, ast.BinOp) and isinstance(side.op, ast.Div):
                        return True, module.segment(side.right)
                    if any(re.search(r"accum|scale|inv|recip", n, re.I) for n in names_in(side)):
                        return True, module.segment(side)
            results = [self._scaling(side, function, depth + 1) for side in (expr.left, expr.right)]
            if any(r[0] for r in results):
                return next(r for r in results if r[0])
            if all(r[0] is False for r in results):
                return False, None
            return None, None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            if expr.func.attr in ("div", "div_", "true_divide"):
                return True, module.segment(expr.args[0]) if expr.args else None
            if expr.func.attr in ("mean", "sum", "float", "contiguous", "squeeze", "to"):
                return self._scaling(expr.func.value, function, depth + 1)
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
                verdicts.append(self._scaling(source, function, depth + 1))
            if any(v[0] for v in verdicts):
                return next(v for v in verdicts if v[0])
            if all(v[0] is False for v in verdicts):
                return False, None
            return None, None
        if isinstance(expr, ast.Subscript):
            return self._scaling(expr.value, function, depth + 1)
        if isinstance(expr, ast.Attribute) and expr.attr == "loss":
            return self._scaling(expr.value, function, depth + 1)
        if isinstance(expr, ast.Call):
            return self._call_scaling(expr, function, depth)
        return None, None

    def _call_scaling(self, call: ast.Call, function: str, depth: int) -> tuple[bool | None, str | None]:
        module = self.module
        name = module.call_name(call) or ""
        if name.startswith("torch.nn.functional.") or (name.startswith("torch.") and "loss" in name.lower()):
            return False, None
        if isinstance(call.func, ast.Name) and call.func.id in module.functions:
            fn = module.functions[call.func.id]
            returns = [n.value for n in walk_local(fn.body)
                       if isinstance(n, ast.Return) and n.value is not None]
            verdicts = [self._scaling(r, call.func.id, depth + 1) for r in returns]
            if verdicts and any(v[0] for v in verdicts):
                return next(v for v in verdicts if v[0])
            if verdicts and all(v[0] is False for v in verdicts):
                return False, None
            return None, None
        classified = self.classify(call, function)
        if classified is not None and classified[0] == "forward":
            return False, None
        # A criterion made by a torch loss class, also one kept on ``self`` by ``__init__``
        # (``self.criterion(out, y)``): its result is not divided.
        found = file_objects(module).object_of(call.func, function)
        made = found.makers if found is not None else []
        if made and all(m.rsplit(".", 1)[-1].endswith("Loss") or m.startswith("torch.nn.") for m in made):
            return False, None
        return None, None

    # -- loops --------------------------------------------------------------------



# torch.nn.functional losses (all reduce by "mean" unless told otherwise).
LOSS_FUNCTIONS = frozenset({
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "poisson_nll_loss",
    "gaussian_nll_loss", "margin_ranking_loss", "hinge_embedding_loss", "soft_margin_loss",
    "multilabel_soft_margin_loss", "cosine_embedding_loss", "triplet_margin_loss", "ctc_loss",
    "multi_margin_loss", "multilabel_margin_loss", "triplet_margin_with_distance_loss",
})



# What a function that returns a reduced loss writes somewhere: a loss call or criterion,
# a reduction, a forward of a model (a text test before any reading).
_MAY_REDUCE = re.compile(r"loss|Loss|criterion|entropy|\.sum\(|\.mean\(|forward|model", re.IGNORECASE)


def _counts_up(body: list[ast.stmt], name: str) -> bool:
    """``name += 1`` somewhere in the function's own code."""
    return name.isidentifier() and any(
        isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add)
        and isinstance(node.target, ast.Name) and node.target.id == name
        and isinstance(node.value, ast.Constant) and node.value.value == 1
        for node in walk_local(body))


def merge_reductions(found: list[str | None]) -> str | None:
    """One verdict for several sources: a sum (or none, or a reduction set by a variable)
    wins over a mean; None when nothing is known."""
    for strong in ("sum", "none", "unknown"):
        if strong in found:
            return strong
    return "mean" if "mean" in found else None
