"""The training-loop model: which loops train a model, and what happens in them.

A *training loop* is the innermost ``for``/``while`` loop whose call tree runs
a ``backward`` and an optimizer step that are not both inside one loop nested
in it (an epoch loop around a batch loop is an *outer* loop; nanoGPT's
``while`` loop around a ``micro_step`` loop is the training loop, with the
micro-steps inside it). Helpers it calls are followed: functions and methods of
the same file (``self.fn = self._body`` aliases included) here, functions
imported from another checked file in ``project_training_loops``.

Usage (a module rule)::

    from trainaudit.model.loops import find_training_loops

    for loop in find_training_loops(module):          # module: ModuleFacts; cached per file
        loop.header                  # Site of the for/while header (path, span, function, text)
        loop.node                    # the ast.For / ast.While
        loop.ops("backward")         # Operation records in execution order (helpers inlined)
        step = loop.first("optimizer_step")
        step.guards                  # Guard(`if` test, negated, accumulation?) from the loop down
        step.contexts                # `with` items and helper decorators around it, qualified
                                     # ("torch.autocast", "torch.no_grad", "model.no_sync");
                                     # a bound `ctx` resolves to what made it
        step.under("no_sync")        # a context whose name ends with ...
        step.loops                   # loops nested in the training loop around it
        step.via                     # helper calls from the loop body down to it
        step.node                    # the ast.Call (None once a record crossed files)
        loop.forwards                # model(...) calls (Operation, kind "forward")
        loop.losses                  # LossSite of each backward: text, scaled?, divisor
        loop.accumulation            # Accumulation("gated" | "micro-loop" | "delegated", steps, gate)
        loop.delegation              # {"accelerate", "fabric", "deepspeed", "hf-trainer", ...}
        loop.batch_size              # BatchSize(4, "argparse --batch-size default",
                                     #           "args.batch_size") or None
        loop.helpers                 # local functions its call tree reaches
        loop.outer_loops, loop.ddp   # enclosing loops; DDP/FSDP used in the file

    loop_analysis(module).function_ops("train_step")   # one function's call tree, no loop

A project rule sees loops whose helper lives in another checked file::

    from trainaudit.model.loops import project_training_loops

    for loop in project_training_loops(project):   # every file's loops, imported helpers inlined
        ...

Operation kinds: ``backward``, ``optimizer_step``, ``zero_grad``,
``scheduler_step``, ``clip``, ``unscale``, ``scaler_update``, ``eval_mode``,
``train_mode``, ``forward``, ``grad_scale`` (``p.grad /= k``), ``sync_flag``
(``model.require_backward_grad_sync = ...``). Delegated calls carry a
``framework`` (``accelerator.backward`` → "accelerate", distributed autograd →
"dist-autograd").

Records are frozen dataclasses and picklable; ``node`` fields hold ast nodes
only for loops built from the current file and are dropped in summaries (the
``loops`` summarizer). Cost: a file without ``backward`` in a loop's call tree
is not walked; each function's call tree is computed once per file.
"""

from __future__ import annotations

import ast
import re
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from trainaudit.diagnostics import Span
from trainaudit.model.module import FunctionNode, ModuleFacts, int_value, keyword, walk_local
from trainaudit.model.project import Project
from trainaudit.registry import summarizer

OpKind = Literal[
    "backward", "optimizer_step", "zero_grad", "scheduler_step", "clip", "unscale",
    "scaler_update", "eval_mode", "train_mode", "forward", "grad_scale", "sync_flag",
]

LoopNode = ast.For | ast.AsyncFor | ast.While

# Text the loop model cannot work without: a file with none of these has no training loop
# and no helper a training loop could reach.
LOOP_TRIGGERS = ("backward", ".step(", "zero_grad", "optim")
# A call of a backward (``loss.backward()``, ``accelerator.backward(loss)``,
# ``self.manual_backward(loss)``), not its definition nor the word in prose. Loops train
# only through one, so the analysis's own text tests use it too (and the prefilter may).
BACKWARD_CALL = r"backward(?<!def backward)(?<!def _backward)\s*\("
_BACKWARD_CALL = re.compile(BACKWARD_CALL)
# Words in the name of a function that may train (``train_step``, ``update``, ``fit``).
_TRAINY_WORDS = r"train|step|update|fit|backward|optim"
# An import whose names may be training helpers (``from utils import train_step``).
TRAINY_IMPORT = rf"import(?:[^\n(]*(?:\\\n[^\n(]*)*|\s*\([^)]*)(?i:{_TRAINY_WORDS})"
# Files without any of these have no loop facts: no training loop, no loop that may train
# through an imported helper, no helper that trains.
LOOP_REQUIRES = ((BACKWARD_CALL,), (r"\.step\(",), (TRAINY_IMPORT,))

# A test that decides whether this micro-batch ends an accumulation window.
_ACCUMULATION_NAME = re.compile(
    r"accum|sync_grad|boundary|micro|should_step|do_step|update_step|step_now|is_last"
    r"|last_step|optimizer_step|should_update|do_update|is_update|sync\b|^sync",
    re.IGNORECASE,
)
_OPTIMIZER_NAME = re.compile(r"optim|^opt(_|\d|$)|_opt$|^opts?$", re.IGNORECASE)
# ``scheduler``, ``lr_scheduler``, ``sched``, ``lr_schedulers``; not ``pp_schedule`` (pipelines).
_SCHEDULER_NAME = re.compile(r"(^|_)(lr_?)?sched(uler)?s?$|^lr_sched|^lr$|_lr$|warmup", re.IGNORECASE)
_MODEL_NAME = re.compile(r"model|^net$|network|^module$|^engine$|_engine$|^policy$", re.IGNORECASE)
# Calls that make a model rather than run one (``build_model()``, ``create_model(cfg)``).
_FACTORY = ("build_", "create_", "make_", "get_", "load_", "init_", "setup_", "prepare_")
_CLIP_METHODS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm",
                           "clip_gradients", "clip_grad_norm_fp32"})
_NO_GRAD = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.no_grad",
                      "torch.autograd.grad_mode.no_grad", "torch.enable_grad"})


