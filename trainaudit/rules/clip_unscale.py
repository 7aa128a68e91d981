"""TA303: gradients clipped while a GradScaler still scales them.

In a file, the training loops are read in execution order with the file's helpers
inlined (and functions outside loops in lexical order); across files, the project's
training loops inline the helpers imported from other checked files, so a
``clip_gradients(model, 1.0)`` from ``utils.py`` is judged where the loop calls it.
Per-file facts (``ScalerClipFacts``) carry what the project phase cannot read from
records alone: which backwards are of scaled losses, and the scaler's steps.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from trainaudit.diagnostics import Finding, Related, Span
from trainaudit.model.loops import (
    BACKWARD_CALL,
    Operation,
    Site,
    TrainingLoop,
    find_training_loops,
    project_training_loops,
)
from trainaudit.model.module import ModuleFacts
from trainaudit.model.precision import PrecisionFacts
from trainaudit.model.project import Project
from trainaudit.payloads import UnscaleBeforeClip
from trainaudit.registry import ProjectRule, RuleContext, register, summarizer
from trainaudit.rules.grad_scaler import receiver_of, scaled_backward, scope_calls

# TA303 reads per-file facts (``ScalerClipFacts``) and the project's training loops: a clip
# in a helper imported from another file is seen where the loop calls it.
CLIP_FAMILY = "scaler-clips"
# A second ``unscale_`` before ``update()`` raises: where one follows the clip, the fix that
# inserts one before it would break the step.
UNSCALE_AFTER_CLIP = "an `unscale_` runs after the clip (a second one would raise)"


@dataclass(frozen=True)
class UnscaledClip:
    """A clip of gradients still scaled by a GradScaler, found within one file."""

    span: Span
    scaler: str | None
    optimizer: str | None  # the scaler step's optimizer, as spelled there
    fixable: bool
    anchor: Span | None  # where ``unscale_`` goes, when not right before the clip
    no_fix: str | None = None  # why there is no fix, where that is not ``fixable``'s reason
    move: Span | None = None  # the ``unscale_`` right after the clip, that the fix moves before it


@dataclass(frozen=True)
class ScalerStep:
    """``scaler.step(optimizer)``: where, and the two names as spelled there."""

    span: Span
    scaler: str
    optimizer: str


@dataclass(frozen=True)
class ScalerClipFacts:
    """TA303's facts of one file: clips of scaled gradients found within it, and what a loop
    calling a clipping helper of another file needs: which backwards differentiate a scaled
    loss, and the scaler's steps."""

    unscaled_clips: tuple[UnscaledClip, ...] = ()
    scaled_backwards: frozenset[Span] = frozenset()
    scaler_steps: tuple[ScalerStep, ...] = ()


def _steps_through_scaler(facts: PrecisionFacts, op: Operation) -> bool:
    """An optimizer step of the loop model that is a scaler's ``step(optimizer)`` (the
    object model says what the receiver is)."""
    call = op.node
    return (op.site.path == facts.module.path and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute) and facts.kind_of(call.func.value) == "scaler")


def _clips_in_loops(facts: PrecisionFacts, seen: set[int]) -> Iterator[UnscaledClip]:
    """Clips in the file's training loops (helpers of the file inlined, execution order)
    with no ``unscale_`` before them, after a scaled backward."""
    module = facts.module
    for loop in find_training_loops(module):
        unscale_orders = [op.order for op in loop.ops("unscale")]
        scaler_steps = [op for op in loop.ops("optimizer_step") if _steps_through_scaler(facts, op)]
        if not scaler_steps:
            continue
        for clip in loop.ops("clip"):
            if clip.framework or not isinstance(clip.node, ast.Call) \
                    or not facts.is_clip_call(clip.node) or id(clip.node) in seen:
                continue
            seen.add(id(clip.node))
            if any(order < clip.order for order in unscale_orders):
                continue
            # Only gradients of a scaled backward are scaled (not the plain branch of
            # ``if use_amp: scaler.scale(loss).backward() ... else: loss.backward()``).
            before = [b for b in loop.ops("backward") if b.order < clip.order]
            if not before or not scaled_backward(facts, before[-1].site.function, before[-1].node):
                continue
            step = ([s for s in scaler_steps if s.order > clip.order] or scaler_steps)[0]
            step_call = step.node
            if not isinstance(step_call, ast.Call) or not step_call.args:
                continue
            later = [u for u in loop.ops("unscale") if clip.order < u.order < step.order]
            # The unscale goes where the step's names are visible: before the helper
            # call that leads to the clip, when the clip is deeper than the step.
            depth = len(step.via)
            fixable = clip.via[:depth] == step.via
            anchor = clip.via[depth].span if fixable and len(clip.via) > depth else None
            move = _moved_unscale(module, anchor or module.span(clip.node),
                                  [module.span(u.node) for u in later if u.node is not None],
                                  module.span(step_call)) if fixable and later else None
            yield UnscaledClip(module.span(clip.node), receiver_of(step_call),
                               module.segment(step_call.args[0]),
                               fixable and (not later or move is not None), anchor,
                               UNSCALE_AFTER_CLIP if later and move is None else None, move)


