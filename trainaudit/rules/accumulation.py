"""Gradient accumulation (TA201–TA203, TA205): how often the optimizer steps, and what
runs with it (the zero_grad rules TA204 and TA206 are in ``rules.zero_grad``).

All read the training-loop model (``trainaudit.model.loops``) of the whole
checked tree, so a loop in ``train.py`` that calls a ``train_step`` imported
from ``steps.py`` is judged with the helper's body inlined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from trainaudit.config import is_test_path
from trainaudit.diagnostics import Finding, Related, Severity
from trainaudit.model.flow.program import FAMILY as FLOW_FAMILY
from trainaudit.model.flow.run import FlowRun
from trainaudit.model.loops import (
    LOOP_TRIGGERS,
    Accumulation,
    Operation,
    Site,
    TrainingLoop,
    project_training_loops,
    targets_gpu,
)
from trainaudit.model.loops.engines import configures_accumulation, schedules_per_micro_batch
from trainaudit.model.loops.records import BatchSize, OpKind
from trainaudit.model.loops.summaries import helper_loss
from trainaudit.model.objects import DDP_WRAPPERS, FSDP_WRAPPERS
from trainaudit.model.project import Project
from trainaudit.payloads import (
    AccumulationRewrite,
    DivideLoss,
    MoveToStep,
    NoSyncWrap,
    Position,
)
from trainaudit.registry import ProjectRule, RuleContext, register
from trainaudit.rules.lightning_schedules import LIGHTNING_FAMILY, lightning_schedules

# Frameworks that run the optimizer step, accumulation and gradient clearing themselves.
SELF_STEPPING = frozenset({"deepspeed", "hf-trainer", "lightning"})
# Backward calls whose gradients the rule cannot follow (distributed autograd keeps them in a
# context; an unknown ``x.backward(loss)`` may be anything).
FOREIGN_GRADIENTS = frozenset({"dist-autograd", "framework"})


def related_op(op: Operation, message: str) -> Related:
    """A related place of a finding: where the operation is."""
    return Related(op.site.path, op.site.line, op.site.column, message)


def same_file(loop: TrainingLoop, *ops: Operation) -> bool:
    """Every operation is in the loop's own file (where a fix can edit them together)."""
    return all(op.site.path == loop.path for op in ops)


def _manual(loop: TrainingLoop) -> bool:
    """The loop itself decides when the optimizer steps (no framework does it)."""
    return not (loop.delegation & (SELF_STEPPING | {"accelerate", "fabric", "framework"}))


def _manual_accumulation(loop: TrainingLoop) -> Accumulation | None:
    accumulation = loop.accumulation
    if accumulation is None or accumulation.kind == "delegated" or not _manual(loop):
        return None
    steps = loop.ops("optimizer_step")
    if steps and _steps_between_windows(loop, steps[0]):
        return None  # a step on every micro-batch: nothing is accumulated
    return accumulation


def _accumulation_payload(loop: TrainingLoop, step: Operation) -> AccumulationRewrite | None:
    """What the TA201 fix needs: where the backward is, and the helper call if the step is
    in one; None when the backward and the step are not reached the same way."""
    backward = loop.first("backward")
    if backward is None or backward.via != step.via or len(step.via) > 1:
        return None
    forward = next((op for op in loop.forwards if op.via == step.via and op.order < backward.order),
                   None)
    size = loop.batch_size
    return AccumulationRewrite(
        backward=(backward.site.line, backward.site.column),
        helper=step.site.function if step.via else None,
        call=(step.via[0].line, step.via[0].column) if step.via else None,
        ddp=loop.ddp, model=forward.receiver if forward is not None else None,
        batch_source=size.source if size else None, batch_expr=size.expression if size else None,
        scaler_updates=_positions(loop, step, "scaler_update"))


def _positions(loop: TrainingLoop, step: Operation, *kinds: OpKind) -> tuple[Position, ...]:
    """Where the loop's operations of these kinds are, in the file of the step."""
    return tuple((op.site.line, op.site.column) for kind in kinds for op in loop.ops(kind)
                 if op.site.path == step.site.path)


def step_run(loop: TrainingLoop, step: Operation) -> tuple[Position, ...]:
    """The calls that finish an optimizer step's run: the scaler's update, the scheduler's step."""
    return _positions(loop, step, "scaler_update", "scheduler_step")


