"""The walker: a loop's call tree in execution order, helpers inlined."""

from __future__ import annotations

import ast
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from trainaudit.model.loops.arguments import (
    call_arguments,
    own_objects_unbound,
    parameter_objects,
    positional_parameters,
    rebound,
    rebound_arguments,
)
from trainaudit.model.loops.batch import batch_size_of
from trainaudit.model.loops.cfg import FlowGraph
from trainaudit.model.loops.losses import LossReader
from trainaudit.model.loops.ordering import EventLog, Ordering
from trainaudit.model.loops.patterns import (
    TRAINY,
    counted_windows,
    looks_like_accumulation_test,
    terminates,
)
from trainaudit.model.loops.records import (
    ExternalCall,
    FunctionOps,
    Guard,
    LoopNode,
    Operation,
    Site,
    TrainingLoop,
)
from trainaudit.model.module import ModuleFacts, child_blocks, parameter_names, walk_local
from trainaudit.model.objects import file_objects


@dataclass(frozen=True)
class WalkState:
    function: str
    guards: tuple[Guard, ...] = ()
    contexts: tuple[str, ...] = ()
    loops: tuple[Site, ...] = ()
    via: tuple[Site, ...] = ()
    visiting: frozenset[str] = frozenset()
    anchor: ast.stmt | None = None  # the statement of ``function`` being walked
    log: EventLog = field(default_factory=EventLog, compare=False)  # shared by one walk


@dataclass(frozen=True)
class FunctionEvents:
    """A function's call tree relative to its own body, as the walker caches it."""

    operations: list[Operation]
    external: list[ExternalCall]
    helpers: list[str]
    ordering: Ordering
    own_operations: list[Operation]  # objects named as the function itself names them