def _moved_unscale(module: ModuleFacts, anchor: Span, later: list[Span],
                   step: Span) -> Span | None:
    """The one ``unscale_`` after the clip (``later``: the spans of those before the step),
    when the fix can move it before the clip: a statement of its own, of the step's scaler
    and optimizer, right after the statement of the clip (or of the helper call leading to
    it, at ``anchor``) in the same block."""
    calls = {module.span(n): n for n in module.nodes_by_type.get(ast.Call, ())
             if isinstance(n, ast.Call)}
    unscale = calls.get(later[0]) if len(later) == 1 else None
    step_call = calls.get(step)
    if unscale is None or step_call is None or len(unscale.args) != 1 or not step_call.args \
            or receiver_of(unscale) != receiver_of(step_call) \
            or module.segment(unscale.args[0]) != module.segment(step_call.args[0]):
        return None
    call = calls.get(anchor)
    parents = module.parents
    clip_stmt = next((a for a in module.ancestors(call) if isinstance(a, ast.stmt)), None) \
        if call is not None else None
    unscale_stmt = parents.get(unscale)
    parent = parents.get(unscale_stmt) if isinstance(unscale_stmt, ast.Expr) else None
    for field in ("body", "orelse", "finalbody"):
        block = getattr(parent, field, None)
        if isinstance(block, list) and clip_stmt in block and unscale_stmt in block \
                and block.index(unscale_stmt) == block.index(clip_stmt) + 1:
            return module.span(unscale)
    return None


def _clips_outside_loops(facts: PrecisionFacts, seen: set[int]) -> Iterator[UnscaledClip]:
    """Steps outside any loop of this file (a helper called from elsewhere): lexical order."""
    module = facts.module
    loops = find_training_loops(module)
    in_loops = {name for loop in loops for name in loop.helpers} | {loop.header.function for loop in loops}
    for function in sorted({""} | set(module.functions)):
        if function in in_loops:
            continue
        calls = scope_calls(facts, function)
        on_scaler = [(c.func.attr, c) for c in calls if isinstance(c.func, ast.Attribute)
                     and c.func.attr in ("step", "scale", "unscale_") and facts.kind_of(c.func.value) == "scaler"]
        steps = [c for method, c in on_scaler if method == "step" and c.args]
        scales = [c for method, c in on_scaler if method == "scale"]
        if not steps and not scales:
            continue
        unscales = [c for method, c in on_scaler if method == "unscale_"]
        backwards = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "backward"]
        for clip_call in (c for c in calls if facts.is_clip_call(c)):
            if id(clip_call) in seen or any(u.lineno < clip_call.lineno for u in unscales):
                continue
            earlier = [b for b in backwards if b.lineno <= clip_call.lineno]
            if earlier and not scaled_backward(facts, function, earlier[-1]):
                continue
            after = [s for s in steps if s.lineno > clip_call.lineno] or steps
            scaler = receiver_of(after[0]) if after else receiver_of(scales[0])
            optimizer = module.segment(after[0].args[0]) if after else None
            end = after[0].lineno if after and after[0].lineno > clip_call.lineno else None
            later = [u for u in unscales
                     if u.lineno > clip_call.lineno and (end is None or u.lineno < end)]
            move = _moved_unscale(module, module.span(clip_call), [module.span(u) for u in later],
                                  module.span(after[0])) if later and end is not None else None
            yield UnscaledClip(module.span(clip_call), scaler, optimizer,
                               not later or move is not None, None,
                               UNSCALE_AFTER_CLIP if later and move is None else None, move)