# --------------------------------------------------------------------------- records


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
    node: ast.AST | None = field(default=None, compare=False, repr=False)

    @property
    def accumulation_guards(self) -> tuple[Guard, ...]:
        return tuple(g for g in self.guards if g.accumulation)

    def under(self, *names: str) -> bool:
        """Whether a ``with`` item whose name ends with one of ``names`` encloses it."""
        return any(ctx.endswith(name) for ctx in self.contexts for name in names)


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


@dataclass(frozen=True)
class BatchSize:
    """A batch size known statically, and where it came from."""

    value: int
    source: str  # "literal", "argparse --batch-size default", "config field batch_size", ...
    expression: str = ""  # the source text that gives it (``args.batch_size``), when there is one


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
    node: LoopNode | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> str:
        return self.header.path

    def ops(self, *kinds: OpKind) -> list[Operation]:
        """Operations of the given kinds, in execution order."""
        return [op for op in self.operations if op.kind in kinds]

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
            return Accumulation("micro-loop", _micro_loop_steps(inner[0].text))
        shared = set(backward.guards)
        for guard in step.accumulation_guards:
            if guard not in shared:
                return Accumulation("gated", _gate_steps(guard.text), guard)
        return None


# --------------------------------------------------------------------------- helpers


def _first_line(text: str, limit: int = 100) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


_MOD_RIGHT = re.compile(r"%\s*\(?\s*([A-Za-z_][\w.]*|\d+)")


def _gate_steps(test: str) -> str | None:
    match = _MOD_RIGHT.search(test)
    return match.group(1) if match else None


_RANGE_ARG = re.compile(r"\bin\s+range\(\s*([^(),]+?)\s*\)\s*:?\s*$")


def _micro_loop_steps(header: str) -> str | None:
    match = _RANGE_ARG.search(header)
    return match.group(1) if match else None


def _terminates(body: Sequence[ast.stmt]) -> bool:
    """Whether a block always leaves the current iteration (continue/break/return/raise)."""
    return bool(body) and isinstance(body[-1], ast.Continue | ast.Break | ast.Return | ast.Raise)


def _names_in(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def looks_like_accumulation_test(test: ast.expr) -> bool:
    """``(step + 1) % k == 0``, ``accelerator.sync_gradients``, ``is_last_micro_step`` ..."""
    for sub in ast.walk(test):
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Mod):
            return True
    return any(_ACCUMULATION_NAME.search(name) for name in _names_in(test))


def _last_name(text: str) -> str:
    return re.split(r"[.\[\]()]", text.rstrip(")]"))[-1] if text else ""


class _Bindings:
    """What names are bound to in a file: ``name`` / ``self.name`` → the call that made it."""

    def __init__(self, module: ModuleFacts) -> None:
        self.calls: dict[str, list[str]] = {}
        for node in module.nodes:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            if value is None:
                continue
            made_by = self._maker(module, value)
            if made_by is None:
                continue
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                for elt in elts:
                    key = _target_key(elt)
                    if key:
                        self.calls.setdefault(key, []).append(made_by)

    @staticmethod
    def _maker(module: ModuleFacts, value: ast.expr) -> str | None:
        if isinstance(value, ast.Await):
            value = value.value
        if isinstance(value, ast.Call):
            return module.call_name(value) or _last_name(module.segment(value.func))
        if isinstance(value, ast.IfExp):
            parts = [p for p in (_Bindings._maker(module, value.body),
                                 _Bindings._maker(module, value.orelse)) if p]
            return "|".join(parts) or None
        return None

    def made_by(self, text: str) -> list[str]:
        key = text[5:] if text.startswith("self.") else text
        return self.calls.get(key, [])


