"""Loop hygiene (TA501–TA505): evaluation without no_grad, eval mode left on, loss tensors
kept alive, no clipping, weight decay on norms and biases."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator

from trainaudit.diagnostics import Finding, Related
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
from trainaudit.model.loops.identity import identity
from trainaudit.model.loops.ordering import Ordering
from trainaudit.model.loops.records import UNBOUND
from trainaudit.model.module import FunctionNode, ModuleFacts, int_value, keyword, walk_local
from trainaudit.model.project import Project
from trainaudit.payloads import ClipBeforeStep, DetachAccumulated, NoGradFunction, RestoreTrainMode
from trainaudit.registry import ModuleRule, ProjectRule, RuleContext, register
from trainaudit.rules.accumulation import FOREIGN_GRADIENTS, SELF_STEPPING

_NO_GRAD = ("no_grad", "inference_mode")


def _grad_disabled(op: Operation) -> bool:
    return op.under(*_NO_GRAD)


def _decorated_no_grad(analysis: LoopAnalysis, fn: FunctionNode) -> bool:
    return any(analysis.context_name(d).endswith(_NO_GRAD) for d in fn.decorator_list)


def _disables_grad(module: ModuleFacts, fn: FunctionNode) -> bool:
    """``torch.set_grad_enabled(False)`` or ``requires_grad_(False)`` in the function."""
    for node in walk_local(fn.body):
        if isinstance(node, ast.Call):
            name = module.call_name(node) or ""
            if name.endswith("set_grad_enabled") and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value is False:
                return True
    return False


def _callers_disable_grad(module: ModuleFacts, analysis: LoopAnalysis, name: str) -> bool:
    """Every call of a function in this file happens under ``torch.no_grad()`` (and there is one)."""
    calls: list[bool] = []
    for node in module.nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
            protected = False
            for anc in module.ancestors(node):
                if isinstance(anc, ast.With | ast.AsyncWith) and any(
                        analysis.context_name(item.context_expr).endswith(_NO_GRAD) for item in anc.items):
                    protected = True
                    break
                if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
                    protected = _decorated_no_grad(analysis, anc)
                    break
            calls.append(protected)
    return bool(calls) and all(calls)


@register
class EvalWithoutNoGrad(ModuleRule):
    """TA501: a function puts the model in eval mode and runs forward passes that record
    autograd graphs (no ``torch.no_grad()`` / ``torch.inference_mode()``): memory and time
    spent on graphs nobody differentiates."""

    code = "TA501"
    triggers = (".eval()",)

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterable[Finding]:
        analysis = loop_analysis(module)
        for name, fn in module.functions.items():
            if _decorated_no_grad(analysis, fn) or _disables_grad(module, fn):
                continue
            if not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                       and n.func.attr == "eval" for n in walk_local(fn.body)):
                continue
            function_ops = analysis.function_ops(name)
            ops = function_ops.operations
            if any(op.kind == "backward" for op in ops):
                continue  # eval() to freeze dropout/norms while training
            evals = [op for op in ops if op.kind == "eval_mode" and not op.via]
            forwards = [(first, op) for first in evals for op in ops
                        if _evaluates(module, function_ops.ordering, first, op, ops)]
            if not forwards:
                continue
            short = name.rsplit(".", 1)[-1]
            if "." not in name and _callers_disable_grad(module, analysis, short):
                continue
            first, forward = forwards[0]
            message = (f"`{short}` puts `{first.receiver}` in eval mode and runs "
                       f"`{forward.site.text}` with gradients enabled: every forward builds an "
                       "autograd graph nobody uses")
            trains = _may_train(module, analysis, name)
            if trains:
                message += f"; no automatic fix: {trains}, so @torch.no_grad() could break training"
            yield self.report(module, forward.node or fn, message,
                              related=[Related(module.path, first.site.line, first.site.column,
                                               "eval mode here")],
                              payload=None if trains else NoGradFunction(name), fixable=not trains)


def _receiver(op: Operation) -> ast.expr | None:
    """The object an eval/forward call runs on (``model`` in ``model.eval()`` / ``model(x)``)."""
    call = op.node
    if not isinstance(call, ast.Call):
        return None
    if op.kind == "eval_mode" or (isinstance(call.func, ast.Attribute)
                                  and call.func.attr in ("forward", "generate")):
        return call.func.value if isinstance(call.func, ast.Attribute) else None
    return call.func


def _evaluates(module: ModuleFacts, ordering: Ordering, evaluation: Operation, forward: Operation,
               ops: tuple[Operation, ...]) -> bool:
    """``forward`` runs the object put in eval mode by ``evaluation``, on a path after it,
    with gradients on, and no ``train()`` in between (by order: a conservative cut)."""
    if forward.kind != "forward" or forward.grad_mode != "enabled":
        return False
    if (evaluation.order, forward.order) not in ordering.follows:
        return False  # another branch (``self.teacher.eval()`` beside the student's forward)
    if any(t.kind == "train_mode" and evaluation.order < t.order < forward.order for t in ops):
        return False
    evaluated, ran = _receiver(evaluation), _receiver(forward)
    if evaluated is None or ran is None:
        return False
    put, run = (identity(module, evaluated, evaluation.site.function),
                identity(module, ran, forward.site.function))
    return run == put or run.startswith(put + ".")  # a submodule is in eval mode too


# Names of functions a framework (or a training loop) calls to compute a training loss.
_TRAINING_ENTRY = re.compile(r"loss|train|step|fit|forward|update|backward", re.IGNORECASE)
_EVALUATION_NAME = re.compile(r"eval|valid|test|infer|predict|generat|sampl|score|metric", re.IGNORECASE)


def _may_train(module: ModuleFacts, analysis: LoopAnalysis, name: str) -> str:
    """Why decorating ``name`` with no_grad might break training ("" when it cannot)."""
    short = name.rsplit(".", 1)[-1]
    if any(name in loop.helpers for loop in find_training_loops(module)):
        return f"`{short}` is called from a training loop"
    if analysis.file_delegation:
        return f"a framework ({', '.join(sorted(analysis.file_delegation))}) may call `{short}` to train"
    lowered = short.lower()
    evaluation = _EVALUATION_NAME.search(short) and "train" not in lowered and "loss" not in lowered
    if _TRAINING_ENTRY.search(short) and not evaluation:
        return f"`{short}` may compute a training loss"
    forwards = {op.receiver for op in analysis.function_ops(name).operations if op.kind == "forward"}
    evaluated = {op.receiver for op in analysis.function_ops(name).operations if op.kind == "eval_mode"}
    if any(not any(f == e or f.startswith(e + ".") for e in evaluated) for f in forwards):
        return f"`{short}` also runs models it does not put in eval mode"
    return ""


@register
class EvalModeNotRestored(ProjectRule):
    """TA502: the training loop's call tree puts the model in eval mode and nothing puts it
    back in train mode before the next step: dropout and norm statistics stay off for the
    rest. The call tree includes enclosing loops: an ``evaluate(model)`` in the epoch loop
    after the step loop leaves every later epoch in eval mode."""

    code = "TA502"
    families = ("loops",)
    triggers = LOOP_TRIGGERS

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        seen: set[tuple[str, int, int]] = set()
        for loop in project_training_loops(project):
            for op, where, payload in (*_left_in_loop(loop), *_left_by_enclosing(loop)):
                key = (op.site.path, op.site.line, op.site.column)
                if key in seen:
                    continue
                seen.add(key)
                message = (f"`{op.site.text}` runs inside the training loop and nothing in the loop "
                           f"calls `.train()` again: the following steps train in eval mode")
                related = [Related(loop.path, loop.header.line, loop.header.column, "training loop")]
                if where is not loop:
                    message = (f"`{op.site.text}` runs in `{where.header.text}` around the training "
                               "loop and nothing calls `.train()` again before the next step: "
                               "the following epochs train in eval mode")
                    related.append(Related(where.path, where.header.line, where.header.column,
                                           "enclosing loop"))
                    if op.via:
                        related.append(Related(op.via[0].path, op.via[0].line, op.via[0].column,
                                               "evaluation called here"))
                yield self.finding(op.site.path, op.site.span, message, payload=payload,
                                   fixable=payload is not None, related=related)


Left = tuple[Operation, TrainingLoop, RestoreTrainMode | None]


def _left_in_loop(loop: TrainingLoop) -> Iterator[Left]:
    """Eval-mode calls of the loop's own call tree with no ``.train()`` of that model in it."""
    trained = [op.subject for op in loop.forwards if op.grad_mode == "enabled"]
    restored = loop.ops("train_mode")
    for op in loop.ops("eval_mode"):
        if op.subject == UNBOUND or not any(_same_object(op.subject, other) for other in trained):
            continue  # a frozen model (a teacher run under no_grad), or not known
        if any(_may_restore(other, op) for other in restored):
            continue
        yield op, loop, RestoreTrainMode(op.receiver)