def _flow_batch_size(project: Project, loop: TrainingLoop) -> BatchSize | None:
    """The batch size of the loader the loop draws from, followed as a value (a config
    dataclass default, an argparse default passed down into a trainer class...)."""
    found = FlowRun.of(project).batch_size(loop.header.path, loop.header.span.line)
    if found is None:
        return None
    size, site = found
    if is_test_path(site.path) and not is_test_path(loop.path):
        return None  # a test running the loop on a tiny loader says nothing of training
    return BatchSize(size, f"the DataLoader at {site.path}:{site.span.line}", site.text)


@register
class NoGradientAccumulation(ProjectRule):
    """TA201: the optimizer steps on every micro-batch and the batch is small.

    Fires only when the batch size is known statically (a literal, a variable,
    an argparse default, a config field) and batch × known world size is below
    ``min-effective-batch`` samples, or, where a sequence length is read too,
    below ``min-effective-tokens`` tokens. Only in code that can target a GPU;
    quiet in benchmarks, adapter (PEFT/LoRA) fine-tunes, when a framework
    accumulates (accelerate, Fabric, DeepSpeed, HF Trainer) or the step is gated
    on a boundary.
    """

    code = "TA201"
    families = ("loops", FLOW_FAMILY)
    triggers = LOOP_TRIGGERS
    options = {"min-effective-batch": 32, "min-effective-tokens": 16384}

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        minimum = int(ctx.option("min-effective-batch"))
        minimum_tokens = int(ctx.option("min-effective-tokens"))
        for loop in project_training_loops(project):
            size = loop.batch_size or _flow_batch_size(project, loop)
            if size is None or loop.accumulation is not None or not _manual(loop):
                continue
            if loop.traits & {"benchmark", "adapters"}:
                continue  # throughput runs and small adapter fine-tunes choose their batch
            tokens = size.tokens
            # Tokens only excuse a batch: few long sequences are a large batch.
            if size.value >= minimum or (tokens is not None and tokens >= minimum_tokens):
                continue
            step = loop.first("optimizer_step")
            if step is None or not targets_gpu(project, loop):
                continue  # CPU-only code: the batch is not a GPU weakness
            per = " per process" if loop.ddp else ""
            if tokens is None:
                what = f"{size.value} samples{per} ({size.source})"
                effective = f"{size.value} < {minimum} (min-effective-batch)"
            else:
                what = (f"{size.value} × {size.sequence} = {tokens} tokens{per} "
                        f"({size.source})")
                effective = f"{tokens} tokens < {minimum_tokens} (min-effective-tokens)"
            message = (f"the optimizer steps on every micro-batch of {what} with no gradient "
                       f"accumulation: the effective batch is {effective}")
            payload = _accumulation_payload(loop, step)
            if not same_file(loop, *loop.operations):
                payload = None
            finding = self.finding(loop.path, loop.header.span, message, payload=payload,
                                   fixable=payload is not None,
                                   related=[related_op(step, "optimizer step on every micro-batch")])
            # Code that also runs on the CPU (a tutorial that runs anywhere) chose its batch
            # for the small case: advice there, a warning where a GPU is required.
            yield finding.with_severity(Severity.INFO) if "cpu-fallback" in loop.traits else finding


@register
class AccumulatedLossNotScaled(ProjectRule):
    """TA202: gradients are accumulated over k micro-batches but the loss is not divided by k,
    so the update is k times too large (and its size depends on k)."""

    code = "TA202"
    families = ("loops",)
    triggers = LOOP_TRIGGERS

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        for loop in project_training_loops(project):
            accumulation = _manual_accumulation(loop)
            if accumulation is None or loop.ops("grad_scale"):
                continue
            for backward in loop.ops("backward"):
                if backward.framework or backward.loss is None:
                    continue
                loss = helper_loss(project, backward.loss, backward.site.path)
                if loss.counter:
                    yield self.finding(
                        backward.site.path, backward.site.span,
                        f"`{loss.text}` is divided by `{loss.divisor}`, a "
                        "counter that grows "
                        "by one each micro-batch: the micro-batches are weighted 1, 1/2, 1/3, ... "
                        "instead of 1/k each. Divide by the number of micro-batches per step",
                        related=[related_op(loop.ops("optimizer_step")[0], "gated optimizer step")])
                    continue
                if loss.scaled is not False:
                    continue
                if loss.reduction not in (None, "mean"):
                    continue  # a summed loss: its author normalises it (tokens, ranks)
                steps = accumulation.steps
                message = (f"gradients of {steps or 'several'} micro-batches are summed but "
                           f"`{loss.text}` is not divided by the accumulation steps: "
                           "the update grows with the number of micro-batches")
                if steps is None:
                    message += "; no automatic fix: the number of micro-batches is not visible"
                yield self.finding(backward.site.path, backward.site.span, message,
                                   payload=DivideLoss(steps) if steps is not None else None,
                                   fixable=steps is not None,
                                   related=[related_op(loop.ops("optimizer_step")[0],
                                                     "gated optimizer step")])


