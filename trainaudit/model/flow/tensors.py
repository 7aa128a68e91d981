"""Transfer functions of token tensors: slices, rolls, padding, concatenation, masking.

Each takes abstract values and the AST it reads, and returns the value the operation
makes. The sequence axis is the last axis of a token tensor and the one before the
vocabulary of logits; where ``ndim`` is unknown, the spelling decides (``x[1:]`` on a
1-D item, ``x[:, 1:]`` on a batch).
"""

from __future__ import annotations

import ast
from dataclasses import replace

from trainaudit.model.flow.program import FlowModule
from trainaudit.model.flow.values import (
    UNKNOWN,
    Logits,
    MaskMark,
    MaskValue,
    Neutralizer,
    Opaque,
    Producer,
    ShiftStep,
    Site,
    Stream,
    Tokens,
    Trim,
    Value,
    Wrap,
)
from trainaudit.model.module import int_value


def as_tokens(value: Value) -> Tokens | None:
    """A value read as a token tensor: an opaque value is a stream of its own."""
    if isinstance(value, Tokens):
        return value
    if isinstance(value, Opaque):
        return Tokens(Stream(value.key))
    return None


def elements(node: ast.Subscript) -> list[ast.expr]:
    return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]


def _seq_index(elts: list[ast.expr], ndim: int | None, logits: bool) -> int | None:
    """Which subscript element indexes the sequence axis (None: none of them)."""
    ellipsis = next((i for i, e in enumerate(elts)
                     if isinstance(e, ast.Constant) and e.value is Ellipsis), None)
    back = 2 if logits else 1  # the sequence axis, counted from the end
    if ellipsis is not None:
        after = len(elts) - ellipsis - 1
        return len(elts) - back if after >= back else None
    if ndim is not None:
        axis = ndim - back
        return axis if 0 <= axis < len(elts) else None
    if logits:
        return 0 if len(elts) == 1 else 1
    return len(elts) - 1


def _lower(node: ast.expr | None, module: FlowModule) -> tuple[str, int] | None:
    """A slice's lower bound as (symbolic part, constant): ``i + 1`` → ("i", 1)."""
    if node is None:
        return "", 0
    number = int_value(node)
    if number is not None:
        return ("", number) if number >= 0 else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        for const, other in ((node.right, node.left), (node.left, node.right)):
            if (k := int_value(const)) is not None:
                return module.text(other), k
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) \
            and (k := int_value(node.right)) is not None:
        return module.text(node.left), -k
    return module.text(node), 0


def is_drop_last(node: ast.expr) -> bool:
    return (isinstance(node, ast.Slice) and node.lower is None and node.step is None
            and int_value(node.upper) == -1)


def is_last(node: ast.expr) -> bool:
    return int_value(node) == -1 or (isinstance(node, ast.Slice) and int_value(node.lower) == -1
                                     and node.upper is None and node.step is None)


def is_first(node: ast.expr) -> bool:
    return int_value(node) == 0 or (isinstance(node, ast.Slice) and node.lower is None
                                    and int_value(node.upper) == 1 and node.step is None)


def _ndim_after(elts: list[ast.expr], ndim: int | None) -> int | None:
    if ndim is None:
        return None
    dropped = sum(1 for e in elts if not isinstance(e, ast.Slice)
                  and not (isinstance(e, ast.Constant) and e.value in (None, Ellipsis)))
    added = sum(1 for e in elts if isinstance(e, ast.Constant) and e.value is None)
    return ndim - dropped + added


def slice_tokens(tokens: Tokens, node: ast.Subscript, module: FlowModule,
                 whole_value: bool = False) -> Value:
    """``tokens[...]``: a shift where the sequence axis starts later, a dropped tail.
    ``whole_value``: the slice is a statement's whole right-hand side (a fix may rewrite
    it alone)."""
    elts = elements(node)
    index = _seq_index(elts, tokens.ndim, logits=False)
    ndim = _ndim_after(elts, tokens.ndim)
    if index is None:
        return tokens.with_ndim(ndim)
    element = elts[index]
    if not isinstance(element, ast.Slice):
        return Opaque(("item", tokens.stream.key, module.text(node)))
    if element.step is not None:
        return Opaque(("strided", tokens.stream.key, module.text(node)))
    lower = _lower(element.lower, module)
    if lower is None:
        return Opaque(("tail-window", tokens.stream.key, module.text(node)))
    symbol, amount = lower
    result = tokens if not symbol else replace(tokens, stream=Stream((*tokens.stream.key, "@", symbol)))
    if amount:
        simple = not symbol and element.upper is None
        producer = Producer("slice", module.site(node),
                            module.text(node.value) if simple else None,
                            fix_form="assign" if whole_value else "")
        result = replace(result, steps=(*result.steps, ShiftStep(amount, module.site(node), producer)))
    if is_drop_last(element):
        result = replace(result, trimmed=Trim(module.site(node)))
    if is_drop_last(element) and result.wrap is not None and result.wrap.neutralizer is None:
        result = replace(result, wrap=replace(result.wrap, neutralizer=Neutralizer(
            "slice", module.site(node))))
    return result.with_ndim(ndim)


