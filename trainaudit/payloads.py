"""What a rule hands its fixer: one frozen dataclass per fixable rule.

A rule builds its payload from the facts it already proved and passes it as
``payload=`` to ``Rule.finding`` / ``ModuleRule.report``; the finding carries it
(``Finding.payload``) to the fixer, which reads it with ``payload_of`` and never
re-analyses the file. Payloads are frozen and hold only plain values, tuples and
``Span``-s: findings are pickled across worker processes and into the on-disk
cache (which loads only trainaudit classes). A rule that cannot give its fixer
what it needs passes no payload and ``fixable=False``.

Families not migrated yet still use the untyped ``fix_data`` dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from trainaudit.diagnostics import Finding, FixPayload, Span

Payload = TypeVar("Payload", bound=FixPayload)


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
    """TA303: insert ``scaler.unscale_(optimizer)`` before the statement at ``anchor``."""

    scaler: str
    optimizer: str
    anchor: Span


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