def _target_key(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")):
        return node.attr
    return None


# --------------------------------------------------------------------------- the walker


@dataclass(frozen=True)
class _State:
    function: str
    guards: tuple[Guard, ...] = ()
    contexts: tuple[str, ...] = ()
    loops: tuple[Site, ...] = ()
    via: tuple[Site, ...] = ()
    visiting: frozenset[str] = frozenset()


class LoopAnalysis:
    """Builds the loop model of one file. Use ``find_training_loops``; this class is shared
    with the summarizer so a file is analysed once."""

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self._order = 0
        self._functions: dict[str, tuple[list[Operation], list[ExternalCall], list[str]]] = {}

    # -- file-level facts ---------------------------------------------------------

    @cached_property
    def bindings(self) -> _Bindings:
        return _Bindings(self.module)

    @cached_property
    def imports_deepspeed(self) -> bool:
        return any(name == "deepspeed" or name.startswith("deepspeed.")
                   for name in self.module.imports.modules)

    @cached_property
    def _scan(self) -> tuple[frozenset[str], bool, frozenset[str], frozenset[str]]:
        """One pass over the tree: (file delegation, DDP used, defined names, model names)."""
        module = self.module
        delegation: set[str] = set()
        ddp = False
        defined: set[str] = set()
        models: set[str] = set()
        wrappers = ("DistributedDataParallel", "DDP", "FullyShardedDataParallel", "FSDP")
        for node in module.nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.ClassDef):
                defined.add(node.name)
                for base in module.class_bases(node):
                    if base.startswith("transformers") and base.endswith("Trainer"):
                        delegation.add("hf-trainer")
                    if "LightningModule" in base:
                        delegation.add("lightning")
            elif isinstance(node, ast.Call):
                name = module.call_name(node) or ""
                last = name.rsplit(".", 1)[-1]
                if name.startswith("deepspeed.") and last == "initialize":
                    delegation.add("deepspeed")
                if last in wrappers:
                    ddp = True
                if isinstance(node.func, ast.Attribute) and node.func.attr in (
                        "parameters", "named_parameters", "eval", "state_dict"):
                    text = module.segment(node.func.value)
                    if text and "optim" not in text.lower() and "(" not in text:
                        models.add(text)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                maker = (module.call_name(node.value) or "").rsplit(".", 1)[-1]
                if maker in (*wrappers, "compile", "DataParallel"):
                    models.update(module.segment(target) for target in node.targets)
        return frozenset(delegation), ddp, frozenset(defined), frozenset(models)

    @property
    def file_delegation(self) -> frozenset[str]:
        """Frameworks the file hands training to (HF Trainer subclasses, Lightning, DeepSpeed)."""
        return self._scan[0]

    @property
    def ddp(self) -> bool:
        """The file wraps a model in DistributedDataParallel / FSDP."""
        return self._scan[1]

    @cached_property
    def method_aliases(self) -> dict[str, str]:
        """``self.fwd_bwd_fn = self._forward_backward_body`` (or ``= wrap(self.method)``):
        ``Class.fwd_bwd_fn`` → ``Class._forward_backward_body``."""
        aliases: dict[str, str] = {}
        for name, fn in self.module.functions.items():
            if "." not in name:
                continue
            owner = name.rsplit(".", 1)[0]
            for node in walk_local(fn.body):
                if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                    continue
                target = node.targets[0]
                if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self"):
                    continue
                value = node.value
                if isinstance(value, ast.Call) and value.args:
                    value = value.args[0]
                if (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
                        and value.value.id == "self" and f"{owner}.{value.attr}" in self.module.functions):
                    aliases.setdefault(f"{owner}.{target.attr}", f"{owner}.{value.attr}")
        return aliases

    @property
    def defined_names(self) -> frozenset[str]:
        """Functions and classes defined anywhere in the file, by their own name."""
        return self._scan[2]

    @property
    def model_names(self) -> frozenset[str]:
        """Source texts that name a model: receivers of .parameters()/.eval(), DDP(...) results."""
        return self._scan[3]

    # -- prefilter ------------------------------------------------------------------

    def _text(self, node: ast.AST) -> str:
        lines = self.module.lines
        return "\n".join(lines[getattr(node, "lineno", 1) - 1: getattr(node, "end_lineno", 0) or 0])

    @cached_property
    def backward_functions(self) -> frozenset[str]:
        """Functions whose call tree (in this file) may contain a backward: the text says so."""
        module = self.module
        if not _BACKWARD_CALL.search(module.source):
            return frozenset()
        found = {name for name, fn in module.functions.items()
                 if _BACKWARD_CALL.search(self._text(fn))}
        callers: dict[str, set[str]] = {}
        for caller, callees in module.call_graph.items():
            for callee in callees:
                callers.setdefault(callee, set()).add(caller)
        aliases = self.method_aliases
        for alias, target in aliases.items():
            callers.setdefault(target, set()).add(alias)
        if aliases:  # ``self.fwd_bwd_fn(...)`` calls an alias of a method
            for caller, calls in module.calls_by_function.items():
                owner = caller.rsplit(".", 1)[0] if "." in caller else ""
                for call in calls:
                    func = call.func
                    if (owner and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                            and func.value.id == "self" and f"{owner}.{func.attr}" in aliases):
                        callers.setdefault(f"{owner}.{func.attr}", set()).add(caller)
        stack = list(found)
        while stack:
            for caller in callers.get(stack.pop(), ()):
                if caller not in found:
                    found.add(caller)
                    stack.append(caller)
        return frozenset(found)

    @cached_property
    def _trainy_imports(self) -> bool:
        return any(_TRAINY.search(name) for name in self.module.imports.aliases)

    def may_train(self, function: str, loop: LoopNode) -> bool:
        """Cheap test before walking a loop: backward in its text or in a local callee, or a
        call to an imported function whose name suggests training."""
        if _BACKWARD_CALL.search(self._text(loop)):
            return True
        module = self.module
        if not self.backward_functions and not self._trainy_imports:
            return False
        owner = function.rsplit(".", 1)[0] if "." in function else ""
        for node in ast.walk(loop):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name):
                if func.id in self.backward_functions:
                    return True
                if module.is_imported(func.id) and _TRAINY.search(func.id):
                    return True
            elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and func.value.id in ("self", "cls") and owner
                    and f"{owner}.{func.attr}" in self.backward_functions):
                return True
        return False

    # -- operations ---------------------------------------------------------------

    def site(self, node: ast.AST, function: str) -> Site:
        return Site(self.module.path, self.module.span(node), function,
                    _first_line(self.module.segment(node)))

    def _is_optimizer(self, text: str) -> bool:
        last = _last_name(text)
        if _OPTIMIZER_NAME.search(last) and not _SCHEDULER_NAME.search(last):
            return True
        for made in self.bindings.made_by(text):
            lowered = made.lower()
            if "lr_scheduler" in lowered or "schedul" in lowered:
                return False
            if "optim" in lowered or made.rsplit(".", 1)[-1] in (
                    "AdamW", "Adam", "SGD", "Adafactor", "Lion", "RMSprop", "Adagrad"):
                return True
        return False

    def _is_scheduler(self, text: str) -> bool:
        if _SCHEDULER_NAME.search(_last_name(text)):
            return True
        for made in self.bindings.made_by(text):
            lowered, last = made.lower(), made.rsplit(".", 1)[-1]
            if "pipeline" in lowered:
                continue
            if ("lr_scheduler" in lowered or "schedule_with_warmup" in lowered
                    or last.endswith(("LR", "Scheduler", "Schedulers")) or last == "get_scheduler"):
                return True
        return False

    def _framework(self, receiver: str) -> str:
        lowered = receiver.lower()
        if "accelerat" in lowered:
            return "accelerate"
        if "fabric" in lowered:
            return "fabric"
        if self.imports_deepspeed and ("engine" in lowered or "model" in lowered):
            return "deepspeed"
        return ""

    def classify(self, call: ast.Call, function: str) -> tuple[OpKind, str, str, ast.expr | None] | None:
        """(kind, receiver, framework, loss expression) of a training-relevant call, else None."""
        module = self.module
        func = call.func
        if isinstance(func, ast.Name):
            text = func.id
            if text in self.defined_names or module.is_imported(text) or text.startswith(_FACTORY):
                name = module.qualname(func) or ""
                if name.rsplit(".", 1)[-1] in _CLIP_METHODS:
                    return ("clip", "", "", None)
                return None
            if text in self.model_names or _MODEL_NAME.search(text):
                return ("forward", text, "", None)
            return None
        if not isinstance(func, ast.Attribute):
            return None
        attr = func.attr
        receiver = module.segment(func.value)
        qualified = module.qualname(func) or ""
        if attr == "backward":
            if qualified == "torch.autograd.backward" and call.args:
                return ("backward", module.segment(call.args[0]), "", call.args[0])
            if qualified.startswith("torch.distributed.autograd"):
                # Gradients live in the distributed-autograd context, not in ``.grad``.
                return ("backward", receiver, "dist-autograd", None)
            if call.args and not isinstance(call.args[0], ast.Starred) and "loss" not in receiver:
                framework = self._framework(receiver) or "framework"
                return ("backward", receiver, framework, call.args[0])
            loss = func.value
            if (isinstance(loss, ast.Call) and isinstance(loss.func, ast.Attribute)
                    and loss.func.attr == "scale" and loss.args):
                loss = loss.args[0]
            return ("backward", module.segment(loss), "", loss)
        if attr == "manual_backward" and call.args:
            return ("backward", receiver, "lightning", call.args[0])
        if attr in _CLIP_METHODS or qualified.rsplit(".", 1)[-1] in _CLIP_METHODS:
            return ("clip", receiver, self._framework(receiver), None)
        if attr == "step":
            if "scaler" in receiver.lower() and call.args:
                return ("optimizer_step", module.segment(call.args[0]), "", None)
            if self._is_scheduler(receiver):
                return ("scheduler_step", receiver, "", None)
            if self._is_optimizer(receiver):
                return ("optimizer_step", receiver, self._framework(receiver), None)
            if self.imports_deepspeed and ("engine" in receiver.lower() or "model" in receiver.lower()):
                return ("optimizer_step", receiver, "deepspeed", None)
            return None
        if attr == "zero_grad":
            return ("zero_grad", receiver, "", None)
        if attr == "unscale_" and call.args:
            return ("unscale", module.segment(call.args[0]), "", None)
        if attr == "update" and "scaler" in receiver.lower():
            return ("scaler_update", receiver, "", None)
        if module.is_imported(receiver.split(".")[0]) and receiver.split(".")[0] != receiver:
            return None
        if attr == "eval" and not call.args and not call.keywords:
            return ("eval_mode", receiver, "", None)
        if attr == "train" and "trainer" not in receiver.lower():
            flag = call.args[0] if call.args else keyword(call, "mode")
            if isinstance(flag, ast.Constant) and flag.value is False:
                return ("eval_mode", receiver, "", None)
            if flag is None or (isinstance(flag, ast.Constant) and flag.value is True):
                return ("train_mode", receiver, "", None)
            return None
        if attr == "forward" and (receiver in self.model_names or _MODEL_NAME.search(_last_name(receiver))):
            return ("forward", receiver, "", None)
        if receiver.startswith("self.") or receiver == "self":
            text = module.segment(func)
            if text in self.model_names or (
                    receiver == "self" and _MODEL_NAME.search(attr) and not self._is_method(attr, function)):
                return ("forward", text, "", None)
            return None
        text = module.segment(func)
        if text in self.model_names:
            return ("forward", text, "", None)
        return None

    def _is_method(self, attr: str, function: str) -> bool:
        if "." not in function:
            return False
        return f"{function.rsplit('.', 1)[0]}.{attr}" in self.module.functions

    def _assignment_op(self, stmt: ast.stmt, state: _State) -> tuple[OpKind, str] | None:
        """``p.grad = None`` (zero_grad), ``p.grad /= k`` (grad_scale), DDP sync flags."""
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Attribute):
                    if target.attr == "grad" and isinstance(stmt.value, ast.Constant) and stmt.value.value is None:
                        return ("zero_grad", self.module.segment(target.value))
                    if target.attr == "require_backward_grad_sync":
                        return ("sync_flag", self.module.segment(target.value))
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Div | ast.Mult):
            target = stmt.target
            if isinstance(target, ast.Attribute) and target.attr == "grad":
                return ("grad_scale", self.module.segment(target.value))
        return None

    # -- walking ----------------------------------------------------------------

    def _next(self) -> int:
        self._order += 1
        return self._order

    def walk(self, body: Sequence[ast.stmt], state: _State,
             ops: list[Operation], external: list[ExternalCall], helpers: list[str]) -> None:
        """Collect the operations of a block, following local helpers."""
        guards = state.guards
        for stmt in body:
            local = replace(state, guards=guards)
            self._statement(stmt, local, ops, external, helpers)
            if (isinstance(stmt, ast.If) and _terminates(stmt.body) and not stmt.orelse):
                guard = Guard(self.site(stmt.test, state.function), True,
                              looks_like_accumulation_test(stmt.test))
                guards = (*guards, guard)

    def _statement(self, stmt: ast.stmt, state: _State, ops: list[Operation],
                   external: list[ExternalCall], helpers: list[str]) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return
        if isinstance(stmt, ast.If):
            self._expression(stmt.test, state, ops, external, helpers)
            accumulation = looks_like_accumulation_test(stmt.test)
            test_site = self.site(stmt.test, state.function)
            self.walk(stmt.body, replace(state, guards=(*state.guards, Guard(test_site, False, accumulation))),
                      ops, external, helpers)
            if stmt.orelse:
                self.walk(stmt.orelse, replace(state, guards=(*state.guards, Guard(test_site, True, accumulation))),
                          ops, external, helpers)
            return
        if isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
            head: ast.expr = stmt.test if isinstance(stmt, ast.While) else stmt.iter
            self._expression(head, state, ops, external, helpers)
            inner = replace(state, loops=(*state.loops, self._loop_site(stmt, state.function)))
            self.walk(stmt.body, inner, ops, external, helpers)
            self.walk(stmt.orelse, state, ops, external, helpers)
            return
        if isinstance(stmt, ast.With | ast.AsyncWith):
            names = []
            for item in stmt.items:
                self._expression(item.context_expr, state, ops, external, helpers)
                names.append(self.context_name(item.context_expr))
            self.walk(stmt.body, replace(state, contexts=(*state.contexts, *names)), ops, external, helpers)
            return
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            self.walk(stmt.body, state, ops, external, helpers)  # type: ignore[attr-defined]
            for handler in stmt.handlers:  # type: ignore[attr-defined]
                self.walk(handler.body, state, ops, external, helpers)
            self.walk(stmt.orelse, state, ops, external, helpers)  # type: ignore[attr-defined]
            self.walk(stmt.finalbody, state, ops, external, helpers)  # type: ignore[attr-defined]
            return
        if isinstance(stmt, ast.Match):
            self._expression(stmt.subject, state, ops, external, helpers)
            for case in stmt.cases:
                self.walk(case.body, state, ops, external, helpers)
            return
        assigned = self._assignment_op(stmt, state)
        if assigned is not None:
            kind, receiver = assigned
            ops.append(Operation(kind, self.site(stmt, state.function), receiver, state.guards,
                                 state.contexts, state.loops, state.via, self._next(), node=stmt))
        self._expression(stmt, state, ops, external, helpers)

    def _expression(self, node: ast.AST, state: _State, ops: list[Operation],
                    external: list[ExternalCall], helpers: list[str]) -> None:
        calls = [sub for sub in walk_local([node]) if isinstance(sub, ast.Call)]  # type: ignore[list-item]
        calls.sort(key=lambda c: (c.end_lineno or 0, c.end_col_offset or 0))
        for call in calls:
            self._call(call, state, ops, external, helpers)

    def _call(self, call: ast.Call, state: _State, ops: list[Operation],
              external: list[ExternalCall], helpers: list[str]) -> None:
        module = self.module
        callee = module.local_callee(call, state.function) if state.function or isinstance(
            call.func, ast.Name) else None
        if callee is None and isinstance(call.func, ast.Name) and call.func.id in module.functions:
            callee = call.func.id
        if (callee is None and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
                and call.func.value.id == "self" and "." in state.function):
            callee = self.method_aliases.get(f"{state.function.rsplit('.', 1)[0]}.{call.func.attr}")
        if callee is not None:
            if callee in state.visiting:
                return
            fn = module.functions[callee]
            callee_ops, callee_external, callee_helpers = self._function_events(callee, state.visiting)
            for helper in (callee, *callee_helpers):
                if helper not in helpers:
                    helpers.append(helper)
            if not callee_ops and not callee_external:
                return
            decorators = tuple(self.context_name(d) for d in fn.decorator_list)
            contexts = (*state.contexts, *decorators)
            via = (*state.via, self.site(call, state.function))
            events: list[Operation | ExternalCall] = [*callee_ops, *callee_external]
            events.sort(key=lambda event: event.order)
            for event in events:
                moved = replace(event, guards=(*state.guards, *event.guards),
                                contexts=(*contexts, *event.contexts), loops=(*state.loops, *event.loops),
                                via=(*via, *event.via), order=self._next())
                if isinstance(moved, Operation):
                    ops.append(moved)
                else:
                    external.append(moved)
            return
        classified = self.classify(call, state.function)
        if classified is not None:
            kind, receiver, framework, loss_expr = classified
            loss = self.loss_site(loss_expr, state.function) if kind == "backward" else None
            ops.append(Operation(kind, self.site(call, state.function), receiver, state.guards,
                                 state.contexts, state.loops, state.via, self._next(), framework,
                                 loss, node=call))
            return
        if isinstance(call.func, ast.Name) and module.is_imported(call.func.id):
            qualified = module.qualname(call.func) or call.func.id
            if not qualified.startswith(("torch.", "numpy.", "math.", "os.", "time.", "builtins.")):
                external.append(ExternalCall(qualified, self.site(call, state.function), state.guards,
                                             state.contexts, state.loops, state.via, self._next()))

    def context_name(self, expr: ast.expr) -> str:
        """A ``with`` item or decorator as a qualified name (``torch.autocast``,
        ``model.no_sync``); a name bound to a context manager resolves to what made it."""
        module = self.module
        if isinstance(expr, ast.Call):
            expr = expr.func
            name = module.qualname(expr)
            return name or _first_line(module.segment(expr))
        if isinstance(expr, ast.Name | ast.Attribute):
            made = self.bindings.made_by(module.segment(expr))
            if made:
                return "|".join(sorted(set(made)))
            return module.qualname(expr) or module.segment(expr)
        if isinstance(expr, ast.IfExp):
            return f"{self.context_name(expr.body)}|{self.context_name(expr.orelse)}"
        return _first_line(module.segment(expr))

    def _loop_site(self, loop: LoopNode, function: str) -> Site:
        """The loop's header: from ``for``/``while`` to the end of its iterable or test."""
        module = self.module
        head = loop.test if isinstance(loop, ast.While) else loop.iter
        if isinstance(loop, ast.While):
            header = f"while {module.segment(loop.test)}:"
        else:
            header = f"for {module.segment(loop.target)} in {module.segment(loop.iter)}:"
        start, end = module.span(loop), module.span(head)
        span = Span(start.line, start.column, end.end_line, end.end_column)
        return Site(module.path, span, function, _first_line(header))

    # -- losses -------------------------------------------------------------------

    def loss_site(self, expr: ast.expr | None, function: str) -> LossSite | None:
        if expr is None:
            return None
        fn = self.module.functions.get(function)
        body: list[ast.stmt] = fn.body if fn is not None else self.module.tree.body
        params = _params(fn) if fn is not None else set()
        scaled, divisor = self._scaling(expr, body, params, depth=0)
        return LossSite(_first_line(self.module.segment(expr)), scaled, divisor)

    def _scaling(self, expr: ast.expr, body: list[ast.stmt], params: set[str],
                 depth: int) -> tuple[bool | None, str | None]:
        module = self.module
        if depth > 4:
            return None, None
        if isinstance(expr, ast.BinOp):
            if isinstance(expr.op, ast.Div | ast.FloorDiv):
                return True, module.segment(expr.right)
            if isinstance(expr.op, ast.Mult):
                for side in (expr.left, expr.right):
                    if isinstance(side, ast.BinOp) and isinstance(side.op, ast.Div):
                        return True, module.segment(side.right)
                    if any(re.search(r"accum|scale|inv|recip", n, re.I) for n in _names_in(side)):
                        return True, module.segment(side)
            results = [self._scaling(side, body, params, depth + 1) for side in (expr.left, expr.right)]
            if any(r[0] for r in results):
                return next(r for r in results if r[0])
            if all(r[0] is False for r in results):
                return False, None
            return None, None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            if expr.func.attr in ("div", "div_", "true_divide"):
                return True, module.segment(expr.args[0]) if expr.args else None
            if expr.func.attr in ("mean", "sum", "float", "contiguous", "squeeze", "to"):
                return self._scaling(expr.func.value, body, params, depth + 1)
        if isinstance(expr, ast.Name):
            if expr.id in params:
                return None, None
            sources = list(_assignments(body, expr.id))
            if not sources:
                return None, None
            verdicts = []
            for source in sources:
                if source is None:  # an augmented division
                    return True, None
                verdicts.append(self._scaling(source, body, params, depth + 1))
            if any(v[0] for v in verdicts):
                return next(v for v in verdicts if v[0])
            if all(v[0] is False for v in verdicts):
                return False, None
            return None, None
        if isinstance(expr, ast.Subscript):
            return self._scaling(expr.value, body, params, depth + 1)
        if isinstance(expr, ast.Attribute) and expr.attr == "loss":
            return self._scaling(expr.value, body, params, depth + 1)
        if isinstance(expr, ast.Call):
            return self._call_scaling(expr, params, depth)
        return None, None

    def _call_scaling(self, call: ast.Call, params: set[str], depth: int) -> tuple[bool | None, str | None]:
        module = self.module
        name = module.call_name(call) or ""
        if name.startswith("torch.nn.functional.") or (name.startswith("torch.") and "loss" in name.lower()):
            return False, None
        if isinstance(call.func, ast.Name) and call.func.id in module.functions:
            fn = module.functions[call.func.id]
            returns = [n.value for n in walk_local(fn.body)
                       if isinstance(n, ast.Return) and n.value is not None]
            verdicts = [self._scaling(r, fn.body, _params(fn), depth + 1) for r in returns]
            if verdicts and any(v[0] for v in verdicts):
                return next(v for v in verdicts if v[0])
            if verdicts and all(v[0] is False for v in verdicts):
                return False, None
            return None, None
        classified = self.classify(call, "")
        if classified is not None and classified[0] == "forward":
            return False, None
        text = module.segment(call.func)
        if text.split(".")[0] in params:
            return None, None
        made = self.bindings.made_by(text)
        if made and all(m.rsplit(".", 1)[-1].endswith("Loss") or m.startswith("torch.nn.") for m in made):
            return False, None
        return None, None

    # -- loops --------------------------------------------------------------------

    def all_loops(self) -> Iterator[tuple[str, LoopNode, tuple[LoopNode, ...]]]:
        """(function, loop, enclosing loops in that function) for every loop of the file."""
        def visit(body: Iterable[ast.stmt], function: str, outer: tuple[LoopNode, ...]
                  ) -> Iterator[tuple[str, LoopNode, tuple[LoopNode, ...]]]:
            for stmt in body:
                if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                if isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
                    yield function, stmt, outer
                    yield from visit(stmt.body, function, (*outer, stmt))
                    yield from visit(stmt.orelse, function, outer)
                    continue
                for block in _blocks(stmt):
                    yield from visit(block, function, outer)

        yield from visit(self.module.tree.body, "", ())
        for name, fn in self.module.functions.items():
            yield from visit(fn.body, name, ())

    def loop_record(self, function: str, loop: LoopNode, outer: tuple[LoopNode, ...]) -> TrainingLoop:
        """The loop with its whole call tree, whether or not it trains."""
        self._order = 0
        ops: list[Operation] = []
        external: list[ExternalCall] = []
        helpers: list[str] = []
        visiting = frozenset({function}) if function else frozenset()
        self.walk(loop.body, _State(function, visiting=visiting), ops, external, helpers)
        module = self.module
        is_while = isinstance(loop, ast.While)
        return TrainingLoop(
            header=self._loop_site(loop, function),
            kind="while" if is_while else "for",
            target="" if isinstance(loop, ast.While) else module.segment(loop.target),
            iterable=module.segment(loop.test if isinstance(loop, ast.While) else loop.iter),
            operations=tuple(ops),
            external_calls=tuple(external),
            helpers=tuple(helpers),
            outer_loops=tuple(self._loop_site(o, function) for o in outer),
            batch_size=None,  # filled in for training loops only (see ``with_batch_size``)
            file_delegation=self.file_delegation,
            ddp=self.ddp,
            node=loop,
        )

    def with_batch_size(self, record: TrainingLoop) -> TrainingLoop:
        """The record with its batch size resolved (costly, so only for training loops)."""
        loop = record.node
        if loop is None:
            return record
        used = self._names_read(loop, list(record.helpers))
        return replace(record, batch_size=batch_size_of(self.module, loop, record.header.function, used))

    def _names_read(self, loop: LoopNode, helpers: list[str]) -> frozenset[str]:
        bodies: list[ast.AST] = [loop, *(self.module.functions[h] for h in helpers)]
        return frozenset(n.id for body in bodies for n in ast.walk(body)
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))

    def _function_events(self, name: str, visiting: frozenset[str] = frozenset()
                         ) -> tuple[list[Operation], list[ExternalCall], list[str]]:
        """A function's operations relative to its own body, computed once per file (each
        caller inlines them with its own guards and contexts)."""
        cached = self._functions.get(name)
        if cached is not None:
            return cached
        saved = self._order
        self._order = 0
        ops: list[Operation] = []
        external: list[ExternalCall] = []
        helpers: list[str] = []
        fn = self.module.functions[name]
        self.walk(fn.body, _State(name, visiting=visiting | {name}), ops, external, helpers)
        self._order = saved
        self._functions[name] = (ops, external, helpers)
        return ops, external, helpers

    def function_ops(self, name: str) -> FunctionOps:
        """A function's call tree relative to its own body (what a caller in another file gets)."""
        fn = self.module.functions[name]
        ops, external, _ = self._function_events(name)
        decorators = tuple(self.context_name(d) for d in fn.decorator_list)
        return FunctionOps(name, tuple(sorted(_params(fn))), tuple(ops), tuple(external), decorators)


