"""Mixed-precision rules TA301 (no autocast) and TA302 (the deprecated AMP API); the
GradScaler rules (TA303–TA306) are in ``grad_scaler.py``.

They read ``PrecisionFacts``: autocast regions (through names, ``nullcontext``
alternatives and callers), delegated or manual precision, and the training steps
(a ``backward()``, its loss and the forward it comes from).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from trainaudit.diagnostics import Finding, Span
from trainaudit.model.loops import BACKWARD_CALL, find_training_loops
from trainaudit.model.module import ModuleFacts, walk_local
from trainaudit.model.precision import (
    DELEGATING_CALLS,
    PrecisionFacts,
    device_type_code,
    torch_alias,
)
from trainaudit.model.precision.repairs import amp_renames
from trainaudit.model.precision.scope import is_test_file, trainer_neighbourhood
from trainaudit.model.project import Project
from trainaudit.payloads import (
    AutocastWrap,
)
from trainaudit.registry import ModuleRule, ProjectRule, RuleContext, register, summarizer
from trainaudit.requirements import format_version, parse_version

FAMILY = "precision"
# A file with none of these can neither train nor delegate precision.
SUMMARY_TRIGGERS = ("backward", "Accelerator", "Fabric", "MixedPrecision", "bfloat16", "half",
                    "autocast", "TrainingArguments", "deepspeed", "precision", "float16",
                    "set_default_dtype", "double", "dtype")
_LOW = r"bfloat16|float16|half|bf16|fp16"
# What the summary needs: a backward (training steps), autocast in a model, or one of the
# delegations ``PrecisionFacts.delegations`` recognises.
SUMMARY_REQUIRES = (
    (BACKWARD_CALL,), ("autocast",), *((name,) for name in DELEGATING_CALLS),
    ("Trainer", r"precision\s*="), ("parallelize",), ("fully_shard",), ("mixed_precision",),
    ("mp_policy",), ("initialize", "deepspeed|amp"), ("set_default_dtype",),
    (r"bfloat16(?<=\.bfloat16)\s*\(",), (r"half(?<=\.half)\s*\(",), (r"double(?<=\.double)\s*\(",),
    ("dtype", r"\.(?:to|type)\s*\("),
    (_LOW, r"\.to\s*\("), (_LOW, r"dtype\s*="),
)


# -- TA301: summaries, because delegation and model-side autocast live in other files ----


@dataclass(frozen=True)
class UnguardedForward:
    """A training forward that runs in full precision, and what a fix needs to wrap it."""

    span: Span
    text: str
    function: str
    first_line: int  # statements to wrap: the forward's through the loss's
    last_line: int
    inline_loss: int  # the line of ``<loss>.backward()`` whose loss goes inside; 0: none
    fixable: bool  # False: the loss cannot be covered (see ``_wrap_range``)
    device_type: str  # source text for ``device_type=``
    torch_name: str
    add_import: bool


@dataclass(frozen=True)
class PrecisionSummary:
    unguarded: tuple[UnguardedForward, ...]
    delegations: tuple[tuple[str, int], ...]  # (what, line)
    model_autocast: tuple[int, ...]  # lines where a model casts its own forward
    device: str  # gpu (the file names one), none


# A file that names a GPU device (or a GPU-only backend).
_GPU = re.compile(r"""\.cuda\s*\(|["']cuda|\bnccl\b|device_map|torch\.cuda\.set_device|LOCAL_RANK""")


def _device_targeted(text: str) -> str:
    return "gpu" if _GPU.search(text) else "none"


def _wrap_range(facts: PrecisionFacts, forward: ast.AST, backward: ast.Call,
                loss_statements: Sequence[ast.stmt], function: str, *,
                loss_unknown: bool = False) -> tuple[int, int, int] | None:
    """(first line, last line, inline-loss line) to put under autocast: the statements from
    the one that runs the forward (a helper's call in ``function``, where the backward is)
    through the loss computed from its output, in the innermost block holding both. A
    backward whose receiver computes the loss (``F.bce(p, y).backward()``) gives its line as
    the third item: the fix computes that loss inside the region. None when the loss cannot
    be covered: a loss outside the region reads low-precision outputs (``binary_cross_entropy``
    then fails on the dtype). With ``loss_unknown`` (the loss was not followed) the region
    runs up to the backward, covering whatever computes the loss."""
    backward_statement = facts.statement_of(backward)
    anchor = _statement_reaching(facts, forward, function)
    if backward_statement is None or anchor is None:
        return None
    placed = _common_block(facts, anchor, backward_statement)
    if placed is None:
        return None
    block, first, container = placed
    # The loss statements, earliest (the one reading the forward's output) last.
    in_block = [s for s in loss_statements if s in block
                and block.index(first) <= block.index(s) < block.index(container)]
    last = max(in_block, key=block.index) if in_block else first
    if loss_statements:
        if loss_statements[-1] not in in_block and loss_statements[-1] is not first:
            return None
        return first.lineno, last.end_lineno or last.lineno, 0
    before = block[block.index(container) - 1]
    # No loss statement: the backward's receiver is the loss (``crit(out, y).backward()``).
    if container is backward_statement and _inline_backward(backward_statement, backward):
        return first.lineno, before.end_lineno or before.lineno, backward_statement.lineno
    if loss_unknown:
        return first.lineno, before.end_lineno or before.lineno, 0
    return None


def _statement_reaching(facts: PrecisionFacts, forward: ast.AST, function: str) -> ast.stmt | None:
    """The statement of ``function`` that runs the forward: its own, or the call of the
    helper (another function of the file) that holds it."""
    statement = facts.statement_of(forward)
    if statement is None:
        return None
    owner = next((a for a in facts.module.ancestors(statement)
                  if isinstance(a, ast.FunctionDef | ast.AsyncFunctionDef)), None)
    scope = facts.scope_of(function) if function else None
    if owner is scope:
        return statement
    if owner is None:
        return None
    helper = owner.name
    body = scope.body if scope is not None else facts.module.tree.body
    for node in walk_local(body):
        if isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Name) and node.func.id == helper)
                or (isinstance(node.func, ast.Attribute) and node.func.attr == helper)):
            return facts.statement_of(node)
    return None


