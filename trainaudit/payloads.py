"""What a rule hands its fixer: one frozen dataclass per fixable rule.

A rule builds its payload from the facts it already proved and passes it as
``payload=`` to ``Rule.finding`` / ``ModuleRule.report``; the finding carries it
(``Finding.payload``) to the fixer, which reads it with ``payload_of`` and never
re-analyses the file. Payloads are frozen and hold only plain values, tuples and
``Span``-s: findings are pickled across worker processes and into the on-disk
cache (which loads only trainaudit classes). A rule that cannot give its fixer
what it needs passes no payload and ``fixable=False``. Positions are 1-based
``(line, column)`` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from trainaudit.diagnostics import Finding, FixPayload, Span

Payload = TypeVar("Payload", bound=FixPayload)

Position = tuple[int, int]  # (line, column), 1-based


def payload_of(finding: Finding, kind: type[Payload]) -> Payload | None:
    """The finding's payload when it is of this kind (a fixer's only way in)."""
    payload = finding.payload
    return payload if isinstance(payload, kind) else None


# -- precision (TA301–TA306) -------------------------------------------------------------


@dataclass(frozen=True)
class AutocastWrap(FixPayload):
    """TA301: wrap lines ``first_line``..``last_line`` (the forward through the loss)."""

    first_line: int
    last_line: int
    device_type: str  # source text for ``device_type=``
    torch_name: str
    add_import: bool
    function: str
    # The line of ``<loss expression>.backward()`` right after the region: the fix computes
    # that loss inside it (``loss = <expression>``) and calls ``loss.backward()`` after; 0: none.
    inline_loss: int = 0


@dataclass(frozen=True)
class AmpRename(FixPayload):
    """TA302: one deprecated AMP reference (the finding's span) and how to rename it.

    ``form``: call | decorator | reference; ``spelling``: qualified | module | name.
    ``movable_imports``: the lines of the imports binding ``local_name`` that may
    move to ``torch.amp`` once every one of ``local_uses`` is fixed (imports in a
    version-guarded fallback are never listed).
    """

    kind: str  # autocast | GradScaler | custom_fwd | custom_bwd
    device: str
    form: str
    spelling: str
    qualname: str
    replacement: str
    local_name: str
    torch_base: str  # the torch spelling to write (``torch``, ``th``)
    needs_torch_import: bool
    movable_imports: tuple[int, ...] = ()
    local_uses: tuple[tuple[int, int], ...] = ()  # (line, column) of every use of local_name


@dataclass(frozen=True)
class UnscaleBeforeClip(FixPayload):
    """TA303: insert ``scaler.unscale_(optimizer)`` before the statement at ``anchor``; with
    ``move``, the ``unscale_`` call there is that statement, moved from right after it."""

    scaler: str
    optimizer: str
    anchor: Span
    move: Span | None = None


@dataclass(frozen=True)
class ScalerRepair(FixPayload):
    """TA304: route the backward (``kind="backward"``) or step (``"step"``) through
    ``scaler``, or add ``scaler.update()`` after its step (``"update"``)."""

    scaler: str
    kind: str


@dataclass(frozen=True)
class ScalerInsertion(FixPayload):
    """TA305: build ``scaler`` before the loop at ``loop_line`` and use it."""

    loop_line: int
    backwards: tuple[Span, ...]
    clips: tuple[Span, ...]
    steps: tuple[tuple[Span, str], ...]  # optimizer.step() calls and their optimizer
    device: str
    torch_name: str
    scaler: str


@dataclass(frozen=True)
class ScalerRemoval(FixPayload):
    """TA306: delete the scaler's statements, unwrap ``scaler.scale(x)`` and turn
    ``scaler.step(opt)`` into ``opt.step()``; with ``removable=False`` (it has other
    uses) disable it instead (``enabled=False`` at the finding)."""

    scaler: str
    removable: bool
    statements: tuple[int, ...] = ()  # lines of statements to delete
    scales: tuple[Span, ...] = ()
    steps: tuple[Span, ...] = ()


# -- checkpointing (TA401–TA403) ---------------------------------------------------------


@dataclass(frozen=True)
class CheckpointStack(FixPayload):
    """TA401: checkpoint each block of ``stack`` in ``class_name.forward``."""

    class_name: str
    class_line: int
    stack: str
    kind: str  # loop | index | sequential
    init_line: int | None  # where __init__ builds the stack
    has_flag: bool  # the class already sets ``gradient_checkpointing``
    checkpoint: str  # how to spell checkpoint here
    checkpoint_import: str | None
    checkpoint_binds: str


# -- labels (TA101–TA105) ----------------------------------------------------------------


@dataclass(frozen=True)
class RollToSlice(FixPayload):
    """TA101 / TA103: rewrite ``labels = roll(x, -1)`` (the finding) as slicing; ``ignore``
    is the value written on the tail (TA101), None where the tail is already handled (TA103)."""

    ignore: str | None


@dataclass(frozen=True)
class ShiftRemoval(FixPayload):
    """TA102: undo the data-side shift: the statement at the finding gets ``replacement``
    as its value (when there is one) and the statements spanning the ``delete`` line
    ranges go. (A producer that also cuts the inputs gets no fix: see the rule.)"""

    replacement: str | None
    delete: tuple[tuple[int, int], ...]
    note: str


@dataclass(frozen=True)
class IgnoreValue(FixPayload):
    """TA104: the value to mask the labels with (source text)."""

    value: str


@dataclass(frozen=True)
class LossShift(FixPayload):
    """TA105: shift at the loss: the logits and labels roots as (line, column, text)."""

    logits: tuple[int, int, str]
    labels: tuple[int, int, str]


# -- accumulation (TA201–TA206) ----------------------------------------------------------


@dataclass(frozen=True)
class AccumulationRewrite(FixPayload):
    """TA201: make the loop at the finding accumulate. ``backward``: where the backward is;
    ``helper``/``call``: the helper holding the step and the loop's call of it; ``model``:
    the model run forward (for ``no_sync``); ``batch_source``/``batch_expr``: where the
    batch size comes from (an argparse flag gets an accumulation flag beside it)."""

    backward: Position
    helper: str | None = None
    call: Position | None = None
    ddp: bool = False
    model: str | None = None
    batch_source: str | None = None
    batch_expr: str | None = None
    # Where the step's scaler updates are (``gs.update()``: the object model's scaler), so
    # the update part of the loop is told from other ``update()`` calls without a name.
    scaler_updates: tuple[Position, ...] = ()


@dataclass(frozen=True)
class DivideLoss(FixPayload):
    """TA202: divide the backward's loss by ``divisor`` (source text)."""

    divisor: str


@dataclass(frozen=True)
class MoveToStep(FixPayload):
    """TA203 (``kind``: scheduler_step | clip | zero_grad) and TA206 (``kind="zero_grad"``):
    move the statement at the finding next to the optimizer step at ``step`` (a clip
    before it, anything else after the step's run)."""

    step: Position
    kind: str
    # The test of the ``if`` that gates the step on the accumulation boundary (the moved
    # statement goes inside it, after whatever statement there holds the step); None: none.
    gate: Position | None = None
    # The calls that finish the step's run (the scaler's update, the scheduler's step).
    run: tuple[Position, ...] = ()


@dataclass(frozen=True)
class ZeroGradAfterStep(FixPayload):
    """TA204: clear ``optimizer``'s gradients after the step at the finding."""

    optimizer: str
    run: tuple[Position, ...] = ()  # the calls that finish the step's run (as ``MoveToStep``)


@dataclass(frozen=True)
class NoSyncWrap(FixPayload):
    """TA205: run the forward at ``forward`` through the backward at the finding under
    ``model.no_sync()`` except on a window's last micro-batch: ``gate`` (line, column,
    negated) is the boundary test of a gated step, None for a micro-batch loop."""

    model: str
    forward: Position
    gate: tuple[int, int, bool] | None


# -- hygiene (TA501–TA504) ---------------------------------------------------------------


@dataclass(frozen=True)
class NoGradFunction(FixPayload):
    """TA501: decorate ``function`` (dotted within its file) with ``@torch.no_grad()``."""

    function: str


@dataclass(frozen=True)
class RestoreTrainMode(FixPayload):
    """TA502: call ``receiver.train()`` after the evaluation at the finding, or, with
    ``after``, right after the statement of the call at that position (an enclosing loop's
    ``evaluate(model, ...)``: the helper itself may be shared)."""

    receiver: str
    after: Position | None = None


@dataclass(frozen=True)
class DetachAccumulated(FixPayload):
    """TA503: the value at the finding is added to ``accumulator``: detach it (or ``.item()``)."""

    accumulator: str


@dataclass(frozen=True)
class ClipBeforeStep(FixPayload):
    """TA504: clip ``model``'s gradients before the step at the finding (unscaling them
    through ``scaler`` first where there is one and nothing unscales them yet)."""

    model: str
    optimizer: str
    scaler: str | None
    unscaled: bool


# -- suppression (TA002) -----------------------------------------------------------------


@dataclass(frozen=True)
class SuppressionEdit(FixPayload):
    """TA002: the directive text at the finding and what replaces it (empty: removed);
    ``starts_comment``: the directive opens the comment (text after it stays one)."""

    directive: str
    replacement: str
    starts_comment: bool
