"""Which calls of a training loop are backward, steps, zero_grad, forwards ..."""

from __future__ import annotations

import ast

from trainaudit.model.flow.operations import POSITION_KEEPING_METHODS
from trainaudit.model.loops.patterns import CLIP_METHODS, FACTORY
from trainaudit.model.loops.records import OpKind
from trainaudit.model.loops.scan import FileScan
from trainaudit.model.module import keyword
from trainaudit.model.objects import Kind, file_objects

# Methods of tensors and containers a model has no attribute by (``loss.item()``,
# ``batch.get("x")``): no forward, whatever they are called on.
_VALUE_METHODS = frozenset({"item", "sum", "mean", "size", "numel", "append", "extend", "get",
                            "items", "keys", "values", "pop", "update", "format", "join", "split",
                            "tolist", "argmax", "max", "min", "backward", "masked_fill", "copy_",
                            "add_", "mul_", "zero_", "fill_", "softmax", "log_softmax", "chunk",
                            "permute", "transpose", "expand", "repeat", "gather", "norm"})
# Methods that switch a wrapper's gradient all-reduce off and on (apex DDP, FSDP2).
SYNC_SWITCHES = frozenset({"disable_allreduce", "enable_allreduce", "set_requires_gradient_sync"})


class CallClassifier(FileScan):
    """Classifies the training-relevant calls and assignments of a file."""

    def _kind(self, expr: ast.expr, function: str) -> Kind:
        """What the object of ``expr`` is, by the one object model of the file."""
        return file_objects(self.module).kind(expr, function)

    def _framework(self, expr: ast.expr, function: str) -> str:
        """The framework an object belongs to: by what built it (``Accelerator()``,
        ``Fabric()``, ``deepspeed.initialize``), else by its name (a parameter, or what an
        unknown factory returned)."""
        found = file_objects(self.module).object_of(expr, function)
        for maker in found.makers if found is not None else ():
            root = maker.split(".", 1)[0]
            if root == "accelerate":
                return "accelerate"
            if root in ("lightning", "pytorch_lightning") or maker.endswith("Fabric"):
                return "fabric"
            if root == "deepspeed":
                return "deepspeed"
        lowered = self.module.segment(expr).lower()
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
            if self._kind(func, function) == "model":
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
                framework = self._framework(func.value, function) or "framework"
                return ("backward", receiver, framework, call.args[0])
            loss = func.value
            if (isinstance(loss, ast.Call) and isinstance(loss.func, ast.Attribute)
                    and loss.func.attr == "scale" and loss.args):
                loss = loss.args[0]
            return ("backward", module.segment(loss), "", loss)
        if attr == "manual_backward" and call.args:
            return ("backward", receiver, "lightning", call.args[0])
        if attr in CLIP_METHODS or qualified.rsplit(".", 1)[-1] in CLIP_METHODS:
            return ("clip", receiver, self._framework(func.value, function), None)
        if attr == "step":
            kind = self._kind(func.value, function)
            if kind == "scaler" and call.args:
                return ("optimizer_step", module.segment(call.args[0]), "", None)
            if kind == "scheduler":
                return ("scheduler_step", receiver, "", None)
            if kind == "optimizer":
                return ("optimizer_step", receiver, self._framework(func.value, function), None)
            if self.imports_deepspeed and ("engine" in receiver.lower() or "model" in receiver.lower()):
                return ("optimizer_step", receiver, "deepspeed", None)
            return None
        if attr in SYNC_SWITCHES:
            return ("sync_flag", receiver, "", None)
        if attr == "zero_grad":
            return ("zero_grad", receiver, "", None)
        if attr == "unscale_" and call.args:
            return ("unscale", module.segment(call.args[0]), "", None)
        if attr == "update" and self._kind(func.value, function) == "scaler":
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
        if attr == "forward" and self._kind(func.value, function) == "model":
            return ("forward", receiver, "", None)
        if receiver.startswith("self.") or receiver == "self":
            text = module.segment(func)
            if self._kind(func, function) == "model" and not (
                    receiver == "self" and self._is_method(attr, function)):
                return ("forward", text, "", None)
            return None
        if attr in POSITION_KEEPING_METHODS or attr in _VALUE_METHODS:
            return None  # a tensor's or a container's method (what it is called on aside)
        text = module.segment(func)
        if self._kind(func, function) == "model":
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

