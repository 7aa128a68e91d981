"""The objects of one file: which spellings name one object, what made it, and what it is.

Every rule family asks "which object is this?" of the same model (SPEC §4). A *reference*
is one place an object can live: a function's local or parameter, a class's ``self.``
attribute, a module global, or the elements of a container (``optimizers[i]``,
``for opt in optimizers``). References are joined into one object (a union-find) by

- assignment (``opt = self.opt``, ``self.model = model`` in ``__init__``), both sides of a
  conditional expression, tuples unpacked from tuples, and ``prepare(a, b)`` (framework
  calls that hand their arguments back);
- methods that return their receiver (``.to(device)``, ``.train()``), wrappers that run it
  (``DistributedDataParallel(model)``, ``torch.compile(model)``) and ``wrapper.module``;
- a call of this file that passes one into a parameter (``train_step(model, batch,
  scaler)``, ``Trainer(scaler=scaler)``), and a local factory's return value
  (``opt = build_optimizer(model)``).

An object knows the calls that built it, the wrappers it went through, the methods called
on it, and its *kind*: what built it decides (``torch.optim.AdamW`` → optimizer), or the
type a parameter is annotated with (``o: Optimizer``), else how it is used (the first
argument of a scheduler or of ``scaler.step`` is an optimizer, an object whose ``unscale_``
is called is a scaler), and only for an object nothing here builds, types or uses tellingly
(a parameter of a function no call of this file enters) its spellings' names.
A spelling the file cannot follow is an object of its own: different names stay different
objects, and the same name in two unrelated functions is two objects.
"""

from __future__ import annotations

import ast
import weakref
from dataclasses import dataclass, field

from trainaudit.model.flow.operations import MODEL_WRAPPERS, SAME_OBJECT_METHODS
from trainaudit.model.module import ModuleFacts, keyword, walk_local
from trainaudit.model.objects.kinds import (
    MODEL_METHODS,
    NEITHER,
    OBJECT_METHODS,
    SCHEDULER_SUFFIXES,
    WRAPPER_NAMES,
    Kind,
    kind_by_name,
    kind_of_maker,
)
from trainaudit.model.objects.refs import (
    NO_OBJECT,
    ObjectCall,
    Ref,
    Refs,
    UnionFind,
    declared_type,
    handed_back,
    last_name,
    origin_name,
    reach_of,
    scopes_by_line,
    spelling,
)


@dataclass(eq=False)
class FileObject:
    """One object: the refs that name it, where it is built and how it is used."""

    refs: set[Ref]
    constructions: list[ast.Call] = field(default_factory=list)
    makers: list[str] = field(default_factory=list)  # qualified names of what built it
    # The types its parameters are annotated with, where a type tells a kind
    # (``opt: torch.optim.Optimizer``, ``scaler: GradScaler | None``).
    declared: list[str] = field(default_factory=list)
    calls: list[ObjectCall] = field(default_factory=list)
    wrappers: set[str] = field(default_factory=set)
    kind: Kind = ""
    # Functions that can see a scaler: its locals' and parameters' scopes, the methods of
    # the class holding it, the functions calling its methods (all, for a module global).
    reach: set[str] = field(default_factory=set)
    def uses(self, method: str) -> list[ObjectCall]:
        return [c for c in self.calls if c.method == method]

    @property
    def disabled(self) -> bool:
        """Built only with ``enabled=False``: a no-op (a scaler switched off)."""
        return bool(self.constructions) and all(
            isinstance(e := keyword(c, "enabled"), ast.Constant) and e.value is False
            for c in self.constructions)

    def spelling_in(self, function: str) -> str | None:
        """How code in ``function`` names this object, if it can."""
        for ref in sorted(self.refs, key=lambda r: (r.scope != function, r.spelled)):
            if "[" in ref.spelled:
                continue
            if ref.scope == function or ref.scope == "" or (
                    ref.spelled.startswith("self.") and function.startswith(ref.scope + ".")):
                return ref.spelled
        return None


