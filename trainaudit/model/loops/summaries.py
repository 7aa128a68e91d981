"""Per-file loop summaries, and training loops across files (imported helpers inlined)."""

from __future__ import annotations

import ast
import re
import weakref
from dataclasses import dataclass, field, replace

from trainaudit.model.loops.analysis import _cached_loops, is_training_loop, loop_analysis
from trainaudit.model.loops.arguments import call_arguments, parameter_objects, rebound
from trainaudit.model.loops.criteria import criteria_passed
from trainaudit.model.loops.ordering import Ordering, merged_ordering
from trainaudit.model.loops.patterns import LOOP_REQUIRES, LOOP_TRIGGERS
from trainaudit.model.loops.records import (
    ExternalCall,
    FunctionOps,
    LossSite,
    Operation,
    TrainingLoop,
)
from trainaudit.model.module import ModuleFacts
from trainaudit.model.project import ModuleSummary, Project
from trainaudit.registry import summarizer


@dataclass(frozen=True)
class LoopFileFacts:
    """The loop facts of one file that other files' loops need (picklable)."""

    training_loops: tuple[TrainingLoop, ...]
    candidate_loops: tuple[TrainingLoop, ...]  # loops that may train through an imported helper
    functions: dict[str, FunctionOps]  # top-level functions with training operations
    targets_gpu: bool = False  # the file can put work on a GPU (see ``FileScan.traits``)
    # Criteria this file passes to functions and methods of other modules
    # (``criteria.criteria_passed``): callee qualified → position or keyword → reduction.
    criteria_passed: dict[str, dict[str, str]] = field(default_factory=dict)


def _portable(module: ModuleFacts, op: Operation) -> Operation:
    """The operation as another file's loop needs it: no node; a clip recognised by the name
    of an imported function keeps the call, so the project phase can read the function."""
    call = op.node
    if op.kind == "clip" and isinstance(call, ast.Call) and op.imported is None:
        func = call.func
        root = func
        while isinstance(root, ast.Attribute):
            root = root.value
        qualified = module.call_name(call) or ""
        # A library's clip (``torch.nn.utils``) has no summary; an object's (``accelerator``)
        # is no imported function. Whether the name is a checked file's is the project's call.
        if isinstance(root, ast.Name) and module.is_imported(root.id) \
                and not qualified.startswith("torch."):
            return replace(op, node=None, imported=ExternalCall(
                qualified, op.site, op.guards, op.contexts, op.loops, op.via, op.order,
                call_arguments(module, call, op.site.function)))
    return replace(op, node=None)


def _strip_nodes(module: ModuleFacts, loop: TrainingLoop) -> TrainingLoop:
    return replace(loop, node=None, operations=tuple(_portable(module, op) for op in loop.operations),
                   enclosing=tuple(_strip_nodes(module, outer) for outer in loop.enclosing))


# A file with only an evaluation helper (``model.eval()``) or a clipping helper is
# summarised too: a loop in another file may call it.
@summarizer("loops", triggers=(*LOOP_TRIGGERS, ".eval()", "clip_grad", "_loss(", "Loss(",
                               "cross_entropy("),
            requires=(*LOOP_REQUIRES, (r"\.eval\(\)",), (r"clip_grad",), (r"_loss\(",),
                      (r"Loss\(",), (r"cross_entropy\(",)))
def summarize_loops(module: ModuleFacts) -> LoopFileFacts:
    """Per-file summary: training loops, candidate loops and helpers other files may import."""
    training, candidates = _cached_loops(module)
    analysis = loop_analysis(module)
    functions: dict[str, FunctionOps] = {}
    for name in _summarised(module):
        ops = analysis.function_ops(name)
        if ops.operations or ops.external_calls:
            functions[name] = replace(ops, operations=tuple(_portable(module, op) for op in ops.operations))
    return LoopFileFacts(tuple(_strip_nodes(module, loop) for loop in training),
                         tuple(_strip_nodes(module, loop) for loop in candidates), functions,
                         "gpu" in analysis.traits, criteria_passed(module))


