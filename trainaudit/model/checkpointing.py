"""Activation-checkpointing facts of one file.

- ``BlockStack``: a model class whose ``forward`` runs a stack of blocks
  (``for block in self.blocks: x = block(x)``, ``self.transformer.h``,
  ``self.layers[i](x)``, an ``nn.Sequential`` of repeated blocks), and whether
  the stack is already checkpointed;
- ``CheckpointCall``: ``torch.utils.checkpoint.checkpoint`` /
  ``checkpoint_sequential`` calls (any spelling) and whether ``use_reentrant``
  is given;
- ``SequenceLength``: the sequence length a model is declared or trained at,
  where a literal says it (config fields and calls, argparse defaults,
  parameter defaults, dict literals): ``seq_len``, ``max_seq_len``,
  ``block_size``, ``max_length``, ``context_length``...;
- checkpointing switched on elsewhere (``gradient_checkpointing_enable()``,
  ``TrainingArguments(gradient_checkpointing=True)``, FSDP
  ``apply_activation_checkpointing``) and ``use_cache=True`` in training code.
"""

from __future__ import annotations

import ast
import weakref
from dataclasses import dataclass
from functools import cached_property

from trainaudit.diagnostics import Span
from trainaudit.model.checkpointing_switches import (
    NOT_TRAINING_CALLS,
    CheckpointingSwitch,
    KvCacheFlag,
    checkpointing_switches,
    kv_cache_flags,
)
from trainaudit.model.module import FunctionNode, ModuleFacts, keyword, walk_local
from trainaudit.model.precision import dotted, nodes_by_type

SEQUENCE_LENGTH_NAMES = frozenset({
    "seq_len", "max_seq_len", "seq_length", "max_seq_length", "block_size", "max_length",
    "context_length", "max_position_embeddings", "n_positions", "n_ctx", "sequence_length",
    "max_len", "context_len", "ctx_len", "max_sequence_length", "context_size", "seqlen",
    "max_seqlen", "max_context_length", "train_seq_len", "sequence_len", "max_tokens_per_sample",
})
STACK_NAMES = frozenset({"blocks", "layers", "h", "layer", "resblocks", "transformer_blocks",
                         "decoder_layers", "encoder_layers", "block", "stages"})
CHECKPOINT_FUNCTIONS = {
    "torch.utils.checkpoint.checkpoint": "checkpoint",
    "torch.utils.checkpoint.checkpoint_sequential": "checkpoint_sequential",
}
# Spellings that say a forward already checkpoints (its own flag or function).
CHECKPOINT_HINTS = ("checkpoint", "gradient_checkpointing", "grad_checkpointing",
                    "activation_checkpointing", "use_checkpoint", "recompute")
# Substrings of every spelling of a length name (``--max-seq-len``, ``max_position_embeddings``).
LENGTH_TRIGGERS = ("seq_len", "seq-len", "seq_length", "seq-length", "seqlen", "max_len", "max-len",
                   "max_length", "max-length", "block_size", "block-size", "context_len",
                   "context-len", "context_size", "position_embeddings", "n_positions", "n_ctx",
                   "ctx_len", "sequence_len", "max_tokens_per_sample")


def const_int(node: ast.AST | None, depth: int = 0) -> int | None:
    """The int a constant expression denotes: ``8192``, ``4 * 1024``, ``2 ** 15``, ``1 << 13``."""
    if node is None or depth > 6:
        return None
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = const_int(node.left, depth + 1), const_int(node.right, depth + 1)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.FloorDiv) and right:
            return left // right
        if isinstance(node.op, ast.Pow) and 0 <= right <= 64:
            return int(left ** right)
        if isinstance(node.op, ast.LShift) and 0 <= right <= 64:
            return left << right
    return None


def normalise_length_name(name: str) -> str | None:
    """``--seq-len`` → ``seq_len`` when it names a sequence length, else None."""
    clean = name.lstrip("-").replace("-", "_").lower().rsplit(".", 1)[-1]
    return clean if clean in SEQUENCE_LENGTH_NAMES else None


_FACTS: weakref.WeakKeyDictionary[ModuleFacts, CheckpointingFacts] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SequenceLength:
    """A literal sequence length: ``max_seq_len=8192`` at a place."""

    name: str
    value: int
    line: int
    column: int
    # ``argument``: a run-time setting (an argparse default), the length training uses;
    # ``declared``: what a model or config declares it supports.
    source: str = "declared"


@dataclass(frozen=True)
class CheckpointCall:
    call: ast.Call
    function: str  # checkpoint | checkpoint_sequential
    has_use_reentrant: bool
    has_kwargs_unpacking: bool


