"""Records of the loop model: sites, operations, guards, losses and training loops.

Frozen and picklable; ``node`` fields are dropped when a record crosses files."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Literal

from trainaudit.diagnostics import Span
from trainaudit.model.loops.ordering import Ordering
from trainaudit.model.loops.patterns import GradMode, gate_steps, grad_mode, micro_loop_steps

OpKind = Literal[
    "backward", "optimizer_step", "zero_grad", "scheduler_step", "clip", "unscale",
    "scaler_update", "eval_mode", "train_mode", "forward", "grad_scale", "sync_flag",
]

LoopNode = ast.For | ast.AsyncFor | ast.While

# ``Operation.bound`` of a helper's parameter that no argument of the call gives.
UNBOUND = "?"


@dataclass(frozen=True)
class Site:
    """Where something is: a file, a span, the function it is in and its source text."""

    path: str
    span: Span
    function: str  # dotted name within its file ("Trainer.fit"); "" is module level
    text: str  # source text, first line, at most 100 characters

    @property
    def line(self) -> int:
        return self.span.line

    @property
    def column(self) -> int:
        return self.span.column


@dataclass(frozen=True)
class Guard:
    """An ``if`` test an operation runs under (``negated``: in its ``else``, or after
    ``if test: continue``)."""

    site: Site
    negated: bool
    accumulation: bool  # looks like an accumulation-boundary test (``% k``, ``sync_gradients``)

    @property
    def text(self) -> str:
        return self.site.text


@dataclass(frozen=True)
class LossSite:
    """What a ``backward`` differentiates, and whether it is divided by something."""

    text: str  # "loss", "loss / accum", "scaler.scale(loss)" without the scale
    scaled: bool | None  # divided (or multiplied by 1/k); None when it cannot be told
    divisor: str | None  # source text of the divisor, when one is visible
    # "mean" (the default of torch losses), "sum", "none" or "unknown" (set by a variable)
    # where the loss call is visible (a forward of a model class of the file is read);
    # None when it is not.
    reduction: str | None = None
    # The divisor is a name the loss's function increments by one (``micro += 1``): a
    # micro-step counter that runs 1, 2, 3 ... across the window.
    counter: bool = False
    # Where the scaling is not known here: the imported function whose result is the loss
    # (``loss = loss_fn(out, y)`` with ``loss_fn`` from another module), qualified; the
    # project phase reads that function's own verdict (``summaries.helper_loss``).
    helper: str | None = None
    # Where the loss is a call of a parameter (``criterion(logits, y)``) it cannot read:
    # (function, position, name) of each parameter that callable may be; the project phase
    # reads what callers in other files pass there (``LoopFileFacts.criteria_passed``).
    parameters: tuple[tuple[str, int, str], ...] = ()
    # That call's result is divided by its own micro-batch's element count (``/ y.numel()``):
    # a summed criterion passed there makes a mean.
    per_element: bool = False


@dataclass(frozen=True)
class Operation:
    """One training-relevant call in a loop's call tree, with how it is reached."""

    kind: OpKind
    site: Site
    receiver: str  # "optimizer" for optimizer.step(), "loss" for loss.backward(), ...
    guards: tuple[Guard, ...] = ()
    contexts: tuple[str, ...] = ()  # `with` items (qualified call names) around it, outermost first
    loops: tuple[Site, ...] = ()  # loops inside the training loop that enclose it
    via: tuple[Site, ...] = ()  # helper calls from the loop body down to it
    order: int = 0  # execution order within the loop body (helpers inlined)
    framework: str = ""  # for delegated calls: "accelerate", "fabric", "deepspeed", "lightning"
    loss: LossSite | None = None  # backward only
    # Forwards and mode switches: the object by its name in the walked loop's function
    # (``objects.FileObjects.name``), a helper's parameter replaced by the call's argument
    # (``evaluate(ema, ...)`` puts ``ema`` in eval mode); ``UNBOUND`` when a parameter has no
    # argument the walk can see; "" where not computed (``receiver`` stands for it).
    bound: str = ""
    # A clip recognised by the name of a function imported from another module
    # (``clip_gradients(model, 1.0)`` from ``utils``): that call, for the project phase to
    # run the function's own operations in its place where its file is checked (the
    # ``loops`` summarizer fills it in; ``summaries._merge_external`` reads it).
    imported: ExternalCall | None = None
    node: ast.AST | None = field(default=None, compare=False, repr=False)
    # zero_grad only: what the object model says its receiver is ("optimizer", "model", "").
    receiver_kind: str = ""

    @property
    def subject(self) -> str:
        """The object the call is on, named in the loop's function (see ``bound``)."""
        return self.bound or self.receiver

    @property
    def accumulation_guards(self) -> tuple[Guard, ...]:
        return tuple(g for g in self.guards if g.accumulation)

    def under(self, *names: str) -> bool:
        """Whether a ``with`` item whose name (or one of its alternatives, ``a|b``) ends with
        one of ``names`` may enclose it."""
        return any(option.endswith(name) for ctx in self.contexts for option in ctx.split("|")
                   for name in names)

    @property
    def grad_mode(self) -> GradMode:
        """Whether autograd records here: "enabled", "disabled" or "maybe" (a conditional
        context)."""
        return grad_mode(self.contexts)


