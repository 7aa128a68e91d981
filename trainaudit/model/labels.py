"""Label facts: where next-token labels are made, and where a loss consumes them.

Two kinds of sites, read per scope (a function, or the module body):

- a ``LabelProducer`` is where labels/targets are made from the token ids:
  ``torch.roll(ids, -1)`` (shifted, wraps), ``ids[1:]`` / ``data[i+1:i+1+T]``
  / ``F.pad(ids[1:], ...)`` / ``torch.cat([ids[1:], ...])`` / a clone with
  ``labels[:-1] = ids[1:]`` (shifted), or a plain copy of the ids (not shifted);
- a ``LossSite`` is a cross-entropy / NLL call (``F.cross_entropy``,
  ``nn.CrossEntropyLoss()`` instances, ``F.nll_loss``) or a call of a model that
  computes its loss internally (HF ``*ForCausalLM`` with ``labels=``, a project
  model whose ``forward`` has a loss site on its targets parameter). A loss
  site *shifts* when it drops the last logit (``logits[..., :-1, :]``) or the
  model shifts internally.

The origin of a loss site's labels (a batch key, a tuple position, a call's
result, a local producer) links it to producers, in the same file or across
files (``Project.connected``). Everything here is picklable.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from trainaudit.diagnostics import Span
from trainaudit.model.module import ModuleFacts, argument, int_value, keyword, walk_local
from trainaudit.model.project import ModuleSummary, Project
from trainaudit.registry import summarizer

FAMILY = "labels"
# A file mentioning none of these can hold no label producer or loss site. The slice
# spellings catch ``y = chunk[1:]`` and ``data[i + 1:i + 1 + T]`` in files that name
# neither labels nor a loss.
TRIGGERS = ("roll", "cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss", "label",
            "target", "ForCausalLM", "LMHead", "1:]", "1:,", "+ 1:", "+1:", "[1:")

ROLL_FUNCTIONS = {"torch.roll", "numpy.roll", "jax.numpy.roll"}
LOSS_FUNCTIONS = {"torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss",
                  "torch.cross_entropy"}
LOSS_CLASSES = {"torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss",
                "torch.nn.modules.loss.CrossEntropyLoss", "torch.nn.modules.loss.NLLLoss"}
# Methods that keep a tensor's values where they are.
PASS_THROUGH = {"view", "reshape", "contiguous", "to", "long", "int", "flatten", "float", "cuda",
                "cpu", "type", "detach", "squeeze", "unsqueeze", "view_as", "reshape_as",
                "pin_memory", "as_tensor", "tensor", "from_numpy", "LongTensor", "asarray",
                "array", "astype", "numpy", "tolist", "copy", "clone"}
COPY_METHODS = {"clone", "copy", "detach"}
INPUT_NAMES = {"input_ids", "inputs", "input", "x", "idx", "tokens", "ids", "token_ids", "data",
               "chunk", "seq", "sequence", "src", "batch", "buf", "window", "sample", "text",
               "encoded", "tokenized", "input_seq", "tok", "toks"}
PAD_NAME_HINTS = ("pad",)
DEFAULT_IGNORE_INDEX = -100


def is_label_name(name: str) -> bool:
    """Names people give next-token targets: labels, targets, y, tgt, target_ids..."""
    lower = name.lower().rsplit(".", 1)[-1]
    return ("label" in lower or "target" in lower or lower in ("y", "tgt", "tgts", "yb", "ys")
            or lower.startswith("y_") or lower.startswith("tgt_"))


@dataclass(frozen=True)
class Site:
    """A place in a file, with the source text there (for messages)."""

    path: str
    span: Span
    text: str = ""


@dataclass(frozen=True)
class Value:
    """A label value (mask or ignore index): an int, a name, or unknown."""

    number: int | None = None
    name: str | None = None

    @property
    def known(self) -> bool:
        return self.number is not None or self.name is not None

    def describe(self) -> str:
        return str(self.number) if self.number is not None else (self.name or "?")

    def matches(self, other: Value) -> bool | None:
        """True/False when comparable, None when unknown."""
        if self.number is not None and other.number is not None:
            return self.number == other.number
        if self.name is not None and other.name is not None and self.name == other.name:
            return True
        for a, b in ((self, other), (other, self)):
            # A pad id is a real token id (>= 0): never equal to a negative ignore value.
            if a.number is not None and a.number < 0 and b.name and _is_pad_name(b.name):
                return False
        return None


def _is_pad_name(name: str) -> bool:
    return any(h in name.lower() for h in PAD_NAME_HINTS)


@dataclass(frozen=True)
class Neutralizer:
    """What keeps a roll's wrapped position out of the loss."""

    kind: str  # "assign" (labels[-1] = v), "slice" (tail dropped), "mask", "pre-masked"
    site: Site
    value: Value = Value()
    statement_lines: tuple[int, int] | None = None  # a standalone statement a fix may delete


@dataclass(frozen=True)
class LabelProducer:
    """Where labels are made from the token ids, inside one scope."""

    scope: str
    var: str
    kind: str  # roll | slice | pad | cat | slice-assign | copy
    shifted: bool
    site: Site  # the statement's value expression
    statement: Site  # the whole making statement
    input_text: str | None  # the unshifted input, e.g. ``input_ids``
    keys: tuple[str, ...] = ()  # dict keys / names the labels leave the scope under
    tuple_index: int | None = None  # position in a returned tuple
    exported: bool = False
    lib: str = "torch"
    roll_dims: int | None = None
    roll_shift: int | None = None
    neutralizers: tuple[Neutralizer, ...] = ()
    helper_lines: tuple[tuple[int, int], ...] = ()  # statements that complete the shift
    fix_form: str = ""  # "assign-roll" when the roll is the whole right-hand side


@dataclass(frozen=True)
class LabelMask:
    """Labels set to a value so the loss skips them: ``labels[labels == pad] = -100``,
    ``labels[-1] = -100``, ``F.pad(..., value=-100)``."""

    scope: str
    var: str
    value: Value
    site: Site
    keys: tuple[str, ...] = ()
    tuple_index: int | None = None
    exported: bool = False
    wrapped_position: bool = False  # the tail of a roll