def _blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        block = getattr(stmt, name, None)
        if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
            yield block
    for handler in getattr(stmt, "handlers", ()):
        yield handler.body
    for case in getattr(stmt, "cases", ()):
        yield case.body


def _params(fn: FunctionNode) -> set[str]:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if args.vararg:
        names.append(args.vararg.arg)
    if args.kwarg:
        names.append(args.kwarg.arg)
    return set(names)


def _assignments(body: list[ast.stmt], name: str) -> Iterator[ast.expr | None]:
    """Values assigned to ``name`` in a body; None for ``name /= k`` (a division)."""
    for node in walk_local(body):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Name) and target.id == name) or (isinstance(target, ast.Tuple | ast.List) and any(
                        isinstance(e, ast.Name) and e.id == name for e in target.elts)):
                    yield node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id == name and node.value is not None:
            yield node.value
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) \
                and node.target.id == name:
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mult):
                yield None
            else:
                yield node.value
        elif isinstance(node, ast.NamedExpr) and node.target.id == name:
            yield node.value


def is_training_loop(loop: TrainingLoop) -> bool:
    """Backward and an optimizer step in its call tree, not both inside one nested loop."""
    for backward in loop.ops("backward"):
        for step in loop.ops("optimizer_step"):
            if backward.loops[:1] != step.loops[:1] or not backward.loops:
                return True
    return False


