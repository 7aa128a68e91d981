"""Comprehensions: an operation applied to every item of a known record keeps the record
(``{k: v.to(device) for k, v in batch.items()}``, ``tuple(t.to(device) for t in batch)``),
one over anything else is a homogeneous list of what the element expression gives."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from trainaudit.model.flow.values import Const, ListOf, Opaque, Record, Value, constant_key_of

if TYPE_CHECKING:
    from trainaudit.model.flow.frame import Evaluator, Frame

# A record with more items than this is read as a homogeneous list.
MAX_ITEMS = 16

Comprehension = ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp


def evaluate(interp: Evaluator, node: Comprehension, frame: Frame) -> Value:
    """The value of a comprehension, the frame's names as they were before it."""
    saved = dict(frame.env)
    try:
        per_item = _per_item(interp, node, frame)
        if per_item is not None:
            return per_item
        for generator in node.generators:
            iterable = interp.eval(generator.iter, frame)
            interp.bind(generator.target, interp.element_of(iterable, generator.iter, frame),
                        frame)
        if isinstance(node, ast.DictComp):
            return Opaque(("dict", frame.module.name, node.lineno, node.col_offset))
        return ListOf(interp.eval(node.elt, frame))
    finally:
        frame.env = saved


def _per_item(interp: Evaluator, node: Comprehension, frame: Frame) -> Value | None:
    """One generator without conditions over a record whose items are known: the
    element expression for each item, in a record of the same keys (a dict comprehension
    over ``record.items()``) or positions (any other over a tuple or list)."""
    if len(node.generators) != 1 or node.generators[0].ifs or node.generators[0].is_async:
        return None
    generator = node.generators[0]
    source_node = generator.iter
    over_items = False
    if isinstance(source_node, ast.Call) and isinstance(source_node.func, ast.Attribute) \
            and source_node.func.attr == "items" and not source_node.args:
        source_node, over_items = source_node.func.value, True
    source = interp.eval(source_node, frame)
    if not isinstance(source, Record) or source.base is not None \
            or len(source.items) > MAX_ITEMS or (over_items != (source.kind == "dict")):
        return None
    items: list[tuple[object, Value]] = []
    for position, (key, value) in enumerate(source.items):
        bound: Value = Record("tuple", ((0, Const(key)), (1, value))) if over_items else value
        interp.bind(generator.target, bound, frame)
        if isinstance(node, ast.DictComp):
            new_key = constant_key_of(interp.eval(node.key, frame))
            if new_key is None:
                return None
            items.append((new_key, interp.eval(node.value, frame)))
        else:
            items.append((position, interp.eval(node.elt, frame)))
    return Record("dict" if isinstance(node, ast.DictComp) else "list", tuple(items))