def _common_block(facts: PrecisionFacts, anchor: ast.stmt, backward: ast.stmt
                  ) -> tuple[list[ast.stmt], ast.stmt, ast.stmt] | None:
    """(block, statement of it holding ``anchor``, later statement of it holding
    ``backward``) for the innermost block where both meet."""
    backward_chain = [backward, *(a for a in facts.module.ancestors(backward)
                                  if isinstance(a, ast.stmt))]
    current: ast.stmt | None = anchor
    while current is not None:
        block = facts.statement_list(current)
        if block is not None:
            container = next((s for s in backward_chain if s in block), None)
            if container is not None:
                return (block, current, container) \
                    if block.index(current) < block.index(container) else None
        parent = facts.module.parents.get(current)
        current = parent if isinstance(parent, ast.stmt) else None
    return None


def _inline_backward(statement: ast.stmt, backward: ast.Call) -> bool:
    """``<loss expression>.backward()`` as a statement of its own."""
    return (isinstance(statement, ast.Expr) and statement.value is backward
            and isinstance(backward.func, ast.Attribute) and not backward.args
            and not backward.keywords and isinstance(backward.func.value, ast.Call))


@summarizer(FAMILY, triggers=SUMMARY_TRIGGERS, requires=SUMMARY_REQUIRES)
def summarize_precision(module: ModuleFacts) -> PrecisionSummary:
    facts = PrecisionFacts.of(module)
    alias = torch_alias(module)
    unguarded: list[UnguardedForward] = []
    in_tests = is_test_file(module.path)
    seen: set[int] = set()
    traced: set[int] = set()

    def add(forward: ast.Call, function: str, lines: tuple[int, int, int] | None) -> None:
        # Unit tests compare float32 numbers on purpose; they are not training scripts.
        if in_tests or any(part.startswith("test") for part in function.split(".")):
            return
        unguarded.append(UnguardedForward(
            span=module.span(forward),
            text=module.segment(forward),
            function=function,
            first_line=lines[0] if lines else 0,
            last_line=lines[1] if lines else 0,
            inline_loss=lines[2] if lines else 0,
            fixable=lines is not None,
            device_type=device_type_code(facts, function, forward, alias or "torch"),
            torch_name=alias or "torch",
            add_import=alias is None,
        ))

    loops = find_training_loops(module)
    # A backward outside the file's training loops is a one-off (a reference pass for
    # tests, a gradient check), and a file that never steps an optimizer does not train.
    in_loops = {id(op.node) for loop in loops for op in loop.ops("backward")}
    steps_optimizer = bool(loops) or facts.steps_an_optimizer
    # The forward a loss comes from, followed back from each backward().
    for step in facts.training_steps:
        forward = step.forward
        if step.delegated or forward is None or not steps_optimizer \
                or (loops and id(step.backward) not in in_loops):
            continue
        traced.add(id(step.backward))
        if id(forward) in seen:
            continue
        seen.add(id(forward))
        if facts.under_autocast(forward) or facts.under_autocast(step.backward):
            continue
        add(forward, step.forward_function, _wrap_range(
            facts, forward, step.backward, step.loss_statements, step.function))
    # Where the loss cannot be followed, the loop model's last forward before the backward.
    for loop in loops:
        forwards = [op for op in loop.forwards if isinstance(op.node, ast.Call)
                    and not op.under("no_grad", "inference_mode")]
        for backward in loop.ops("backward"):
            if backward.framework or id(backward.node) in traced:
                continue
            before = [op for op in forwards if op.order < backward.order]
            if not before:
                continue
            op = before[-1]
            node = op.node
            assert isinstance(node, ast.Call)
            forward = node
            if id(forward) in seen:
                continue
            seen.add(id(forward))
            if facts.under_autocast(forward) or any("autocast" in c for c in op.contexts):
                continue
            loss_of = backward.node
            assert isinstance(loss_of, ast.Call)
            # The loss was not followed: the region runs up to the backward (whatever
            # computes the loss in between is covered), in one block, or there is no fix.
            add(forward, op.site.function, _wrap_range(
                facts, forward, loss_of, (), backward.site.function, loss_unknown=True))
    return PrecisionSummary(
        unguarded=tuple(unguarded),
        delegations=tuple((d.kind, getattr(d.node, "lineno", 1)) for d in facts.delegations),
        model_autocast=tuple(getattr(n, "lineno", 1) for n in facts.method_autocast),
        device=_device_targeted(module.source),
    )