@dataclass(frozen=True)
class Origin:
    """Where a loss site's labels come from."""

    kind: str  # key | index | call | param | local | name | unknown
    value: str = ""
    index: int | None = None
    producer: int | None = None  # index into the module's producers, for kind == local


@dataclass(frozen=True)
class LossSite:
    """A loss computed on labels: a CE/NLL call or a model that computes its own loss."""

    scope: str
    site: Site
    shifts: bool
    how: str  # slice | model | none
    origin: Origin
    ignore_index: Value
    shift_site: Site | None = None
    same_as_input: bool = False  # the labels are the very tensor fed to the model
    logits_root: Site | None = None
    labels_root: Site | None = None
    ignore_explicit: bool = False
    model_site: Site | None = None  # for how == model: the model's own loss site
    trace_vars: tuple[str, ...] = ()  # local names the labels passed through


@dataclass(frozen=True)
class ModelLoss:
    """A project model class whose forward computes a loss on one of its parameters."""

    class_name: str
    param: str
    param_index: int  # position in forward(self, ...) without self
    shifts: bool
    site: Site


@dataclass(frozen=True)
class ModelCall:
    """A call of a project model class (``model(x, y)``); the project rules look up whether
    that class computes a (shifted) loss on one of the arguments."""

    scope: str
    class_name: str  # qualified as seen from this file (``model.GPT``)
    arguments: tuple[tuple[str, Origin], ...]  # ("0", origin) for positionals, ("targets", ...)
    site: Site


