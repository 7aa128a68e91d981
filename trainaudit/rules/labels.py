"""Label-shift rules (TA101–TA105): the labels a next-token loss is scored against.

All of them read ``LabelGraph``: label producers (rolls, slices, copies), masks,
and loss sites, linked across files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from trainaudit.diagnostics import Finding, Related
from trainaudit.model.labels import (
    DEFAULT_IGNORE_INDEX,
    FAMILY,
    TRIGGERS,
    LabelGraph,
    LabelProducer,
    LossSite,
    Neutralizer,
    Value,
)
from trainaudit.model.project import ModuleSummary, Project
from trainaudit.registry import ProjectRule, RuleContext, register


def _related(summary: ModuleSummary, loss: LossSite, message: str) -> Related:
    site = loss.shift_site if loss.shift_site is not None else loss.site
    return Related(summary.path, site.span.line, site.span.column, message)


def _ignore_values(consumers: list[tuple[ModuleSummary, LossSite]]) -> list[Value]:
    return [loss.ignore_index for _, loss in consumers] or [Value(DEFAULT_IGNORE_INDEX)]


def _fix_ignore_text(consumers: list[tuple[ModuleSummary, LossSite]], producer_path: str) -> str:
    """The ignore value a fix writes: the loss's own literal, else PyTorch's default."""
    for summary, loss in consumers:
        value = loss.ignore_index
        if value.number is not None:
            return str(value.number)
        if value.name is not None and summary.path == producer_path:
            return value.name
    return str(DEFAULT_IGNORE_INDEX)


def _neutralized(producer: LabelProducer, ignores: list[Value]) -> list[Neutralizer]:
    """Neutralizers that really keep the wrapped position out of the loss."""
    good = []
    for n in producer.neutralizers:
        if n.kind != "assign" or all(n.value.matches(ignore) is not False for ignore in ignores):
            good.append(n)
    return good


class _LabelRule(ProjectRule):
    triggers = TRIGGERS
    families = (FAMILY,)
    applies_to_tests = True  # a wrong shift is a bug in a test's data pipeline too

    def graph(self, project: Project) -> LabelGraph:
        return LabelGraph.of(project)


@register
class CircularLabelShift(_LabelRule):
    """TA101: labels made with ``roll(ids, -1)`` whose wrapped last position is trained on.

    ``torch.roll`` is circular: the last label becomes the *first* token of the
    sequence. Unless that position is set to the ignore value, sliced off or
    masked, the model is trained to predict token 0 after the last token.
    """

    code = "TA101"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        graph = self.graph(project)
        consumers = graph.consumers()
        for summary, producer in graph.producers():
            if producer.kind != "roll" or producer.neutralizers:
                continue
            users = consumers.get((summary.path, producer), [])
            dim = "" if producer.roll_dims is None else f", dims={producer.roll_dims}"
            yield self.finding(
                summary.path, producer.site.span,
                f"`{producer.var}` is made with a circular roll (shift {producer.roll_shift}{dim}) "
                f"and its last position wraps around to the first token of "
                f"`{producer.input_text}`; nothing masks it, so the model is trained to predict "
                f"it. Slice instead and set the tail to the ignore index.",
                related=[_related(s, loss, "the loss that trains on the wrapped position")
                         for s, loss in users[:3]],
                fix_data={"ignore": _fix_ignore_text(users, summary.path), "mode": "mask-tail"},
                fixable=producer.fix_form == "assign-roll" and producer.roll_shift == -1)


@register
class DoubleLabelShift(_LabelRule):
    """TA102: labels shifted where they are made and shifted again at the loss.

    The data set already returns ``labels[t] = ids[t+1]``; the loss then compares
    ``logits[..., :-1, :]`` with ``labels[..., 1:]`` (or an HF ``*ForCausalLM``
    shifts internally), so position t is scored against token t+2.
    """

    code = "TA102"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        graph = self.graph(project)
        for (path, producer), users in sorted(graph.consumers().items(),
                                               key=lambda kv: (kv[0][0], kv[0][1].site.span.line)):
            if not producer.shifted:
                continue
            shifting = [(s, loss) for s, loss in users if loss.shifts]
            if not shifting:
                continue
            first_summary, first = shifting[0]
            how = ("the model shifts again internally" if first.how == "model"
                   else f"the loss shifts again (`{first.shift_site.text if first.shift_site else first.site.text}`)")
            where = f"{first_summary.path}:{first.site.span.line}"
            yield self.finding(
                path, producer.site.span,
                f"`{producer.var}` is already shifted here ({_describe(producer)}) and {how} at "
                f"{where}: position t is trained on token t+2. Remove one of the two shifts.",
                related=[_related(s, loss, "second shift here") for s, loss in shifting[:5]]
                + [Related(loss.model_site.path, loss.model_site.span.line,
                           loss.model_site.span.column, "the model's forward shifts here")
                   for _, loss in shifting[:5] if loss.model_site is not None],
                fix_data={"replacement": _unshifted(producer),
                          "delete": [list(lines) for lines in _shift_helpers(producer)],
                          "notes": f"removed the label shift in {producer.scope or 'module'} "
                                   f"({path}:{producer.site.span.line}); the loss at {where} "
                                   f"already shifts"},
                fixable=len(shifting) == len(users) and producer.input_text is not None
                and (producer.kind == "slice-assign" or producer.fix_form == "assign-roll"
                     or producer.kind in ("slice", "pad", "cat")))


@register
class RollLabelShift(_LabelRule):
    """TA103: a roll whose wrapped position is neutralised: correct, but fragile.

    ``labels = torch.roll(ids, -1); labels[-1] = -100`` works (the wrapped token
    is ignored), but the correctness hangs on a second line that is easy to lose
    or to get wrong; slicing says what it means.
    """

    code = "TA103"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        graph = self.graph(project)
        consumers = graph.consumers()
        for summary, producer in graph.producers():
            if producer.kind != "roll" or not producer.neutralizers:
                continue
            users = consumers.get((summary.path, producer), [])
            good = _neutralized(producer, _ignore_values(users))
            if not good:
                continue  # TA104 reports a wrong mask value
            how = good[0]
            yield self.finding(
                summary.path, producer.site.span,
                f"`{producer.var}` is made with a circular roll; the wrapped position is "
                f"neutralised ({how.kind} at line {how.site.span.line}), so it works, but "
                f"slicing says the same without the trap.",
                fix_data={"mode": "keep-tail"},
                fixable=producer.fix_form == "assign-roll" and producer.roll_shift == -1)


@register
class IgnoreIndexMismatch(_LabelRule):
    """TA104: labels masked with a value the loss does not ignore.

    ``labels[-1] = 0`` or ``labels[labels == pad] = -1`` with a loss that ignores
    -100 (PyTorch's default) trains on the masked positions.
    """

    code = "TA104"

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        graph = self.graph(project)
        reported: set[tuple[str, int]] = set()
        consumers = graph.consumers()
        for summary, loss in graph.losses:
            for other, mask in graph.masks_for(summary, loss):
                if loss.how == "model" and not mask.value.known:
                    continue
                verdict = mask.value.matches(loss.ignore_index)
                if verdict is not False or (other.path, mask.site.span.line) in reported:
                    continue
                reported.add((other.path, mask.site.span.line))
                yield self.finding(
                    other.path, mask.site.span,
                    f"`{mask.var}` is masked with {mask.value.describe()} but the loss at "
                    f"{summary.path}:{loss.site.span.line} ignores "
                    f"{loss.ignore_index.describe()}: the masked positions are trained on.",
                    related=[Related(summary.path, loss.site.span.line, loss.site.span.column,
                                     f"this loss ignores {loss.ignore_index.describe()}")],
                    fix_data={"value": loss.ignore_index.describe()
                              if loss.ignore_index.number is not None or summary.path == other.path
                              else str(DEFAULT_IGNORE_INDEX)},
                    fixable=loss.ignore_index.known)
        # A roll's wrapped position set to a real token id, with no loss in sight.
        for summary, producer in graph.producers():
            if producer.kind != "roll" or consumers.get((summary.path, producer)):
                continue
            for n in producer.neutralizers:
                if (n.kind == "assign" and n.value.number is not None and n.value.number >= 0
                        and (summary.path, n.site.span.line) not in reported):
                    reported.add((summary.path, n.site.span.line))
                    yield self.finding(
                        summary.path, n.site.span,
                        f"the wrapped position of `{producer.var}` is set to {n.value.number}, "
                        f"a real token id: PyTorch losses ignore {DEFAULT_IGNORE_INDEX} by "
                        f"default, so the model is trained to predict token {n.value.number} "
                        f"at the end of every sequence.",
                        fix_data={"value": str(DEFAULT_IGNORE_INDEX)})


@register
class MissingLabelShift(_LabelRule):
    """TA105: logits at position t scored against the token at position t.

    Labels that are a plain copy of the inputs need a shift somewhere: at the loss
    (``logits[..., :-1, :]`` vs ``labels[..., 1:]``) or inside the model. Without
    one, the model learns to copy its input.
    """

    code = "TA105"

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        graph = self.graph(project)
        found: list[Finding] = []
        for summary, loss in graph.losses:
            if loss.shifts:
                continue
            producers = graph.producers_for(summary, loss)
            copies = [(s, p) for s, p in producers if not p.shifted]
            if producers and len(copies) != len(producers):
                continue
            if not copies and not loss.same_as_input:
                continue
            where = (f"a copy of `{copies[0][1].input_text}` ({copies[0][0].path}:"
                     f"{copies[0][1].site.span.line})" if copies else "the model's own input")
            found.append(self.finding(
                summary.path, loss.site.span,
                f"the loss scores logits at position t against the token at position t: its "
                f"labels are {where} and nothing shifts them. Shift at the loss "
                f"(`logits[..., :-1, :]` vs `labels[..., 1:]`).",
                related=[Related(s.path, p.site.span.line, p.site.span.column,
                                 "labels made here without a shift") for s, p in copies[:3]],
                fixable=loss.how != "model" and loss.logits_root is not None
                and loss.labels_root is not None,
                fix_data={
                    "logits": (loss.logits_root.span.line, loss.logits_root.span.column,
                               loss.logits_root.text) if loss.logits_root else None,
                    "labels": (loss.labels_root.span.line, loss.labels_root.span.column,
                               loss.labels_root.text) if loss.labels_root else None,
                }))
        return found


def _unshifted(producer: LabelProducer) -> str | None:
    """What the labels become without their shift (None: keep the statement)."""
    if producer.kind == "slice-assign":
        return None
    if producer.kind == "slice":
        return producer.input_text
    copy = "copy" if producer.lib == "numpy" else "clone"
    return f"{producer.input_text}.{copy}()"


def _shift_helpers(producer: LabelProducer) -> list[tuple[int, int]]:
    """Statements that only exist to complete the shift (slice assignment, tail mask)."""
    lines = list(producer.helper_lines)
    lines += [n.statement_lines for n in producer.neutralizers
              if n.kind == "assign" and n.statement_lines is not None]
    return lines


def _describe(producer: LabelProducer) -> str:
    return {
        "roll": f"a roll of `{producer.input_text}`",
        "slice": "a slice starting one token later",
        "pad": "a slice padded at the tail",
        "cat": "a slice concatenated with a tail",
        "slice-assign": f"`{producer.var}[:-1] = {producer.input_text}[1:]`",
    }.get(producer.kind, producer.kind)
