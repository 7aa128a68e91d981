"""What the interpreter tells the label family: every loss it evaluates (with the
labels' offset against the logits, in each context), every record a function returns
(an input/target pair), and the per-token losses that are multiplied by a mask."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainaudit.model.flow.tensors import as_tokens
from trainaudit.model.flow.values import (
    Logits,
    LossValue,
    MaskValue,
    Record,
    Site,
    Tokens,
    Value,
    options_of,
)


@dataclass(frozen=True)
class LossReading:
    """One evaluation of a loss in one context, for one combination of alternatives."""

    site: Site
    labels: Tokens
    logits: Logits | None  # None: logits the flow cannot tie to these labels' stream
    internal: bool  # the model shifts the labels inside (HF ``labels=``)
    ignore: MaskValue
    per_token: bool
    roots: tuple[Site | None, Site | None] = (None, None)  # the logits / labels arguments
    # The calls in progress when the loss ran, outermost first (a training step calling a
    # loss helper, an evaluation calling the same one).
    via: tuple[Site, ...] = ()

    @property
    def offset(self) -> int | None:
        """Which token position ``i`` is scored against, minus ``i``: 1 is next-token."""
        if self.logits is None:
            return None
        return (self.labels.shift - self.logits.inputs.shift - self.logits.start
                + (1 if self.internal else 0))


@dataclass(frozen=True)
class PairReading:
    """A record holding a token tensor and its left roll (an input / target pair)."""

    source: Tokens
    rolled: Tokens
    site: Site


@dataclass
class LabelObserver:
    """Collects readings; a loss with alternatives is kept only where every alternative
    is known (unknown means silent)."""

    losses: dict[Site, list[tuple[LossReading, ...]]] = field(default_factory=dict)
    pairs: list[PairReading] = field(default_factory=list)
    masked_losses: set[Site] = field(default_factory=set)
    # What each ``for`` loop iterates, by (path, line) of the loop, in every context.
    iterations: dict[tuple[str, int], list[Value]] = field(default_factory=dict)
    # The calls in progress (set by the run that owns the interpreter).
    calls_in_progress: Callable[[], tuple[Site, ...]] = lambda: ()

    def loss(self, site: Site, logits: Value, labels: Value, ignore: MaskValue,
             per_token: bool, internal: bool,
             roots: tuple[Site | None, Site | None] = (None, None)) -> None:
        readings: list[LossReading] = []
        via = self.calls_in_progress()
        for logit in options_of(logits):
            for label in options_of(labels):
                tokens = as_tokens(label)
                if tokens is None or tokens.blank is not None:
                    continue  # an alternative the flow cannot read proves nothing
                tied = isinstance(logit, Logits) and tokens.stream == logit.inputs.stream
                readings.append(LossReading(site, tokens, logit if tied else None,  # type: ignore[arg-type]
                                            internal, ignore, per_token, roots, via))
        if not readings:
            return  # labels the flow cannot read: this context says nothing
        group = self.losses.setdefault(site, [])
        if tuple(readings) not in group:
            group.append(tuple(readings))

    def record(self, value: Value, site: Site) -> None:
        for option in options_of(value):
            if not isinstance(option, Record):
                continue
            tensors = [t for v in option.values() if (t := as_tokens(v)) is not None]
            for rolled in tensors:
                if rolled.wrap is None or not rolled.steps:
                    continue
                for source in tensors:
                    if source is not rolled and source.stream == rolled.stream \
                            and rolled.shift - source.shift == 1:
                        reading = PairReading(source, rolled, site)
                        if reading not in self.pairs:
                            self.pairs.append(reading)

    def iterated(self, site: Site, value: Value) -> None:
        seen = self.iterations.setdefault((site.path, site.span.line), [])
        if value not in seen and len(seen) < 8:
            seen.append(value)

    def masked(self, loss: LossValue, mask: Value) -> None:
        if loss.per_token:
            self.masked_losses.add(loss.sink)