def find_training_loops(module: ModuleFacts) -> list[TrainingLoop]:
    """Every training loop of a file, following helpers defined in the same file."""
    return _cached_loops(module)[0]


_ANALYSES: weakref.WeakKeyDictionary[ModuleFacts, LoopAnalysis] = weakref.WeakKeyDictionary()


def loop_analysis(module: ModuleFacts) -> LoopAnalysis:
    """The file's shared ``LoopAnalysis`` (function call trees are computed once per file)."""
    if module not in _ANALYSES:
        _ANALYSES[module] = LoopAnalysis(module)
    return _ANALYSES[module]


def _analyse(module: ModuleFacts) -> tuple[list[TrainingLoop], list[TrainingLoop]]:
    """(training loops, loops that call imported functions and may train through them)."""
    analysis = loop_analysis(module)
    training: list[TrainingLoop] = []
    candidates: list[TrainingLoop] = []
    for function, loop, outer in analysis.all_loops():
        if not analysis.may_train(function, loop):
            continue
        record = analysis.loop_record(function, loop, outer)
        if is_training_loop(record):
            training.append(analysis.with_batch_size(record))
        elif record.external_calls and any(may_train(c) for c in record.external_calls):
            candidates.append(analysis.with_batch_size(record))
    # An epoch loop around a training loop is not itself one.
    inner_headers = {o for loop in training for o in loop.outer_loops}
    training = [loop for loop in training if loop.header not in inner_headers
                and not _contains_training_loop(loop, training)]
    return training, candidates