@register
class NoMixedPrecision(ProjectRule):
    """TA301: the training forward runs in float32.

    Not flagged when an autocast region covers the forward (directly, through a
    name such as nanoGPT's ``ctx``, or through every caller of the step), or
    when precision is delegated in a file linked by imports: ``Accelerator``,
    ``Fabric``, HF ``TrainingArguments``, FSDP ``MixedPrecision``, DeepSpeed,
    bf16/fp16 weights, ``accelerator.backward``, or a model that casts its own
    forward.
    """

    code = "TA301"
    families = (FAMILY,)
    triggers = ("backward",)

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        facts: dict[str, PrecisionSummary] = dict(
            (s.path, f) for s, f in project.facts(FAMILY) if isinstance(f, PrecisionSummary))
        for path, summary in sorted(facts.items()):
            if not summary.unguarded:
                continue
            linked = trainer_neighbourhood(project, path)
            delegated = [(p, kind, line) for p in sorted(linked) if p in facts
                         for kind, line in facts[p].delegations]
            model_side = [p for p in linked if p in facts and facts[p].model_autocast]
            if delegated or model_side:
                continue
            # AMP is for GPUs: silent on CPU-only code. Elsewhere it is advice (info, the
            # catalogue's severity): whether fp32 costs anything depends on the model's size,
            # the memory left and the hardware, which the source does not show (toy models,
            # fp32 baselines, demos on random data, policies set by a caller).
            if {facts[p].device for p in linked if p in facts} <= {"none"}:
                continue
            for forward in summary.unguarded:
                message = (f"training forward `{_short(forward.text)}` runs in float32: no "
                           "autocast covers it and no precision is delegated (Accelerator, "
                           "Fabric, FSDP MixedPrecision, bf16 weights)")
                if not forward.fixable:
                    message += ("; no automatic fix: the loss is computed outside any block "
                                "that could hold the forward under autocast")
                yield self.finding(
                    path, forward.span, message, fixable=forward.fixable,
                    payload=AutocastWrap(forward.first_line, forward.last_line,
                                         forward.device_type, forward.torch_name,
                                         forward.add_import, forward.function,
                                         forward.inline_loss) if forward.fixable else None,
                )


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- TA302 ----------------------------------------------------------------------------------


@register
class DeprecatedAmpApi(ModuleRule):
    """TA302: ``torch.cuda.amp.*`` / ``torch.cpu.amp.*``, deprecated since torch 2.4.

    Every import spelling: ``torch.cuda.amp.autocast``, ``from torch.cuda.amp import
    autocast as ac``, ``from torch.cuda import amp``, ``import torch.cuda.amp as amp``.
    """

    code = "TA302"
    triggers = ("cuda.amp", "cpu.amp", "torch.cuda import", "torch.cpu import", "import cuda",
                "import cpu")

    # The oldest torch the project supports: "" reads it from the project's declared
    # requirement (``trainaudit.requirements``, filled in by ``load_config``).
    options = {"min-torch-version": ""}

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterator[Finding]:
        floor = parse_version(str(ctx.options.get("min-torch-version", "")))
        for use, payload in amp_renames(module):
            message = (f"`{use.qualname}` is deprecated since torch 2.4 (FutureWarning); "
                       f"use `{use.replacement}`")
            fixable = use.fixable
            if floor is not None and floor < use.replacement_needs:
                # The rename would raise AttributeError on the older torch still supported.
                fixable = False
                message += (f" (no automatic fix: the rewrite needs torch>="
                            f"{format_version(use.replacement_needs)} and the project admits "
                            f"torch {format_version(floor)})")
            yield self.report(module, use.node, message, payload=payload if fixable else None,
                              fixable=fixable)
