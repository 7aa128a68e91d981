"""The label verdicts of a project: the flow model run once over every entry, and its
readings turned into what the rules report (double and missing shifts, wrapped rolls,
mask values the loss does not ignore)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from trainaudit.model.flow.run import FlowRun
from trainaudit.model.flow.values import (
    MaskMark,
    Producer,
    ShiftStep,
    Site,
    Tokens,
)
from trainaudit.model.labels.observe import LossReading, PairReading
from trainaudit.model.project import Project


@dataclass(frozen=True)
class DoubleShift:
    """Labels shifted where they are made and again at the loss (or inside the model)."""

    first: ShiftStep
    second: ShiftStep | None  # None: the model shifts internally
    reading: LossReading


@dataclass
class RollFate:
    """Everything learned about one roll: the losses and pairs it reached."""

    producer: Producer
    readings: list[LossReading] = field(default_factory=list)
    pairs: list[PairReading] = field(default_factory=list)


@dataclass(frozen=True)
class MaskMismatch:
    mark: MaskMark
    reading: LossReading


class LabelAnalysis:
    """Runs the interpreter over a project (once; cached on the project)."""

    def __init__(self, project: Project) -> None:
        self.observer = FlowRun.of(project).observer

    @classmethod
    def of(cls, project: Project) -> LabelAnalysis:
        return project.cached("label-analysis", lambda: cls(project))

    @cached_property
    def definite(self) -> dict[Site, list[LossReading]]:
        """Per loss site, the readings of every context where the alternatives the flow
        can tie (logits and labels of one stream) agree on the offset. An alternative it
        cannot tie (a tuple on one branch, an unknown) proves nothing either way."""
        found: dict[Site, list[LossReading]] = {}
        for site, groups in self.observer.losses.items():
            for group in groups:
                tied = [r for r in group if r.offset is not None]
                if tied and len({r.offset for r in tied}) == 1:
                    kept = found.setdefault(site, [])
                    kept += [r for r in dict.fromkeys(tied) if r not in kept]
        return found

    @cached_property
    def labelled(self) -> list[LossReading]:
        """Every reading whose labels are known, tied to the logits or not (a wrapped
        position or a mask value needs the labels only)."""
        return [r for groups in self.observer.losses.values() for group in groups
                for r in group]

    def double_shifts(self) -> dict[Site, list[DoubleShift]]:
        """By the site of the first (data-side) shift."""
        found: dict[Site, list[DoubleShift]] = {}
        for readings in self.definite.values():
            for reading in readings:
                if reading.offset != 2:
                    continue
                steps = _extra_steps(reading)
                if not steps or steps[0].producer is None:
                    continue
                second = steps[1] if len(steps) > 1 else None
                found.setdefault(steps[0].site, []).append(DoubleShift(steps[0], second, reading))
        return found

    def producer_readings(self, site: Site) -> list[LossReading]:
        """Every definite loss reading whose labels carry the shift made at ``site``."""
        return [r for readings in self.definite.values() for r in readings
                if any(step.site == site for step in r.labels.steps)]

    def missing_shifts(self) -> dict[Site, LossReading]:
        """Loss sites where every context the flow can follow scores position t against
        token t (a context it cannot follow proves nothing either way)."""
        found: dict[Site, LossReading] = {}
        for site, readings in self.definite.items():
            if readings and all(r.offset == 0 for r in readings):
                found[site] = readings[0]
        return found

    def rolls(self) -> dict[Site, RollFate]:
        fates: dict[Site, RollFate] = {}
        for reading in self.labelled:
            roll = _last_roll(reading.labels)
            if roll is not None:
                fates.setdefault(roll.site, RollFate(roll)).readings.append(reading)
        for pair in self.observer.pairs:
            roll = _last_roll(pair.rolled)
            if roll is not None:
                fates.setdefault(roll.site, RollFate(roll)).pairs.append(pair)
        return fates

    def wrap_trained(self, reading: LossReading) -> bool:
        """The roll's wrapped position reaches this loss as a real target."""
        wrap = reading.labels.wrap
        if wrap is None or wrap.neutralizer is not None:
            return False
        return reading.site not in self.observer.masked_losses

    def mask_mismatches(self) -> list[MaskMismatch]:
        found = []
        for reading in self.labelled:
            marks = list(reading.labels.masks)
            wrap = reading.labels.wrap
            if wrap is not None and wrap.neutralizer is not None \
                    and wrap.neutralizer.kind == "assign":
                n = wrap.neutralizer
                marks.append(MaskMark(n.value, n.site, "tail", n.statement_lines))
            for mark in marks:
                if mark.kind == "pad" and reading.per_token:
                    continue
                if reading.internal and not mark.value.known:
                    continue
                if mark.value.matches(reading.ignore) is False:
                    found.append(MaskMismatch(mark, reading))
        return found


def _extra_steps(reading: LossReading) -> list[ShiftStep]:
    """The label shifts not matched by a shift of the model's input, plus the model's."""
    inputs = set(reading.logits.inputs.steps) if reading.logits is not None else set()
    steps = [s for s in reading.labels.steps if s not in inputs]
    if reading.internal:
        steps.append(ShiftStep(1, reading.site, None, internal=True))
    return steps


def _last_roll(tokens: Tokens) -> Producer | None:
    for step in reversed(tokens.steps):
        if step.producer is not None and step.producer.kind == "roll":
            return step.producer
    return None