class FileObjects:
    """Every object of a file (see the module docstring); built once per file."""

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self._scope_at = scopes_by_line(module)
        self._refs = Refs(module, self._scope_at)
        # The same, without what crosses into another function's parameters (a call's
        # argument, ``self.x = x`` in ``__init__``): an object as one function names it,
        # which the loop model binds per call (``loops.arguments``).
        self._named = UnionFind()
        self._names: dict[Ref, str] | None = None
        self._built: dict[Ref, list[tuple[ast.Call, str]]] = {}
        self._wrapped: dict[Ref, set[str]] = {}
        self._calls: dict[Ref, list[ObjectCall]] = {}
        self._optimizer_args: set[Ref] = set()  # given where only an optimizer goes
        # (scaler, argument) of ``x.step(arg)`` / ``x.unscale_(arg)``: arg is an optimizer
        # when x turns out to be a scaler.
        self._scaler_arguments: list[tuple[Ref, Ref]] = []
        self._named_aliases: set[Ref] = set()  # refs given another ref's object in ``_named``
        self._passed: dict[Ref, list[Ref]] = {}  # a parameter → the arguments calls give it
        # Method calls (receiver, call, caller) on objects the file may have built, by name.
        self._method_calls: list[tuple[Ref, ast.Call, str]] = []
        self._methods = {name.rsplit(".", 1)[1] for name in module.functions if "." in name}
        self._returned: dict[Ref, list[Ref]] = {}  # a local factory's result → what it returns
        self._declared: dict[Ref, list[str]] = {}  # a parameter → the type it is annotated with
        self._annotations()
        self._scan()
        self._join_parameters()
        self._members = self._refs.groups(self._built, self._calls, self._wrapped)
        self._objects: dict[Ref, FileObject] = self._group()

    # -- queries ------------------------------------------------------------------

    @property
    def objects(self) -> list[FileObject]:
        return list(self._objects.values())

    def object_of(self, expr: ast.expr, function: str) -> FileObject | None:
        """The object ``expr`` evaluates to, where the file can tell."""
        ref = self._ref(expr, function)
        return self._objects.get(self._refs.find(ref)) if ref is not None else None

    def refs_of(self, expr: ast.expr, function: str) -> frozenset[Ref]:
        """Every ref of the object of ``expr`` (a parameter nothing else is known of too)."""
        ref = self._ref(expr, function)
        if ref is None:
            return frozenset()
        return frozenset(self._members.get(self._refs.find(ref), {ref}))

    def key(self, expr: ast.expr, function: str) -> str:
        """A key equal for two expressions that are one object (the text otherwise)."""
        ref = self._ref(expr, function)
        if ref is None:
            return self.module.segment(expr)
        root = self._refs.find(ref)
        return f"{root.scope}:{root.spelled}"

    def name(self, expr: ast.expr, function: str) -> str:
        """The name ``function`` knows the object by where it was made or handed in (``model``
        for ``net = model``, for ``ddp.module`` after ``ddp = DDP(model)``; a parameter's own
        name); a part (``model.encoder``) by its owner's; else the expression's text."""
        inner, _ = self._peel(expr)
        ref = self._ref(expr, function)
        if ref is None:
            return self.module.segment(expr)
        if isinstance(inner, ast.Attribute) and ref not in self._built \
                and spelling(inner.value) not in (None, "self", "cls"):
            return f"{self.name(inner.value, function)}.{inner.attr}"
        return self._name_table().get(self._named.find(ref), ref.spelled)

    def _name_table(self) -> dict[Ref, str]:
        if self._names is None:
            self._names = {root: origin_name(group, self._built, self._named_aliases)
                           for root, group in self._named.groups().items()}
        return self._names

    def kind(self, expr: ast.expr, function: str) -> Kind:
        """What the object of ``expr`` is (``FileObject.kind``); for an object nothing in
        the file tells (a parameter no call gives), what its spelling's name says."""
        found = self.object_of(expr, function)
        if found is not None and (found.kind or found.makers or found.declared):
            return found.kind
        inner, _ = self._peel(expr)
        text = spelling(inner) if inner is not None else None
        return kind_by_name(last_name(text), has_calls=True) if text else ""

    def made_by_class(self, expr: ast.expr, function: str) -> ast.ClassDef | None:
        """The class of this file that built the object (``model = GPT(cfg).cuda()``)."""
        found = self.object_of(expr, function)
        for call in found.constructions if found is not None else ():
            if isinstance(call.func, ast.Name) and call.func.id in self.module.classes:
                return self.module.classes[call.func.id]
        return None

    def wrappers(self, expr: ast.expr, function: str) -> frozenset[str]:
        found = self.object_of(expr, function)
        return frozenset(found.wrappers) if found is not None else frozenset()

    # -- building -----------------------------------------------------------------

    def _ref(self, expr: ast.expr, function: str) -> Ref | None:
        inner, _ = self._peel(expr)
        spelled = spelling(inner) if inner is not None else None
        return self._refs.resolve(spelled, function) if spelled is not None else None

    def _peel(self, expr: ast.expr) -> tuple[ast.expr | None, set[str]]:
        """The object an expression hands on (through same-object methods, wrappers and
        ``.module``), and the wrappers met: a spelling, or the call that made a new value
        (``LM()`` of ``torch.compile(LM().cuda())``)."""
        wrappers: set[str] = set()
        for _ in range(8):
            if isinstance(expr, ast.Await):
                expr = expr.value
            elif isinstance(expr, ast.Call):
                func, name = expr.func, self.module.call_name(expr) or ""
                short = name.rsplit(".", 1)[-1]
                if isinstance(func, ast.Attribute) and func.attr in SAME_OBJECT_METHODS \
                        and not name.startswith("torch."):
                    expr = func.value
                elif (name in MODEL_WRAPPERS or short in WRAPPER_NAMES) and expr.args:
                    wrappers.add(short)
                    expr = expr.args[0]
                else:
                    return expr, wrappers
            elif isinstance(expr, ast.Attribute) and expr.attr == "module":
                expr = expr.value
            else:
                return expr, wrappers
        return None, wrappers

    def _annotations(self) -> None:
        """Parameters annotated with a type that tells a kind: the type decides before any
        use or name (``def step(m: nn.Module, o: Optimizer, s: LRScheduler)``)."""
        for function, node in self.module.functions.items():
            arguments = node.args
            for parameter in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                declared = declared_type(self.module, parameter.annotation)
                if declared is not None and (kind_of_maker(declared) or declared in self.module.classes):
                    ref = self._refs.resolve(parameter.arg, function)
                    if ref is not None:
                        self._declared.setdefault(ref, []).append(declared)

    def _scan(self) -> None:
        """Every assignment, loop target and call of the file's functions and module level
        (class bodies are no scope of their own here), each in the function it runs in."""
        by_type = self.module.nodes_by_type
        scope_at = self._scope_at

        def scope(node: ast.AST) -> str | None:
            line = getattr(node, "lineno", 0)
            return scope_at[line] if line < len(scope_at) else None

        for assignment in (ast.Assign, ast.AnnAssign):
            for node in by_type.get(assignment, ()):
                assert isinstance(node, ast.Assign | ast.AnnAssign)
                function = scope(node)
                if node.value is None or function is None or isinstance(node.value, NO_OBJECT):
                    continue
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    self._assign(target, node.value, function)
        for loop in (ast.For, ast.AsyncFor, ast.comprehension):
            for node in by_type.get(loop, ()):
                assert isinstance(node, ast.For | ast.AsyncFor | ast.comprehension)
                function = scope(node.target)
                if function is not None:
                    self._iterate(node.target, node.iter, function)
        for node in by_type.get(ast.Call, ()):
            assert isinstance(node, ast.Call)
            function = scope(node)
            if function is not None:
                self._call(node, function)

    def _assign(self, target: ast.expr, value: ast.expr, function: str) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            values = handed_back(value)
            if values is not None and len(values) == len(target.elts):
                for elt, item in zip(target.elts, values, strict=True):
                    self._assign(elt, item, function)
            elif isinstance(value, ast.Call):  # ``engine, opt, _, _ = deepspeed.initialize(...)``
                maker = self.module.call_name(value) or spelling(value.func) or ""
                for index, elt in enumerate(target.elts):
                    spelled = spelling(elt)
                    ref = self._refs.resolve(spelled, function) if spelled is not None else None
                    if ref is not None:
                        self._built.setdefault(ref, []).append((value, f"{maker}[{index}]"))
            return
        spelled = spelling(target)
        ref = self._refs.resolve(spelled, function) if spelled is not None else None
        if ref is None:
            return
        options = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
        for option in options:
            if isinstance(option, ast.List | ast.Tuple | ast.Set):
                for element in option.elts:
                    self._assign(ast.Subscript(target, ast.Constant(0)), element, function)
                continue
            if isinstance(option, ast.Dict):
                for key, element in zip(option.keys, option.values, strict=True):
                    entry = key if isinstance(key, ast.Constant) else ast.Constant(0)
                    self._assign(ast.Subscript(target, entry), element, function)
                continue
            inner, wrappers = self._peel(option)
            if wrappers:
                self._wrapped.setdefault(ref, set()).update(wrappers)
            source = self._ref(inner, function) if inner is not None else None
            if source is not None:
                self._refs.union(ref, source)
                if not (ref.spelled.startswith(("self.", "cls.")) and source.scope != ref.scope):
                    self._named.union(ref, source)
                    self._named_aliases.add(ref)
            elif isinstance(inner, ast.Call):
                self._construct(ref, inner, function)

    def _construct(self, ref: Ref, call: ast.Call, function: str) -> None:
        """``ref`` holds what ``call`` returns: a construction, or a local factory's result."""
        maker = self.module.call_name(call) or spelling(call.func) or ""
        self._built.setdefault(ref, []).append((call, maker))
        factory = self.module.local_callee(call, function)
        if factory is not None and not isinstance(call.func, ast.Attribute):
            for node in walk_local(self.module.functions[factory].body):
                if isinstance(node, ast.Return) and node.value is not None:
                    returned = self._ref(node.value, factory)
                    if returned is not None:  # of the same kind, not the same object
                        self._returned.setdefault(ref, []).append(returned)

    def _iterate(self, target: ast.expr, iterable: ast.expr, function: str) -> None:
        """``for opt in optimizers``, ``for i, opt in enumerate(optimizers)``,
        ``for name, opt in optimizers.items()``: the target is an element."""
        if isinstance(iterable, ast.Call) and isinstance(target, ast.Tuple) and len(target.elts) == 2:
            name, func = self.module.call_name(iterable) or "", iterable.func
            if name in ("enumerate", "builtins.enumerate") and iterable.args:
                target, iterable = target.elts[1], iterable.args[0]
            elif isinstance(func, ast.Attribute) and func.attr == "items":
                target, iterable = target.elts[1], func.value
        if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute) \
                and iterable.func.attr == "values":
            iterable = iterable.func.value
        if spelling(iterable) is not None and not isinstance(target, ast.Tuple | ast.List):
            self._assign(target, ast.Subscript(iterable, ast.Constant(0)), function)

    def _call(self, call: ast.Call, function: str) -> None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in OBJECT_METHODS:
            receiver = self._ref(func.value, function)
            if receiver is not None:
                self._calls.setdefault(receiver, []).append(ObjectCall(func.attr, call, function))
            if func.attr in ("step", "unscale_") and call.args:
                self._mark_optimizer(call.args[0], function, only_if_scaler=receiver)
        short = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if short.endswith(SCHEDULER_SUFFIXES) and kind_of_maker(self.module.call_name(call) or "") == "scheduler":
            given = call.args[0] if call.args else keyword(call, "optimizer")
            if given is not None:
                self._mark_optimizer(given, function)
        if call.args or call.keywords:
            self._join_arguments(call, function)

    def _mark_optimizer(self, expr: ast.expr, function: str, only_if_scaler: Ref | None = None) -> None:
        ref = self._ref(expr, function)
        if ref is None:
            return
        if only_if_scaler is not None:
            self._scaler_arguments.append((only_if_scaler, ref))
        else:
            self._optimizer_args.add(ref)

    def _join_arguments(self, call: ast.Call, caller: str) -> None:
        """Pair each argument with the parameter of this file's function it is passed into
        (a method of an object of this file's class: once the objects are known)."""
        module = self.module
        callee = module.local_callee(call, caller)
        skip_self = callee is not None and isinstance(call.func, ast.Attribute)
        if callee is None and isinstance(call.func, ast.Name) and call.func.id in module.classes:
            callee, skip_self = f"{call.func.id}.__init__", True
        if callee is None and isinstance(call.func, ast.Attribute) and call.func.attr in self._methods:
            receiver = self._ref(call.func.value, caller)
            if receiver is not None:  # ``trainer.fit(criterion)``
                self._method_calls.append((receiver, call, caller))
            return
        if callee is not None:
            self._pass(call, caller, callee, skip_self)

    def _pass(self, call: ast.Call, caller: str, callee: str, skip_self: bool) -> None:
        module = self.module
        if callee not in module.functions:
            return
        fn = module.functions[callee]
        positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]][int(skip_self):]
        names = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        pairs = [(arg, positional[i]) for i, arg in enumerate(call.args)
                 if i < len(positional) and not isinstance(arg, ast.Starred)]
        pairs += [(kw.value, kw.arg) for kw in call.keywords if kw.arg is not None and kw.arg in names]
        for value, parameter in pairs:
            ref = self._ref(value, caller)
            if ref is not None:
                self._passed.setdefault(Ref(callee, parameter), []).append(ref)

    def _join_parameters(self) -> None:
        """A parameter every call of this file gives one object is that object; one given
        several (``evaluate(ema)``, ``evaluate(model)``) stays an object of its own, bound
        per call by the loop model (``loops.arguments``). A method call on an object one of
        this file's classes built enters that class's method."""
        classes: dict[Ref, str] = {}
        for ref, built in self._built.items():
            for call, maker in built:
                if maker in self.module.classes and isinstance(call.func, ast.Name):
                    classes[self._refs.find(ref)] = maker
        for receiver, call, caller in self._method_calls:
            owner = classes.get(self._refs.find(receiver))
            if owner is not None and isinstance(call.func, ast.Attribute):
                self._pass(call, caller, f"{owner}.{call.func.attr}", skip_self=True)
        for _ in range(2):
            for parameter, arguments in self._passed.items():
                if len({self._refs.find(a) for a in arguments}) == 1:
                    self._refs.union(arguments[0], parameter)

    def _group(self) -> dict[Ref, FileObject]:
        refs, groups = self._refs, self._members
        # Only groups something is known of: a plain local is no object worth a record.
        known = {refs.find(r) for r in [*self._built, *self._calls, *self._wrapped, *self._declared,
                                        *self._optimizer_args,
                                        *(argument for _, argument in self._scaler_arguments)]}
        scaler_roots: set[Ref] = set()
        objects: dict[Ref, FileObject] = {}
        for root in known:
            group = groups.get(root) or {root}
            built = [b for r in group for b in self._built.get(r, [])]
            calls = sorted((c for r in group for c in self._calls.get(r, [])),
                           key=lambda c: (c.call.lineno, c.call.col_offset))
            found = FileObject(group, [c for c, _ in built], [m for _, m in built],
                               [d for r in group for d in self._declared.get(r, [])], calls,
                               {w for r in group for w in self._wrapped.get(r, ())})
            found.kind = self._kind(found)
            if found.kind == "scaler":
                scaler_roots.add(root)
                found.reach = reach_of(found.refs, {c.function for c in found.calls}, self.module)
            objects[root] = found
        for scaler, argument in self._scaler_arguments:
            target = objects.get(refs.find(argument))
            if refs.find(scaler) in scaler_roots and target is not None and not target.kind:
                target.kind = "optimizer"
        for ref in self._optimizer_args:
            target = objects.get(refs.find(ref))
            if target is not None and not target.kind:
                target.kind = "optimizer"
        for ref, returned in self._returned.items():
            target = objects.get(refs.find(ref))
            kinds = {o.kind for r in returned if (o := objects.get(refs.find(r))) is not None}
            if target is not None and len(kinds) == 1:
                target.kind = kinds.pop() or target.kind
        return objects

    def _kind(self, found: FileObject) -> Kind:
        """What built it, else how it is used, else what its maker and spellings are named."""
        for maker in [*found.makers, *found.declared]:
            if maker.rsplit(".", 1)[-1].endswith(NEITHER):
                return ""
            kind = kind_of_maker(maker)
            if kind:
                return kind
            if maker in self.module.classes and any(
                    "Module" in base or "Model" in base
                    for base in self.module.class_bases(self.module.classes[maker])):
                return "model"
        methods = {c.method for c in found.calls}
        if {"step", "zero_grad"} <= methods or "add_param_group" in methods:
            return "optimizer"
        if "unscale_" in methods or any(
                c.method == "scale" and isinstance(parent := self.module.parents.get(c.call), ast.Attribute)
                and parent.attr == "backward" for c in found.calls):
            return "scaler"
        if found.wrappers or methods & MODEL_METHODS:
            return "model"
        if not found.calls and not found.makers:
            return ""  # nothing to go by but a name, and nothing asks what it is
        names = [last_name(m) for m in found.makers] + sorted(last_name(r.spelled) for r in found.refs)
        for name in names:
            kind = kind_by_name(name, has_calls=bool(found.calls) or bool(found.makers))
            if kind:
                return kind
        return ""


_FILES: weakref.WeakKeyDictionary[ModuleFacts, FileObjects] = weakref.WeakKeyDictionary()


def file_objects(module: ModuleFacts) -> FileObjects:
    """The objects of a file, built on first use."""
    found = _FILES.get(module)
    if found is None:
        found = _FILES[module] = FileObjects(module)
    return found
