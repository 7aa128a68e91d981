"""GradScaler objects of one file: the object model's objects of kind scaler.

A scaler is an *object*, not a name (``trainaudit.model.objects``): ``scaler`` in
``train_amp`` and ``scaler`` in ``train_plain`` are different things, ``self.scaler``
belongs to its class, and one scaler passed into ``train_step(model, batch, scaler)`` or
``Trainer(scaler=scaler)`` is one object with every spelling. This module keeps, for rules
that read the whole file, the spellings that build scalers, every scaler method call and
every spelling of a scaler.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from trainaudit.model.module import ModuleFacts
from trainaudit.model.objects import FileObject, file_objects, spelling

SCALER_METHODS = ("scale", "unscale_", "step", "update")

ScalerObject = FileObject


@dataclass(frozen=True)
class ScalerFacts:
    """GradScalers of a file: the objects, and (for rules reading the whole file) the
    spellings that build them, every method call on them, and every spelling."""

    objects: tuple[ScalerObject, ...]
    constructed: dict[str, list[ast.Call]]
    calls: dict[str, list[ast.Call]]
    receivers: set[str]

    def exists(self) -> bool:
        return bool(self.objects)

    def uses(self, method: str) -> list[ast.Call]:
        return self.calls.get(method, [])


def find_scalers(module: ModuleFacts) -> ScalerFacts:
    """Every GradScaler object of a file (see the module docstring)."""
    objects = [o for o in file_objects(module).objects if o.kind == "scaler"]
    objects.sort(key=lambda o: min((r.scope, r.spelled) for r in o.refs))
    constructed: dict[str, list[ast.Call]] = {}
    by_method: dict[str, list[ast.Call]] = {}
    receivers: set[str] = set()
    for scaler in objects:
        for ref in scaler.refs:
            receivers.add(ref.spelled)
        for call in scaler.constructions:
            spelled = _assigned_to(module, call)
            if spelled is not None:
                constructed.setdefault(spelled, []).append(call)
        for scaler_call in scaler.calls:
            if scaler_call.method in SCALER_METHODS:
                by_method.setdefault(scaler_call.method, []).append(scaler_call.call)
    for method_calls in by_method.values():
        method_calls.sort(key=lambda c: (c.lineno, c.col_offset))
    return ScalerFacts(tuple(objects), constructed, by_method, receivers)


def _assigned_to(module: ModuleFacts, call: ast.Call) -> str | None:
    """The spelling a construction is assigned to (``self.scaler`` for
    ``self.scaler = GradScaler(enabled=amp)``)."""
    for ancestor in module.ancestors(call):
        if isinstance(ancestor, ast.Assign):
            return spelling(ancestor.targets[0])
        if isinstance(ancestor, ast.AnnAssign):
            return spelling(ancestor.target)
        if isinstance(ancestor, ast.stmt):
            return None
    return None
