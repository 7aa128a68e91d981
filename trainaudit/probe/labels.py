"""Measure the label shift from the token ids a model receives and the targets its loss scores.

The targets reaching the loss are usually flattened and often sliced
(``labels[..., 1:]``), so rows are rebuilt from the batch size and the shift
``k`` is the one for which ``target[t] == input_ids[t + k]`` holds on the
positions the loss does not ignore.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

MAX_SHIFT = 3
# Share of non-ignored positions that must agree before an offset is believed;
# below 1 so that a few padded or noisy positions do not hide a clear shift.
MIN_AGREEMENT = 0.9
MIN_SEQUENCE = 4
# A wrapped label is reported only on evidence that a correct script shows by chance
# less often than this: on a correct `x = t[:-1]; y = t[1:]` the last target equals the
# row's first input token with the probability that two tokens collide (1/50 for 50
# equally likely tokens), so one such row among 8 is no evidence at all.
MAX_WRAP_CHANCE = 1e-6


@dataclass(frozen=True)
class LabelSample:
    """One loss call compared with the token ids of the forward pass that fed it."""

    offset: int | None
    wrapped: int
    rows: int
    checked: int
    matched: int
    # Rows whose last target (not ignored) has no input token t + k: where a roll's wrap
    # shows. ``wrapped`` of them hold the row's first input token.
    wrap_rows: int = 0
    # log of the chance that ``wrap_rows`` rows of a correct script all hold their first
    # input token there: the rows' count times log(the chance two of its tokens collide).
    wrap_log_chance: float = 0.0


def is_token_tensor(value: object) -> bool:
    """An integer tensor shaped like token ids: ``(T,)`` or ``(B, T)``."""
    return (isinstance(value, torch.Tensor) and value.dim() in (1, 2)
            and not value.is_floating_point() and not value.is_complex()
            and value.dtype != torch.bool)


def compare_labels(input_ids: Any, target: Any, ignore_index: int) -> LabelSample | None:
    """The shift between ``target`` and ``input_ids``, or None when the shapes do not line up."""
    if not is_token_tensor(input_ids) or not isinstance(target, torch.Tensor):
        return None
    if target.is_floating_point() or target.dtype == torch.bool or target.numel() == 0:
        return None  # class probabilities or masks, not token targets
    with torch.no_grad():
        ids = input_ids.detach().reshape(1, -1) if input_ids.dim() == 1 else input_ids.detach()
        batch, length = ids.shape
        rows = _target_rows(target.detach().to(ids.device), batch, length)
        if rows is None:
            return None
        width = rows.shape[1]
        kept = rows != ignore_index
        scores: list[tuple[float, int, int, int]] = []
        for shift in range(MAX_SHIFT + 1):
            span = min(width, length - shift)
            if span <= 0:
                continue
            considered = kept[:, :span]
            checked = int(considered.sum())
            if checked == 0:
                continue
            matched = int(((rows[:, :span] == ids[:, shift:shift + span]) & considered).sum())
            scores.append((matched / checked, shift, checked, matched))
        if not scores:
            return None
        scores.sort(reverse=True)
        share, shift, checked, matched = scores[0]
        believable = share >= MIN_AGREEMENT and (len(scores) == 1 or scores[1][0] < MIN_AGREEMENT)
        wrapped = wrap_rows = 0
        log_chance = 0.0
        if believable and width - 1 >= length - shift:
            # The last target has no input token t + k: a roll put the row's first token there.
            last = rows[:, width - 1]
            wrap_rows = int(kept[:, width - 1].sum())
            wrapped = int(((last == ids[:, 0]) & kept[:, width - 1]).sum())
            log_chance = wrap_rows * math.log(collision_chance(ids))
        return LabelSample(shift if believable else None, wrapped, batch, checked, matched,
                           wrap_rows, log_chance)


def collision_chance(ids: Any) -> float:
    """The chance that two tokens drawn from these ids are equal (the sum of the squared
    token frequencies). Read from few tokens it comes out high, never low: the estimate
    errs towards calling a match chance."""
    _, counts = torch.unique(ids, return_counts=True)
    total = float(counts.sum())
    return float((counts.double() ** 2).sum()) / (total * total)


def _target_rows(target: Any, batch: int, length: int) -> Any | None:
    if length < MIN_SEQUENCE:
        return None
    if target.dim() >= 2 and target.shape[0] == batch:
        rows = target.reshape(batch, -1)
    elif target.numel() % batch == 0:
        rows = target.reshape(batch, target.numel() // batch)
    else:
        return None
    if not length - MAX_SHIFT <= rows.shape[1] <= length:
        return None
    return rows


def summarise(samples: list[LabelSample]) -> tuple[int | None, LabelSample | None]:
    """The offset most loss calls agree on, and the summed evidence of those calls."""
    offsets = Counter(s.offset for s in samples if s.offset is not None)
    if not offsets:
        return None, None
    offset = offsets.most_common(1)[0][0]
    agreeing = [s for s in samples if s.offset == offset]
    wrapped = sum(s.wrapped for s in agreeing)
    wrap_rows = sum(s.wrap_rows for s in agreeing)
    log_chance = sum(s.wrap_log_chance for s in agreeing)
    # A roll wraps every row; a correct script matches in some rows by chance. Only all
    # rows, and enough of them that chance cannot explain it, make a wrap.
    conclusive = 0 < wrapped == wrap_rows and log_chance < math.log(MAX_WRAP_CHANCE)
    total = LabelSample(
        offset,
        wrapped=wrapped if conclusive else 0,
        rows=sum(s.rows for s in agreeing),
        checked=sum(s.checked for s in agreeing),
        matched=sum(s.matched for s in agreeing),
        wrap_rows=wrap_rows,
        wrap_log_chance=log_chance,
    )
    return offset, total
