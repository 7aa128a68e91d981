"""Mixed-precision rules TA301 (no autocast) and TA302 (the deprecated AMP API); the
GradScaler rules (TA303–TA306) are in ``grad_scaler.py``.

They read ``PrecisionFacts``: autocast regions (through names, ``nullcontext``
alternatives and callers), delegated or manual precision, and the training steps
(a ``backward()``, its loss and the forward it comes from).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

from trainaudit.diagnostics import Finding, Span
from trainaudit.model.loops import BACKWARD_CALL, find_training_loops
from trainaudit.model.module import ModuleFacts
from trainaudit.model.precision import (
    DELEGATING_CALLS,
    PrecisionFacts,
    TrainingStep,
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


def _wrap_range(facts: PrecisionFacts, step: TrainingStep, forward: ast.Call) -> tuple[int, int]:
    statement = facts.statement_of(forward)
    assert statement is not None
    block = facts.statement_list(statement)
    last = statement
    if block is not None and step.forward_function == step.function:
        for loss_statement in step.loss_statements:
            if loss_statement in block and statement.lineno <= loss_statement.lineno < step.backward.lineno \
                    and loss_statement.lineno > last.lineno:
                last = loss_statement
    return statement.lineno, last.end_lineno or last.lineno


@summarizer(FAMILY, triggers=SUMMARY_TRIGGERS, requires=SUMMARY_REQUIRES)
def summarize_precision(module: ModuleFacts) -> PrecisionSummary:
    facts = PrecisionFacts.of(module)
    alias = torch_alias(module)
    unguarded: list[UnguardedForward] = []
    in_tests = is_test_file(module.path)
    seen: set[int] = set()
    traced: set[int] = set()

    def add(forward: ast.Call, function: str, lines: tuple[int, int]) -> None:
        # Unit tests compare float32 numbers on purpose; they are not training scripts.
        if in_tests or any(part.startswith("test") for part in function.split(".")):
            return
        unguarded.append(UnguardedForward(
            span=module.span(forward),
            text=module.segment(forward),
            function=function,
            first_line=lines[0],
            last_line=lines[1],
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
        add(forward, step.forward_function, _wrap_range(facts, step, forward))
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
            statement = facts.statement_of(forward)
            assert statement is not None
            add(forward, op.site.function, (statement.lineno, statement.end_lineno or statement.lineno))
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
                yield self.finding(
                    path, forward.span,
                    f"training forward `{_short(forward.text)}` runs in float32: no autocast "
                    "covers it and no precision is delegated (Accelerator, Fabric, FSDP "
                    "MixedPrecision, bf16 weights)",
                    payload=AutocastWrap(forward.first_line, forward.last_line,
                                         forward.device_type, forward.torch_name,
                                         forward.add_import, forward.function),
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
