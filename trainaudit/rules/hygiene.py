"""Loop hygiene (TA503–TA505): loss tensors kept alive, no clipping, weight decay on norms
and biases (evaluation, TA501 and TA502, is in ``rules/evaluation``)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator

from trainaudit.diagnostics import Finding
from trainaudit.model.loops import (
    BACKWARD_CALL,
    LOOP_TRIGGERS,
    LoopAnalysis,
    Operation,
    TrainingLoop,
    find_training_loops,
    grad_mode_at,
    loop_analysis,
    project_training_loops,
)
from trainaudit.model.module import ModuleFacts, int_value, keyword, walk_local
from trainaudit.model.project import Project
from trainaudit.payloads import ClipBeforeStep, DetachAccumulated
from trainaudit.registry import ModuleRule, ProjectRule, RuleContext, register
from trainaudit.rules.accumulation import FOREIGN_GRADIENTS, SELF_STEPPING
from trainaudit.rules.evaluation import callers_disable_grad

_NO_GRAD = ("no_grad", "inference_mode")


def _grad_disabled(op: Operation) -> bool:
    return op.under(*_NO_GRAD)


def _loss_names(loop: TrainingLoop) -> set[str]:
    return {op.loss.text for op in loop.ops("backward")
            if op.loss is not None and op.loss.text.isidentifier()}


def _holds_graph(node: ast.expr, names: set[str]) -> bool:
    """The expression is (or adds) one of the loss tensors, not detached or converted."""
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        return _holds_graph(node.left, names) or _holds_graph(node.right, names)
    return False


def _accumulations(module: ModuleFacts, body: list[ast.stmt], names: set[str]
                   ) -> Iterator[tuple[ast.AST, ast.expr, str]]:
    """(statement, loss expression, accumulator) for ``acc += loss``, ``acc = acc + loss``,
    ``acc.append(loss)``."""
    for node in walk_local(body):
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add) \
                and _holds_graph(node.value, names):
            yield node, node.value, module.segment(node.target)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Add):
            target = module.segment(node.targets[0])
            left, right = node.value.left, node.value.right
            if module.segment(left) == target and _holds_graph(right, names):
                yield node, right, target
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "append" and len(node.args) == 1 \
                and _holds_graph(node.args[0], names):
            yield node, node.args[0], module.segment(node.func.value)


@register
class LossTensorAccumulated(ModuleRule):
    """TA503: the loss tensor itself is summed (or appended) across steps: each step's whole
    autograd graph stays alive until the running total is dropped."""

    code = "TA503"
    triggers = ("backward",)
    requires = ((BACKWARD_CALL,),)  # a training loop in the file

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterable[Finding]:
        seen: set[int] = set()
        analysis = loop_analysis(module)
        for loop in find_training_loops(module):
            names = _loss_names(loop)
            if not names or loop.node is None or _window_loop(loop):
                continue
            bodies: list[list[ast.stmt]] = [loop.node.body]
            for helper in loop.helpers:
                fn = module.functions[helper]
                bodies.append(fn.body)
            for body in bodies:
                for stmt, value, accumulator in _accumulations(module, body, names):
                    if id(stmt) in seen or _converted_before(module, stmt, names):
                        continue
                    if grad_mode_at(analysis, stmt) != "enabled" or _only_called_without_grad(
                            module, analysis, stmt):
                        continue  # no graph is recorded there (or it cannot be told)
                    if body is not loop.node.body and not accumulator.startswith("self."):
                        continue  # a local total in a helper dies with the call
                    seen.add(id(stmt))
                    message = (f"`{module.segment(value)}` is added to `{accumulator}` as a tensor: "
                               "every step's autograd graph stays alive; use `.item()` or "
                               "`.detach()`")
                    yield self.report(module, value, message,
                                      payload=DetachAccumulated(accumulator))


def _window_loop(loop: TrainingLoop) -> bool:
    """The training loop is one optimizer step's accumulation window (``for _ in
    range(gradient_accumulation_steps)``): what it collects lives for that step only."""
    return loop.kind == "for" and bool(_WINDOW_HEADER.search(loop.iterable))


_WINDOW_HEADER = re.compile(r"^range\(.*(accum|micro)", re.IGNORECASE)


def _only_called_without_grad(module: ModuleFacts, analysis: LoopAnalysis, stmt: ast.AST) -> bool:
    """The statement is in a helper that every call in this file runs under no_grad."""
    fn = module.enclosing_function(stmt)
    return fn is not None and callers_disable_grad(module, analysis, fn.name)


def _converted_before(module: ModuleFacts, stmt: ast.AST, names: set[str]) -> bool:
    """``loss = loss.item()`` (or ``.detach()``) earlier in the same function makes it safe."""
    fn = module.enclosing_function(stmt)
    body = fn.body if fn is not None else module.tree.body
    line = getattr(stmt, "lineno", 0)
    for node in walk_local(body):
        if isinstance(node, ast.Assign) and getattr(node, "lineno", 0) < line:
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in names and isinstance(node.value, ast.Call) \
                        and isinstance(node.value.func, ast.Attribute) \
                        and node.value.func.attr in ("item", "detach", "tolist", "cpu"):
                    return True
    return False


@register
class NoGradientClipping(ProjectRule):
    """TA504: nothing in the training loop clips gradients; one bad batch can blow up the
    weights (info: many models train fine without it)."""

    code = "TA504"
    families = ("loops",)
    triggers = LOOP_TRIGGERS

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        for loop in project_training_loops(project):
            if loop.ops("clip") or loop.delegation & (SELF_STEPPING | FOREIGN_GRADIENTS):
                continue
            step = loop.first("optimizer_step")
            if step is None or step.framework:
                continue
            forward = next((op for op in loop.forwards if op.site.function == step.site.function), None)
            fixable = (forward is not None and step.site.path == loop.path
                       and not loop.delegation & {"accelerate", "fabric"})
            message = (f"no gradient clipping before `{step.site.text}`: one outlier batch can "
                       "wreck the weights")
            # ``scaler.step(opt)``: the classifier gave the optimizer as the step's receiver
            # because the object stepping it is a scaler.
            stepper = step.site.text.split("(")[0].rsplit(".", 1)[0]
            payload = ClipBeforeStep(
                model=forward.receiver, optimizer=step.receiver,
                scaler=stepper if stepper != step.receiver else None,
                unscaled=bool(loop.ops("unscale"))) if forward is not None and fixable else None
            yield self.finding(step.site.path, step.site.span, message, fixable=fixable,
                               payload=payload)


# Layers with a bias or norm weights by default.
_BIASED = ("Linear", "Conv1d", "Conv2d", "Conv3d", "LayerNorm", "BatchNorm1d", "BatchNorm2d",
           "BatchNorm3d", "GroupNorm", "RMSNorm", "InstanceNorm1d", "InstanceNorm2d", "Embedding")
# Pretrained-model constructors whose models certainly have norms and biases.
_PRETRAINED = ("from_pretrained", "resnet", "vit_", "bert", "gpt2")


def _model_has_norms_or_biases(module: ModuleFacts) -> bool:
    """The file builds (or loads) a model with norm layers or biases it can see."""
    for node in module.nodes:
        if not isinstance(node, ast.Call):
            continue
        name = module.call_name(node) or ""
        last = name.rsplit(".", 1)[-1]
        if name.startswith("torch.nn.") and last in _BIASED:
            bias = keyword(node, "bias")
            affine = keyword(node, "elementwise_affine") or keyword(node, "affine")
            if last == "Embedding":
                continue
            if isinstance(bias, ast.Constant) and bias.value is False and not last.endswith("Norm") \
                    and "Norm" not in last:
                continue
            if isinstance(affine, ast.Constant) and affine.value is False:
                continue
            return True
        if any(word in last.lower() for word in _PRETRAINED):
            return True
    return False


@register
class WeightDecayOnNormAndBias(ModuleRule):
    """TA505: the optimizer decays every parameter of a model that has norm weights and biases;
    they are usually kept out of weight decay (param groups with ``p.dim() < 2``).

    Quiet when the model's layers cannot be seen from the file that builds the optimizer.
    """

    code = "TA505"
    triggers = ("weight_decay", "AdamW")

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterable[Finding]:
        has_norms: bool | None = None
        for node in module.nodes:
            if not isinstance(node, ast.Call):
                continue
            name = module.call_name(node) or ""
            if not (name.startswith("torch.optim.") or name in ("AdamW", "SGD", "Adam")):
                continue
            last = name.rsplit(".", 1)[-1]
            if "lr_scheduler" in name or not last[:1].isupper():
                continue
            params = node.args[0] if node.args else keyword(node, "params")
            if not _all_parameters(params):
                continue
            # Only an explicit decay: AdamW's implicit 0.01 on every AdamW(model.parameters())
            # would be noise.
            decay = keyword(node, "weight_decay")
            if decay is None:
                continue
            if isinstance(decay, ast.Constant) and isinstance(decay.value, int | float):
                if not decay.value:
                    continue
            elif int_value(decay) == 0:
                continue
            if has_norms is None:
                has_norms = _model_has_norms_or_biases(module)
            if not has_norms:
                return
            shown = module.segment(decay)
            message = (f"weight decay {shown} applies to every parameter, norm weights and "
                       "biases included; use parameter groups with no decay for 1-D parameters")
            yield self.report(module, node, message, fixable=False)


def _all_parameters(node: ast.expr | None) -> bool:
    """``model.parameters()`` or ``list(model.parameters())``: one group, everything in it."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" \
            and node.args:
        node = node.args[0]
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "parameters")