def _left_by_enclosing(loop: TrainingLoop) -> Iterator[Left]:
    """Eval-mode calls an enclosing loop makes outside the step loop, after which a step of
    that model can run with no ``.train()`` of it on the way (within one pass of the
    enclosing loop, or before the step loop in its next pass)."""
    for outer in loop.enclosing:
        steps = [op for op in outer.inside(loop) if op.kind == "forward" and op.grad_mode == "enabled"]
        restored = outer.ops("train_mode")
        for op in outer.ops("eval_mode"):
            if loop.header in op.loops or op.subject == UNBOUND:
                continue  # the step loop's own (``_left_in_loop``), or not known
            later = [step for step in steps if _same_object(op.subject, step.subject)
                     and outer.may_run_later(op, step)]
            if not later:
                continue  # another model, or no step after it (evaluated after the last epoch)
            if any(_may_restore(other, op) and (outer.may_follow(op, other) or any(
                    outer.may_follow(other, step) for step in later)) for other in restored):
                continue
            yield op, outer, _restore_after_call(op)


def _may_restore(train: Operation, evaluation: Operation) -> bool:
    """``train`` may be of the model ``evaluation`` put in eval mode (unknown counts)."""
    return train.subject in ("", UNBOUND) or _same_object(evaluation.subject, train.subject)


