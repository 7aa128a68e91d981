"""Label-shift rules (TA101–TA105): the labels a next-token loss is scored against.

All of them read ``LabelAnalysis``: the flow model's readings of every loss (the labels'
offset against the logits, per context), of every roll, and of mask values. A finding
needs a definite reading; where the flow cannot follow a value, the rules are silent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from trainaudit.diagnostics import Finding, Related
from trainaudit.model.flow.program import FAMILY, FlowSource
from trainaudit.model.flow.values import MaskValue, Producer, Site
from trainaudit.model.labels.analysis import LabelAnalysis
from trainaudit.model.labels.entries import TRIGGERS, flow_source
from trainaudit.model.labels.observe import LossReading
from trainaudit.model.module import ModuleFacts
from trainaudit.model.project import Project
from trainaudit.payloads import IgnoreValue, LossShift, RollToSlice, ShiftRemoval
from trainaudit.registry import ProjectRule, RuleContext, register, summarizer

DEFAULT_IGNORE_INDEX = -100


@summarizer(FAMILY, triggers=TRIGGERS)
def summarize_flow(module: ModuleFacts) -> FlowSource:
    return flow_source(module)


def _related(site: Site, message: str) -> Related:
    return Related(site.path, site.span.line, site.span.column, message)


def _trail(reading: LossReading, limit: int = 6) -> list[Related]:
    """The way the labels went, in order (data set → loader → helper → loss)."""
    return [_related(s, s.text or "the labels pass here") for s in reading.labels.trail[-limit:]]


def _caller_outside(reading: LossReading) -> Site | None:
    """The innermost call on the way to a loss from another file (a training step or an
    evaluation calling a shared loss helper): which use of the loss this reading is."""
    return next((site for site in reversed(reading.via) if site.path != reading.site.path), None)


def _ignore_text(readings: Iterable[LossReading], producer_path: str) -> str:
    """The ignore value a fix writes: the loss's own literal, else PyTorch's default."""
    for reading in readings:
        value = reading.ignore
        if value.number is not None:
            return str(value.number)
        if value.name is not None and reading.site.path == producer_path:
            return value.name
    return str(DEFAULT_IGNORE_INDEX)


class _LabelRule(ProjectRule):
    triggers = TRIGGERS
    families = (FAMILY,)
    applies_to_tests = True  # a wrong shift is a bug in a test's data pipeline too

    def analysis(self, project: Project) -> LabelAnalysis:
        return LabelAnalysis.of(project)


@register
class CircularLabelShift(_LabelRule):
    """TA101: labels made with ``roll(ids, -1)`` whose wrapped last position is trained on.

    ``torch.roll`` is circular: the last label becomes the *first* token of the sequence.
    Reported where the flow sees the rolled labels reach a loss with that position
    neither masked nor sliced off, or returned beside their source as an input/target
    pair with nothing masking it.
    """

    code = "TA101"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        analysis = self.analysis(project)
        for site, fate in sorted(analysis.rolls().items(), key=lambda kv: _order(kv[0])):
            trained = [r for r in fate.readings if analysis.wrap_trained(r)]
            open_pairs = [p for p in fate.pairs if p.rolled.wrap is not None
                          and p.rolled.wrap.neutralizer is None]
            if not trained and not (open_pairs and not fate.readings):
                continue
            producer = fate.producer
            dim = "" if producer.roll_dims is None else f", dims={producer.roll_dims}"
            related = [_related(r.site, "the loss that trains on the wrapped position")
                       for r in trained[:3]]
            yield self.finding(
                site.path, site.span,
                f"`{producer.named()}` is made with a circular roll (shift "
                f"{producer.roll_shift}{dim}) and its last position wraps around to the first "
                f"token of `{producer.input_text}`; nothing masks it, so the model is trained "
                f"to predict it. Slice instead and set the tail to the ignore index.",
                related=related,
                payload=RollToSlice(_ignore_text(fate.readings, site.path)),
                fixable=producer.fix_form == "assign-roll" and producer.roll_shift == -1)


@register
class DoubleLabelShift(_LabelRule):
    """TA102: labels shifted where they are made and shifted again at the loss.

    The data set already returns ``labels[t] = ids[t+1]``; the loss then compares
    ``logits[..., :-1, :]`` with ``labels[..., 1:]`` (or an HF ``*ForCausalLM`` shifts
    internally), so position t is scored against token t+2.
    """

    code = "TA102"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        analysis = self.analysis(project)
        for site, shifts in sorted(analysis.double_shifts().items(), key=lambda kv: _order(kv[0])):
            first = shifts[0]
            producer = first.first.producer
            assert producer is not None
            every = analysis.producer_readings(site)
            internal = first.second is None or first.second.internal
            how = ("the model shifts again internally" if internal or first.second is None
                   else f"the loss shifts again (`{first.second.site.text}`)")
            loss = first.reading.site
            related = _trail(first.reading)
            # Every loss the labels reach shifted twice (training and validation), each
            # with its second shift.
            for shift in shifts[:8]:
                if shift.second is not None and not shift.second.internal:
                    related.append(_related(shift.second.site, "second shift here"))
                else:
                    related.append(_related(shift.reading.site, "the model shifts the labels "
                                                                "again inside"))
                related.append(_related(shift.reading.site,
                                        "the loss scores position t against token t+2"))
                caller = _caller_outside(shift.reading)
                if caller is not None:
                    related.append(_related(caller, "that loss is reached from here"))
            double = all(r.offset == 2 for r in every)
            cut_inputs = any(r.logits is not None and r.logits.inputs.trimmed for r in every)
            fixable = _label_side_fixable(producer, double, cut_inputs)
            message = (f"`{producer.named()}` is already shifted here ({_describe(producer)}) "
                       f"and {how} at {loss.path}:{loss.span.line}: position t is trained on "
                       "token t+2. Remove one of the two shifts.")
            if double and cut_inputs:
                # Inputs cut to T-1 beside the shifted labels (``x = chunk[:-1]``): undoing
                # the data side would feed the model one token more per sequence (past a
                # positional table sized to the window), so the shift to remove is the
                # loss's, which a fix cannot yet locate on the logits' side.
                message += (" No automatic fix: the inputs are cut beside the labels here, so "
                            "removing this shift would change what the model is fed; remove "
                            "the other shift (at the loss, or the model's) by hand instead")
            yield self.finding(
                site.path, site.span, message, related=_unique(related),
                payload=ShiftRemoval(
                    _unshifted(producer),
                    tuple(_shift_helpers(first.reading, producer)),
                    f"removed the label shift at {site.path}:{site.span.line}; "
                    f"the loss at {loss.path}:{loss.span.line} already shifts")
                if fixable else None,
                fixable=fixable)


@register
class RollLabelShift(_LabelRule):
    """TA103: a roll whose wrapped position is neutralised: correct, but fragile.

    ``labels = torch.roll(ids, -1); labels[-1] = -100`` works (the wrapped token is
    ignored), but the correctness hangs on a second line that is easy to lose or to get
    wrong; slicing says what it means. Not reported where the same labels are shifted
    again at the loss: that is TA102, whose fix removes the shift.
    """

    code = "TA103"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        analysis = self.analysis(project)
        mismatched = {m.mark.site for m in analysis.mask_mismatches()}
        for site, fate in sorted(analysis.rolls().items(), key=lambda kv: _order(kv[0])):
            if any(r.offset not in (1, None) or analysis.wrap_trained(r) for r in fate.readings):
                continue
            neutralizers = [r.labels.wrap.neutralizer for r in fate.readings
                            if r.labels.wrap is not None and r.labels.wrap.neutralizer]
            neutralizers += [p.rolled.wrap.neutralizer for p in fate.pairs
                             if p.rolled.wrap is not None and p.rolled.wrap.neutralizer]
            if masked := [r for r in fate.readings if r.site in analysis.observer.masked_losses]:
                how_text = f"the per-token loss at line {masked[0].site.span.line} is masked"
            elif neutralizers:
                n = neutralizers[0]
                if n.site in mismatched:
                    continue  # TA104 reports a wrong mask value
                how_text = f"{n.kind} at line {n.site.span.line}"
            else:
                continue
            if any(p.rolled.wrap is not None and p.rolled.wrap.neutralizer is None
                   for p in fate.pairs) and not fate.readings:
                continue
            producer = fate.producer
            yield self.finding(
                site.path, site.span,
                f"`{producer.named()}` is made with a circular roll; the wrapped position is "
                f"neutralised "
                f"({how_text}), so it works, but slicing says the same without the trap.",
                payload=RollToSlice(None),
                fixable=producer.fix_form == "assign-roll" and producer.roll_shift == -1)


@register
class IgnoreIndexMismatch(_LabelRule):
    """TA104: labels masked with a value the loss does not ignore.

    ``labels[-1] = 0``, pads left at the pad id, or ``labels[labels == pad] = -1`` with a
    loss that ignores -100 (PyTorch's default) trains on the masked positions.
    """

    code = "TA104"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        analysis = self.analysis(project)
        reported: set[Site] = set()
        for mismatch in analysis.mask_mismatches():
            mark, reading = mismatch.mark, mismatch.reading
            if mark.site in reported:
                continue
            reported.add(mark.site)
            ignore = reading.ignore
            what = ("padded with" if mark.kind == "pad" else "masked with")
            yield self.finding(
                mark.site.path, mark.site.span,
                f"the labels are {what} {mark.value.describe()} here but the loss at "
                f"{reading.site.path}:{reading.site.span.line} ignores {ignore.describe()}: "
                f"those positions are trained on.",
                related=[_related(reading.site, f"this loss ignores {ignore.describe()}")],
                payload=IgnoreValue(_fix_value(ignore, reading, mark.site)),
                fixable=ignore.known and mark.kind != "pad")
        for site, fate in analysis.rolls().items():
            if fate.readings:
                continue
            for pair in fate.pairs:
                wrap = pair.rolled.wrap
                n = wrap.neutralizer if wrap is not None else None
                if n is None or n.kind != "assign" or n.value.number is None \
                        or n.value.number < 0 or n.site in reported:
                    continue
                reported.add(n.site)
                yield self.finding(
                    n.site.path, n.site.span,
                    f"the wrapped position of the roll at line {site.span.line} is set to "
                    f"{n.value.number}, a real token id: PyTorch losses ignore "
                    f"{DEFAULT_IGNORE_INDEX} by default, so the model is trained to predict "
                    f"token {n.value.number} at the end of every sequence.",
                    payload=IgnoreValue(str(DEFAULT_IGNORE_INDEX)))


@register
class MissingLabelShift(_LabelRule):
    """TA105: logits at position t scored against the token at position t.

    Labels that are the model's own inputs, unshifted, need a shift somewhere: at the loss
    (``logits[..., :-1, :]`` vs ``labels[..., 1:]``) or inside the model. Without one,
    the model learns to copy its input.
    """

    code = "TA105"

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        analysis = self.analysis(project)
        for site, reading in sorted(analysis.missing_shifts().items(), key=lambda kv: _order(kv[0])):
            logits_root, labels_root = reading.roots
            yield self.finding(
                site.path, site.span,
                "the loss scores logits at position t against the token at position t: its "
                "labels are the model's own inputs and nothing shifts them. Shift at the "
                "loss (`logits[..., :-1, :]` vs `labels[..., 1:]`).",
                related=_trail(reading, 3),
                fixable=not reading.internal and logits_root is not None
                and labels_root is not None and logits_root.path == site.path,
                payload=LossShift(
                    (logits_root.span.line, logits_root.span.column, logits_root.text),
                    (labels_root.span.line, labels_root.span.column, labels_root.text),
                ) if logits_root is not None and labels_root is not None else None)


def _order(site: Site) -> tuple[str, int, int]:
    return site.path, site.span.line, site.span.column


def _unique(related: list[Related]) -> list[Related]:
    seen: list[Related] = []
    for item in related:
        if item not in seen:
            seen.append(item)
    return seen


def _fix_value(ignore: MaskValue, reading: LossReading, mark: Site) -> str:
    if ignore.number is not None:
        return str(ignore.number)
    if ignore.name is not None and reading.site.path == mark.path:
        return ignore.name
    return str(DEFAULT_IGNORE_INDEX)


def _label_side_fixable(producer: Producer, double: bool, cut_inputs: bool) -> bool:
    """The labels' shift alone can go: every loss shifts again, the inputs are whole
    (dropping only the label shift would leave cut inputs one token shorter), and the
    fixer can rewrite it (``labels = <shift>``, or a slice assignment it deletes; a
    shift inside a larger expression gets no fix)."""
    return double and producer.input_text is not None and not cut_inputs and (
        producer.kind in ("slice-assign", "fill-assign")
        or producer.fix_form in ("assign", "assign-roll"))


def _unshifted(producer: Producer) -> str | None:
    """What the labels become without their shift (None: keep the statement)."""
    if producer.kind == "slice-assign":
        return None
    if producer.kind == "slice":
        return producer.input_text
    copy = "copy" if producer.lib == "numpy" else "clone"
    return f"{producer.input_text}.{copy}()"


def _shift_helpers(reading: LossReading, producer: Producer) -> list[tuple[int, int]]:
    """Statements that only exist to complete the shift (slice assignment, tail mask)."""
    lines = list(producer.helper_lines)
    wrap = reading.labels.wrap
    if producer.kind == "roll" and wrap is not None and wrap.neutralizer is not None \
            and wrap.neutralizer.statement_lines is not None \
            and wrap.neutralizer.kind == "assign":
        lines.append(wrap.neutralizer.statement_lines)
    if producer.kind in ("slice-assign", "fill-assign"):
        lines += [m.statement_lines for m in reading.labels.masks
                  if m.kind == "tail" and m.statement_lines is not None]
    return lines


def _describe(producer: Producer) -> str:
    return {
        "roll": f"a roll of `{producer.input_text}`",
        "slice": "a slice starting one token later",
        "pad": "a slice padded at the tail",
        "cat": "a slice concatenated with a tail",
        "slice-assign": f"`[:-1] = {producer.input_text}[1:]`",
        "fill-assign": f"`[:-1] = {producer.input_text}[1:]` into a filled tensor",
    }.get(producer.kind, producer.kind)