def _per_micro_batch(loop: TrainingLoop, accumulation: Accumulation, op: Operation) -> bool:
    """Whether ``op`` runs on the micro-batches where the optimizer does not step."""
    step = loop.ops("optimizer_step")[0]
    if accumulation.kind == "gated":
        gate = accumulation.gate
        if gate is not None and any(g.site == gate.site and g.negated != gate.negated
                                    for g in op.guards):
            return True  # the other side of the step's own gate: every non-boundary batch
        if op.accumulation_guards:
            return False
        # A path the step cannot share (``if not finite: zero_grad(); continue``) runs on the
        # batches it skips, not on every micro-batch.
        return loop.may_follow(op, step) or loop.may_follow(step, op)
    backward = loop.ops("backward")[0]
    inner = [site for site in backward.loops if site not in step.loops]
    return bool(inner) and inner[0] in op.loops


@register
class PerMicroBatchUpdate(ProjectRule):
    """TA203: the optimizer step is gated on the accumulation boundary but the scheduler,
    clipping or ``zero_grad`` run on every micro-batch."""

    code = "TA203"
    families = ("loops", LIGHTNING_FAMILY)
    triggers = (*LOOP_TRIGGERS, "training_step")

    _WHAT = {
        "scheduler_step": "the learning-rate schedule advances on every micro-batch",
        "clip": "gradients are clipped on every micro-batch, before the sum is complete",
        "zero_grad": "gradients are cleared on every micro-batch, so nothing accumulates",
    }

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        for path, hand, trainer_path, line, k in lightning_schedules(project):
            yield self.finding(
                path, hand.span,
                f"`{hand.text}` runs in every `training_step`, while the Trainer accumulates "
                f"{k} batches per optimizer step: the learning-rate schedule advances {k}x too "
                "fast; return the scheduler from `configure_optimizers` "
                '(`{"scheduler": ..., "interval": "step"}`) and let Lightning step it',
                related=[Related(trainer_path, line, 1, "accumulate_grad_batches")])
        for loop in project_training_loops(project):
            yield from self._engine_schedules(project, loop)
            accumulation = _manual_accumulation(loop)
            if accumulation is None:
                continue
            step = loop.ops("optimizer_step")[0]
            gate = accumulation.gate
            seen: set[Site] = set()
            for op in loop.ops("scheduler_step", "clip", "zero_grad"):
                if not _per_micro_batch(loop, accumulation, op) or _metric_driven(op):
                    continue
                # An operation of a helper imported from another file is reported at the call
                # in this file, which is what moves: only when the helper does nothing else.
                call = loop.entry_call(op, step)
                site = call or op.site
                if site in seen:
                    continue
                seen.add(site)
                message = (f"`{site.text}` runs on every micro-batch while the optimizer "
                           f"steps once per accumulation window: {self._WHAT[op.kind]}")
                fixable = same_file(loop, step) and site.path == loop.path \
                    and site.function == step.site.function \
                    and (call is None or all(o.kind == op.kind for o in loop.through(call)))
                payload = MoveToStep((step.site.line, step.site.column), op.kind,
                                     (gate.site.line, gate.site.column) if gate else None,
                                     step_run(loop, step))
                related = [related_op(step, "gated optimizer step")]
                if call is not None:
                    related.append(related_op(op, "what the helper runs"))
                yield self.finding(site.path, site.span, message,
                                   payload=payload if fixable else None, fixable=fixable,
                                   related=related)


    def _engine_schedules(self, project: Project, loop: TrainingLoop) -> Iterator[Finding]:
        """A scheduler stepped beside a DeepSpeed ``engine.step()`` that accumulates."""
        pairs = [(op, step) for op, step in schedules_per_micro_batch(loop)
                 if not _metric_driven(op)]
        summary = project.by_path.get(loop.path) if pairs else None
        module = project.module_of(summary) if summary is not None else None
        if not pairs or module is None or not configures_accumulation(module.tree):
            return
        for op, step in pairs:
            yield self.finding(
                op.site.path, op.site.span,
                f"`{op.site.text}` runs after every `{step.site.text}`, which steps the optimizer "
                "once per `gradient_accumulation_steps` micro-batches: the learning-rate "
                "schedule advances on every micro-batch. Step it under "
                "`engine.is_gradient_accumulation_boundary()` or hand it to "
                "`deepspeed.initialize(lr_scheduler=...)`",
                related=[related_op(step, "DeepSpeed engine step (every micro-batch)")])