@dataclass(frozen=True)
class BlockStack:
    """A model class's ``forward`` running a stack of blocks.

    ``kind``: ``loop`` (``for block in self.blocks: x = block(x)``), ``index``
    (``for i in range(n): x = self.layers[i](x)``) or ``sequential``
    (``x = self.blocks(x)`` on an ``nn.Sequential`` of repeated blocks).
    """

    class_name: str
    stack: str  # source spelling: self.blocks, self.transformer.h
    kind: str
    call: ast.Call  # the block call, or the Sequential call
    loop: ast.stmt | None
    checkpointed: bool
    init_assignment: ast.stmt | None  # where __init__ builds the stack (or its container)


class CheckpointingFacts:
    """Block stacks, checkpoint calls, sequence lengths and KV-cache flags of one file.

    Use ``CheckpointingFacts.of(module)`` (one instance per parsed file); each fact
    is computed on first use, and only when the file's text could contain it.
    """

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self.text = module.source

    def _each(self, *kinds: type) -> list[ast.AST]:
        index = nodes_by_type(self.module)
        return [node for kind in kinds for node in index.get(kind, [])]

    @classmethod
    def of(cls, module: ModuleFacts) -> CheckpointingFacts:
        found = _FACTS.get(module)
        if found is None:
            found = _FACTS[module] = cls(module)
        return found

    # -- sequence lengths -----------------------------------------------------------------

    @cached_property
    def sequence_lengths(self) -> list[SequenceLength]:
        found: list[SequenceLength] = []
        module = self.module
        if not any(word in self.text for word in LENGTH_TRIGGERS):
            return found

        capacities = self._rope_lengths
        tabled: set[str] = set()  # names a table of configs sets per entry

        def add(name: str | None, value_node: ast.AST | None, where: ast.AST,
                source: str = "declared") -> None:
            if name is None or name in capacities:
                return
            if self._table_entry(where):
                tabled.add(name)
                return
            value = const_int(value_node)
            if value is not None and value > 0:
                span = module.span(where)
                found.append(SequenceLength(name, value, span.line, span.column, source))

        for node in self._each(ast.Call, ast.Assign, ast.AnnAssign, ast.Dict, ast.arguments):
            if isinstance(node, ast.Call):
                callee = (module.call_name(node) or dotted(node.func) or "").rsplit(".", 1)[-1]
                if callee in NOT_TRAINING_CALLS:
                    continue
                if callee == "add_argument":
                    names = [normalise_length_name(a.value) for a in node.args
                             if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                    dest = keyword(node, "dest")
                    if isinstance(dest, ast.Constant) and isinstance(dest.value, str):
                        names.append(normalise_length_name(dest.value))
                    name = next((n for n in names if n), None)
                    add(name, keyword(node, "default"), node, "argument")
                    continue
                for kw in node.keywords:
                    if kw.arg is not None:
                        add(normalise_length_name(kw.arg), kw.value, kw.value)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    spelled = dotted(target)
                    if spelled is not None:
                        add(normalise_length_name(spelled), node.value, node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                spelled = dotted(node.target)
                if spelled is not None:
                    add(normalise_length_name(spelled), node.value, node.value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        add(normalise_length_name(key.value), value, value)
            elif isinstance(node, ast.arguments):
                positional = [*node.posonlyargs, *node.args]
                for arg, default in zip(positional[len(positional) - len(node.defaults):],
                                        node.defaults, strict=True):
                    add(normalise_length_name(arg.arg), default, default)
                for arg, kw_default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
                    if kw_default is not None:
                        add(normalise_length_name(arg.arg), kw_default, kw_default)
        # A config class's default is overridden by each entry of the table.
        found = [s for s in found if s.name not in tabled or s.source == "argument"]
        found.sort(key=lambda s: (s.line, s.column))
        return found

    @cached_property
    def _rope_lengths(self) -> frozenset[str]:
        """Length names fed to rotary tables (``precompute_freqs_cis(d, cfg.max_seq_len * 2)``):
        a maximum the positions support, not the length the model trains at."""
        names: set[str] = set()
        for node in self._each(ast.Call):
            assert isinstance(node, ast.Call)
            callee = (dotted(node.func) or "").rsplit(".", 1)[-1].lower()
            if not any(h in callee for h in ("rope", "rotary", "freqs")):
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for sub in ast.walk(arg):
                    spelled = sub.attr if isinstance(sub, ast.Attribute) else \
                        sub.id if isinstance(sub, ast.Name) else None
                    if spelled is not None and (name := normalise_length_name(spelled)):
                        names.add(name)
        return frozenset(names)

    def _table_entry(self, node: ast.AST) -> bool:
        """Inside one entry of a table of configs (a list, tuple or ``append`` of dicts):
        one model among many, not the one trained."""
        for anc in self.module.ancestors(node):
            if isinstance(anc, ast.List | ast.Tuple | ast.Set | ast.ListComp):
                return True
            if isinstance(anc, ast.Call) and isinstance(anc.func, ast.Attribute) \
                    and anc.func.attr in ("append", "extend"):
                return True
            if isinstance(anc, ast.stmt):
                return False
        return False

    # -- checkpoint calls -----------------------------------------------------------------

    @cached_property
    def checkpoint_calls(self) -> list[CheckpointCall]:
        found: list[CheckpointCall] = []
        if "checkpoint" not in self.text:
            return found
        for node in self._each(ast.Call):
            if isinstance(node, ast.Call):
                function = CHECKPOINT_FUNCTIONS.get(self.module.call_name(node) or "")
                if function is None:
                    continue
                found.append(CheckpointCall(
                    node, function,
                    has_use_reentrant=keyword(node, "use_reentrant") is not None,
                    has_kwargs_unpacking=any(k.arg is None for k in node.keywords)))
        found.sort(key=lambda c: (c.call.lineno, c.call.col_offset))
        return found

    # -- checkpointing switched on, and KV caches ------------------------------------------

    @cached_property
    def checkpointing_enabled(self) -> list[CheckpointingSwitch]:
        return checkpointing_switches(self.module)

    @cached_property
    def use_cache_true(self) -> list[KvCacheFlag]:
        return kv_cache_flags(self.module)

    # -- block stacks ---------------------------------------------------------------------

    def _stack_attributes(self, cls: ast.ClassDef) -> dict[str, tuple[str, ast.stmt]]:
        """``self.X`` (or ``self.X.h``) built as a ModuleList/Sequential → (kind, assignment)."""
        found: dict[str, tuple[str, ast.stmt]] = {}
        for node in ast.walk(cls):
            if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                spelled = dotted(target)
                if spelled is None or not spelled.startswith("self."):
                    continue
                for path, kind in self._containers(node.value, spelled):
                    found.setdefault(path, (kind, node))
        return found

    def _containers(self, value: ast.expr, spelled: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if not isinstance(value, ast.Call):
            return found
        name = (self.module.call_name(value) or "").rsplit(".", 1)[-1]
        if name == "ModuleList":
            found.append((spelled, "list"))
        elif name == "Sequential" and self._repeated(value):
            found.append((spelled, "sequential"))
        elif name in ("ModuleDict", "dict"):
            items: list[tuple[str, ast.expr]] = [(k.arg, k.value) for k in value.keywords if k.arg]
            for arg in value.args:
                if isinstance(arg, ast.Dict):
                    items.extend((k.value, v) for k, v in zip(arg.keys, arg.values, strict=True)
                                 if isinstance(k, ast.Constant) and isinstance(k.value, str))
                elif isinstance(arg, ast.Call):
                    found.extend(self._containers(arg, spelled))
            for key, sub in items:
                found.extend(self._containers(sub, f"{spelled}.{key}"))
        return found

    @staticmethod
    def _repeated(call: ast.Call) -> bool:
        """``nn.Sequential(*[Block() for _ in range(n)])``, ``nn.Sequential(*blocks)``."""
        return any(isinstance(a, ast.Starred) for a in call.args)

    def _checkpoints(self, body: list[ast.stmt]) -> bool:
        for node in walk_local(body):
            spelled = ""
            if isinstance(node, ast.Call):
                spelled = self.module.call_name(node) or dotted(node.func) or ""
            elif isinstance(node, ast.Attribute | ast.Name):
                spelled = dotted(node) or ""
            if any(h in spelled.lower() for h in CHECKPOINT_HINTS):
                return True
        return False

    def _block_classes_checkpoint(self, assignment: ast.stmt | None) -> bool:
        """The blocks in the stack checkpoint themselves (a block class of this file)."""
        if assignment is None:
            return False
        for node in ast.walk(assignment):
            # ``Block(...)``, or a builder handed the class (``PipelineBlock(module_builder=Block)``).
            if isinstance(node, ast.Name):
                cls = self.module.classes.get(node.id)
                if cls is None:
                    continue
                forward = next((s for s in cls.body if isinstance(s, ast.FunctionDef)
                                and s.name == "forward"), None)
                if forward is not None and self._checkpoints(forward.body):
                    return True
        return False

    @cached_property
    def block_stacks(self) -> list[BlockStack]:
        stacks: list[BlockStack] = []
        if "def forward" not in self.text:
            return stacks
        for class_name, cls in self.module.classes.items():
            forward = next((s for s in cls.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
                            and s.name == "forward"), None)
            if forward is None:
                continue
            attributes = self._stack_attributes(cls)
            checkpointed = self._checkpoints(forward.body)
            for found in self._stacks_in(forward, attributes):
                stack, kind, call, loop = found
                assignment = self._assignment_of(stack, attributes)
                stacks.append(BlockStack(
                    class_name=class_name, stack=stack, kind=kind, call=call, loop=loop,
                    checkpointed=checkpointed or self._block_classes_checkpoint(assignment),
                    init_assignment=assignment))
        stacks.sort(key=lambda s: (s.call.lineno, s.call.col_offset))
        return stacks

    @staticmethod
    def _assignment_of(stack: str, attributes: dict[str, tuple[str, ast.stmt]]) -> ast.stmt | None:
        if stack in attributes:
            return attributes[stack][1]
        for path, (_, assignment) in attributes.items():
            if stack.startswith(path + "."):
                return assignment
        return None

    def _is_stack(self, spelled: str | None, attributes: dict[str, tuple[str, ast.stmt]]) -> bool:
        if spelled is None or not spelled.startswith("self."):
            return False
        if spelled in attributes:
            return attributes[spelled][0] in ("list", "sequential")
        return spelled.rsplit(".", 1)[-1] in STACK_NAMES

    def _stacks_in(self, forward: FunctionNode, attributes: dict[str, tuple[str, ast.stmt]]
                   ) -> list[tuple[str, str, ast.Call, ast.stmt | None]]:
        found: list[tuple[str, str, ast.Call, ast.stmt | None]] = []
        for node in walk_local(forward.body):
            if isinstance(node, ast.For):
                iterable = _unwrap_iterable(node.iter)
                spelled = dotted(iterable) if iterable is not None else None
                variable = _loop_variable(node)
                if self._is_stack(spelled, attributes) and variable is not None:
                    call = _first_call_of(node.body, lambda f, v=variable: isinstance(f, ast.Name)
                                          and f.id == v)
                    if call is not None and spelled is not None:
                        found.append((spelled, "loop", call, node))
                        continue
                index = _range_index(node)
                if index is not None:
                    call = _first_call_of(node.body, lambda f, i=index: isinstance(f, ast.Subscript)
                                          and isinstance(f.slice, ast.Name) and f.slice.id == i
                                          and self._is_stack(dotted(f.value), attributes))
                    if call is not None and isinstance(call.func, ast.Subscript):
                        found.append((dotted(call.func.value) or "", "index", call, node))
            elif isinstance(node, ast.Call):
                spelled = dotted(node.func)
                if spelled in attributes and attributes[spelled][0] == "sequential":
                    found.append((spelled, "sequential", node, None))
        return found


def _unwrap_iterable(node: ast.expr) -> ast.expr | None:
    """``enumerate(zip(self.blocks, states))`` → ``self.blocks``; ``self.layers[:n]`` too."""
    for _ in range(4):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("enumerate", "zip", "reversed", "list", "tuple") and node.args:
            node = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
            node = node.value
        else:
            break
    return node if isinstance(node, ast.Attribute) else None


def _loop_variable(loop: ast.For) -> str | None:
    """The name bound to each block: ``block`` in ``for i, (block, s) in enumerate(zip(...))``."""
    target = loop.target
    iterable = loop.iter
    for _ in range(3):
        if isinstance(target, ast.Name):
            return target.id
        if isinstance(target, ast.Tuple) and target.elts:
            if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name) \
                    and iterable.func.id == "enumerate" and len(target.elts) == 2:
                target, iterable = target.elts[1], iterable.args[0]
                continue
            target = target.elts[0]
            iterable = iterable.args[0] if isinstance(iterable, ast.Call) and iterable.args else iterable
            continue
        return None
    return None


def _range_index(loop: ast.For) -> str | None:
    if isinstance(loop.target, ast.Name) and isinstance(loop.iter, ast.Call) \
            and isinstance(loop.iter.func, ast.Name) and loop.iter.func.id == "range":
        return loop.target.id
    return None


def _first_call_of(body: list[ast.stmt], test: object) -> ast.Call | None:
    assert callable(test)
    for node in walk_local(body):
        if isinstance(node, ast.Call) and test(node.func):
            return node
    return None


def block_stack_at(facts: CheckpointingFacts, span: Span) -> BlockStack | None:
    """The block stack whose call starts where a finding points."""
    for stack in facts.block_stacks:
        where = facts.module.span(stack.call)
        if (where.line, where.column) == (span.line, span.column):
            return stack
    return None
