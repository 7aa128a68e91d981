"""Evaluation in a training script (TA501, TA502): forwards in eval mode that build
autograd graphs, and eval mode left on for the steps that follow."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator

from trainaudit.diagnostics import Finding, Related
from trainaudit.model.loops import (
    LOOP_TRIGGERS,
    LoopAnalysis,
    Operation,
    TrainingLoop,
    find_training_loops,
    loop_analysis,
    project_training_loops,
)
from trainaudit.model.loops.losses import LOSS_FUNCTIONS
from trainaudit.model.loops.ordering import Ordering
from trainaudit.model.loops.records import UNBOUND
from trainaudit.model.module import FunctionNode, ModuleFacts, walk_local
from trainaudit.model.project import Project
from trainaudit.payloads import NoGradFunction, RestoreTrainMode
from trainaudit.registry import ModuleRule, ProjectRule, RuleContext, register

NO_GRAD = ("no_grad", "inference_mode")


def decorated_no_grad(analysis: LoopAnalysis, fn: FunctionNode) -> bool:
    """The function is decorated ``@torch.no_grad()`` / ``@torch.inference_mode()``."""
    return any(analysis.context_name(d).endswith(NO_GRAD) for d in fn.decorator_list)


def _disables_grad(module: ModuleFacts, fn: FunctionNode) -> bool:
    """``torch.set_grad_enabled(False)`` or ``requires_grad_(False)`` in the function."""
    for node in walk_local(fn.body):
        if isinstance(node, ast.Call):
            name = module.call_name(node) or ""
            if name.endswith("set_grad_enabled") and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value is False:
                return True
    return False


def _calls_of(module: ModuleFacts, name: str) -> list[ast.Call]:
    """This file's calls of a function or method by its short name (``f(...)``,
    ``self.f(...)``)."""
    return [node for node in module.nodes if isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == name)
        or (isinstance(node.func, ast.Attribute) and node.func.attr == name
            and isinstance(node.func.value, ast.Name) and node.func.value.id in ("self", "cls")))]


def callers_disable_grad(module: ModuleFacts, analysis: LoopAnalysis, name: str,
                          depth: int = 0) -> bool:
    """Every call of a function in this file happens without gradients (and there is one):
    under ``torch.no_grad()``, in a function decorated so, or in a function whose own
    callers all run it so (a few levels up: ``@inference_mode`` on the metric that calls
    the sampler that calls the helper)."""
    calls = _calls_of(module, name)
    if not calls or depth > 3:
        return False
    for call in calls:
        protected = False
        for anc in module.ancestors(call):
            if isinstance(anc, ast.With | ast.AsyncWith) and any(
                    analysis.context_name(item.context_expr).endswith(NO_GRAD) for item in anc.items):
                protected = True
                break
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
                protected = decorated_no_grad(analysis, anc) or (
                    anc.name != name and callers_disable_grad(module, analysis, anc.name,
                                                               depth + 1))
                break
        if not protected:
            return False
    return True


def _computes_loss(module: ModuleFacts, fn: FunctionNode) -> bool:
    """The function computes a loss with a torch loss function (a distillation loss with a
    teacher in eval mode): part of a training step, run every step wherever it is called."""
    names = (module.call_name(node) for node in walk_local(fn.body) if isinstance(node, ast.Call))
    return any(name is not None and name.startswith("torch.nn.functional.")
               and name.rsplit(".", 1)[-1] in LOSS_FUNCTIONS for name in names)


def _repeated(module: ModuleFacts, fn: FunctionNode, forward: ast.AST | None) -> bool:
    """The forward runs many times: inside a loop of its function, or its function is
    called inside a loop of this file. A single forward otherwise (a check after loading a
    checkpoint, a sample for a log) builds one graph that is freed at once: not worth a
    warning."""
    if forward is None:
        return True
    for anc in module.ancestors(forward):
        if anc is fn:
            break
        if isinstance(anc, ast.For | ast.AsyncFor | ast.While | ast.comprehension
                      | ast.ListComp | ast.GeneratorExp | ast.DictComp | ast.SetComp):
            return True
    calls = _calls_of(module, fn.name)
    return any(isinstance(anc, ast.For | ast.AsyncFor | ast.While | ast.ListComp
                          | ast.GeneratorExp | ast.DictComp | ast.SetComp)
               for call in calls for anc in module.ancestors(call))


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
            if decorated_no_grad(analysis, fn) or _disables_grad(module, fn):
                continue
            if not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                       and n.func.attr == "eval" for n in walk_local(fn.body)):
                continue
            function_ops = analysis.function_ops(name, own=True)
            ops = function_ops.operations
            if any(op.kind == "backward" for op in ops):
                continue  # eval() to freeze dropout/norms while training
            evals = [op for op in ops if op.kind == "eval_mode" and not op.via]
            forwards = [(first, op) for first in evals for op in ops
                        if _evaluates(module, function_ops.ordering, first, op, ops)]
            if not forwards:
                continue
            short = name.rsplit(".", 1)[-1]
            if callers_disable_grad(module, analysis, short):
                continue
            first, forward = forwards[0]
            if not _computes_loss(module, fn) and not _repeated(module, fn, forward.node):
                continue
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
    if UNBOUND in (evaluation.subject, forward.subject):
        return False
    # Objects as the object model names them in the walked function (a helper's parameter
    # by its argument); a submodule is in eval mode too.
    return _same_object(evaluation.subject, forward.subject) or \
        forward.subject.startswith(evaluation.subject + ".")


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
            for op, where, payload in (*_left_in_loop(project, loop), *_left_by_enclosing(loop)):
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


def _left_in_loop(project: Project, loop: TrainingLoop) -> Iterator[Left]:
    """Eval-mode calls of the loop's own call tree with no ``.train()`` of that model in it."""
    trained = [op.subject for op in loop.forwards if op.grad_mode == "enabled"]
    restored = loop.ops("train_mode")
    for op in loop.ops("eval_mode"):
        if op.subject == UNBOUND or not any(_same_object(op.subject, other) for other in trained):
            continue  # a frozen model (a teacher run under no_grad), or not known
        restoring = [other for other in restored if _may_restore(other, op)]
        if any(not loop.may_skip(op, other) for other in restoring):
            continue
        # A restore is there but an exit skips it (an early ``return``): one more at the
        # block's end would be skipped alike, so no fix.
        fixable = not restoring and not _block_end_skippable(project, op)
        yield op, loop, RestoreTrainMode(op.receiver) if fixable else None