# ``.step(`` with an argument after it; the call's first line is all a record keeps, and
# the arguments may start on the next line (``sched.step(`` then ``val_loss)``).
_STEP_WITH_ARGUMENTS = re.compile(r"\.step\((?!\s*\))")


def _metric_driven(op: Operation) -> bool:
    """``sched.step(val_loss)`` or ``sched.step(metrics=...)``: a scheduler fed a metric
    (``ReduceLROnPlateau``), or told its position (the deprecated ``epoch``), reacts to what
    it is given, not to how often it is called: no per-micro-batch bug."""
    return op.kind == "scheduler_step" and _STEP_WITH_ARGUMENTS.search(op.site.text) is not None


def _steps_between_windows(loop: TrainingLoop, step: Operation) -> bool:
    """Another optimizer step runs where the gated one does not (ungated, or on the other
    branch of its test): the weights move on those micro-batches too, so nothing is held
    back for a window and clearing or clipping there is not the bug."""
    gates = {(g.site, g.negated) for g in step.accumulation_guards}
    for other in loop.ops("optimizer_step"):
        if other is step:
            continue
        theirs = {(g.site, g.negated) for g in other.accumulation_guards}
        if not theirs or any((site, not negated) in gates for site, negated in theirs):
            return True
    return False


def _ddp_model(loop: TrainingLoop) -> bool:
    """The model trained is wrapped in DistributedDataParallel, not FSDP (whose ``no_sync``
    keeps unsharded gradients: a memory trade, not a fix)."""
    wrappers = loop.model_wrappers
    if wrappers & FSDP_WRAPPERS:
        return False
    return bool(wrappers & DDP_WRAPPERS)


def _under_own_no_sync(loop: TrainingLoop, backward: Operation) -> bool:
    """A ``no_sync`` of the model trained (or of a receiver that cannot be told) encloses it;
    ``critic.no_sync()`` around the student's backward does not count."""
    trained = {op.receiver for op in loop.forwards}
    for context in backward.contexts:
        for option in context.split("|"):
            if option == "no_sync" or option.endswith("no_backward_sync"):
                return True
            if option.endswith(".no_sync"):
                receiver = option[: -len(".no_sync")]
                if receiver in trained or receiver.removesuffix(".module") in trained or not trained:
                    return True
    return False


@register
class DdpAccumulationWithoutNoSync(ProjectRule):
    """TA205: a DistributedDataParallel model accumulates gradients, and every micro-batch's
    backward all-reduces them; only the last one of a window needs to."""

    code = "TA205"
    families = ("loops",)
    triggers = LOOP_TRIGGERS

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        for loop in project_training_loops(project):
            accumulation = _manual_accumulation(loop)
            if accumulation is None or not _ddp_model(loop) or loop.ops("sync_flag"):
                continue
            backwards = loop.ops("backward")
            if any(_under_own_no_sync(loop, op) for op in backwards):
                continue  # also ``no_sync() if ... else nullcontext()``: the author handles it
            backward = backwards[0]
            forward = next((op for op in loop.forwards if op.order < backward.order), None)
            message = ("DistributedDataParallel all-reduces the gradients on every micro-batch's "
                       "backward while accumulating; run the non-boundary micro-batches under "
                       "`model.no_sync()`")
            gate = accumulation.gate if accumulation.kind == "gated" else None
            payload = NoSyncWrap(
                model=forward.receiver, forward=(forward.site.line, forward.site.column),
                gate=(gate.site.line, gate.site.column, gate.negated) if gate else None,
            ) if forward is not None and same_file(loop, backward, forward) else None
            yield self.finding(backward.site.path, backward.site.span, message, payload=payload,
                               fixable=payload is not None)