@dataclass
class LabelFacts:
    """The label facts of one file."""

    producers: list[LabelProducer] = field(default_factory=list)
    masks: list[LabelMask] = field(default_factory=list)
    losses: list[LossSite] = field(default_factory=list)
    model_losses: list[ModelLoss] = field(default_factory=list)
    model_calls: list[ModelCall] = field(default_factory=list)
    constants: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _base_name(node: ast.AST) -> str | None:
    """``input_ids`` for ``input_ids``, ``self.input_ids``, ``batch['input_ids']``."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node, ast.Subscript):
            key = _const_key(node)
            if key is not None:
                return key
            node = node.value
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in PASS_THROUGH:
            node = node.func.value
            continue
        return None


def _const_key(node: ast.Subscript) -> str | None:
    if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    return None


def _slice_elements(node: ast.Subscript) -> list[ast.expr]:
    return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]


def _is_lower_one(sl: ast.expr) -> bool:
    """A slice starting one past the window start: ``1:``, ``i+1:``, ``1:T+1``."""
    if not isinstance(sl, ast.Slice) or sl.step is not None:
        return False
    lower = sl.lower
    if int_value(lower) == 1:
        return True
    return (isinstance(lower, ast.BinOp) and isinstance(lower.op, ast.Add)
            and (int_value(lower.right) == 1 or int_value(lower.left) == 1))


def _is_drop_last(sl: ast.expr) -> bool:
    return (isinstance(sl, ast.Slice) and sl.lower is None and sl.step is None
            and int_value(sl.upper) == -1)


def _is_last_index(sl: ast.expr) -> bool:
    if int_value(sl) == -1:
        return True
    return (isinstance(sl, ast.Slice) and int_value(sl.lower) == -1 and sl.upper is None
            and sl.step is None)


def _is_first_index(sl: ast.expr) -> bool:
    return int_value(sl) == 0 or (isinstance(sl, ast.Slice) and sl.lower is None
                                  and int_value(sl.upper) == 1)


def _shift_slice(node: ast.AST) -> ast.Subscript | None:
    """The subscript that starts one later (``x[..., 1:]``), looking through wrappers."""
    node = _strip(node)
    if isinstance(node, ast.Subscript) and any(_is_lower_one(e) for e in _slice_elements(node)):
        return node
    return None


def _arg_root(node: ast.AST) -> ast.AST:
    """The tensor an argument starts from, inside the call: ``logits`` in ``logits.view(-1, V)``."""
    return _strip(node)


def _strip(node: ast.AST) -> ast.AST:
    """Remove value-preserving method calls: ``x.view(-1).long()`` → ``x``."""
    while (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
           and node.func.attr in PASS_THROUGH - COPY_METHODS):
        node = node.func.value
    return node


@dataclass
class _Assignment:
    target: str
    value: ast.expr
    statement: ast.stmt
    tuple_index: int | None = None  # x, y = value → y is element 1 of value


class _Scope:
    """Assignments and statements of one function (or the module body), in order."""

    def __init__(self, module: ModuleFacts, name: str, body: list[ast.stmt],
                 params: list[str]) -> None:
        self.module = module
        self.name = name
        self.body = body
        self.params = params
        self.assignments: dict[str, list[_Assignment]] = {}
        self.statements: list[ast.stmt] = []
        self.loop_targets: dict[str, tuple[ast.expr, int | None]] = {}
        for node in walk_local(body):
            if isinstance(node, ast.stmt):
                self.statements.append(node)
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(target, node.value, node)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                self._bind(node.target, node.value, node)
            elif isinstance(node, ast.For | ast.comprehension):
                self._bind_loop(node.target, node.iter)

    def _bind(self, target: ast.expr, value: ast.expr, stmt: ast.stmt) -> None:
        name = _target_name(target)
        if name is not None:
            self.assignments.setdefault(name, []).append(_Assignment(name, value, stmt))
        elif isinstance(target, ast.Tuple | ast.List):
            if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    self._bind(t, v, stmt)
                return
            for i, element in enumerate(target.elts):
                if (n := _target_name(element)) is not None:
                    self.assignments.setdefault(n, []).append(_Assignment(n, value, stmt, i))

    def _bind_loop(self, target: ast.expr, iterable: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self.loop_targets[target.id] = (iterable, None)
        elif isinstance(target, ast.Tuple):
            # ``for step, (x, y) in enumerate(loader)``
            inner = iterable
            elts = target.elts
            if (isinstance(iterable, ast.Call) and self.module.call_name(iterable) == "enumerate"
                    and len(elts) == 2 and iterable.args):
                inner = iterable.args[0]
                if isinstance(elts[1], ast.Name):
                    self.loop_targets[elts[1].id] = (inner, None)
                    return
                if isinstance(elts[1], ast.Tuple):
                    elts = elts[1].elts
            for i, element in enumerate(elts):
                if isinstance(element, ast.Name):
                    self.loop_targets[element.id] = (inner, i)

    def last_assignment(self, name: str, before: int) -> _Assignment | None:
        found = None
        for assignment in self.assignments.get(name, []):
            if assignment.statement.lineno < before or (
                    assignment.statement.lineno == before and found is None
                    and getattr(assignment.statement, "end_lineno", 0) < before):
                found = assignment
        return found


def _target_name(target: ast.expr) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        return f"{target.value.id}.{target.attr}"
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
        key = _const_key(target)
        if key is not None:
            return f"{target.value.id}[{key!r}]"
    return None


def _scopes(module: ModuleFacts) -> list[_Scope]:
    scopes = [_Scope(module, "", module.tree.body, [])]
    for name, fn in module.functions.items():
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)]
        scopes.append(_Scope(module, name, fn.body, params))
    return scopes


# --------------------------------------------------------------------------- producers


@dataclass(frozen=True)
class _Export:
    """How a value leaves its scope: under dict keys / its name, at a tuple position."""

    keys: tuple[str, ...]
    tuple_index: int | None
    exported: bool


class _ProducerFinder:
    def __init__(self, module: ModuleFacts, facts: LabelFacts) -> None:
        self.module = module
        self.facts = facts

    def site(self, node: ast.AST) -> Site:
        return Site(self.module.path, self.module.span(node), self.module.segment(node)[:120])

    def find(self, scope: _Scope) -> None:
        for name, assignments in scope.assignments.items():
            var = name.split("[", 1)[-1].strip("'\"]") if "[" in name else name
            if not is_label_name(var):
                continue
            for assignment in assignments:
                if assignment.tuple_index is not None:
                    continue
                producer = self.classify(scope, name, assignment)
                if producer is not None:
                    self.facts.producers.append(producer)
        # return {"input_ids": ids, "target_ids": torch.roll(ids, -1)}
        for node in walk_local(scope.body):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
                for key, value in zip(node.value.keys, node.value.values, strict=True):
                    if (isinstance(key, ast.Constant) and isinstance(key.value, str)
                            and is_label_name(key.value) and not isinstance(value, ast.Name)):
                        pseudo = _Assignment(f"return[{key.value!r}]", value, node)
                        producer = self.classify(scope, pseudo.target, pseudo)
                        if producer is not None:
                            self.facts.producers.append(replace(
                                producer, var=key.value, keys=(key.value,), exported=True,
                                fix_form=""))

    def masks(self, scope: _Scope) -> None:
        """Values written into label tensors: ``labels[...] = v``, ``masked_fill``, ``F.pad``."""
        for stmt in scope.statements:
            if not isinstance(stmt, ast.Assign):
                continue
            target = stmt.targets[0]
            value: Value | None = None
            name: str | None = None
            wrapped = False
            if isinstance(target, ast.Subscript) and (name := _target_name(target.value)):
                elements = _slice_elements(target)
                wrapped = bool(elements) and _is_last_index(elements[-1])
                if not isinstance(stmt.value, ast.Subscript | ast.Call):
                    value = _value_of(stmt.value, self.module)
            elif (name := _target_name(target)) is not None and isinstance(stmt.value, ast.Call):
                call = stmt.value
                qual = self.module.call_name(call) or ""
                if isinstance(call.func, ast.Attribute) and call.func.attr in ("masked_fill", "masked_fill_"):
                    fill = argument(call, 1, "value")
                    value = _value_of(fill, self.module) if fill is not None else None
                elif qual in ("torch.nn.functional.pad", "numpy.pad"):
                    fill = keyword(call, "value") or keyword(call, "constant_values")
                    value = _value_of(fill, self.module) if fill is not None else Value(number=0)
                elif qual == "torch.where" and len(call.args) == 3:
                    value = _value_of(call.args[1], self.module)
            if name is None or value is None or not value.known:
                continue
            var = name.split("[", 1)[-1].strip("'\"]") if "[" in name else name
            if not is_label_name(var):
                continue
            export = self.exports(scope, name, stmt)
            self.facts.masks.append(LabelMask(scope.name, name, value, self.site(stmt), export.keys,
                                              export.tuple_index, export.exported, wrapped))

    def classify(self, scope: _Scope, name: str, assignment: _Assignment) -> LabelProducer | None:
        value = assignment.value
        module = self.module
        stmt = assignment.statement
        def make(**fields: Any) -> LabelProducer:
            return self.make(scope, name, assignment, **fields)

        if isinstance(value, ast.Call):
            qual = module.call_name(value)
            func = value.func
            # torch.roll(x, -1, 0) / np.roll(x, -1) / x.roll(-1, 0)
            roll_source: ast.expr | None = None
            lib = "torch"
            if qual in ROLL_FUNCTIONS:
                roll_source = argument(value, 0, "input") or argument(value, 0, "a")
                shift = argument(value, 1, "shifts") or keyword(value, "shift")
                dims = argument(value, 2, "dims") or keyword(value, "axis")
                lib = "numpy" if qual and qual.startswith("numpy") else "torch"
            elif isinstance(func, ast.Attribute) and func.attr == "roll" and value.args:
                roll_source = func.value
                shift = argument(value, 0, "shifts")
                dims = argument(value, 1, "dims")
            if roll_source is not None:
                amount = int_value(shift)
                source_name = _base_name(roll_source)
                if amount is None or amount >= 0 or source_name is None or is_label_name(source_name):
                    return None  # rolling labels themselves (augmentation) or a backward roll
                dim = int_value(dims) if dims is not None else None
                neutralizers = self.neutralizers(scope, name, stmt, roll_source)
                return make(kind="roll", shifted=True, input_text=module.segment(roll_source),
                    lib=lib, roll_dims=dim, roll_shift=amount, neutralizers=tuple(neutralizers),
                    fix_form="assign-roll" if _is_whole_value(stmt, value) else "")
            # F.pad(x[1:], (0, 1), value=-100) / torch.cat([x[1:], tail])
            if qual in ("torch.nn.functional.pad", "numpy.pad") and value.args:
                inner = _shift_slice(value.args[0])
                if inner is not None and self.unlabelled(inner.value):
                    return make(kind="pad", shifted=True, lib=qual.split(".")[0],
                                         input_text=module.segment(inner.value))
            if qual in ("torch.cat", "torch.concat", "numpy.concatenate") and value.args \
                    and isinstance(value.args[0], ast.List | ast.Tuple) and value.args[0].elts:
                inner = _shift_slice(value.args[0].elts[0])
                if inner is not None and self.unlabelled(inner.value):
                    return make(kind="cat", shifted=True, lib=qual.split(".")[0],
                                         input_text=module.segment(inner.value))
            # labels = ids.clone(); labels[:-1] = ids[1:]  → shifted; plain clone → copy
            if isinstance(func, ast.Attribute) and func.attr in COPY_METHODS | {"new_tensor"}:
                source = func.value
                if func.attr == "new_tensor":
                    return None
                base = _base_name(source)
                if base is None or is_label_name(base):
                    return None
                helper = self.slice_assign(scope, name, stmt, source)
                if helper is not None:
                    return make(kind="slice-assign", shifted=True,
                                         input_text=module.segment(source),
                                         helper_lines=helper,
                                         neutralizers=tuple(self.neutralizers(scope, name, stmt, source)))
                return make(kind="copy", shifted=False, input_text=module.segment(source))
        # labels = ids[1:] / y = data[i+1:i+1+T] / targets = batch[:, 1:]
        # / y = torch.stack([data[i+1:i+1+T] for i in ix])
        sub = _shift_slice(_stacked_element(value, module))
        if sub is not None and self.unlabelled(sub.value):
            return make(kind="slice", shifted=True,
                                 input_text=self.sibling_input(scope, sub, stmt))
        if isinstance(value, ast.Name) and not is_label_name(value.id) \
                and value.id.lower() in INPUT_NAMES and value.id not in scope.loop_targets:
            return make(kind="copy", shifted=False, input_text=value.id)
        return None

    def unlabelled(self, node: ast.AST) -> bool:
        base = _base_name(node)
        return base is not None and not is_label_name(base)

    def sibling_input(self, scope: _Scope, shifted: ast.Subscript, stmt: ast.stmt) -> str | None:
        """For ``y = data[i+1:...]``, the input made from the same data: ``x = data[i:...]``."""
        base = self.module.segment(shifted.value)
        for name, assignments in scope.assignments.items():
            if is_label_name(name):
                continue
            for a in assignments:
                v = _strip(_stacked_element(a.value, self.module))
                if (isinstance(v, ast.Subscript) and self.module.segment(v.value) == base
                        and not any(_is_lower_one(e) for e in _slice_elements(v))):
                    return self.module.segment(a.value)
        return None

    def slice_assign(self, scope: _Scope, name: str, made: ast.stmt,
                     source: ast.expr) -> tuple[tuple[int, int], ...] | None:
        """``labels[:-1] = ids[1:]`` (any leading ``...``/``:``) after ``labels = ids.clone()``."""
        src = self.module.segment(source)
        for stmt in scope.statements:
            if stmt.lineno <= made.lineno or not isinstance(stmt, ast.Assign):
                continue
            target = stmt.targets[0]
            if (isinstance(target, ast.Subscript) and _target_name(target.value) == name
                    and any(_is_drop_last(e) for e in _slice_elements(target))):
                rhs = _shift_slice(stmt.value)
                if rhs is not None and self.module.segment(rhs.value) == src:
                    return ((stmt.lineno, stmt.end_lineno or stmt.lineno),)
        return None

    def neutralizers(self, scope: _Scope, name: str, made: ast.stmt,
                     source: ast.expr) -> list[Neutralizer]:
        found: list[Neutralizer] = []
        module = self.module
        var_tail = name
        for stmt in scope.statements:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Subscript):
                target = stmt.targets[0]
                elements = _slice_elements(target)
                tname = _target_name(target.value)
                value = _value_of(stmt.value, module)
                if stmt.lineno > made.lineno and elements and _is_last_index(elements[-1]) \
                        and all(_is_full(e) for e in elements[:-1]):
                    if tname == var_tail:
                        found.append(Neutralizer("assign", self.site(stmt), value,
                                                 (stmt.lineno, stmt.end_lineno or stmt.lineno)))
                    elif tname is not None:  # a rolled loss mask zeroed at the tail
                        found.append(Neutralizer("mask", self.site(stmt), value))
                # the source was masked at position 0 before the roll
                if (stmt.lineno < made.lineno and tname == _target_name(source)
                        and elements and _is_first_index(elements[-1])
                        and value.number is not None and value.number < 0):
                    found.append(Neutralizer("pre-masked", self.site(stmt), value))
        # labels used only with the tail dropped: labels[..., :-1]
        for node in walk_local(scope.body):
            if (isinstance(node, ast.Subscript) and getattr(node, "lineno", 0) > made.lineno
                    and _target_name(node.value) == var_tail
                    and any(_is_drop_last(e) for e in _slice_elements(node))):
                found.append(Neutralizer("slice", self.site(node)))
                break
        return found

    def make(self, scope: _Scope, name: str, assignment: _Assignment, **fields: Any) -> LabelProducer:
        """A producer for ``name`` made by ``assignment``, with how it leaves the scope."""
        export = self.exports(scope, name, assignment.statement)
        return LabelProducer(scope=scope.name, var=name, site=self.site(assignment.value),
                             statement=self.site(assignment.statement), keys=export.keys,
                             tuple_index=export.tuple_index, exported=export.exported, **fields)

    def exports(self, scope: _Scope, name: str, stmt: ast.stmt) -> _Export:
        """How the labels leave the scope: returned in a dict (keys), a tuple (index)."""
        keys: list[str] = []
        tuple_index: int | None = None
        exported = False
        if "[" in name:  # item["labels"] = ...
            keys.append(name.split("[", 1)[1].strip("'\"]"))
        for node in walk_local(scope.body):
            if not isinstance(node, ast.Return) or node.value is None:
                continue
            value = node.value
            if isinstance(value, ast.Dict):
                for k, v in zip(value.keys, value.values, strict=True):
                    if isinstance(k, ast.Constant) and isinstance(k.value, str) \
                            and _mentions(v, name):
                        keys.append(k.value)
                        exported = True
            elif isinstance(value, ast.Call) and self.module.call_name(value) == "dict":
                for kw in value.keywords:
                    if kw.arg and _mentions(kw.value, name):
                        keys.append(kw.arg)
                        exported = True
            elif isinstance(value, ast.Tuple):
                for i, element in enumerate(value.elts):
                    if _mentions(element, name):
                        tuple_index = i
                        exported = True
            elif ("[" in name and _target_name(value) == name.split("[", 1)[0]) or _mentions(value, name):
                exported = True
        if "[" not in name:
            keys.append(name)
        return _Export(tuple(dict.fromkeys(keys)), tuple_index, exported)


def _stacked_element(value: ast.expr, module: ModuleFacts) -> ast.AST:
    """``torch.stack([f(data[i+1:i+1+T]) for i in ix])`` → ``data[i+1:i+1+T]``."""
    if (isinstance(value, ast.Call) and value.args
            and module.call_name(value) in ("torch.stack", "numpy.stack", "torch.cat")
            and isinstance(value.args[0], ast.ListComp | ast.GeneratorExp)):
        element: ast.AST = value.args[0].elt
        while isinstance(element, ast.Call):
            qual = module.call_name(element) or ""
            if qual.split(".")[0] in ("torch", "numpy") and element.args:
                element = element.args[0]  # torch.from_numpy(x), np.asarray(x)
            elif isinstance(element.func, ast.Attribute) and element.func.attr in PASS_THROUGH:
                element = element.func.value  # x.astype(np.int64)
            else:
                break
        return element
    return value


def _is_whole_value(stmt: ast.stmt, value: ast.expr) -> bool:
    """``labels = torch.roll(...)``: the call is the entire right-hand side of one target."""
    return isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and stmt.value is value


def _is_full(e: ast.expr) -> bool:
    return (isinstance(e, ast.Constant) and e.value is Ellipsis) or (
        isinstance(e, ast.Slice) and e.lower is None and e.upper is None and e.step is None)


def _mentions(node: ast.AST, name: str) -> bool:
    """Whether an expression refers to a variable (``labels``, ``item["labels"]``)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name | ast.Attribute | ast.Subscript) and _target_name(sub) == name:
            return True
    return False


