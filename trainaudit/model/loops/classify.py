"""Which calls of a training loop are backward, steps, zero_grad, forwards ..."""

from __future__ import annotations

import ast
import re

from trainaudit.model.loops.patterns import (
    CLIP_METHODS,
    FACTORY,
    MODEL_NAME,
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    last_name,
)
from trainaudit.model.loops.records import OpKind
from trainaudit.model.loops.scan import FileScan
from trainaudit.model.module import keyword

# Methods that switch a wrapper's gradient all-reduce off and on (apex DDP, FSDP2).
SYNC_SWITCHES = frozenset({"disable_allreduce", "enable_allreduce", "set_requires_gradient_sync"})


# A trailing subscript: an element of a collection, named by the collection.
_ELEMENT = re.compile(r"\[[^\[\]]*\]$")


def makes_scheduler(made: str) -> bool:
    """Whether a call of this (qualified) name makes a learning-rate scheduler: torch's
    and transformers' schedulers, and factories named for one (``build_scheduler``)."""
    lowered, last = made.lower(), made.rsplit(".", 1)[-1]
    if "pipeline" in lowered:
        return False  # pipeline-parallel schedules step micro-batches, not learning rates
    factory = last.lower().startswith(FACTORY) and "sched" in last.lower() and "optim" not in last.lower()
    return ("lr_scheduler" in lowered or "schedule_with_warmup" in lowered or factory
            or last.endswith(("LR", "Scheduler", "Schedulers")) or last == "get_scheduler")


def _collection_of(target: ast.expr, iterable: ast.expr, name: str) -> ast.expr | None:
    """The collection whose elements a loop target ``name`` takes: ``for name in c``,
    ``for i, name in enumerate(c)``, ``for key, name in c.items()``, ``c.values()``."""
    if isinstance(target, ast.Tuple) and len(target.elts) == 2 \
            and isinstance(target.elts[1], ast.Name) and target.elts[1].id == name \
            and isinstance(iterable, ast.Call):
        func = iterable.func
        if isinstance(func, ast.Name) and func.id == "enumerate" and iterable.args:
            return iterable.args[0]
        if isinstance(func, ast.Attribute) and func.attr == "items" and not iterable.args:
            return func.value
        return None
    if not (isinstance(target, ast.Name) and target.id == name):
        return None
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute) \
            and iterable.func.attr == "values" and not iterable.args:
        return iterable.func.value
    return iterable


class CallClassifier(FileScan):
    """Classifies the training-relevant calls and assignments of a file."""

    def _is_optimizer(self, text: str) -> bool:
        last = last_name(_ELEMENT.sub("", text))  # ``optimizers[1]``: one of the optimizers
        if OPTIMIZER_NAME.search(last) and not SCHEDULER_NAME.search(last):
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
        if SCHEDULER_NAME.search(last_name(text)):
            return True
        return any(makes_scheduler(made) for made in self.bindings.made_by(text))

    def _steps_scheduler_element(self, call: ast.Call, receiver: str) -> bool:
        """``s.step()`` where ``s`` runs over a collection of schedulers: ``for s in
        schedulers``, ``.values()``, ``for name, s in scheds.items()``, ``enumerate(...)``,
        a list or dict literal of schedulers (here or where the collection is bound)."""
        for anc in self.module.ancestors(call):
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                return False
            loops: list[tuple[ast.expr, ast.expr]] = []
            if isinstance(anc, ast.For | ast.AsyncFor):
                loops.append((anc.target, anc.iter))
            elif isinstance(anc, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
                loops.extend((g.target, g.iter) for g in anc.generators)
            for target, iterable in loops:
                collection = _collection_of(target, iterable, receiver)
                if collection is not None:
                    return self._scheduler_collection(collection, depth=1)
        return False

    def _scheduler_collection(self, collection: ast.expr, depth: int) -> bool:
        """Whether every element of a collection (a literal, or a name bound to one) is a
        scheduler; a collection named for schedulers (``lr_schedulers``) is one."""
        if isinstance(collection, ast.List | ast.Tuple | ast.Set | ast.Dict):
            elements = [v for v in (collection.values if isinstance(collection, ast.Dict)
                                    else collection.elts) if v is not None]
            return bool(elements) and all(
                makes_scheduler(self.module.call_name(e) or "") if isinstance(e, ast.Call)
                else self._is_scheduler(self.module.segment(e)) for e in elements)
        text = self.module.segment(collection)
        if not isinstance(collection, ast.Name | ast.Attribute):
            return False
        if self._is_scheduler(text):
            return True
        return depth > 0 and any(self._scheduler_collection(value, depth - 1)
                                 for value in self._literals_bound_to(text))

    def _literals_bound_to(self, text: str) -> list[ast.expr]:
        """Collection literals assigned to a name or ``self.`` attribute in the file."""
        found: list[ast.expr] = []
        for node in self.module.nodes:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(
                    node.value, ast.List | ast.Tuple | ast.Set | ast.Dict):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(self.module.segment(t) == text for t in targets):
                    found.append(node.value)
        return found

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
            if text in self.defined_names or module.is_imported(text) or text.startswith(FACTORY):
                name = module.qualname(func) or ""
                if name.rsplit(".", 1)[-1] in CLIP_METHODS:
                    return ("clip", "", "", None)
                return None
            if text in self.model_names or MODEL_NAME.search(text):
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
        if attr in CLIP_METHODS or qualified.rsplit(".", 1)[-1] in CLIP_METHODS:
            return ("clip", receiver, self._framework(receiver), None)
        if attr == "step":
            if "scaler" in receiver.lower() and call.args:
                return ("optimizer_step", module.segment(call.args[0]), "", None)
            if self._is_scheduler(receiver) or self._steps_scheduler_element(call, receiver):
                return ("scheduler_step", receiver, "", None)
            if self._is_optimizer(receiver):
                return ("optimizer_step", receiver, self._framework(receiver), None)
            if self.imports_deepspeed and ("engine" in receiver.lower() or "model" in receiver.lower()):
                return ("optimizer_step", receiver, "deepspeed", None)
            return None
        if attr in SYNC_SWITCHES:
            return ("sync_flag", receiver, "", None)
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
            # ``train(True)``, or ``train(was_training)``: a mode saved before an
            # evaluation and put back (it may be train mode, so it may restore it).
            return ("train_mode", receiver, "", None)
        if attr == "forward" and (receiver in self.model_names or MODEL_NAME.search(last_name(receiver))):
            return ("forward", receiver, "", None)
        if receiver.startswith("self.") or receiver == "self":
            text = module.segment(func)
            if text in self.model_names or (
                    receiver == "self" and MODEL_NAME.search(attr) and not self._is_method(attr, function)):
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

    def assignment_op(self, stmt: ast.stmt) -> tuple[OpKind, str] | None:
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