def _summarised(module: ModuleFacts) -> list[str]:
    """Top-level functions a loop in another file could call to train or to evaluate: those
    whose call tree has a backward or whose text steps, clips or evaluates something, and
    those that call one of them (``evaluate`` entering ``with evaluating(model):``, whose
    ``model.eval()`` is in the helper)."""
    analysis = loop_analysis(module)
    texts = {name: analysis._text(fn) for name, fn in module.functions.items() if "." not in name}
    chosen = {name for name, text in texts.items()
              if name in analysis.backward_functions or ".step(" in text or ".eval()" in text
              or "clip_grad" in text}
    calls = {name: set(_CALLED.findall(text)) for name, text in texts.items() if name not in chosen}
    grown = True
    while grown:
        callers = {name for name, called in calls.items() if name not in chosen and called & chosen}
        chosen |= callers
        grown = bool(callers)
    return [name for name in texts if name in chosen]


# A name called in a function's text (``evaluating(`` in ``with evaluating(model):``).
_CALLED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")


def helper_loss(project: Project, loss: LossSite, path: str) -> LossSite:
    """A loss the plain result of a function imported from another checked file, read
    with that function's own verdict (divided or not, how reduced); a loss made by calling
    a parameter of a function of ``path``'s file, read as the criterion every caller in
    another file passes there (a torch loss: not divided); else as it is."""
    if loss.scaled is not None:
        return loss
    if loss.helper is None:
        return _passed_criterion(project, loss, path)
    resolved = project.resolve_symbol(loss.helper)
    returned = _returned_loss(project, *resolved) if resolved is not None else None
    if returned is None:
        return loss
    return replace(loss, scaled=returned.scaled, divisor=returned.divisor,
                   reduction=returned.reduction)


def _imported_helper(project: Project, call: ExternalCall) -> tuple[str, FunctionOps] | None:
    """(module name, operations) of the checked function an imported call runs."""
    resolved = project.resolve_symbol(call.qualified)
    facts = project.by_path[resolved[0].path].facts.get("loops") if resolved else None
    helper = facts.functions.get(resolved[1]) if isinstance(facts, LoopFileFacts) and resolved else None
    return (resolved[0].module_name, helper) if helper is not None and resolved is not None else None


def _merge_external(loop: TrainingLoop, project: Project) -> TrainingLoop:
    """Inline imported helpers of a loop from their files' summaries (a clip named after
    an imported function too: ``clip_gradients`` runs whatever that function does)."""
    Event = Operation | ExternalCall
    keyed: list[tuple[tuple[int, int], Event]] = []
    calls = list(loop.external_calls)
    for op in loop.operations:
        if op.imported is not None and _imported_helper(project, op.imported) is not None:
            calls.append(op.imported)
        else:
            keyed.append(((op.order, 0), op))
    inlined: dict[int, Ordering] = {}
    helpers = list(loop.helpers)
    for call in calls:
        found = _imported_helper(project, call)
        if found is None:
            keyed.append(((call.order, 0), call))
            continue
        module_name, helper = found
        if f"{module_name}.{helper.name}" not in helpers:
            helpers.append(f"{module_name}.{helper.name}")
        inlined[call.order] = helper.ordering
        objects = parameter_objects(helper.positional, helper.params, False, call.arguments)
        for op in helper.operations:
            bound = rebound(op.subject, objects) if op.bound else None
            keyed.append(((call.order, op.order), replace(
                op, guards=(*call.guards, *op.guards),
                contexts=(*call.contexts, *helper.decorators, *op.contexts),
                loops=(*call.loops, *op.loops), via=(*call.via, call.site, *op.via),
                bound=op.bound if bound is None else bound)))
    keyed.sort(key=lambda item: item[0])
    renumber = {key: index + 1 for index, (key, _) in enumerate(keyed)}
    events = [replace(event, order=renumber[key]) for key, event in keyed]
    ordering = (merged_ordering(loop.ordering, inlined, renumber)
                if loop.ordering is not None else None)
    later = merged_ordering(loop.later, inlined, renumber) if loop.later is not None else None
    return replace(loop, operations=tuple(e for e in events if isinstance(e, Operation)),
                   external_calls=tuple(e for e in events if isinstance(e, ExternalCall)),
                   helpers=tuple(helpers), ordering=ordering, later=later,
                   enclosing=tuple(_merged(outer, project) for outer in loop.enclosing))