# Facts only where a scaler scales something, and then a clip or a backward to judge; or
# where a clip runs beside a step (the scaled backward may be in another file's helper).
@summarizer(CLIP_FAMILY, triggers=("scale(", "clip_grad"),
            requires=((r"scale\(", r"clip_grad"), (r"scale\(", BACKWARD_CALL), (r"clip_grad", r"\.step\(")))
def summarize_scaler_clips(module: ModuleFacts) -> ScalerClipFacts:
    """TA303's per-file facts (see ``ScalerClipFacts``); empty where no scaler scales or
    steps."""
    facts = PrecisionFacts.of(module)
    scalers = facts.scalers
    if not (scalers.uses("scale") or scalers.uses("step")) or facts.scaler_always_disabled():
        return ScalerClipFacts()
    seen: set[int] = set()
    clips = (*_clips_in_loops(facts, seen), *_clips_outside_loops(facts, seen))
    scaled = frozenset(module.span(step.backward) for step in facts.training_steps
                       if scaled_backward(facts, step.function, step.backward))
    step_calls = {id(c): c for c in facts.scalers.uses("step") if c.args}
    for loop in find_training_loops(module):
        step_calls.update((id(op.node), op.node) for op in loop.ops("optimizer_step")
                          if isinstance(op.node, ast.Call) and op.node.args
                          and _steps_through_scaler(facts, op))
    steps = tuple(ScalerStep(module.span(c), receiver_of(c) or "scaler", module.segment(c.args[0]))
                  for c in step_calls.values())
    return ScalerClipFacts(clips, scaled, steps)


@register
class ClipBeforeUnscale(ProjectRule):
    """TA303: clipping gradients that are still multiplied by the loss scale.

    With a GradScaler, ``clip_grad_norm_(params, 1.0)`` before
    ``scaler.unscale_(optimizer)`` compares the *scaled* norm (x65536) with 1.0:
    every step is clipped to almost nothing. Clipping through
    ``accelerator.clip_grad_norm_`` / ``fabric.clip_gradients`` unscales first.
    A clip in a helper of another file is reported where the loop calls the helper.
    """

    code = "TA303"
    families = ("loops", CLIP_FAMILY)
    triggers = ("clip_grad",)

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        by_path = {summary.path: facts for summary, facts in project.facts(CLIP_FAMILY)
                   if isinstance(facts, ScalerClipFacts)}
        seen: set[tuple[str, Span]] = set()
        for path, facts in sorted(by_path.items()):
            for clip in facts.unscaled_clips:
                seen.add((path, clip.span))
                yield self._finding(path, clip.span, clip.scaler, clip.optimizer,
                                    fixable=clip.fixable, anchor=clip.anchor, no_fix=clip.no_fix,
                                    move=clip.move)
        yield from self._clips_across_files(project, by_path, seen)

    def _clips_across_files(self, project: Project, by_path: dict[str, ScalerClipFacts],
                            seen: set[tuple[str, Span]]) -> Iterator[Finding]:
        """Clips a loop runs after a scaled backward that one file alone does not show: the
        clip in a helper imported from another file (reported at the loop's call), or the
        scaled backward in another file's ``train_step`` (reported at the clip)."""
        for loop in project_training_loops(project):
            if loop.path not in by_path:
                continue
            for clip in loop.ops("clip"):
                if clip.framework or clip.imported is not None \
                        or any(u.order < clip.order for u in loop.ops("unscale")):
                    continue
                before = [b for b in loop.ops("backward") if b.order < clip.order]
                backward_facts = by_path.get(before[-1].site.path) if before else None
                if backward_facts is None or before[-1].site.span not in backward_facts.scaled_backwards:
                    continue
                steps = [(op, step) for op in loop.ops("optimizer_step") if op.site.path in by_path
                         for step in by_path[op.site.path].scaler_steps if step.span == op.site.span]
                after = [pair for pair in steps if pair[0].order > clip.order]
                if not after:
                    continue
                op, step = after[0]
                call = loop.entry_call(clip, op)
                if call is None:  # the clip is beside the step: the backward is elsewhere
                    if clip.site.path != loop.path or (loop.path, clip.site.span) in seen:
                        continue
                    seen.add((loop.path, clip.site.span))
                    no_fix = _no_fix_beside(loop, clip, op)
                    move = self._move(project, loop, clip.site.span, clip, op) \
                        if no_fix == UNSCALE_AFTER_CLIP else None
                    yield self._finding(loop.path, clip.site.span, step.scaler, step.optimizer,
                                        no_fix=None if move else no_fix, move=move)
                    continue
                if (loop.path, call.span) in seen:
                    continue
                seen.add((loop.path, call.span))
                no_fix = _no_unscale_fix(loop, clip, call, op, before[-1])
                move = self._move(project, loop, call.span, clip, op) \
                    if no_fix == UNSCALE_AFTER_CLIP else None
                yield self._finding(
                    loop.path, call.span, step.scaler, step.optimizer,
                    anchor=call.span, via=clip, helper=call.text,
                    no_fix=None if move else no_fix, move=move)

    @staticmethod
    def _move(project: Project, loop: TrainingLoop, anchor: Span, clip: Operation,
              step: Operation) -> Span | None:
        """The loop file's ``unscale_`` the fix can move before ``anchor`` (see
        ``_moved_unscale``), or None."""
        later = [u for u in loop.ops("unscale") if clip.order < u.order < step.order]
        summary = project.by_path.get(loop.path)
        module = project.module_of(summary) if summary is not None else None
        if module is None or step.site.path != loop.path \
                or any(u.site.path != loop.path for u in later):
            return None
        return _moved_unscale(module, anchor, [u.site.span for u in later], step.site.span)

    def _finding(self, path: str, span: Span, scaler: str | None, optimizer: str | None, *,
                 fixable: bool = True, anchor: Span | None = None, via: Operation | None = None,
                 helper: str = "", no_fix: str | None = None, move: Span | None = None) -> Finding:
        unscale = f"`{scaler}.unscale_({optimizer or 'optimizer'})`"
        if via is None:
            message = f"gradients are clipped while still scaled by `{scaler}`: call {unscale} before clipping"
            if no_fix is not None:
                message += f"; no automatic fix: {no_fix}"
        else:
            message = (f"`{helper}` clips gradients still scaled by `{scaler}` (in "
                       f"{via.site.path}:{via.site.line}): call {unscale} before it")
            if no_fix is not None:
                message += f"; no automatic fix: {no_fix}"
        fixable = fixable and no_fix is None and scaler is not None and optimizer is not None
        return self.finding(
            path, span, message,
            payload=UnscaleBeforeClip(scaler, optimizer, anchor or span, move)
            if scaler is not None and optimizer is not None and fixable else None,
            fixable=fixable,
            related=[Related(via.site.path, via.site.line, via.site.column, "the clip")]
            if via is not None else ())


