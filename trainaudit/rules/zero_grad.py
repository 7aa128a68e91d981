"""Clearing gradients (TA204, TA206): every optimizer step applies the gradients of its own
window, no more (TA204) and no fewer (TA206).

Both read the training-loop model (``trainaudit.model.loops``) of the whole checked tree
and its control-flow graph (``TrainingLoop.may_follow``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from trainaudit.diagnostics import Finding, Related
from trainaudit.model.loops import (
    LOOP_TRIGGERS,
    Operation,
    Site,
    TrainingLoop,
    may_train,
    project_training_loops,
)
from trainaudit.model.project import Project
from trainaudit.payloads import MoveToStep, ZeroGradAfterStep
from trainaudit.registry import ProjectRule, RuleContext, register
from trainaudit.rules.accumulation import (
    FOREIGN_GRADIENTS,
    SELF_STEPPING,
    related_op,
    same_file,
    step_run,
)


def _extra_guards(op: Operation, step: Operation) -> set[tuple[Site, bool]]:
    """The ``if`` tests (and polarities) ``op`` runs under that the step does not."""
    return {(g.site, g.negated) for g in op.guards} - {(g.site, g.negated) for g in step.guards}


def _clears_each_step(loop: TrainingLoop, zero: Operation, step: Operation) -> bool:
    """Whether this ``zero_grad`` runs between any two runs of the step, on the graph: it
    runs whenever the step does (no test the step lacks), on a path the step shares, or
    under an accumulation test on the other micro-batches of a gated step's window."""
    if zero.loops != step.loops:
        return True  # one of them is in a loop the other is not: how often is not known
    extra = _extra_guards(zero, step)
    accumulation = {(g.site, g.negated) for g in zero.accumulation_guards}
    if extra - accumulation:
        return False  # only when a test the step does not need holds (a log line, a skip)
    if extra:
        return bool(step.accumulation_guards)  # another micro-batch of the step's window
    return loop.may_follow(step, zero) or loop.may_follow(zero, step)


def _uncleared(loop: TrainingLoop, step: Operation) -> list[Operation] | None:
    """None when some pass of the loop clears the step's gradients before the next step;
    else the ``zero_grad`` calls that do not (each under a test the step lacks, or on a
    branch the step never takes), possibly none."""
    others = {op.receiver for op in loop.ops("optimizer_step")} - {step.receiver}
    zeros = [z for z in loop.ops("zero_grad") if z.receiver not in others]
    if loop.ordering is None:
        return None if zeros else []
    if any(_clears_each_step(loop, z, step) for z in zeros):
        return None
    # ``if a: zero_grad() else: zero_grad()``: the two arms together run every time.
    extras = [_extra_guards(z, step) for z in zeros]
    for extra in extras:
        if len(extra) == 1:
            (site, negated), = extra
            if {(site, not negated)} in extras:
                return None
    return zeros


@register
class MissingZeroGrad(ProjectRule):
    """TA204: backward and step in a loop, and the gradients are not cleared between two
    steps on every path: each step applies the sum of the gradients so far.

    Decided on the loop's control-flow graph: a ``zero_grad`` only on a branch the step
    never takes (``if not finite: zero_grad() else: step()``), after a ``continue`` the
    step does not pass, or only under a test the step does not run under (a logging
    block) does not clear what the step applies. Under an accumulation gate, a
    ``zero_grad`` at the start of a window counts.
    """

    code = "TA204"
    families = ("loops",)
    triggers = LOOP_TRIGGERS

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        for loop in project_training_loops(project):
            if loop.delegation & (SELF_STEPPING | FOREIGN_GRADIENTS):
                continue
            if any(may_train(call) for call in loop.external_calls):  # an unseen helper may clear them
                continue
            step = loop.first("optimizer_step")
            if step is None or step.framework:
                continue
            zeros = _uncleared(loop, step)
            if zeros is None:
                continue
            if zeros:
                zero = zeros[0]
                tests = sorted(_extra_guards(zero, step), key=lambda g: g[0].line)
                where = " and ".join(f"`{site.text}` {'does not hold' if negated else 'holds'}"
                                     for site, negated in tests)
                message = (f"`{step.site.text}` applies gradients that are not cleared on every "
                           f"path: `{zero.site.text}` (line {zero.site.line}) runs only "
                           + (f"when {where}" if where else "on a branch the step never takes")
                           + "; on the other paths each backward adds to all earlier ones")
            else:
                message = (f"`{step.site.text}` applies gradients that are never cleared: each "
                           "backward adds to all earlier ones (no zero_grad in the loop)")
            related = [Related(loop.path, loop.header.line, loop.header.column, "training loop")]
            related += [related_op(z, "clears the gradients on some paths only") for z in zeros[:2]]
            yield self.finding(step.site.path, step.site.span, message,
                               payload=ZeroGradAfterStep(step.receiver, step_run(loop, step)),
                               related=related)