def _contains_training_loop(loop: TrainingLoop, training: list[TrainingLoop]) -> bool:
    """True when a training loop lives in a helper this loop calls (``train_epoch``)."""
    return any(other.header.function in loop.helpers for other in training if other is not loop)


_TRAINY = re.compile(_TRAINY_WORDS, re.IGNORECASE)


def may_train(call: ExternalCall) -> bool:
    """Whether an imported callee's name suggests it trains (``train_step``, ``update``)."""
    return _TRAINY.search(call.qualified.rsplit(".", 1)[-1]) is not None


_CACHE: weakref.WeakKeyDictionary[ModuleFacts, tuple[list[TrainingLoop], list[TrainingLoop]]] = (
    weakref.WeakKeyDictionary())


def _cached_loops(module: ModuleFacts) -> tuple[list[TrainingLoop], list[TrainingLoop]]:
    if module not in _CACHE:
        _CACHE[module] = _analyse(module)
    return _CACHE[module]


# --------------------------------------------------------------------------- batch size


def batch_size_of(module: ModuleFacts, loop: LoopNode, function: str,
                  used: frozenset[str] = frozenset()) -> BatchSize | None:
    """The micro-batch size of a loop, where it is knowable statically. ``used``: names the
    loop's call tree reads (a ``batch_size`` variable counts only if something reads it)."""
    fn = module.functions.get(function)
    body = fn.body if fn is not None else module.tree.body
    if isinstance(loop, ast.For | ast.AsyncFor):
        iterable = _unwrap_iterable(loop.iter)
        loader = _loader_call(module, iterable, body)
        if loader is not None:
            size = keyword(loader, "batch_size")
            if size is None and len(loader.args) > 1:
                size = loader.args[1]
            if size is None:
                if keyword(loader, "batch_sampler") or any(kw.arg is None for kw in loader.keywords):
                    return None  # a batch sampler, or **kwargs that may hold batch_size
                return BatchSize(1, "DataLoader default")
            known = resolve_int(module, size, fn)
            return replace(known, expression=module.segment(size)) if known else None
        if not isinstance(iterable, ast.Call | ast.Name | ast.Attribute):
            return None
    # A while loop fetching its own batches (nanoGPT's get_batch): a batch_size variable.
    for name in ("batch_size", "micro_batch_size"):
        if name not in used:
            continue
        value = _variable_int(module, name, fn)
        if value is not None:
            return replace(value, expression=name)
    return None


