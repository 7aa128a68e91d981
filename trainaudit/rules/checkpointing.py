"""Activation-checkpointing rules (TA401–TA403).

They read ``CheckpointingFacts``: model classes running block stacks, checkpoint
calls, the sequence lengths a model is declared or trained at (config fields,
argparse defaults), and where checkpointing and KV caches are switched on.
TA401 and TA403 look across files linked by imports: a model's config and its
trainer usually live elsewhere.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

from trainaudit.diagnostics import Finding, Related, Span
from trainaudit.model.checkpointing import (
    LENGTH_TRIGGERS,
    BlockStack,
    CheckpointingFacts,
    SequenceLength,
)
from trainaudit.model.module import ModuleFacts
from trainaudit.model.precision import related_paths
from trainaudit.model.precision.scope import bound_names, is_test_file
from trainaudit.model.project import Project
from trainaudit.payloads import CheckpointStack
from trainaudit.registry import ModuleRule, ProjectRule, RuleContext, register, summarizer

FAMILY = "checkpointing"
SUMMARY_TRIGGERS = ("ModuleList", "Sequential", "use_cache", "checkpoint", *LENGTH_TRIGGERS)
# What the summary needs: a model class running a block stack, a sequence length, a
# switch that turns checkpointing on, or a ``use_cache``.
SUMMARY_REQUIRES = (
    ("def forward", "ModuleList|Sequential"),
    ("|".join(re.escape(word) for word in LENGTH_TRIGGERS),),
    (r"gradient_checkpointing|activation_checkpointing|checkpoint_wrapper|grad_checkpointing"
     r"|apply_ac\b",),
    ("use_cache",),
)


@dataclass(frozen=True)
class StackSummary:
    class_name: str
    stack: str
    kind: str
    span: Span
    checkpointed: bool
    payload: CheckpointStack


@dataclass(frozen=True)
class KvCacheSummary:
    span: Span  # the ``True``
    receiver: str | None
    returned: bool  # the model leaves its function (a loader another file calls)


@dataclass(frozen=True)
class CheckpointingSummary:
    stacks: tuple[StackSummary, ...]
    lengths: tuple[SequenceLength, ...]
    enabled: tuple[int, ...]  # lines that switch checkpointing on
    enabled_receivers: tuple[str | None, ...]  # the model each switch names, if any
    use_cache: tuple[KvCacheSummary, ...]  # use_cache=True in training code
    trains: bool  # the file runs a backward or a trainer (its run-time lengths are training's)


@summarizer(FAMILY, triggers=SUMMARY_TRIGGERS, requires=SUMMARY_REQUIRES)
def summarize_checkpointing(module: ModuleFacts) -> CheckpointingSummary:
    facts = CheckpointingFacts.of(module)
    stacks: dict[tuple[str, str], StackSummary] = {}
    for s in facts.block_stacks:  # one finding per stack: a second loop is often the KV-cache path
        stacks.setdefault((s.class_name, s.stack), StackSummary(
            s.class_name, s.stack, s.kind, module.span(s.call), s.checkpointed,
            _stack_payload(module, s)))
    return CheckpointingSummary(
        stacks=tuple(stacks.values()),
        # Lengths in tests are fixtures' inputs (a huge max_position_embeddings), not training's.
        lengths=() if is_test_file(module.path) else tuple(facts.sequence_lengths),
        enabled=tuple(getattr(s.node, "lineno", 1) for s in facts.checkpointing_enabled),
        enabled_receivers=tuple(s.receiver for s in facts.checkpointing_enabled),
        use_cache=tuple(KvCacheSummary(module.span(c.value), c.receiver, c.returned)
                        for c in facts.use_cache_true),
        trains=bool(_TRAINS.search(module.source)),
    )


def _stack_payload(module: ModuleFacts, stack: BlockStack) -> CheckpointStack:
    """What checkpointing a stack's blocks takes in its file."""
    cls = module.classes[stack.class_name]
    function, import_code, binds = _checkpoint_function(module)
    return CheckpointStack(
        class_name=stack.class_name, class_line=cls.lineno, stack=stack.stack, kind=stack.kind,
        init_line=stack.init_assignment.lineno if stack.init_assignment is not None else None,
        has_flag=_sets_flag(cls), checkpoint=function, checkpoint_import=import_code,
        checkpoint_binds=binds)


def _checkpoint_function(module: ModuleFacts) -> tuple[str, str | None, str]:
    """How to spell ``checkpoint`` here: (expression, import to add, name the import binds)."""
    aliases = module.imports.aliases
    for local, target in aliases.items():
        if target == "torch.utils.checkpoint.checkpoint":
            return local, None, local
    for local, target in aliases.items():
        if target == "torch.utils.checkpoint" and local != "torch":
            return f"{local}.checkpoint", None, local
    if "checkpoint" not in bound_names(module.tree):
        return "checkpoint", "from torch.utils.checkpoint import checkpoint", "checkpoint"
    return "torch.utils.checkpoint.checkpoint", "import torch.utils.checkpoint", "torch.utils.checkpoint"


def _sets_flag(cls: ast.ClassDef) -> bool:
    """The class already sets ``gradient_checkpointing`` (an attribute or a class field)."""
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and node.attr == "gradient_checkpointing" \
                and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "gradient_checkpointing"
                                                for t in node.targets):
            return True
    return False