@dataclass(frozen=True)
class CallArguments:
    """A call's arguments as the caller names them (``arguments.py``); ``positional``
    ends where a ``*rest`` starts."""

    positional: tuple[str, ...] = ()
    keywords: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExternalCall:
    """A call from a loop's call tree to a function imported from another module."""

    qualified: str  # "pkg.steps.train_step"
    site: Site
    guards: tuple[Guard, ...] = ()
    contexts: tuple[str, ...] = ()
    loops: tuple[Site, ...] = ()
    via: tuple[Site, ...] = ()
    order: int = 0
    arguments: CallArguments = CallArguments()


@dataclass(frozen=True)
class BatchSize:
    """A batch size known statically, and where it came from."""

    value: int
    source: str  # "literal", "argparse --batch-size default", "config field batch_size", ...
    expression: str = ""  # the source text that gives it (``args.batch_size``), when there is one
    sequence: int | None = None  # tokens per sample, where a sequence length is known

    @property
    def tokens(self) -> int | None:
        """Tokens per micro-batch (samples × sequence length), where both are known."""
        return self.value * self.sequence if self.sequence else None


@dataclass(frozen=True)
class Accumulation:
    """How a loop accumulates gradients over micro-batches."""

    kind: Literal["gated", "micro-loop", "delegated"]
    steps: str | None  # source text of the number of micro-batches, when visible
    gate: Guard | None = None  # the boundary test of a gated optimizer step


@dataclass(frozen=True)
class FunctionOps:
    """What one function's call tree does, relative to its own body (for cross-file helpers)."""

    name: str
    params: tuple[str, ...]
    operations: tuple[Operation, ...]
    external_calls: tuple[ExternalCall, ...]
    decorators: tuple[str, ...]
    ordering: Ordering = field(default_factory=Ordering)  # over the orders of its operations and external calls
    positional: tuple[str, ...] = ()  # the parameters positional arguments fill, in order