def _unwrap_iterable(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Name | ast.Attribute):
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        if name in ("enumerate", "tqdm", "iter", "progress_bar", "track"):
            node = node.args[0]
        else:
            break
    return node


def _loader_call(module: ModuleFacts, node: ast.expr, body: list[ast.stmt]) -> ast.Call | None:
    """The ``DataLoader(...)`` call a loop's iterable was made by, in the right scope."""
    if isinstance(node, ast.Call):
        name = module.call_name(node) or ""
        return node if name.endswith("DataLoader") else None
    key = _target_key(node) if isinstance(node, ast.Name | ast.Attribute) else None
    if key is None:
        return None
    if isinstance(node, ast.Name):
        # A local name is made in its function, else at module level; never in another function.
        local = [v for v in _assignments(body, key) if v is not None]
        values = local or [v for stmt in module.tree.body for v in _assignments([stmt], key) if v is not None]
    else:
        values = [sub.value for sub in module.nodes if isinstance(sub, ast.Assign)
                  and any(_target_key(t) == key for t in sub.targets)]
    for value in values:
        if isinstance(value, ast.Call) and (module.call_name(value) or "").endswith("DataLoader"):
            return value
    return None


def resolve_int(module: ModuleFacts, node: ast.expr, fn: FunctionNode | None) -> BatchSize | None:
    """An integer expression's value: a literal, a variable, an argparse default, a config field."""
    literal = int_value(node)
    if literal is not None:
        return BatchSize(literal, "literal")
    if isinstance(node, ast.Name):
        return _variable_int(module, node.id, fn)
    if isinstance(node, ast.Attribute):
        found = _argparse_default(module, node.attr)
        if found is not None:
            return found
        return _config_default(module, node.attr)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and isinstance(node.slice.value, str):
        return _config_default(module, node.slice.value)
    if isinstance(node, ast.BinOp):
        left = resolve_int(module, node.left, fn)
        right = resolve_int(module, node.right, fn)
        if left is None or right is None:
            return None
        a, b = left.value, right.value
        value: int | None = None
        if isinstance(node.op, ast.Mult):
            value = a * b
        elif isinstance(node.op, ast.FloorDiv) and b:
            value = a // b
        elif isinstance(node.op, ast.Add):
            value = a + b
        elif isinstance(node.op, ast.Sub):
            value = a - b
        return BatchSize(value, f"{left.source} and {right.source}") if value is not None else None
    return None