class LoopAnalysis(LossReader):
    """Builds the loop model of one file. Use ``find_training_loops``; this class is shared
    with the summarizer so a file is analysed once."""

    def __init__(self, module: ModuleFacts) -> None:
        super().__init__(module)
        self._order = 0
        self._functions: dict[str, FunctionEvents] = {}
        self._graphs: dict[str, FlowGraph] = {}

    def flow_graph(self, function: str) -> FlowGraph:
        """The control-flow graph of a function of this file ("" is the module body)."""
        if function not in self._graphs:
            fn = self.module.functions.get(function)
            self._graphs[function] = FlowGraph.of(fn.body if fn is not None else self.module.tree.body)
        return self._graphs[function]

    def _next(self) -> int:
        self._order += 1
        return self._order

    def _event(self, state: WalkState) -> int:
        """The next event's order, logged with the statement it happens in."""
        order = self._next()
        state.log.record(order, state.anchor)
        return order

    def walk(self, body: Sequence[ast.stmt], state: WalkState,
             ops: list[Operation], external: list[ExternalCall], helpers: list[str]) -> None:
        """Collect the operations of a block, following local helpers."""
        guards = state.guards
        for stmt in body:
            local = replace(state, guards=guards, anchor=stmt)
            self._statement(stmt, local, ops, external, helpers)
            if (isinstance(stmt, ast.If) and terminates(stmt.body) and not stmt.orelse):
                guard = Guard(self.site(stmt.test, state.function), True,
                              looks_like_accumulation_test(stmt.test))
                guards = (*guards, guard)

    def _statement(self, stmt: ast.stmt, state: WalkState, ops: list[Operation],
                   external: list[ExternalCall], helpers: list[str]) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return
        if isinstance(stmt, ast.If):
            self._expression(stmt.test, state, ops, external, helpers)
            accumulation = looks_like_accumulation_test(stmt.test)
            test_site = self.site(stmt.test, state.function)
            self.walk(stmt.body, replace(state, guards=(*state.guards, Guard(test_site, False, accumulation))),
                      ops, external, helpers)
            if stmt.orelse:
                self.walk(stmt.orelse, replace(state, guards=(*state.guards, Guard(test_site, True, accumulation))),
                          ops, external, helpers)
            return
        if isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
            head: ast.expr = stmt.test if isinstance(stmt, ast.While) else stmt.iter
            self._expression(head, state, ops, external, helpers)
            inner = replace(state, loops=(*state.loops, self._loop_site(stmt, state.function)))
            self.walk(stmt.body, inner, ops, external, helpers)
            self.walk(stmt.orelse, state, ops, external, helpers)
            return
        if isinstance(stmt, ast.With | ast.AsyncWith):
            names = []
            for item in stmt.items:
                self._expression(item.context_expr, state, ops, external, helpers)
                names.append(self.context_name(item.context_expr))
            self.walk(stmt.body, replace(state, contexts=(*state.contexts, *names)), ops, external, helpers)
            return
        if isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            self.walk(stmt.body, state, ops, external, helpers)  # type: ignore[attr-defined]
            for handler in stmt.handlers:  # type: ignore[attr-defined]
                self.walk(handler.body, state, ops, external, helpers)
            self.walk(stmt.orelse, state, ops, external, helpers)  # type: ignore[attr-defined]
            self.walk(stmt.finalbody, state, ops, external, helpers)  # type: ignore[attr-defined]
            return
        if isinstance(stmt, ast.Match):
            self._expression(stmt.subject, state, ops, external, helpers)
            for case in stmt.cases:
                self.walk(case.body, state, ops, external, helpers)
            return
        assigned = self.assignment_op(stmt)
        if assigned is not None:
            kind, receiver = assigned
            ops.append(Operation(kind, self.site(stmt, state.function), receiver, state.guards,
                                 state.contexts, state.loops, state.via, self._event(state), node=stmt))
        self._expression(stmt, state, ops, external, helpers)

    def _expression(self, node: ast.AST, state: WalkState, ops: list[Operation],
                    external: list[ExternalCall], helpers: list[str]) -> None:
        calls = [sub for sub in walk_local([node]) if isinstance(sub, ast.Call)]  # type: ignore[list-item]
        calls.sort(key=lambda c: (c.end_lineno or 0, c.end_col_offset or 0))
        for call in calls:
            self._call(call, state, ops, external, helpers)

    def _call(self, call: ast.Call, state: WalkState, ops: list[Operation],
              external: list[ExternalCall], helpers: list[str]) -> None:
        module = self.module
        callee = module.local_callee(call, state.function) if state.function or isinstance(
            call.func, ast.Name) else None
        if callee is None and isinstance(call.func, ast.Name) and call.func.id in module.functions:
            callee = call.func.id
        if (callee is None and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
                and call.func.value.id == "self" and "." in state.function):
            callee = self.method_aliases.get(f"{state.function.rsplit('.', 1)[0]}.{call.func.attr}")
        if callee is not None:
            if callee in state.visiting:
                return
            fn = module.functions[callee]
            inlined = self._function_events(callee, state.visiting)
            callee_ops, callee_external = inlined.operations, inlined.external
            for helper in (callee, *inlined.helpers):
                if helper not in helpers:
                    helpers.append(helper)
            if not callee_ops and not callee_external:
                return
            decorators = tuple(self.context_name(d) for d in fn.decorator_list)
            contexts = (*state.contexts, *decorators)
            via = (*state.via, self.site(call, state.function))
            events: list[Operation | ExternalCall] = [*callee_ops, *callee_external]
            events.sort(key=lambda event: event.order)
            objects = parameter_objects(positional_parameters(fn), parameter_names(fn),
                                        isinstance(call.func, ast.Attribute),
                                        call_arguments(module, call, state.function))
            mapping: dict[int, int] = {}
            for event in events:
                moved = replace(event, guards=(*state.guards, *event.guards),
                                contexts=(*contexts, *event.contexts), loops=(*state.loops, *event.loops),
                                via=(*via, *event.via), order=self._next())
                mapping[event.order] = moved.order
                if isinstance(moved, Operation):
                    bound = rebound(moved.subject, objects) if moved.bound else None
                    ops.append(replace(moved, bound=bound) if bound is not None else moved)
                else:
                    external.append(replace(moved, arguments=rebound_arguments(moved.arguments, objects)))
            state.log.inline(mapping, state.anchor, inlined.ordering)
            return
        classified = self.classify(call, state.function)
        if classified is not None:
            kind, receiver, framework, loss_expr = classified
            loss = self.loss_site(loss_expr, state.function) if kind == "backward" else None
            receiver_kind = file_objects(module).kind(call.func.value, state.function) \
                if kind == "zero_grad" and isinstance(call.func, ast.Attribute) else ""
            ops.append(Operation(kind, self.site(call, state.function), receiver, state.guards,
                                 state.contexts, state.loops, state.via, self._event(state), framework,
                                 loss, self._object_of(kind, call, state.function), node=call,
                                 receiver_kind=receiver_kind))
            return
        if isinstance(call.func, ast.Name) and module.is_imported(call.func.id):
            qualified = module.qualname(call.func) or call.func.id
            if not qualified.startswith(("torch.", "numpy.", "math.", "os.", "time.", "builtins.")):
                external.append(ExternalCall(qualified, self.site(call, state.function), state.guards,
                                             state.contexts, state.loops, state.via, self._event(state),
                                             call_arguments(module, call, state.function)))

    def _object_of(self, kind: str, call: ast.Call, function: str) -> str:
        """The object name of the model a forward or a mode switch runs on ("" for other kinds)."""
        func = call.func
        if kind == "forward" and not (isinstance(func, ast.Attribute) and func.attr == "forward"):
            return file_objects(self.module).name(func, function)
        if kind in ("forward", "eval_mode", "train_mode") and isinstance(func, ast.Attribute):
            return file_objects(self.module).name(func.value, function)
        return ""


    # -- loops --------------------------------------------------------------------

    def all_loops(self) -> Iterator[tuple[str, LoopNode, tuple[LoopNode, ...]]]:
        """(function, loop, enclosing loops in that function) for every loop of the file."""
        def visit(body: Iterable[ast.stmt], function: str, outer: tuple[LoopNode, ...]
                  ) -> Iterator[tuple[str, LoopNode, tuple[LoopNode, ...]]]:
            for stmt in body:
                if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                if isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
                    yield function, stmt, outer
                    yield from visit(stmt.body, function, (*outer, stmt))
                    yield from visit(stmt.orelse, function, outer)
                    continue
                for block in child_blocks(stmt):
                    yield from visit(block, function, outer)

        yield from visit(self.module.tree.body, "", ())
        for name, fn in self.module.functions.items():
            yield from visit(fn.body, name, ())

    def loop_record(self, function: str, loop: LoopNode, outer: tuple[LoopNode, ...],
                    later: bool = False) -> TrainingLoop:
        """The loop with its whole call tree, whether or not it trains (``later``: with the
        relation over any later time, for an enclosing loop)."""
        self._order = 0
        ops: list[Operation] = []
        external: list[ExternalCall] = []
        helpers: list[str] = []
        visiting = frozenset({function}) if function else frozenset()
        log = EventLog()
        self.walk(loop.body, WalkState(function, visiting=visiting, log=log), ops, external, helpers)
        module = self.module
        is_while = isinstance(loop, ast.While)
        return TrainingLoop(
            header=self._loop_site(loop, function),
            kind="while" if is_while else "for",
            target="" if isinstance(loop, ast.While) else module.segment(loop.target),
            iterable=module.segment(loop.test if isinstance(loop, ast.While) else loop.iter),
            operations=tuple(ops),
            external_calls=tuple(external),
            helpers=tuple(helpers),
            outer_loops=tuple(self._loop_site(o, function) for o in outer),
            batch_size=None,  # filled in for training loops only (see ``with_training_facts``)
            file_delegation=self.file_delegation,
            ddp=self.ddp,
            ordering=log.ordering(self.flow_graph(function), avoid=loop),
            later=log.ordering(self.flow_graph(function), avoid=None) if later else None,
            traits=self.traits,
            model_wrappers=self._model_wrappers(ops),
            node=loop,
        )

    def _model_wrappers(self, ops: list[Operation]) -> frozenset[str]:
        """What the models run forward in the loop are wrapped in (``DistributedDataParallel``,
        ``FullyShardedDataParallel``, ``compile``), followed by object, not by file."""
        found: set[str] = set()
        for op in ops:
            if op.kind == "forward" and isinstance(op.node, ast.Call):
                found.update(file_objects(self.module).wrappers(op.node.func, op.site.function))
        return frozenset(found)

    def with_training_facts(self, record: TrainingLoop) -> TrainingLoop:
        """The record with its batch size and the accumulation windows it counts itself
        resolved (costly, so only for training loops)."""
        loop = record.node
        if loop is None:
            return record
        used = self._names_read(loop, list(record.helpers))
        windows = tuple((line, self.module.segment(size)) for line, size in counted_windows(loop.body))
        return replace(record, batch_size=batch_size_of(self.module, loop, record.header.function, used),
                       counted_windows=windows)

    def _names_read(self, loop: LoopNode, helpers: list[str]) -> frozenset[str]:
        """Names and attribute names (``args.block_size``) the loop's call tree reads."""
        bodies: list[ast.AST] = [loop, *(self.module.functions[h] for h in helpers)]
        found: set[str] = set()
        for body in bodies:
            for n in ast.walk(body):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                    found.add(n.id)
                elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
                    found.add(n.attr)
        return frozenset(found)

    def _function_events(self, name: str, visiting: frozenset[str] = frozenset()) -> FunctionEvents:
        """A function's operations relative to its own body, computed once per file (each
        caller inlines them with its own guards and contexts)."""
        cached = self._functions.get(name)
        if cached is not None:
            return cached
        saved = self._order
        self._order = 0
        ops: list[Operation] = []
        external: list[ExternalCall] = []
        helpers: list[str] = []
        fn = self.module.functions[name]
        log = EventLog()
        self.walk(fn.body, WalkState(name, visiting=visiting | {name}, log=log), ops, external, helpers)
        self._order = saved
        own = ops
        ops, external = own_objects_unbound(fn, ops, external)
        restores = frozenset(op.order for op in ops if op.kind == "train_mode")
        events = FunctionEvents(ops, external, helpers, log.ordering(self.flow_graph(name), None, restores), own)
        self._functions[name] = events
        return events

    def function_ops(self, name: str, own: bool = False) -> FunctionOps:
        """A function's call tree relative to its own body: what a caller in another file gets
        (the objects the function makes itself ``UNBOUND``), or with ``own`` the objects as
        the function names them."""
        fn = self.module.functions[name]
        events = self._function_events(name)
        decorators = tuple(self.context_name(d) for d in fn.decorator_list)
        operations = events.own_operations if own else events.operations
        return FunctionOps(name, tuple(sorted(parameter_names(fn))), tuple(operations),
                           tuple(events.external), decorators, events.ordering,
                           positional_parameters(fn))