def _merged(loop: TrainingLoop, project: Project) -> TrainingLoop:
    """The loop with imported helpers inlined, in it and in its enclosing loops."""
    if any(record.external_calls or any(op.imported for op in record.operations)
           for record in (loop, *loop.enclosing)):
        return _merge_external(loop, project)
    return loop


_PROJECT_CACHE: weakref.WeakKeyDictionary[Project, list[TrainingLoop]] = weakref.WeakKeyDictionary()


def project_training_loops(project: Project) -> list[TrainingLoop]:
    """Every training loop of the checked tree, imported helpers inlined (records, no nodes)."""
    if project in _PROJECT_CACHE:
        return _PROJECT_CACHE[project]
    loops: list[TrainingLoop] = []
    epoch_loops: list[TrainingLoop] = []  # candidates that only run another file's loop
    for _summary, facts in project.facts("loops"):
        if not isinstance(facts, LoopFileFacts):
            continue
        for loop in facts.training_loops:
            loops.append(_merged(loop, project))
        for loop in facts.candidate_loops:
            merged = _merge_external(loop, project)
            if is_training_loop(merged):
                loops.append(merged)
            elif merged.later is not None:
                epoch_loops.append(merged)
    loops = [_enclosed_across_files(loop, epoch_loops) for loop in loops]
    _PROJECT_CACHE[project] = loops
    return loops


def _enclosed_across_files(loop: TrainingLoop, epoch_loops: list[TrainingLoop]) -> TrainingLoop:
    """The loop with the loops of other files whose call tree contains it (``for epoch:
    train_one_epoch(...)`` where ``train_one_epoch`` is imported)."""
    around = tuple(outer for outer in epoch_loops if outer.path != loop.path and outer.inside(loop))
    return replace(loop, enclosing=(*loop.enclosing, *around)) if around else loop


def targets_gpu(project: Project, loop: TrainingLoop) -> bool:
    """The loop's file, or a file whose helper it runs, can put work on a GPU (code that
    only runs on a CPU gets no GPU advice)."""
    if "gpu" in loop.traits:
        return True
    paths = {op.site.path for op in loop.operations} - {loop.path}
    for path in paths:
        summary = project.by_path.get(path)
        facts = summary.facts.get("loops") if summary is not None else None
        if isinstance(facts, LoopFileFacts) and facts.targets_gpu:
            return True
    return False


def _returned_loss(project: Project, summary: ModuleSummary, name: str) -> LossSite | None:
    """Whether the top-level function ``name`` of ``summary``'s file returns a divided
    loss, and how it is reduced: read on demand, once per project (a loop's loss the plain
    result of an imported function is rare; reading every function of every file in phase 1
    was not)."""
    def read() -> LossSite | None:
        module = project.module_of(summary) if "." not in name else None
        return loop_analysis(module).returned_loss(name) if module is not None else None
    return project.cached(f"returned-loss:{summary.path}:{name}", read)


def _passed_criterion(project: Project, loss: LossSite, path: str) -> LossSite:
    """``loss`` read as the criterion callers in other files pass to the parameter its
    callable is (one reduction among them all, else as it is)."""
    if not loss.parameters:
        return loss
    reductions: set[str] = set()
    for _summary, facts in project.facts("loops"):
        if not isinstance(facts, LoopFileFacts):
            continue
        for callee, slots in facts.criteria_passed.items():
            resolved = project.resolve_symbol(callee)
            if resolved is None or resolved[0].path != path:
                continue
            for function, index, name in loss.parameters:
                if resolved[1] == function and (reduction := slots.get(str(index), slots.get(name))):
                    reductions.add(reduction)
    if len(reductions) != 1:
        return loss
    reduction = reductions.pop()
    return replace(loss, scaled=False,
                   reduction="mean" if reduction == "sum" and loss.per_element else reduction)