def _value_of(node: ast.AST, module: ModuleFacts) -> Value:
    number = int_value(node)
    if number is not None:
        return Value(number=number)
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return Value(number=int(node.value))
    if isinstance(node, ast.Name | ast.Attribute):
        return Value(name=module.segment(node))
    return Value()


# --------------------------------------------------------------------------- loss sites


class _LossFinder:
    def __init__(self, module: ModuleFacts, facts: LabelFacts) -> None:
        self.module = module
        self.facts = facts
        self.loss_objects = self._loss_objects()
        self.hf_models = self._hf_model_names()
        # Every assignment in the file by the last part of its target (``self.model`` →
        # ``model``), for finding the class a model variable was built from.
        self.assigned_anywhere: dict[str, list[_Assignment]] = {}
        for node in module.nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if (name := _target_name(target)) is not None:
                        short = name.rsplit(".", 1)[-1]
                        self.assigned_anywhere.setdefault(short, []).append(
                            _Assignment(short, node.value, node))

    def site(self, node: ast.AST) -> Site:
        return Site(self.module.path, self.module.span(node), self.module.segment(node)[:120])

    def _loss_objects(self) -> dict[str, Value]:
        """Names/attributes bound to a CE/NLL loss instance, with their ignore_index."""
        found: dict[str, Value] = {}
        for node in self.module.nodes:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                    and self.module.call_name(node.value) in LOSS_CLASSES:
                ignore = keyword(node.value, "ignore_index")
                value = self.value(ignore) if ignore is not None else Value(DEFAULT_IGNORE_INDEX)
                for target in node.targets:
                    name = _target_name(target)
                    if name:
                        found[name] = value
                        found[name.rsplit(".", 1)[-1]] = value
        return found

    def _hf_model_names(self) -> set[str]:
        """Names bound to HF causal-LM models (``AutoModelForCausalLM.from_pretrained``)."""
        names: set[str] = set()
        for node in self.module.nodes:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                qual = self.module.call_name(node.value) or ""
                head = qual.rsplit(".", 2)
                cls = head[-2] if qual.endswith(".from_pretrained") and len(head) >= 2 else head[-1]
                if cls.endswith(("ForCausalLM", "LMHeadModel")):
                    for target in node.targets:
                        if (name := _target_name(target)) is not None:
                            names.add(name)
                            names.add(name.rsplit(".", 1)[-1])
        return names

    def value(self, node: ast.AST) -> Value:
        value = _value_of(node, self.module)
        if value.name is not None and value.name in self.facts.constants:
            return Value(number=self.facts.constants[value.name])
        return value

    def find(self, scope: _Scope, model_classes: dict[str, ast.ClassDef]) -> None:
        for node in walk_local(scope.body):
            if not isinstance(node, ast.Call):
                continue
            qual = self.module.call_name(node) or ""
            callee = _target_name(node.func) or ""
            # Project helpers named like one (litgpt's ``chunked_cross_entropy``) count too.
            if qual in LOSS_FUNCTIONS or qual.rsplit(".", 1)[-1].endswith("cross_entropy"):
                ignore = keyword(node, "ignore_index")
                self.add_ce(scope, node, self.value(ignore) if ignore is not None
                            else Value(DEFAULT_IGNORE_INDEX), ignore is not None)
            elif callee in self.loss_objects or callee.rsplit(".", 1)[-1] in self.loss_objects:
                value = self.loss_objects.get(callee) or self.loss_objects[callee.rsplit(".", 1)[-1]]
                self.add_ce(scope, node, value, True)
            elif isinstance(node.func, ast.Call) and self.module.call_name(node.func) in LOSS_CLASSES:
                ignore = keyword(node.func, "ignore_index")
                self.add_ce(scope, node, self.value(ignore) if ignore is not None
                            else Value(DEFAULT_IGNORE_INDEX), ignore is not None)
            else:
                self.model_call(scope, node, callee)

    def add_ce(self, scope: _Scope, call: ast.Call, ignore: Value, explicit: bool) -> None:
        logits = argument(call, 0, "input")
        labels = argument(call, 1, "target")
        if logits is None or labels is None:
            return
        logits_trace = _trace(self.module, scope, logits, call.lineno, producers=self.facts.producers)
        labels_trace = _trace(self.module, scope, labels, call.lineno, producers=self.facts.producers)
        # A loss-side shift slices the labels one later: ``labels[..., 1:]`` (the logits'
        # ``[..., :-1, :]`` may be applied elsewhere, e.g. to the last of a list of chunks).
        # Slicing the *inputs* there (``x[:, 1:]`` with ``model(x[:, :-1])``) is where the
        # labels are made, not a second shift; dropping the last position of both logits
        # and labels only trims a wrapped tail.
        label_slice = labels_trace.shift_slice
        shifts = label_slice is not None and (
            logits_trace.drop_last is not None or is_label_name(_base_name(label_slice.value) or ""))
        shift_site = label_slice if shifts else None
        origin = labels_trace.origin
        same = (not shifts and labels_trace.root_text is not None
                and labels_trace.root_text == self._model_input(scope, logits_trace, call.lineno))
        self.facts.losses.append(LossSite(
            scope=scope.name, site=self.site(call), shifts=shifts, how="slice" if shifts else "none",
            origin=origin, ignore_index=ignore, shift_site=self.site(shift_site) if shift_site else None,
            same_as_input=same,
            logits_root=self.site(_arg_root(logits)), labels_root=self.site(_arg_root(labels)),
            ignore_explicit=explicit, trace_vars=tuple(labels_trace.names)))

    def _model_input(self, scope: _Scope, logits: _Trace, before: int) -> str | None:
        """The token tensor the logits were computed from: ``logits = model(x)`` → ``x``."""
        call = logits.model_call
        if call is None or not call.args:
            return None
        first = _trace(self.module, scope, call.args[0], before, producers=self.facts.producers)
        return first.root_text

    def model_call(self, scope: _Scope, call: ast.Call, callee: str) -> None:
        """``model(input_ids, labels=labels)`` on a model that computes a shifted loss."""
        labels_arg = keyword(call, "labels")
        short = callee.rsplit(".", 1)[-1]
        if callee in self.hf_models or short in self.hf_models:
            if keyword(call, "shift_labels") is not None:
                return  # the caller shifted explicitly; the model will not shift again
            if labels_arg is None:
                if any(kw.arg is None for kw in call.keywords):  # model(**batch)
                    self.add_model_loss(scope, call, Origin("key", "labels"), True, None)
                return
            trace = _trace(self.module, scope, labels_arg, call.lineno, producers=self.facts.producers)
            self.add_model_loss(scope, call, trace.origin, True, None)
            return
        if not callee or not isinstance(call.func, ast.Name | ast.Attribute):
            return
        model_class = self._model_class(scope, callee, call.lineno)
        if model_class is None:
            return
        arguments = [(str(i), _trace(self.module, scope, arg, call.lineno, producers=self.facts.producers).origin)
                     for i, arg in enumerate(call.args)]
        arguments += [(kw.arg, _trace(self.module, scope, kw.value, call.lineno, producers=self.facts.producers).origin)
                      for kw in call.keywords if kw.arg]
        self.facts.model_calls.append(ModelCall(scope.name, model_class, tuple(arguments),
                                                self.site(call)))

    def _model_class(self, scope: _Scope, callee: str, before: int) -> str | None:
        """The class a called model variable was built from: ``model = GPT(cfg)`` → GPT."""
        name = callee.rsplit(".", 1)[-1]
        candidates = [scope.last_assignment(callee, before), *self.assigned_anywhere.get(name, ())]
        for candidate in candidates:
            if candidate is None:
                continue
            value = candidate.value
            # model = GPT(cfg).to(device) / torch.compile(GPT(cfg))
            while isinstance(value, ast.Call):
                qual = self.module.call_name(value) or ""
                if qual in ("torch.compile",) and value.args:
                    value = value.args[0]
                    continue
                if isinstance(value.func, ast.Attribute) and value.func.attr in ("to", "cuda", "train"):
                    value = value.func.value
                    continue
                if (qual and qual[:1].isupper()) or (qual and qual.rsplit(".", 1)[-1][:1].isupper()):
                    return qual
                break
        return None

    def add_model_loss(self, scope: _Scope, call: ast.Call, origin: Origin, shifts: bool,
                       model_site: Site | None) -> None:
        self.facts.losses.append(LossSite(
            scope=scope.name, site=self.site(call), shifts=shifts, how="model", origin=origin,
            ignore_index=Value(DEFAULT_IGNORE_INDEX), model_site=model_site))