_TRAINS = re.compile(r"\.backward\s*\(|Trainer\s*\(|\.fit\s*\(")


def _summaries(project: Project) -> dict[str, CheckpointingSummary]:
    return {s.path: f for s, f in project.facts(FAMILY) if isinstance(f, CheckpointingSummary)}


@register
class NoActivationCheckpointing(ProjectRule):
    """TA401: a long-sequence model keeps every block's activations for backward.

    Fires when a model's ``forward`` runs a stack of blocks without
    checkpointing and a sequence length of at least ``long-sequence-threshold``
    is declared in its file, in a file it imports (its config) or in a file
    that imports it (its trainer). Not flagged when checkpointing is switched on
    from outside (``gradient_checkpointing_enable()``, FSDP
    ``apply_activation_checkpointing``, ``checkpoint_wrapper``), or the blocks
    checkpoint themselves.
    """

    code = "TA401"
    families = (FAMILY,)
    triggers = SUMMARY_TRIGGERS
    options = {"long-sequence-threshold": 4096}

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        threshold = int(ctx.option("long-sequence-threshold"))
        summaries = _summaries(project)
        enabling = {p for p, s in summaries.items() if s.enabled}
        # Components with checkpointing on, found once (asking per file is quadratic).
        enabled_components = {project.component(p) for p in enabling} - {None}
        for path, summary in sorted(summaries.items()):
            open_stacks = [s for s in summary.stacks if not s.checkpointed]
            if not open_stacks:
                continue
            linked = sorted(p for p in related_paths(project, path) if p in summaries)
            # Checkpointing applied from anywhere in the import neighbourhood (a
            # parallelize step next to the trainer, torchtitan's apply_ac) counts.
            if path in enabling or project.component(path) in enabled_components:
                continue
            lengths = [(p, length) for p in linked for length in summaries[p].lengths]
            # A trainer's run-time setting (``--seq-len``) says what training uses; a model's
            # declared maximum says only what it supports.
            lengths = [(p, length) for p, length in lengths
                       if length.source == "argument" and summaries[p].trains] or lengths
            if not lengths:
                continue
            where, longest = max(lengths, key=lambda item: (item[1].value, item[0] == path))
            if longest.value < threshold:
                continue
            for stack in open_stacks:
                yield self.finding(
                    path, stack.span,
                    f"`{stack.class_name}.forward` runs `{stack.stack}` without activation "
                    f"checkpointing, and the model is declared for sequences of {longest.value} "
                    f"tokens (`{longest.name}`, {where}:{longest.line}): every block's "
                    "activations are kept for backward",
                    related=[Related(where, longest.line, longest.column,
                                     f"{longest.name} = {longest.value}")],
                    payload=stack.payload)


@register
class CheckpointUseReentrantUnset(ModuleRule):
    """TA402: ``checkpoint(...)`` without ``use_reentrant=``.

    Unset, torch warns and uses the reentrant variant, which ignores
    ``torch.autograd.grad`` inputs, needs an input that requires grad (else no
    gradient reaches the block's weights) and does not support keyword
    arguments; torch says the argument will become required. Calls that pass
    ``**kwargs`` (``**gradient_checkpointing_kwargs``) are not flagged.
    """

    code = "TA402"
    triggers = ("checkpoint",)

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterator[Finding]:
        for call in CheckpointingFacts.of(module).checkpoint_calls:
            if call.has_use_reentrant or call.has_kwargs_unpacking:
                continue
            yield self.report(
                module, call.call,
                f"`{call.function}(...)` without `use_reentrant=`: the reentrant default is "
                "deprecated and drops gradients when no input requires grad; pass "
                "`use_reentrant=False`")


@register
class CheckpointingWithKvCache(ProjectRule):
    """TA403: ``use_cache=True`` while gradient checkpointing is on.

    A KV cache is for generation; in a checkpointed training forward it is
    recomputed and thrown away (HF models warn and turn it off). Generation
    calls and evaluation code (``@torch.no_grad()``, ``evaluate``...) are not flagged.
    """

    code = "TA403"
    families = (FAMILY,)
    triggers = ("use_cache",)

    def check(self, project: Project, ctx: RuleContext) -> Iterator[Finding]:
        summaries = _summaries(project)
        for path, summary in sorted(summaries.items()):
            if not summary.use_cache:
                continue
            here = list(zip(summary.enabled, summary.enabled_receivers, strict=True))
            # Another file counts only when it imports this one and this file hands the model
            # on (a loader returning it): a cache flag is about one model, not a neighbourhood.
            importers = sorted(p for p in project.importers.get(path, ()) if p in summaries)
            elsewhere = [(p, line) for p in importers for line in summaries[p].enabled]
            for flag in summary.use_cache:
                # A switch naming another model (the student) says nothing of this one (the teacher).
                same_model = [line for line, receiver in here if receiver is None
                              or flag.receiver is None or receiver == flag.receiver]
                switched = [(path, line) for line in same_model] or (elsewhere if flag.returned else [])
                if not switched:
                    continue
                where, line = switched[0]
                yield self.finding(
                    path, flag.span,
                    "`use_cache=True` with gradient checkpointing on: the cache is useless in "
                    "training and conflicts with recomputation; use `use_cache=False`",
                    related=[Related(where, line, 1, "gradient checkpointing switched on here")])