def slice_logits(logits: Logits, node: ast.Subscript, module: FlowModule) -> Value:
    elts = elements(node)
    index = _seq_index(elts, logits.ndim, logits=True)
    if index is None:
        return logits
    element = elts[index]
    if not isinstance(element, ast.Slice) or element.step is not None:
        return UNKNOWN
    lower = _lower(element.lower, module)
    if lower is None or lower[0]:
        return UNKNOWN
    return replace(logits, start=logits.start + lower[1])


def roll(tokens: Tokens, shift: int, dims: int | None, call: ast.Call, source: ast.expr,
         module: FlowModule, whole_value: bool, lib: str, var: str | None = None) -> Value:
    """``roll(x, -1, dims)`` along the sequence axis: a left shift whose last position
    wraps around to the first token."""
    if dims is not None:
        if tokens.ndim is None and dims not in (-1, 0, 1):
            return Opaque(("roll", tokens.stream.key, module.text(call)))
        if tokens.ndim is not None and dims not in (-1, tokens.ndim - 1):
            return Opaque(("roll", tokens.stream.key, module.text(call)))
    site = module.site(call)
    producer = Producer("roll", site, module.text(source), lib=lib, roll_shift=shift,
                        roll_dims=dims, fix_form="assign-roll" if whole_value else "", var=var)
    head = next((m for m in tokens.masks if m.kind == "head"), None)
    wrap = None
    if shift == -1:
        wrap = Wrap(site, Neutralizer("pre-masked", head.site, head.value) if head else None)
    ndim = tokens.ndim if tokens.ndim is not None or dims is None or dims < 0 else dims + 1
    masks = tuple(m for m in tokens.masks if m.kind not in ("head", "tail"))
    return replace(tokens, steps=(*tokens.steps, ShiftStep(-shift, site, producer)), wrap=wrap,
                   masks=masks, ndim=ndim)


def reproduce(tokens: Tokens, kind: str, call: ast.Call, module: FlowModule,
              inner: ast.expr, tail: MaskValue | None, whole_value: bool = False) -> Tokens:
    """``F.pad(x[1:], (0, 1), value=v)`` / ``torch.cat([x[:, 1:], tail])``: the slice's
    shift, now made by the whole call, with ``v`` on the tail."""
    if not tokens.steps or tokens.steps[-1].producer is None:
        return tokens
    last = tokens.steps[-1]
    base = inner.value if isinstance(inner, ast.Subscript) else None
    assert last.producer is not None
    simple = last.producer.input_text is not None and base is not None
    producer = Producer(kind, module.site(call), module.text(base) if simple and base else None,
                        fix_form="assign" if whole_value else "")
    step = replace(last, site=module.site(call), producer=producer)
    masks = tokens.masks
    if tail is not None:
        masks = (*masks, MaskMark(tail, module.site(call), "tail"))
    return replace(tokens, steps=(*tokens.steps[:-1], step), masks=masks)


def write_into(target: Tokens, node: ast.Subscript, value: Value, mask: MaskValue | None,
               module: FlowModule, stmt: ast.stmt) -> Tokens:
    """``target[idx] = value``: a tail or head mask, a slice assignment that shifts, or a
    condition mask."""
    elts = elements(node)
    index = _seq_index(elts, target.ndim, logits=False)
    lines = (stmt.lineno, stmt.end_lineno or stmt.lineno)
    site = module.site(stmt)
    element = elts[index] if index is not None else None
    source = as_tokens(value) if isinstance(value, Tokens) else None
    if element is not None and is_drop_last(element) and source is not None \
            and source.stream == target.stream and source.shift == target.shift + 1:
        made = target.made or site
        # Into a copy of the tokens (``ids.clone()``), or into a tensor filled with an
        # ignore value (``full_like(ids, -100)``): a fix may not simply drop the write there.
        kind = "slice-assign" if target.blank is None else "fill-assign"
        producer = Producer(kind, made, _clone_source(source), helper_lines=(lines,))
        step = ShiftStep(1, made, producer)
        masks = target.masks
        if target.blank is not None and target.blank.known:
            masks = (*masks, MaskMark(target.blank, made, "tail"))
        return replace(target, steps=(*target.steps, step), wrap=None, blank=None, masks=masks)
    if mask is None:
        return target
    if element is not None and is_last(element):
        if target.wrap is not None and target.wrap.neutralizer is None:
            return replace(target, wrap=replace(target.wrap, neutralizer=Neutralizer(
                "assign", site, mask, lines)))
        return replace(target, masks=(*target.masks, MaskMark(mask, site, "tail", lines)))
    if element is not None and is_first(element):
        return replace(target, masks=(*target.masks, MaskMark(mask, site, "head", lines)))
    return condition_mask(target, mask, site, lines)


def condition_mask(target: Tokens, mask: MaskValue, site: Site,
                   lines: tuple[int, int] | None = None) -> Tokens:
    """Positions picked by a condition set to ``mask``: pads may be among them, so the
    pad marks are no longer known to reach the loss."""
    kept = tuple(m for m in target.masks if m.kind != "pad")
    return replace(target, masks=(*kept, MaskMark(mask, site, "cond", lines)))


def _clone_source(source: Tokens) -> str | None:
    last = source.steps[-1] if source.steps else None
    if last is None or last.producer is None:
        return None
    return last.producer.input_text