@dataclass
class _Trace:
    origin: Origin
    root: ast.AST | None = None
    root_text: str | None = None
    shift_slice: ast.Subscript | None = None  # labels[..., 1:] on the way
    drop_last: ast.Subscript | None = None  # logits[..., :-1, :] on the way
    model_call: ast.Call | None = None
    names: list[str] = field(default_factory=list)


def _trace(module: ModuleFacts, scope: _Scope, node: ast.AST, before: int,
           depth: int = 0, producers: list[LabelProducer] | None = None) -> _Trace:
    """Follow an expression back through wrappers, slices and local assignments."""
    trace = _Trace(Origin("unknown"))
    seen = 0
    while seen < 24:
        seen += 1
        node = _strip(node)
        if isinstance(node, ast.Subscript):
            key = _const_key(node)
            if key is not None:
                trace.origin = Origin("key", key)
                trace.root = node
                trace.root_text = module.segment(node)
                return trace
            elements = _slice_elements(node)
            if trace.shift_slice is None and any(_is_lower_one(e) for e in elements):
                trace.shift_slice = node
            if trace.drop_last is None and any(_is_drop_last(e) for e in elements):
                trace.drop_last = node
            node = node.value
            continue
        if isinstance(node, ast.Call):
            # logits = model(x) / outputs = model(x); logits = outputs.logits
            trace.model_call = trace.model_call or node
            qual = module.call_name(node)
            trace.origin = Origin("call", qual or "")
            trace.root = node
            return trace
        if isinstance(node, ast.Attribute) and node.attr == "logits":
            node = node.value
            continue
        if isinstance(node, ast.Name | ast.Attribute):
            name = _target_name(node)
            if name is None:
                return trace
            trace.root = node
            trace.root_text = name
            trace.names.append(name)
            assignment = scope.last_assignment(name, before)
            if assignment is not None:
                producer_index = _producer_index(producers, scope.name, name, assignment)
                if producer_index is not None:
                    trace.origin = Origin("local", name, producer=producer_index)
                    return trace
                if assignment.tuple_index is not None:
                    inner = _trace(module, scope, assignment.value, assignment.statement.lineno,
                                   depth + 1, producers)
                    trace.origin = Origin(inner.origin.kind if inner.origin.kind == "call"
                                          else "index", inner.origin.value,
                                          index=assignment.tuple_index)
                    trace.model_call = trace.model_call or inner.model_call
                    return trace
                node = assignment.value
                before = assignment.statement.lineno
                continue
            if name in scope.loop_targets:
                iterable, index = scope.loop_targets[name]
                trace.origin = Origin("index", module.segment(iterable), index=index) \
                    if index is not None else Origin("name", name)
                return trace
            if name in scope.params:
                trace.origin = Origin("param", name)
                return trace
            trace.origin = Origin("name", name)
            return trace
        return trace
    return trace