@dataclass(frozen=True)
class TrainingLoop:
    """A loop whose call tree runs backward and an optimizer step, with everything it does."""

    header: Site
    kind: Literal["for", "while"]
    target: str  # the for-loop target ("batch", "i, (x, y)"); "" for while
    iterable: str  # the for-loop iterable, or the while test
    operations: tuple[Operation, ...]
    external_calls: tuple[ExternalCall, ...] = ()
    helpers: tuple[str, ...] = ()
    outer_loops: tuple[Site, ...] = ()
    batch_size: BatchSize | None = None
    file_delegation: frozenset[str] = frozenset()  # frameworks the file hands training to
    ddp: bool = False  # the file wraps a model in DistributedDataParallel / FSDP
    # Facts of the loop's file: "gpu" (it can put work on a GPU), "cpu-fallback" (it runs on
    # the CPU without one), "benchmark" (a throughput or profiling script), "adapters"
    # (PEFT/LoRA fine-tuning).
    traits: frozenset[str] = frozenset()
    # What the models run forward are wrapped in, by object (``DistributedDataParallel``, ...).
    model_wrappers: frozenset[str] = frozenset()
    # Which events may run after which in one iteration (None: not known, use ``order``).
    ordering: Ordering | None = field(default=None, compare=False, repr=False)
    # Loops whose call tree contains this one (an epoch loop around the step loop, in this
    # function or in a caller of it in this file), each walked whole with its ``later``.
    enclosing: tuple[TrainingLoop, ...] = field(default=(), compare=False, repr=False)
    # For an enclosing loop: which events may run after which at any later time (later
    # iterations of it, and of loops around it, included).
    later: Ordering | None = field(default=None, compare=False, repr=False)
    node: LoopNode | None = field(default=None, compare=False, repr=False)
    # Windows the loop counts itself (``patterns.counted_windows``): (line of the ``if``
    # test, the window size's text).
    counted_windows: tuple[tuple[int, str], ...] = ()

    @property
    def path(self) -> str:
        return self.header.path

    def ops(self, *kinds: OpKind) -> list[Operation]:
        """Operations of the given kinds, in execution order."""
        return [op for op in self.operations if op.kind in kinds]

    def may_follow(self, first: Operation | ExternalCall, then: Operation | ExternalCall) -> bool:
        """Whether ``then`` can run after ``first`` in the same iteration (a path of the
        control-flow graph: exclusive branches and ``continue`` cut it)."""
        if self.ordering is None:
            return first.order < then.order
        return (first.order, then.order) in self.ordering.follows

    def may_run_later(self, first: Operation | ExternalCall, then: Operation | ExternalCall) -> bool:
        """Whether ``then`` can run at any time after ``first`` (a later iteration too)."""
        if self.later is None:
            return self.may_follow(first, then)
        return (first.order, then.order) in self.later.follows

    def may_skip(self, first: Operation, then: Operation) -> bool:
        """Whether, after ``first``, the function ``then`` is in can return without running
        ``then`` (``return`` inside an evaluation before its ``model.train()``)."""
        return any(ordering is not None and (first.order, then.order) in ordering.exits_past
                   for ordering in (self.ordering, self.later))

    def inside(self, loop: TrainingLoop) -> list[Operation]:
        """This record's operations that run inside ``loop`` (a loop its call tree contains)."""
        return [op for op in self.operations if loop.header in op.loops]

    def entry_call(self, op: Operation, near: Operation | None = None) -> Site | None:
        """The call through which ``op`` runs when it is in a helper of another file than
        ``near`` (the loop's file without it): the call in ``near``'s function leading to it
        (where that operation's names are seen), else the last such call in the loop's
        file; None when ``op`` is in that file (beside ``near``, or in a helper of its own)."""
        if op.site.path == (near.site.path if near is not None else self.path):
            return None
        if near is not None:
            depth = len(near.via)
            if op.via[:depth] == near.via and len(op.via) > depth:
                return op.via[depth]
        calls = [site for site in op.via if site.path == self.path]
        return calls[-1] if calls else None

    def through(self, call: Site) -> list[Operation]:
        """The operations a helper call runs (in order)."""
        return [op for op in self.operations if call in op.via]

    def first(self, kind: OpKind) -> Operation | None:
        found = self.ops(kind)
        return found[0] if found else None

    @property
    def forwards(self) -> list[Operation]:
        return self.ops("forward")

    @property
    def losses(self) -> list[LossSite]:
        return [op.loss for op in self.ops("backward") if op.loss is not None]

    @property
    def delegation(self) -> frozenset[str]:
        """Frameworks that take part in the step: from the file and from the calls themselves."""
        found = set(self.file_delegation)
        for op in self.operations:
            if op.framework:
                found.add(op.framework)
            for ctx in op.contexts:
                if ctx.endswith(".accumulate"):
                    found.add("accelerate")
                elif ctx.endswith("no_backward_sync"):
                    found.add("fabric")
        return frozenset(found)

    @property
    def accumulation(self) -> Accumulation | None:
        """How this loop accumulates, or None when it steps on every micro-batch."""
        if any(op.under(".accumulate", "no_backward_sync") for op in self.operations):
            return Accumulation("delegated", None)
        backwards = self.ops("backward")
        steps = self.ops("optimizer_step")
        if not backwards or not steps:
            return None
        step = steps[0]
        backward = backwards[0]
        inner = [site for site in backward.loops if site not in step.loops]
        if inner:
            return Accumulation("micro-loop", micro_loop_steps(inner[0].text))
        shared = set(backward.guards)
        for guard in step.accumulation_guards:
            if guard not in shared:
                counted = dict(self.counted_windows).get(guard.site.line) \
                    if not guard.negated and guard.site.path == self.path else None
                return Accumulation("gated", gate_steps(guard.text) or counted, guard)
        return None