_LEAVES = (ast.Return, ast.Break, ast.Continue, ast.Raise)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _may_leave(node: ast.AST, in_loop: bool = False) -> bool:
    """A ``return`` outside nested scopes, or a ``break``/``continue`` outside nested loops."""
    if isinstance(node, ast.Return) or (isinstance(node, ast.Break | ast.Continue) and not in_loop):
        return True
    if isinstance(node, _SCOPES):
        return False
    inner = in_loop or isinstance(node, ast.For | ast.AsyncFor | ast.While)
    return any(_may_leave(child, inner) for child in ast.iter_child_nodes(node))


def _block_end_skippable(project: Project, op: Operation) -> bool:
    """The fix's restore goes at the end of the block of the ``.eval()`` statement (before a
    final ``return``): true when a statement between may leave the block first, or when the
    statement is not found (the fix cannot be proven to run)."""
    summary = project.by_path.get(op.site.path)
    module = project.module_of(summary) if summary is not None else None
    if module is None:
        return True
    call = next((n for n in module.nodes_by_type.get(ast.Call, ())
                 if module.span(n) == op.site.span), None)
    stmt = next((a for a in module.ancestors(call) if isinstance(a, ast.stmt)), None) \
        if call is not None else None
    parent = module.parents.get(stmt) if stmt is not None else None
    block = next((b for b in (getattr(parent, f, None) for f in ("body", "orelse", "finalbody"))
                  if isinstance(b, list) and stmt in b), None)
    if block is None:
        return True
    following = block[block.index(stmt) + 1:]
    if following and isinstance(following[-1], _LEAVES):
        following = following[:-1]  # the restore goes before it
    return any(_may_leave(s) for s in following)


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
            if any(_may_restore(other, op) and not outer.may_skip(op, other) and (
                    outer.may_follow(op, other) or any(outer.may_follow(other, step) for step in later))
                   for other in restored):
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


def _same_object(a: str, b: str) -> bool:
    """Two operations' subjects are one model: the object model names every spelling of an
    object alike (``m``, ``m.module``, ``m.to(device)``, ``self.m`` set from ``m``)."""
    return a == b
