"""Criteria handed across files: a loss computed by calling a parameter
(``loss = criterion(logits, y)`` in ``train_step(model, batch, criterion)``) is read where
the caller in another file builds what it passes (``criterion = nn.CrossEntropyLoss()``;
``train_step(model, batch, criterion)`` or ``Trainer(...).fit(criterion)``).

Each file keeps two facts, both read off the object model: for a loss it cannot read,
the parameters its callee may be (function, position, name), and for its calls of
functions and methods of other modules, the criteria it passes (position or keyword →
reduction). The project phase joins them.
"""

from __future__ import annotations

import ast

from trainaudit.model.definitions import assignments
from trainaudit.model.loops.counting import counts_elements
from trainaudit.model.module import ModuleFacts, keyword
from trainaudit.model.objects import file_objects

# (function of the file, position among the arguments a caller writes, parameter name)
HeldParameter = tuple[str, int, str]


def held_parameters(module: ModuleFacts, expr: ast.expr, function: str
                    ) -> tuple[tuple[HeldParameter, ...], bool]:
    """The parameters the callable making a loss may be (``criterion`` of ``train_step``
    for ``criterion(logits, y)``, through the in-file calls the object model joins:
    ``self.train_epoch(criterion)`` from ``fit``), and whether its result is divided by
    its micro-batch's element count (``criterion(logits, y) / y.numel()``)."""
    value = expr
    if isinstance(value, ast.Name):  # ``loss`` assigned once in the function
        fn = module.functions.get(function)
        values = [v for v in assignments(fn.body if fn is not None else module.tree.body, value.id)
                  if v is not None]
        value = values[0] if len(values) == 1 else value
    dividend = element_count_dividend(value)
    call = dividend or value
    if not isinstance(call, ast.Call):
        return (), False
    objects = file_objects(module)
    found = objects.object_of(call.func, function)
    if found is not None and (found.kind not in ("", "criterion") or found.constructions):
        return (), False
    held: list[HeldParameter] = []
    for ref in objects.refs_of(call.func, function):
        fn = module.functions.get(ref.scope)
        if fn is None:
            continue
        positional = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        if positional and positional[0] in ("self", "cls") and "." in ref.scope:
            positional = positional[1:]
        names = {a.arg for a in fn.args.kwonlyargs} | set(positional)
        if ref.spelled in names:
            index = positional.index(ref.spelled) if ref.spelled in positional else -1
            held.append((ref.scope, index, ref.spelled))
    return tuple(sorted(held)), dividend is not None


def element_count_dividend(expr: ast.expr) -> ast.expr | None:
    """``x`` of ``x / y.numel()`` (a sum made its micro-batch's mean), else None."""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div) and counts_elements(expr.right):
        return expr.left
    return None


def criteria_passed(module: ModuleFacts) -> dict[str, dict[str, str]]:
    """Calls of functions and methods of other modules that pass a criterion: the callee
    qualified (``steps.train_step``, ``trainer.Trainer.fit``) → position (``"0"``) or
    keyword → the criterion's reduction (``mean`` unless built with another)."""
    found: dict[str, dict[str, str]] = {}
    if not names_loss_class(module):
        return found
    objects = file_objects(module)
    if not any(o.kind == "criterion" and o.constructions for o in objects.objects):
        return found
    for function, calls in module.calls_by_function.items():
        for call in calls:
            if not call.args and not call.keywords:
                continue
            callee = _imported_callee(module, call, function)
            if callee is None:
                continue
            given = [(str(i), arg) for i, arg in enumerate(call.args) if not isinstance(arg, ast.Starred)]
            given += [(kw.arg, kw.value) for kw in call.keywords if kw.arg is not None]
            for slot, value in given:
                if not isinstance(value, ast.Name | ast.Attribute):
                    continue
                held = objects.object_of(value, function)
                if held is not None and held.kind == "criterion" and held.constructions:
                    found.setdefault(callee, {})[slot] = _reduction(held.constructions)
    return found


def _imported_callee(module: ModuleFacts, call: ast.Call, function: str) -> str | None:
    """The qualified function an imported name calls, or the method of an object built by
    an imported class (``trainer.fit`` after ``trainer = Trainer(...)``)."""
    func = call.func
    if isinstance(func, ast.Name):
        return module.qualname(func) if module.is_imported(func.id) else None
    if isinstance(func, ast.Attribute):
        owner = file_objects(module).object_of(func.value, function)
        for made in owner.constructions if owner is not None else ():
            if isinstance(made.func, ast.Name) and module.is_imported(made.func.id):
                return f"{module.qualname(made.func)}.{func.attr}"
        qualified = module.qualname(func)
        if qualified is not None and module.is_imported(qualified.split(".", 1)[0]):
            return qualified
    return None


def _reduction(constructions: list[ast.Call]) -> str:
    reductions = {reduction_keyword(c) or "mean" for c in constructions}
    return reductions.pop() if len(reductions) == 1 else "unknown"


def reduction_keyword(call: ast.Call) -> str | None:
    """The ``reduction=`` a loss call or class is given: "mean" (``batchmean`` too),
    "sum", "none", "unknown" (set by a variable); None when not given."""
    value = keyword(call, "reduction")
    if isinstance(value, ast.Constant) and value.value in ("mean", "sum", "none", "batchmean"):
        return "mean" if value.value == "batchmean" else str(value.value)
    return "unknown" if value is not None else None


def names_loss_class(module: ModuleFacts) -> bool:
    """The file's text names a loss class (``nn.CrossEntropyLoss``): a text test before
    asking the object model for criteria."""
    return "Loss" in module.source