def _producer_index(producers: list[LabelProducer] | None, scope: str, name: str,
                    assignment: _Assignment) -> int | None:
    if not producers:
        return None
    for i, producer in enumerate(producers):
        if (producer.scope == scope and producer.var == name
                and producer.statement.span.line == assignment.statement.lineno):
            return i
    return None


# --------------------------------------------------------------------------- models


def _model_losses(module: ModuleFacts, facts: LabelFacts) -> None:
    """Project model classes whose forward computes a loss on a parameter."""
    for qual, cls in module.classes.items():
        forward = next((s for s in cls.body if isinstance(s, ast.FunctionDef)
                        and s.name == "forward"), None)
        if forward is None:
            continue
        params = [a.arg for a in forward.args.args[1:]]
        scope_name = f"{qual}.forward"
        for loss in facts.losses:
            if loss.scope == scope_name and loss.origin.kind == "param" \
                    and loss.origin.value in params:
                facts.model_losses.append(ModelLoss(
                    qual.rsplit(".", 1)[-1], loss.origin.value, params.index(loss.origin.value),
                    loss.shifts, loss.site))


def _constants(module: ModuleFacts) -> dict[str, int]:
    found: dict[str, int] = {}
    for node in module.tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            value = int_value(node.value)
            if value is not None:
                found[node.targets[0].id] = value
    return found