_PLAIN_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _restore_after_call(op: Operation) -> RestoreTrainMode | None:
    """Restore right after the enclosing loop's statement that leads to the eval call (its
    helper may be shared); no fix when that statement is in another file or the model has
    no plain name there."""
    if not op.via:
        return RestoreTrainMode(op.receiver)  # in the enclosing loop's body itself
    call = op.via[0]
    if call.path != op.site.path or not _PLAIN_NAME.match(op.subject):
        return None
    return RestoreTrainMode(op.subject, after=(call.line, call.column))


# ``.to(device)``, ``.cuda()``, ``.module``: calls and attributes that leave the same model.
_SAME_MODEL_SUFFIX = re.compile(
    r"\.(?:to|cuda|cpu|float|half|bfloat16|double|train|eval|requires_grad_)\([^()]*\)$|\.module$")


def _model_text(text: str) -> str:
    while True:
        shorter = _SAME_MODEL_SUFFIX.sub("", text)
        if shorter == text:
            return text
        text = shorter


def _same_object(a: str, b: str) -> bool:
    """Receiver texts of one model (``m``, ``m.module``, ``m.to(device)`` are one)."""
    return _model_text(a) == _model_text(b)


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
    return fn is not None and _callers_disable_grad(module, analysis, fn.name)


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
            head = step.site.text.split("(")[0]
            payload = ClipBeforeStep(
                model=forward.receiver, optimizer=step.receiver,
                scaler=head.rsplit(".", 1)[0] if "scaler" in head else None,
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
