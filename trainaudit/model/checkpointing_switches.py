"""Where a file turns activation checkpointing on, and where it keeps a KV cache on
(``use_cache=True``), each tied to the model it is about.

- ``CheckpointingSwitch``: ``model.gradient_checkpointing_enable()``,
  ``TrainingArguments(gradient_checkpointing=True)``, FSDP
  ``apply_activation_checkpointing``, a framework's ``activation_checkpointing``
  settings, a model's ``activation_checkpointing_fn`` hook; ``receiver`` is the
  model's spelling where the switch names one.
- ``KvCacheFlag``: ``use_cache=True`` (a keyword, ``X.config.use_cache = True``,
  a kwargs ``dict`` unpacked into ``from_pretrained``) in training code: not in
  evaluation or generation, not after ``trainer.train()`` (the saved config),
  not for a frozen model (``eval()`` never undone, ``requires_grad_(False)``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from trainaudit.model.module import ModuleFacts, keyword, walk_local
from trainaudit.model.precision.api import dotted, nodes_by_type

EXTERNAL_CHECKPOINTING = ("gradient_checkpointing_enable", "apply_activation_checkpointing",
                          "checkpoint_wrapper", "set_grad_checkpointing", "enable_gradient_checkpointing",
                          "set_gradient_checkpointing", "activation_checkpointing")
# Methods a framework calls to checkpoint a model's blocks (Composer's FSDP hook).
CHECKPOINTING_HOOKS = ("activation_checkpointing_fn",)
NOT_TRAINING_CALLS = ("generate", "pipeline", "GenerationConfig", "sample", "decode")
INFERENCE_FUNCTION_HINTS = ("eval", "generate", "sample", "predict", "infer", "decode", "valid", "test")
_LOADERS = ("from_pretrained", "from_config")


@dataclass(frozen=True)
class CheckpointingSwitch:
    node: ast.AST
    receiver: str | None  # the model it switches, where it names one


@dataclass(frozen=True)
class KvCacheFlag:
    value: ast.Constant  # the ``True``
    receiver: str | None  # the model it is about, where known
    returned: bool  # that model is returned from its function (a loader)


def _receiver_of(call: ast.Call) -> str | None:
    return dotted(call.func.value) if isinstance(call.func, ast.Attribute) else None


def checkpointing_switches(module: ModuleFacts) -> list[CheckpointingSwitch]:
    """Places that turn checkpointing on for a model (not the model's own forward)."""
    found: list[CheckpointingSwitch] = []
    if "checkpoint" not in module.source:
        return found
    index = nodes_by_type(module)
    for node in [*index.get(ast.Call, []), *index.get(ast.Assign, []), *index.get(ast.FunctionDef, [])]:
        if isinstance(node, ast.Call):
            names = {(dotted(node.func) or "").rsplit(".", 1)[-1],
                     (module.call_name(node) or "").rsplit(".", 1)[-1]}
            if names & set(EXTERNAL_CHECKPOINTING) or any(
                    "checkpoint_wrapper" in n or n == "apply_ac" for n in names):
                receiver = _receiver_of(node) if "gradient_checkpointing_enable" in names else None
                found.append(CheckpointingSwitch(node, receiver))
                continue
            for kw in node.keywords:
                # ``gradient_checkpointing=True``, ``activation_checkpointing_policy={Block}``
                # (Lightning's FSDPStrategy), ``gradient_checkpointing=args.gc``.
                if kw.arg is not None and ("gradient_checkpointing" in kw.arg
                                           or "activation_checkpointing" in kw.arg) \
                        and not (isinstance(kw.value, ast.Constant) and kw.value.value in (False, None)):
                    found.append(CheckpointingSwitch(kw.value, None))
        elif isinstance(node, ast.Assign):
            if isinstance(node.value, ast.Constant) and node.value.value is True:
                for target in node.targets:
                    if (dotted(target) or "").endswith(("gradient_checkpointing",
                                                        "activation_checkpointing")):
                        found.append(CheckpointingSwitch(node, None))
        elif isinstance(node, ast.FunctionDef) and node.name in CHECKPOINTING_HOOKS:
            found.append(CheckpointingSwitch(node, None))
    return found


def kv_cache_flags(module: ModuleFacts) -> list[KvCacheFlag]:
    """``use_cache=True`` in training code, each with the model it is about."""
    found: list[KvCacheFlag] = []
    if "use_cache" not in module.source:
        return found
    index = nodes_by_type(module)
    for node in [*index.get(ast.Call, []), *index.get(ast.Assign, [])]:
        value: ast.expr | None = None
        receiver: str | None = None
        statement: ast.AST = node
        if isinstance(node, ast.Call):
            callee = (dotted(node.func) or "").rsplit(".", 1)[-1]
            value = keyword(node, "use_cache")
            if callee in NOT_TRAINING_CALLS or not _is_true(value):
                continue
            located = _model_of_call(module, node, callee)
            if located is None:
                continue  # a kwargs dict that goes nowhere this file can see
            receiver, statement = located
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and node.value.value is True:
            targets = [dotted(t) or "" for t in node.targets]
            spelled = next((t for t in targets if t.endswith(".use_cache")), None)
            if spelled is None:
                continue
            value = node.value
            receiver = spelled.removesuffix(".use_cache").removesuffix(".config")
        if not isinstance(value, ast.Constant) or _inference_scope(module, statement) \
                or _after_training(module, statement) \
                or (receiver is not None and _frozen(module, receiver, statement)):
            continue
        found.append(KvCacheFlag(value, receiver, receiver is not None and _returned(module, receiver, statement)))
    found.sort(key=lambda c: (c.value.lineno, c.value.col_offset))
    return found


def _is_true(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _model_of_call(module: ModuleFacts, call: ast.Call, callee: str) -> tuple[str | None, ast.AST] | None:
    """The model a ``use_cache=`` keyword is about, and the statement that makes or runs it."""
    parent = module.parents.get(call)
    target = dotted(parent.targets[0]) if isinstance(parent, ast.Assign) and len(parent.targets) == 1 else None
    if callee == "dict":
        if target is None:
            return None
        for other in nodes_by_type(module).get(ast.Call, []):
            assert isinstance(other, ast.Call)
            if (dotted(other.func) or "").rsplit(".", 1)[-1] in _LOADERS and any(
                    k.arg is None and dotted(k.value) == target for k in other.keywords):
                holder = module.parents.get(other)
                made = dotted(holder.targets[0]) if isinstance(holder, ast.Assign) else None
                return made, other
        return None
    if callee in _LOADERS:
        return target, call
    return _receiver_of(call) if isinstance(call.func, ast.Attribute) else dotted(call.func), call


def _scope_body(module: ModuleFacts, node: ast.AST) -> list[ast.stmt]:
    fn = module.enclosing_function(node)
    return fn.body if fn is not None else module.tree.body


def _after_training(module: ModuleFacts, node: ast.AST) -> bool:
    """After ``trainer.train()`` / ``.fit()`` in the same scope: set for the saved config."""
    line = getattr(node, "lineno", 0)
    for call in walk_local(_scope_body(module, node)):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.lineno < line \
                and (call.func.attr == "fit"
                     or (call.func.attr == "train" and "trainer" in (_receiver_of(call) or "").lower())):
            return True
    return False


def _frozen(module: ModuleFacts, receiver: str, node: ast.AST) -> bool:
    """A model never trained here: ``eval()`` without ``train()``, ``requires_grad_(False)``,
    or every parameter's ``requires_grad`` set to False."""
    body = _scope_body(module, node)
    methods: dict[str, list[ast.Call]] = {}
    frozen_parameters = False
    for item in walk_local(body):
        if isinstance(item, ast.Call) and isinstance(item.func, ast.Attribute) \
                and _receiver_of(item) == receiver:
            methods.setdefault(item.func.attr, []).append(item)
        elif isinstance(item, ast.For) and isinstance(item.iter, ast.Call) \
                and isinstance(item.iter.func, ast.Attribute) and _receiver_of(item.iter) == receiver \
                and item.iter.func.attr in ("parameters", "named_parameters"):
            frozen_parameters = frozen_parameters or any(
                isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and s.value.value is False
                and any((dotted(t) or "").endswith(".requires_grad") for t in s.targets)
                for s in ast.walk(item))
    requires_grad_off = any(
        c.args and isinstance(c.args[0], ast.Constant) and c.args[0].value is False
        for c in methods.get("requires_grad_", []))
    return requires_grad_off or frozen_parameters or ("eval" in methods and "train" not in methods)


def _returned(module: ModuleFacts, receiver: str, node: ast.AST) -> bool:
    return any(isinstance(item, ast.Return) and item.value is not None and dotted(item.value) == receiver
               for item in walk_local(_scope_body(module, node)))


def _inference_scope(module: ModuleFacts, node: ast.AST) -> bool:
    fn = module.enclosing_function(node)
    while fn is not None:
        if any(h in fn.name.lower() for h in INFERENCE_FUNCTION_HINTS):
            return True
        for deco in fn.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            if (module.qualname(target) or "").endswith(("no_grad", "inference_mode")):
                return True
        fn = module.enclosing_function(fn)
    for anc in module.ancestors(node):
        if isinstance(anc, ast.With) and any(
                isinstance(i.context_expr, ast.Call)
                and (module.call_name(i.context_expr) or "").endswith(("no_grad", "inference_mode"))
                for i in anc.items):
            return True
    return False