def label_facts(module: ModuleFacts) -> LabelFacts:
    """All label facts of one file (also used directly by module rules)."""
    cached = getattr(module, "_label_facts", None)
    if isinstance(cached, LabelFacts):
        return cached
    facts = LabelFacts(constants=_constants(module))
    scopes = _scopes(module)
    producers = _ProducerFinder(module, facts)
    for scope in scopes:
        producers.find(scope)
        producers.masks(scope)
    losses = _LossFinder(module, facts)
    for scope in scopes:
        losses.find(scope, module.classes)
    _model_losses(module, facts)
    module._label_facts = facts  # type: ignore[attr-defined]
    return facts


summarizer(FAMILY, triggers=TRIGGERS)(label_facts)


# --------------------------------------------------------------------------- across files


class LabelGraph:
    """Producers, masks and loss sites of the whole project, linked by where labels flow.

    A loss site's labels link to a producer when they are the same local variable,
    the same batch key (``batch["labels"]`` ↔ a data set returning ``{"labels": ...}``),
    the same tuple position (``for x, y in loader`` ↔ ``return x, y``), or the result
    of calling the producing function (``x, y = get_batch()``) — in files connected
    by imports.
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self.facts: dict[str, LabelFacts] = {s.path: f for s, f in project.facts(FAMILY)}
        self.losses: list[tuple[ModuleSummary, LossSite]] = []
        for summary, facts in project.facts(FAMILY):
            self.losses.extend((summary, loss) for loss in facts.losses)
            for call in facts.model_calls:
                loss = self._model_call_loss(summary, facts, call)
                if loss is not None:
                    self.losses.append((summary, loss))

    @classmethod
    def of(cls, project: Project) -> LabelGraph:
        graph = getattr(project, "_label_graph", None)
        if not isinstance(graph, LabelGraph):
            graph = cls(project)
            project._label_graph = graph  # type: ignore[attr-defined]
        return graph

    def _model_call_loss(self, summary: ModuleSummary, facts: LabelFacts,
                         call: ModelCall) -> LossSite | None:
        """``model(x, y)`` where the model's class computes a loss on ``y``."""
        short = call.class_name.rsplit(".", 1)[-1]
        candidates = [m for m in facts.model_losses if m.class_name == short]
        if not candidates:
            resolved = self.project.resolve_symbol(call.class_name)
            if resolved is not None:
                other = self.facts.get(resolved[0].path)
                if other is not None:
                    candidates = [m for m in other.model_losses if m.class_name == resolved[1]]
        for model in candidates:
            for key, origin in call.arguments:
                if key in (model.param, str(model.param_index)):
                    return LossSite(scope=call.scope, site=call.site, shifts=model.shifts,
                                    how="model", origin=origin,
                                    ignore_index=Value(DEFAULT_IGNORE_INDEX), model_site=model.site)
        return None

    def _linked(self, summary: ModuleSummary, loss: LossSite, kind: str
                ) -> list[tuple[ModuleSummary, LabelProducer | LabelMask]]:
        origin = loss.origin
        found: list[tuple[ModuleSummary, LabelProducer | LabelMask]] = []
        facts = self.facts.get(summary.path)
        if facts is None:
            return found
        if kind == "producers" and origin.kind == "local" and origin.producer is not None:
            return [(summary, facts.producers[origin.producer])]
        # Only files that can pass _reaches, in the order of self.facts.
        for other_path in sorted(self._reachable_files(summary.path) & self.facts.keys(),
                                 key=self._fact_order.__getitem__):
            other = self.facts[other_path]
            items: list[LabelProducer] | list[LabelMask] = \
                other.producers if kind == "producers" else other.masks
            other_summary = self.project.by_path[other_path]
            for item in items:
                if self._links(summary, loss, other_summary, item):
                    found.append((other_summary, item))
        return found

    def _links(self, summary: ModuleSummary, loss: LossSite, other: ModuleSummary,
               item: LabelProducer | LabelMask) -> bool:
        origin = loss.origin
        same_scope = other.path == summary.path and item.scope == loss.scope
        if same_scope:
            if isinstance(item, LabelMask):
                return item.var in loss.trace_vars or (
                    origin.kind == "local" and item.var == origin.value)
            return False  # local producers link through Origin.producer
        if not self._reaches(summary.path, other, item.scope):
            return False
        if origin.kind == "call":
            target = origin.value
            if "." not in target and other.path == summary.path:
                return item.scope == target and _index_ok(item, origin.index)
            resolved = self.project.resolve_symbol(target) if "." in target else None
            return (resolved is not None and resolved[0].path == other.path
                    and item.scope == resolved[1] and _index_ok(item, origin.index))
        if not item.exported and "[" not in item.var:
            return False
        if origin.kind == "key":
            return origin.value in item.keys
        if origin.kind == "index":
            return origin.index is not None and item.tuple_index == origin.index
        return False

    def _reaches(self, consumer: str, producer: ModuleSummary, scope: str) -> bool:
        """Whether the labels made in ``scope`` can reach a loss in ``consumer``: some module
        that uses the producing class or function (``TextDataset``, ``collate_fn``) is the
        consumer's module or imports it. Mere membership of one package is not enough."""
        owner = scope.split(".", 1)[0]
        if not owner:
            return consumer == producer.path
        for user in self.users_of(producer, owner):
            if user == consumer or consumer in self.project.import_graph.get(user, ()):
                return True
        return False

    def users_of(self, producer: ModuleSummary, owner: str) -> set[str]:
        """Paths of modules that define or import a name of ``producer``'s module."""
        by_name = self._alias_index[0]
        return ({producer.path} | by_name.get((producer.path, owner), set())
                | by_name.get((producer.path, "*"), set()))

    @cached_property
    def _alias_index(self) -> tuple[dict[tuple[str, str], set[str]], dict[str, set[str]]]:
        """Import aliases resolved once: (module path, first name) → paths of the modules
        that import that name, and path → the checked modules its aliases name."""
        by_name: dict[tuple[str, str], set[str]] = {}
        targets: dict[str, set[str]] = {}
        for summary in self.project.modules:
            for qualified in summary.aliases.values():
                resolved = self.project.resolve_symbol(qualified) if "." in qualified else None
                if resolved is not None:
                    name = resolved[1].split(".", 1)[0]
                    by_name.setdefault((resolved[0].path, name), set()).add(summary.path)
                    targets.setdefault(summary.path, set()).add(resolved[0].path)
        return by_name, targets

    @cached_property
    def _fact_order(self) -> dict[str, int]:
        return {path: index for index, path in enumerate(self.facts)}

    def _reachable_files(self, consumer: str) -> set[str]:
        """Every file whose producers or masks can pass ``_reaches`` for ``consumer``: the
        consumer, its importers, and the modules those two name in imports. (A producer
        file reaches when one of its users is the consumer or imports it, and a user is
        the file itself or a module with an alias resolving to it.) Without this, linking
        tries every file for every loss: quadratic in the size of the tree."""
        cache: dict[str, set[str]] = self.__dict__.setdefault("_reachable", {})
        if consumer not in cache:
            near = {consumer} | self.project.importers.get(consumer, set())
            found = set(near)
            targets = self._alias_index[1]
            for user in near:
                found |= targets.get(user, set())
            cache[consumer] = found
        return cache[consumer]

    def producers_for(self, summary: ModuleSummary, loss: LossSite
                      ) -> list[tuple[ModuleSummary, LabelProducer]]:
        return [(s, p) for s, p in self._linked(summary, loss, "producers")
                if isinstance(p, LabelProducer)]

    def masks_for(self, summary: ModuleSummary, loss: LossSite
                  ) -> list[tuple[ModuleSummary, LabelMask]]:
        return [(s, m) for s, m in self._linked(summary, loss, "masks")
                if isinstance(m, LabelMask)]

    def consumers(self) -> dict[tuple[str, LabelProducer], list[tuple[ModuleSummary, LossSite]]]:
        """Producer (by file) → the loss sites its labels reach."""
        result: dict[tuple[str, LabelProducer], list[tuple[ModuleSummary, LossSite]]] = {}
        for summary, loss in self.losses:
            for other, producer in self.producers_for(summary, loss):
                result.setdefault((other.path, producer), []).append((summary, loss))
        return result

    def producers(self) -> list[tuple[ModuleSummary, LabelProducer]]:
        return [(self.project.by_path[p], producer) for p, f in self.facts.items()
                for producer in f.producers]


def _index_ok(item: LabelProducer | LabelMask, index: int | None) -> bool:
    return index is None or item.tuple_index is None or item.tuple_index == index