def is_training_loop(loop: TrainingLoop) -> bool:
    """Backward and an optimizer step in its call tree, not both inside one nested loop."""
    for backward in loop.ops("backward"):
        for step in loop.ops("optimizer_step"):
            if backward.loops[:1] != step.loops[:1] or not backward.loops:
                return True
    return False


def find_training_loops(module: ModuleFacts) -> list[TrainingLoop]:
    """Every training loop of a file, following helpers defined in the same file."""
    return _cached_loops(module)[0]


_ANALYSES: weakref.WeakKeyDictionary[ModuleFacts, LoopAnalysis] = weakref.WeakKeyDictionary()


def loop_analysis(module: ModuleFacts) -> LoopAnalysis:
    """The file's shared ``LoopAnalysis`` (function call trees are computed once per file)."""
    if module not in _ANALYSES:
        _ANALYSES[module] = LoopAnalysis(module)
    return _ANALYSES[module]


def _analyse(module: ModuleFacts) -> tuple[list[TrainingLoop], list[TrainingLoop]]:
    """(training loops, loops that call imported functions and may train through them)."""
    analysis = loop_analysis(module)
    training: list[TrainingLoop] = []
    candidates: list[TrainingLoop] = []
    walked: list[tuple[TrainingLoop, tuple[str, LoopNode, tuple[LoopNode, ...]]]] = []
    for function, loop, outer in analysis.all_loops():
        if not analysis.may_train(function, loop):
            continue
        record = analysis.loop_record(function, loop, outer)
        walked.append((record, (function, loop, outer)))
        if is_training_loop(record):
            training.append(analysis.with_training_facts(record))
        elif record.external_calls and any(may_train(c) for c in record.external_calls):
            # Walked again with ``later``: once its imported helpers are inlined it may turn
            # out to be an epoch loop around another file's training loop.
            candidates.append(analysis.with_training_facts(
                analysis.loop_record(function, loop, outer, later=True)))
    # An epoch loop around a training loop is not itself one.
    inner_headers = {o for loop in training for o in loop.outer_loops}
    training = [loop for loop in training if loop.header not in inner_headers
                and not _contains_training_loop(loop, training)]
    return _with_enclosing(analysis, training, walked), _with_enclosing(analysis, candidates, walked)