def _no_fix_beside(loop: TrainingLoop, clip: Operation, step: Operation) -> str | None:
    """Why ``unscale_`` cannot go right before a clip of the loop's file, or None: the
    step must be in the clip's function and loops, and no ``unscale_`` may follow the clip."""
    if step.site.path != clip.site.path or step.site.function != clip.site.function \
            or step.via != clip.via:
        return "the scaler's step is not in the function that clips"
    if clip.loops != step.loops:
        return "the clip is in a loop the scaler's step is not in"
    if any(clip.order < u.order < step.order for u in loop.ops("unscale")):
        return UNSCALE_AFTER_CLIP
    return None


def _no_unscale_fix(loop: TrainingLoop, clip: Operation, call: Site, step: Operation,
                    backward: Operation) -> str | None:
    """Why ``scaler.unscale_(optimizer)`` cannot go right before the helper call, or None.

    It must run once per step (a second ``unscale_`` before ``update()`` raises) and see the
    names the step's call spells: the step is in the function that calls the helper, the
    call is in no loop the step is not in, it is the first clip after the backward, and no
    ``unscale_`` runs between it and the step."""
    depth = len(step.via)
    if step.site.path != loop.path or clip.via[:depth] != step.via or clip.via[depth] != call:
        return "the scaler's step is not in the function that calls the helper"
    if clip.loops != step.loops:
        return "the helper is called in a loop the scaler's step is not in"
    earlier = [c for c in loop.ops("clip") if backward.order < c.order < clip.order]
    if earlier:
        first = ([site for site in earlier[0].via if site.path == loop.path] or [earlier[0].site])[-1]
        return f"the `unscale_` goes before the earlier clip on line {first.line}"
    if any(clip.order < u.order < step.order for u in loop.ops("unscale")):
        return UNSCALE_AFTER_CLIP
    return None
