"""Training steps of one file: each ``backward()`` call, the loss it
differentiates and the forward call that loss comes from (a small stand-in for
the training-loop model, enough for the precision rules).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field
from functools import cached_property

from trainaudit.model.module import ModuleFacts, walk_local
from trainaudit.model.objects import file_objects
from trainaudit.model.precision.api import dotted


@dataclass
class TrainingStep:
    """A ``backward()`` call, the loss it differentiates and the forward that loss comes from."""

    function: str  # dotted name in the file, '' for module level
    backward: ast.Call
    loss_name: str | None = None
    # Statements that define the loss, latest first (``loss = loss / n``, ``loss = F.ce(...)``).
    loss_statements: list[ast.stmt] = field(default_factory=list)
    forward: ast.Call | None = None
    forward_function: str = ""  # where the forward call is (a helper may compute the loss)
    delegated: bool = False  # accelerator.backward(loss), fabric.backward(loss)...


Assignment = ast.Assign | ast.AnnAssign | ast.AugAssign
_BUILTINS = set(dir(builtins))
_TENSOR_METHODS = {
    "view", "reshape", "contiguous", "to", "float", "half", "bfloat16", "mean", "sum", "size",
    "item", "chunk", "split", "transpose", "permute", "flatten", "softmax", "log_softmax",
    "argmax", "detach", "clone", "unsqueeze", "squeeze", "masked_fill", "cuda", "cpu", "long",
    "int", "type", "view_as", "expand", "repeat", "gather", "get", "pop", "items", "keys",
    "values", "append", "format", "numel", "backward", "step", "zero_grad", "max", "min",
    "norm", "pow", "sqrt", "exp", "log", "abs", "squeeze_", "narrow", "index_select", "t",
}
_LOSS_HINTS = ("loss", "criterion", "crit", "metric", "acc", "objective", "cost")
_MODEL_ATTR_HINTS = ("model", "net", "module", "encoder", "decoder", "backbone", "forward",
                     "transformer", "policy", "network", "llm", "lm", "gpt", "unet", "engine")
DELEGATING_BACKWARD = ("accelerator", "fabric", "engine", "deepspeed", "trainer", "booster",
                        "strategy", "ds_")


def _is_loss_like(name: str) -> bool:
    lower = name.lower().rsplit(".", 1)[-1]
    return any(h in lower for h in _LOSS_HINTS)



class TrainingSteps:
    """The ``backward()`` calls of a file, each traced to its loss and forward.

    One instance per ``PrecisionFacts``; each fact is computed on first use.
    """

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self.text = module.source
        self._assignment_cache: dict[str, dict[str, list[Assignment]]] = {}

    @cached_property
    def backward_calls(self) -> list[tuple[str, ast.Call]]:
        module = self.module
        found: list[tuple[str, ast.Call]] = []
        if "backward" not in self.text:
            return found
        for function, calls in module.calls_by_function.items():
            for call in calls:
                is_backward = (isinstance(call.func, ast.Attribute) and call.func.attr in
                               ("backward", "manual_backward")) or \
                    module.call_name(call) == "torch.autograd.backward"
                if not is_backward:
                    continue
                cls = module.enclosing_class(call)
                if cls is not None and any(b.endswith("Function") for b in module.class_bases(cls)):
                    continue  # inside a custom autograd.Function
                found.append((function, call))
        return found

    def delegating_backward(self, call: ast.Call) -> bool:
        if not isinstance(call.func, ast.Attribute):
            return False
        if call.func.attr == "manual_backward":
            return True
        receiver = (dotted(call.func.value) or "").lower()
        return bool(call.args) and any(h in receiver for h in DELEGATING_BACKWARD)

    @cached_property
    def steps(self) -> list[TrainingStep]:
        steps: list[TrainingStep] = []
        for function, call in self.backward_calls:
            step = TrainingStep(function, call, delegated=self.delegating_backward(call))
            if step.delegated or self.module.call_name(call) == "torch.autograd.backward":
                root: ast.expr | None = call.args[0] if call.args else None
            else:
                assert isinstance(call.func, ast.Attribute)
                root = call.func.value
            if root is not None:
                root = _loss_root(root)
                self._trace_loss(step, root)
            steps.append(step)
        return steps

    @property
    def functions(self) -> set[str]:
        """Functions whose body calls ``backward()``."""
        return {function for function, _ in self.backward_calls}

    def _scope_body(self, function: str) -> list[ast.stmt]:
        if function == "":
            return self.module.tree.body
        return self.module.functions[function].body

    def _assignments_in(self, function: str) -> dict[str, list[Assignment]]:
        """Name → statements assigning it in one scope (cached per scope)."""
        cache = self._assignment_cache
        if function not in cache:
            table: dict[str, list[Assignment]] = {}
            for node in walk_local(self._scope_body(function)):
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        for sub in ast.walk(target):
                            if isinstance(sub, ast.Name):
                                table.setdefault(sub.id, []).append(node)
            cache[function] = table
        return cache[function]

    def _definitions(self, function: str, name: str, before: int) -> list[Assignment]:
        """Statements assigning ``name`` in a scope, latest first, those before ``before`` first."""
        found = list(dict.fromkeys(self._assignments_in(function).get(name, [])))
        earlier = sorted((s for s in found if s.lineno < before), key=lambda s: -s.lineno)
        later = sorted((s for s in found if s.lineno >= before), key=lambda s: -s.lineno)
        return earlier + later

    def _trace_loss(self, step: TrainingStep, root: ast.expr) -> None:
        base = root
        while isinstance(base, ast.Attribute | ast.Subscript):
            base = base.value
        if isinstance(base, ast.Call):
            forward = self._find_forward(base, step.function, 0)
            if forward is not None:
                step.forward, step.forward_function = forward
            return
        if not isinstance(base, ast.Name):
            return
        step.loss_name = base.id
        before = step.backward.lineno
        seen: set[int] = set()
        name = base.id
        for _ in range(6):
            definitions = [d for d in self._definitions(step.function, name, before) if id(d) not in seen]
            if not definitions:
                return
            statement = definitions[0]
            seen.add(id(statement))
            step.loss_statements.append(statement)
            value = statement.value
            if value is None:
                return
            forward = self._find_forward(value, step.function, 0)
            if forward is not None:
                step.forward, step.forward_function = forward
                return
            before = statement.lineno
            if isinstance(statement, ast.AugAssign):
                continue
            # ``loss = loss / n``: keep following the same name; else give up on names.
            if not any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(value)):
                return

    def _is_model_call(self, call: ast.Call, function: str) -> bool:
        """Whether a call runs a model: what the object model knows of the callee decides
        (built by a module class, used as a model; a criterion or an optimizer is none);
        for a callee it knows nothing of, the names it has."""
        func = call.func
        module = self.module
        if isinstance(func, ast.Name | ast.Attribute):
            kind = file_objects(module).kind(func, function)
            if kind == "model":
                return True
            if kind:
                return False
        if isinstance(func, ast.Name):
            name = func.id
            if name in _BUILTINS or name in module.imports.aliases or name in module.functions \
                    or name in module.classes or _is_loss_like(name):
                return False
            return not name[:1].isupper()  # ``Model(...)`` builds a model, it does not run one
        if isinstance(func, ast.Attribute):
            spelled = dotted(func)
            if spelled is None or _is_loss_like(spelled):
                return False
            if func.attr in _TENSOR_METHODS:
                return False
            root = spelled.split(".", 1)[0]
            if root in module.imports.aliases:
                return False
            if module.local_callee(call, function) is not None:
                return False
            attr = func.attr.lower()
            return any(h in attr for h in _MODEL_ATTR_HINTS) or \
                any(h in (dotted(func.value) or "").lower() for h in ("model", "net"))
        return False

    def _find_forward(self, expr: ast.expr, function: str,
                      depth: int) -> tuple[ast.Call, str] | None:
        """The model call an expression's value comes from, following names and local helpers."""
        if depth > 5:
            return None
        calls = [n for n in ast.walk(expr) if isinstance(n, ast.Call)]
        for call in calls:
            if self._is_model_call(call, function):
                return call, function
        for call in calls:
            callee = self.module.local_callee(call, function)
            if callee is not None and callee != function:
                fn = self.module.functions[callee]
                for node in walk_local(fn.body):
                    if isinstance(node, ast.Return) and node.value is not None:
                        found = self._find_forward(node.value, callee, depth + 1)
                        if found is not None:
                            return found
        # Follow the names the expression reads (``F.cross_entropy(logits, y)`` → ``logits``).
        names = [n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                 and n.id not in self.module.imports.aliases]
        statement = next((a for a in self.module.ancestors(expr) if isinstance(a, ast.stmt)), None)
        before = statement.lineno if statement is not None else expr.lineno
        for name in dict.fromkeys(names):
            for definition in self._definitions(function, name, before)[:1]:
                if definition.lineno >= before or definition.value is None:
                    continue
                found = self._find_forward(definition.value, function, depth + 1)
                if found is not None:
                    return found
        return None


def _loss_root(expr: ast.expr) -> ast.expr:
    """``scaler.scale(loss / n).mean()`` → ``loss``."""
    for _ in range(8):
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            func = expr.func
            if func.attr == "scale" and expr.args:
                expr = expr.args[0]
                continue
            if func.attr in ("mean", "sum", "float", "double", "squeeze", "to"):
                expr = func.value
                continue
        if isinstance(expr, ast.BinOp):
            expr = expr.right if isinstance(expr.left, ast.Constant) else expr.left
            continue
        if isinstance(expr, ast.UnaryOp):
            expr = expr.operand
            continue
        break
    return expr