def _variable_int(module: ModuleFacts, name: str, fn: FunctionNode | None) -> BatchSize | None:
    if fn is not None:
        params = fn.args
        positional = [*params.posonlyargs, *params.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(params.defaults))
        defaults += params.defaults
        for arg, default in [*zip(positional, defaults, strict=True),
                             *zip(params.kwonlyargs, params.kw_defaults, strict=True)]:
            if arg.arg == name:
                known = int_value(default)
                return BatchSize(known, f"parameter {name} default") if known is not None else None
        for assigned in _assignments(fn.body, name):
            literal = int_value(assigned)
            if literal is not None:
                return BatchSize(literal, f"{name} = {literal}")
            return None
    values = [v for stmt in module.tree.body for v in _assignments([stmt], name)]
    if len(values) == 1:
        literal = int_value(values[0])
        if literal is not None:
            return BatchSize(literal, f"{name} = {literal}")
    return None


def _argparse_default(module: ModuleFacts, dest: str) -> BatchSize | None:
    for node in module.nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        explicit = keyword(node, "dest")
        names = {f.lstrip("-").replace("-", "_") for f in flags if f.startswith("--")}
        if isinstance(explicit, ast.Constant) and isinstance(explicit.value, str):
            names = {explicit.value}
        if dest in names:
            value = int_value(keyword(node, "default"))
            flag = next((f for f in flags if f.startswith("--")), dest)
            return BatchSize(value, f"argparse {flag} default") if value is not None else None
    return None


def _config_default(module: ModuleFacts, key: str) -> BatchSize | None:
    for node in module.nodes:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id == key and module.enclosing_class(node) is not None:
            value = int_value(node.value)
            if value is not None:
                return BatchSize(value, f"config field {key}")
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == key:
                    value = int_value(v)
                    if value is not None:
                        return BatchSize(value, f"config {key!r}")
    return None


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class LoopFileFacts:
    """The loop facts of one file that other files' loops need (picklable)."""

    training_loops: tuple[TrainingLoop, ...]
    candidate_loops: tuple[TrainingLoop, ...]  # loops that may train through an imported helper
    functions: dict[str, FunctionOps]  # top-level functions with training operations


def _strip_nodes(loop: TrainingLoop) -> TrainingLoop:
    return replace(loop, node=None, operations=tuple(replace(op, node=None) for op in loop.operations))


@summarizer("loops", triggers=LOOP_TRIGGERS, requires=LOOP_REQUIRES)
def summarize_loops(module: ModuleFacts) -> LoopFileFacts:
    """Per-file summary: training loops, candidate loops and helpers other files may import."""
    training, candidates = _cached_loops(module)
    analysis = loop_analysis(module)
    functions: dict[str, FunctionOps] = {}
    for name, fn in module.functions.items():
        # Only what a loop in another file could call to train: top-level functions whose
        # call tree has a backward or whose text steps something.
        if "." in name or not (name in analysis.backward_functions or ".step(" in analysis._text(fn)):
            continue
        ops = analysis.function_ops(name)
        if ops.operations or ops.external_calls:
            functions[name] = replace(ops, operations=tuple(replace(op, node=None) for op in ops.operations))
    return LoopFileFacts(tuple(_strip_nodes(loop) for loop in training),
                         tuple(_strip_nodes(loop) for loop in candidates), functions)


def _merge_external(loop: TrainingLoop, project: Project) -> TrainingLoop:
    """Inline imported helpers of a loop from their files' summaries."""
    keyed: list[tuple[tuple[int, int], Operation]] = [((op.order, 0), op) for op in loop.operations]
    remaining: list[ExternalCall] = []
    helpers = list(loop.helpers)
    for call in loop.external_calls:
        resolved = project.resolve_symbol(call.qualified)
        facts = project.by_path[resolved[0].path].facts.get("loops") if resolved else None
        helper = facts.functions.get(resolved[1]) if isinstance(facts, LoopFileFacts) and resolved else None
        if helper is None or resolved is None:
            remaining.append(call)
            continue
        helpers.append(f"{resolved[0].module_name}.{helper.name}")
        for op in helper.operations:
            keyed.append(((call.order, op.order), replace(
                op, guards=(*call.guards, *op.guards),
                contexts=(*call.contexts, *helper.decorators, *op.contexts),
                loops=(*call.loops, *op.loops), via=(*call.via, call.site, *op.via))))
    keyed.sort(key=lambda item: item[0])
    operations = [replace(op, order=index + 1) for index, (_, op) in enumerate(keyed)]
    return replace(loop, operations=tuple(operations), external_calls=tuple(remaining),
                   helpers=tuple(helpers))


_PROJECT_CACHE: weakref.WeakKeyDictionary[Project, list[TrainingLoop]] = weakref.WeakKeyDictionary()


def project_training_loops(project: Project) -> list[TrainingLoop]:
    """Every training loop of the checked tree, imported helpers inlined (records, no nodes)."""
    if project in _PROJECT_CACHE:
        return _PROJECT_CACHE[project]
    loops: list[TrainingLoop] = []
    for _summary, facts in project.facts("loops"):
        if not isinstance(facts, LoopFileFacts):
            continue
        for loop in facts.training_loops:
            loops.append(_merge_external(loop, project) if loop.external_calls else loop)
        for loop in facts.candidate_loops:
            merged = _merge_external(loop, project)
            if is_training_loop(merged):
                loops.append(merged)
    _PROJECT_CACHE[project] = loops
    return loops