def _clears_for(zero: Operation, step: Operation, loop: TrainingLoop) -> bool:
    """Whether a ``zero_grad`` clears what this step applies: the same optimizer, or a model
    when the loop has one optimizer (``g_opt.zero_grad()`` before ``d_opt.step()`` does not:
    an optimizer, by the object model, other than the one stepped)."""
    if "zero_grad" not in zero.site.text:  # ``p.grad = None`` may be another model's copy
        return False
    if zero.receiver == step.receiver:
        return True
    optimizers = {op.receiver for op in loop.ops("optimizer_step")}
    return len(optimizers) == 1 and not any(
        zero.receiver == op.receiver for op in loop.ops("optimizer_step")) and (
        zero.receiver_kind != "optimizer")


def _zero_between(loop: TrainingLoop) -> Iterator[tuple[Operation, Operation, Operation]]:
    """(backward, zero_grad, step) where a path of one iteration runs them in that order and
    no other backward refills the gradients between the two (a GAN's second update)."""
    backwards = loop.ops("backward")
    steps = loop.ops("optimizer_step")
    for zero in loop.ops("zero_grad"):
        for backward in backwards:
            if not loop.may_follow(backward, zero):
                continue
            for step in steps:
                if not (loop.may_follow(zero, step) and _clears_for(zero, step, loop)):
                    continue
                if any(other.order != backward.order and loop.may_follow(zero, other)
                       and loop.may_follow(other, step) for other in backwards):
                    continue
                yield backward, zero, step
                break
            else:
                continue
            break


@register
class ZeroGradBeforeStep(ProjectRule):
    """TA206: ``zero_grad`` between ``backward`` and the optimizer step clears the gradients
    the step was about to apply."""

    code = "TA206"
    families = ("loops",)
    triggers = LOOP_TRIGGERS

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        seen: set[tuple[str, int, int]] = set()
        for loop in project_training_loops(project):
            for backward, zero, step in _zero_between(loop):
                key = (zero.site.path, zero.site.line, zero.site.column)
                if key in seen:
                    continue
                seen.add(key)
                message = (f"`{zero.site.text}` runs after `{backward.site.text}` and before "
                           f"`{step.site.text}`: the step sees cleared gradients")
                # Moving the call keeps every other path only when both are in one block.
                fixable = (same_file(loop, zero, step) and zero.site.function == step.site.function
                           and zero.guards == step.guards and zero.loops == step.loops
                           and zero.contexts == step.contexts)
                if not fixable:
                    message += ("; no automatic fix: the two are not in one block, so moving "
                                "the zero_grad would change another path")
                payload = MoveToStep((step.site.line, step.site.column), zero.kind,
                                     run=step_run(loop, step))
                yield self.finding(zero.site.path, zero.site.span, message,
                                   payload=payload if fixable else None, fixable=fixable,
                                   related=[related_op(backward, "backward"), related_op(step, "step")])