def _with_enclosing(analysis: LoopAnalysis, loops: list[TrainingLoop],
                    walked: list[tuple[TrainingLoop, tuple[str, LoopNode, tuple[LoopNode, ...]]]]
                    ) -> list[TrainingLoop]:
    """Each loop with the walked loops whose call tree contains it (re-walked with ``later``)."""
    found: list[TrainingLoop] = []
    rewalked: dict[int, TrainingLoop] = {}
    for loop in loops:
        enclosing: list[TrainingLoop] = []
        for index, (record, (function, node, outer)) in enumerate(walked):
            if record.header == loop.header or not record.inside(loop):
                continue
            if index not in rewalked:
                rewalked[index] = analysis.loop_record(function, node, outer, later=True)
            enclosing.append(rewalked[index])
        found.append(replace(loop, enclosing=tuple(enclosing)) if enclosing else loop)
    return found


def _contains_training_loop(loop: TrainingLoop, training: list[TrainingLoop]) -> bool:
    """True when a training loop lives in a helper this loop calls (``train_epoch``)."""
    return any(other.header.function in loop.helpers for other in training if other is not loop)



def may_train(call: ExternalCall) -> bool:
    """Whether an imported callee's name suggests it trains (``train_step``, ``update``)."""
    return TRAINY.search(call.qualified.rsplit(".", 1)[-1]) is not None


_CACHE: weakref.WeakKeyDictionary[ModuleFacts, tuple[list[TrainingLoop], list[TrainingLoop]]] = (
    weakref.WeakKeyDictionary())


def _cached_loops(module: ModuleFacts) -> tuple[list[TrainingLoop], list[TrainingLoop]]:
    if module not in _CACHE:
        _CACHE[module] = _analyse(module)
    return _CACHE[module]


