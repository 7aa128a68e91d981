"""Fixes of the accumulation rules (TA201–TA206).

TA201 (feature) turns a loop that steps on every micro-batch into one that
accumulates: a ``for`` loop over a loader iterates windows of micro-batches
(``accumulation_windows(loader, k)``, the last window of an epoch may be
shorter and is still stepped), a ``while`` loop that fetches its own batches
runs the fetch-forward-backward part ``k`` times. The loss is divided by the
window's length; everything after the backward (clipping, the optimizer and
scheduler steps, logging, step counters) then runs once per optimizer step.
When the step lives in a helper (``train_step(model, batch, optimizer, ...)``),
the helper gains ``accumulation_steps=1, sync_gradients=True`` parameters (its
other callers keep their behaviour): it divides the loss and runs its update
part only when ``sync_gradients`` is true.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, code_of, fit_new_lines, line_length

WINDOWS_HELPER = '''def accumulation_windows(iterable, size):
    """Group micro-batches into lists of `size` (gradient accumulation).

    The last list may be shorter.
    """
    window = []
    for item in iterable:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window
'''

_UPDATE_METHODS = frozenset({"step", "zero_grad", "clip_grad_norm_", "clip_grad_value_",
                             "clip_grad_norm", "clip_gradients", "unscale_"})

Rewrite = Callable[[Any], Any]


# --------------------------------------------------------------------------- CST plumbing


class Edits(cst.CSTTransformer):
    """Edits planned on the original tree, applied in one pass.

    ``rewrite[node]`` gets the node with its children already edited; statements can be
    removed or get statements inserted before/after them.
    """

    def __init__(self) -> None:
        self.rewrite: dict[cst.CSTNode, Rewrite] = {}
        self.before: dict[cst.CSTNode, list[cst.BaseStatement]] = {}
        self.after: dict[cst.CSTNode, list[cst.BaseStatement]] = {}
        self.remove: set[cst.CSTNode] = set()

    def insert_before(self, stmt: cst.CSTNode, *new: cst.BaseStatement) -> None:
        self.before.setdefault(stmt, []).extend(new)

    def insert_after(self, stmt: cst.CSTNode, *new: cst.BaseStatement) -> None:
        self.after.setdefault(stmt, []).extend(new)

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> Any:
        result: Any = updated_node
        if original_node in self.rewrite:
            result = self.rewrite[original_node](updated_node)
        before = self.before.get(original_node, [])
        after = self.after.get(original_node, [])
        if original_node in self.remove:
            if before or after:
                return cst.FlattenSentinel([*before, *after])
            return cst.RemoveFromParent()
        if before or after:
            return cst.FlattenSentinel([*before, result, *after])
        return result

    def apply(self, module: cst.Module) -> cst.Module:
        result = module.visit(self)
        assert isinstance(result, cst.Module)
        return result


def statement(code: str) -> cst.BaseStatement:
    return cst.parse_statement(code)


def expression(code: str) -> cst.BaseExpression:
    return cst.parse_expression(code)


def contains(located: Located, outer: cst.CSTNode, line: int, column: int) -> bool:
    pos = located.range(outer)
    start = (pos.start.line, pos.start.column + 1)
    end = (pos.end.line, pos.end.column + 1)
    return start <= (line, column) < end or (line, column) == start


def call_at(located: Located, line: int, column: int) -> cst.Call | None:
    calls = located.at(line, column, cst.Call)
    return calls[0] if calls and isinstance(calls[0], cst.Call) else None


def index_containing(located: Located, stmts: Sequence[cst.CSTNode], line: int, column: int) -> int | None:
    for index, stmt in enumerate(stmts):
        if contains(located, stmt, line, column):
            return index
    return None


def block_of(located: Located, stmt: cst.CSTNode) -> tuple[cst.CSTNode, list[cst.BaseStatement]]:
    """The block (IndentedBlock or Module) a statement is in, and its statements."""
    parent = located.parent(stmt)
    body = parent.body if isinstance(parent, cst.IndentedBlock | cst.Module) else None
    if not isinstance(body, Sequence):
        raise ValueError("statement not in a block")
    return parent, list(body)


def top_statement(located: Located, node: cst.CSTNode, block_stmts: Sequence[cst.CSTNode]) -> cst.CSTNode | None:
    """The statement of ``block_stmts`` that contains ``node``."""
    current: cst.CSTNode | None = node
    members = set(block_stmts)
    while current is not None and current not in members:
        current = located.parents.get(current)
    return current


class _Names(cst.CSTVisitor):
    def __init__(self) -> None:
        self.used: set[str] = set()
        self.assigned: set[str] = set()
        self.calls: list[cst.Call] = []

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.used.add(node.value)

    def visit_Call(self, node: cst.Call) -> None:
        self.calls.append(node)

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.assigned |= _target_names(node.target)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self.assigned |= _target_names(node.target)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self.assigned |= _target_names(node.target)

    def visit_For(self, node: cst.For) -> None:
        self.assigned |= _target_names(node.target)

    def visit_WithItem(self, node: cst.WithItem) -> None:
        if node.asname is not None:
            self.assigned |= _target_names(node.asname.name)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.assigned.add(node.name.value)
        return False


def names(node: cst.CSTNode) -> _Names:
    visitor = _Names()
    node.visit(visitor)
    return visitor


def _target_names(node: cst.BaseExpression | cst.BaseAssignTargetExpression) -> set[str]:
    if isinstance(node, cst.Name):
        return {node.value}
    if isinstance(node, cst.Tuple | cst.List):
        found: set[str] = set()
        for element in node.elements:
            found |= _target_names(element.value)
        return found
    if isinstance(node, cst.StarredElement):
        return _target_names(node.value)
    return set()


def method_calls(node: cst.CSTNode) -> set[str]:
    """Names of the methods/functions called in a node (``step``, ``zero_grad``...)."""
    found = set()
    for call in names(node).calls:
        if isinstance(call.func, cst.Attribute):
            found.add(call.func.attr.value)
        elif isinstance(call.func, cst.Name):
            found.add(call.func.value)
    return found


def is_update(node: cst.CSTNode) -> bool:
    """Optimizer/scheduler steps, zero_grad, clipping, unscale_, scaler.update()."""
    for call in names(node).calls:
        func = call.func
        if isinstance(func, cst.Attribute):
            if func.attr.value in _UPDATE_METHODS:
                return True
            if func.attr.value == "update" and "scaler" in code_of(func.value).lower():
                return True
    return False


def only_call(stmt: cst.CSTNode, method: str) -> bool:
    """A simple statement that is just ``x.method(...)``."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return False
    expr = stmt.body[0]
    return (isinstance(expr, cst.Expr) and isinstance(expr.value, cst.Call)
            and isinstance(expr.value.func, cst.Attribute) and expr.value.func.attr.value == method)


def fresh_name(taken: set[str], *candidates: str) -> str:
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    base = candidates[-1]
    index = 2
    while f"{base}{index}" in taken:
        index += 1
    return f"{base}{index}"


def ensure_import(edits: Edits, module: cst.Module, name: str) -> None:
    """Add ``import name`` to the first block of plain imports, in order, unless it is bound."""
    plain: list[tuple[str, cst.SimpleStatementLine]] = []
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Import):
            modules = [code_of(a.name) for a in stmt.body[0].names]
            if name in modules and not any(a.asname for a in stmt.body[0].names):
                return
            plain.append((modules[0], stmt))
        elif plain:
            break
    new = statement(f"import {name}\n")
    for imported, stmt in plain:
        if imported > name:
            edits.insert_before(stmt, new.with_changes(leading_lines=stmt.leading_lines))
            edits.rewrite[stmt] = _chain(edits.rewrite.get(stmt), lambda node: node.with_changes(leading_lines=[]))
            return
    if plain:
        edits.insert_after(plain[-1][1], new)
        return
    anchor = _first_import(module)
    if anchor is not None:
        edits.insert_before(anchor, new)
    else:
        edits.insert_before(module.body[0], new)


def _first_import(module: cst.Module) -> cst.BaseStatement | None:
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body):
            small = stmt.body[0]
            if isinstance(small, cst.ImportFrom) and small.module is not None \
                    and code_of(small.module) == "__future__":
                continue
            return stmt
    return None


def add_module_function(edits: Edits, module: cst.Module, code: str) -> None:
    """Define a function at module level: before the first def/class, else after the imports."""
    new = cst.parse_module(code).body[0].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
    for stmt in module.body:
        if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
            edits.insert_before(stmt, new)
            return
    anchor = _last_top_import(module)
    if anchor is None:
        edits.insert_before(module.body[0], new)
        return
    edits.insert_after(anchor, new)
    body: list[Any] = list(module.body)
    following = body[body.index(anchor) + 1:]
    if following:
        nxt = following[0]

        def spaced(node: Any) -> Any:
            lines = list(node.leading_lines)
            blank = 0
            while blank < len(lines) and lines[blank].comment is None:
                blank += 1
            return node.with_changes(leading_lines=[cst.EmptyLine()] * max(0, 2 - blank) + lines)

        edits.rewrite[nxt] = _chain(edits.rewrite.get(nxt), spaced)


def _last_top_import(module: cst.Module) -> cst.BaseStatement | None:
    last = None
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body):
            last = stmt
        elif isinstance(stmt, cst.FunctionDef | cst.ClassDef):
            break
    return last


def function_by_name(module: cst.Module, dotted: str) -> cst.FunctionDef | None:
    """A function or method by its dotted path within the file (``Trainer.step``)."""

    def search(body: Iterable[cst.CSTNode], prefix: str) -> cst.FunctionDef | None:
        for stmt in body:
            if isinstance(stmt, cst.FunctionDef):
                name = prefix + stmt.name.value
                if name == dotted:
                    return stmt
                found = search(_block_body(stmt.body), name + ".")
                if found is not None:
                    return found
            elif isinstance(stmt, cst.ClassDef):
                found = search(_block_body(stmt.body), prefix + stmt.name.value + ".")
                if found is not None:
                    return found
            elif isinstance(stmt, cst.If | cst.Try | cst.With):
                found = search(_block_body(stmt.body), prefix)
                if found is not None:
                    return found
        return None

    return search(module.body, "")


def _block_body(block: cst.BaseSuite) -> Sequence[cst.CSTNode]:
    return block.body if isinstance(block, cst.IndentedBlock) else []


def all_names(node: cst.CSTNode) -> set[str]:
    found = names(node)
    return found.used | found.assigned


def parenthesized(expr: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(expr, cst.Name | cst.Attribute | cst.Call | cst.Subscript) or expr.lpar:
        return expr
    return expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


def divided(expr: cst.BaseExpression, divisor: str) -> cst.BinaryOperation:
    return cst.BinaryOperation(left=parenthesized(expr), operator=cst.Divide(
        whitespace_before=cst.SimpleWhitespace(" "), whitespace_after=cst.SimpleWhitespace(" ")),
        right=parenthesized(expression(divisor)))


def divide_backward(call: cst.Call, divisor: str) -> cst.Call:
    """``loss.backward()`` → ``(loss / k).backward()``; ``scaler.scale(loss)`` keeps the scale."""
    func = call.func
    if isinstance(func, cst.Attribute) and func.attr.value == "backward" and not call.args:
        value = func.value
        if (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)
                and value.func.attr.value == "scale" and value.args):
            first = value.args[0]
            scaled = value.with_changes(args=[first.with_changes(value=divided(first.value, divisor)),
                                              *value.args[1:]])
            return call.with_changes(func=func.with_changes(value=scaled))
        quotient = divided(value, divisor).with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        return call.with_changes(func=func.with_changes(value=quotient))
    if call.args:  # accelerator.backward(loss), torch.autograd.backward(loss)
        first = call.args[0]
        return call.with_changes(args=[first.with_changes(value=divided(first.value, divisor)),
                                       *call.args[1:]])
    return call


def _multiline_commas(last: cst.Comma | cst.MaybeSentinel, previous: cst.Comma | cst.MaybeSentinel | None
                      ) -> tuple[cst.Comma, cst.Comma] | None:
    """(comma between items, comma after the last item) of a one-item-a-line list, else None."""
    if not isinstance(last, cst.Comma) or not isinstance(last.whitespace_after, cst.ParenthesizedWhitespace):
        return None
    if isinstance(previous, cst.Comma) and isinstance(previous.whitespace_after, cst.ParenthesizedWhitespace):
        return previous, last
    indent = cst.SimpleWhitespace(last.whitespace_after.last_line.value + "    ")
    return last.with_changes(whitespace_after=last.whitespace_after.with_changes(last_line=indent)), last


_SPACE_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def _joined(items: list[Any], new: list[Any]) -> list[Any]:
    """Append items to a comma-separated list, keeping its layout (one line, or one a line)."""
    if not items:
        return [n.with_changes(comma=_SPACE_COMMA) for n in new[:-1]] + new[-1:]
    last = items[-1]
    layout = _multiline_commas(last.comma, items[-2].comma if len(items) > 1 else None)
    if layout is not None:
        between, final = layout
        items = [*items[:-1], last.with_changes(comma=between)]
        new = [n.with_changes(comma=between) for n in new[:-1]] + [new[-1].with_changes(comma=final)]
        return [*items, *new]
    trailing = last.comma
    items = [*items[:-1], last.with_changes(comma=_SPACE_COMMA)]
    new = [n.with_changes(comma=_SPACE_COMMA) for n in new[:-1]] + [new[-1].with_changes(
        comma=cst.MaybeSentinel.DEFAULT if trailing is cst.MaybeSentinel.DEFAULT else trailing)]
    return [*items, *new]


def add_parameters(fn: cst.FunctionDef, params: Sequence[tuple[str, str, str]]) -> cst.FunctionDef:
    """Append ``name: annotation = default`` parameters (annotated only if the def is)."""
    typed = any(p.annotation is not None for p in fn.params.params)
    space = cst.SimpleWhitespace(" " if typed else "")
    new = [cst.Param(name=cst.Name(name),
                     annotation=cst.Annotation(expression(annotation)) if typed else None,
                     equal=cst.AssignEqual(whitespace_before=space, whitespace_after=space),
                     default=expression(default))
           for name, annotation, default in params]
    parameters = fn.params
    if parameters.star_kwarg is not None:
        return fn  # **kwargs would swallow nothing, but keep the signature simple: not supported
    if parameters.star_arg is not cst.MaybeSentinel.DEFAULT or parameters.kwonly_params:
        parameters = parameters.with_changes(kwonly_params=_joined(list(parameters.kwonly_params), new))
    else:
        parameters = parameters.with_changes(params=_joined(list(parameters.params), new))
    return fn.with_changes(params=parameters)


def add_keywords(call: cst.Call, keywords: Sequence[tuple[str, str]]) -> cst.Call:
    no_space = cst.SimpleWhitespace("")
    new = [cst.Arg(value=expression(value), keyword=cst.Name(name),
                   equal=cst.AssignEqual(whitespace_before=no_space, whitespace_after=no_space))
           for name, value in keywords]
    return call.with_changes(args=_joined(list(call.args), new))


def indented(stmts: Sequence[cst.BaseStatement]) -> cst.IndentedBlock:
    return cst.IndentedBlock(body=list(stmts))


def first_without_leading_lines(stmts: list[cst.BaseStatement]) -> tuple[list[cst.BaseStatement], Sequence[cst.EmptyLine]]:
    """Move the first statement's leading comment lines out, to the new enclosing statement."""
    if not stmts:
        return stmts, []
    first = stmts[0]
    leading = getattr(first, "leading_lines", [])
    if leading:
        stmts = [first.with_changes(leading_lines=[]), *stmts[1:]]
    return stmts, leading


# --------------------------------------------------------------------------- TA201


def _setting(located: Located, edits: Edits, data: Mapping[str, Any], loop: cst.CSTNode,
             function: cst.FunctionDef | None, steps: int) -> tuple[str, str]:
    """Where the accumulation setting lives: (expression, note). An argparse flag next to the
    batch size, else a parameter of the loop's function, else a module-level constant."""
    module = located.module
    source = str(data.get("batch_source") or "")
    match = re.match(r"argparse (--[\w-]+) default", source)
    scope: cst.CSTNode = function if function is not None else module
    if match:
        flag = match.group(1)
        dest = flag.lstrip("-").replace("-", "_")
        namespace = _namespace_of(scope, dest) or _namespace_of(module, dest)
        add_argument = _add_argument_statement(module, flag)
        if namespace and add_argument is not None:
            parser, stmt = add_argument
            new_flag = "--accumulation-steps" if "-" in flag.lstrip("-") else "--accumulation_steps"
            if _add_argument_statement(module, new_flag) is not None:  # a second loop: reuse
                return f"{namespace}.accumulation_steps", f"flag {new_flag}"
            edits.insert_after(stmt, statement(
                f'{parser}.add_argument("{new_flag}", type=int, default={steps}, '
                f'help="micro-batches per optimizer step")\n'))
            return f"{namespace}.accumulation_steps", f"new flag {new_flag} (default {steps})"
    if function is not None:
        if any(p.name.value == "accumulation_steps"
               for p in (*function.params.params, *function.params.kwonly_params)):
            return "accumulation_steps", "parameter accumulation_steps"
        edits.rewrite[function] = _chain(edits.rewrite.get(function), lambda fn: add_parameters(
            fn, [("accumulation_steps", "int", str(steps))]))
        return "accumulation_steps", f"new parameter accumulation_steps={steps}"
    if any(isinstance(stmt, cst.SimpleStatementLine) and "accumulation_steps" in names(stmt).assigned
           for stmt in module.body):
        return "accumulation_steps", "setting accumulation_steps"
    anchor = top_statement(located, loop, list(module.body))
    assert anchor is not None
    edits.insert_before(anchor, statement(
        f"accumulation_steps = {steps}  # micro-batches per optimizer step\n"))
    return "accumulation_steps", f"new setting accumulation_steps = {steps}"


def _chain(first: Rewrite | None, second: Rewrite) -> Rewrite:
    if first is None:
        return second
    return lambda node: second(first(node))


def _namespace_of(scope: cst.CSTNode, attr: str) -> str | None:
    """``args`` for ``args.batch_size`` used in a scope."""
    found: list[str] = []

    class Visitor(cst.CSTVisitor):
        def visit_Attribute(self, node: cst.Attribute) -> None:
            if node.attr.value == attr and isinstance(node.value, cst.Name | cst.Attribute):
                found.append(code_of(node.value))

    scope.visit(Visitor())
    return found[0] if found else None


def _add_argument_statement(module: cst.Module, flag: str) -> tuple[str, cst.SimpleStatementLine] | None:
    found: list[tuple[str, cst.SimpleStatementLine]] = []

    class Visitor(cst.CSTVisitor):
        def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
            for small in node.body:
                call = small.value if isinstance(small, cst.Expr) else None
                if (isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)
                        and call.func.attr.value == "add_argument"
                        and any(isinstance(a.value, cst.SimpleString) and a.value.evaluated_value == flag
                                for a in call.args)):
                    found.append((code_of(call.func.value), node))

    module.visit(Visitor())
    return found[0] if found else None


def _enclosing_function(located: Located, node: cst.CSTNode) -> cst.FunctionDef | None:
    current: cst.CSTNode | None = located.parents.get(node)
    while current is not None:
        if isinstance(current, cst.FunctionDef):
            return current
        current = located.parents.get(current)
    return None


def _inner_range(stmts: list[cst.BaseStatement], anchor: int, seeds: set[str]) -> tuple[int, int]:
    """The statements of one micro-step around the backward/helper statement ``anchor``:
    back to the earliest statement feeding it (or reading the loop target), forward over
    statements that only read what the micro-step made."""
    used = names(stmts[anchor]).used
    start = anchor
    for index in range(anchor - 1, -1, -1):
        found = names(stmts[index])
        if only_call(stmts[index], "zero_grad"):
            continue
        if found.assigned & used or found.used & seeds:
            start = index
            used |= found.used
    made = set(seeds)
    for stmt in stmts[start: anchor + 1]:
        made |= names(stmt).assigned
    end = anchor
    for index in range(anchor + 1, len(stmts)):
        stmt = stmts[index]
        if is_update(stmt) or (isinstance(stmt, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Continue | cst.Break | cst.Return) for s in stmt.body)):
            break
        found = names(stmt)
        if not (found.used & made) or not _collects(stmt):
            break
        end = index
        made |= found.assigned
    return start, end


def _collects(stmt: cst.CSTNode) -> bool:
    """``total += loss.item()``, ``n = x.size(0)``, ``losses.append(...)``: per-micro-batch
    bookkeeping that belongs with the micro-step (a print or an ``if`` does not)."""
    if not isinstance(stmt, cst.SimpleStatementLine):
        return False
    for small in stmt.body:
        if isinstance(small, cst.Assign | cst.AugAssign | cst.AnnAssign):
            continue
        if (isinstance(small, cst.Expr) and isinstance(small.value, cst.Call)
                and isinstance(small.value.func, cst.Attribute)
                and small.value.func.attr.value in ("append", "extend", "update", "add_")):
            continue
        return False
    return True


def _split_for(loop: cst.For, window: str, micro: str | None
               ) -> tuple[cst.BaseExpression, cst.BaseAssignTargetExpression, cst.BaseAssignTargetExpression,
                          cst.BaseExpression]:
    """(outer iterable, outer target, inner target, inner iterable) of the windowed loop."""
    iterable = loop.iter
    target = loop.target
    inner_target: cst.BaseAssignTargetExpression = target
    outer_target: cst.BaseAssignTargetExpression = cst.Name(window)
    if (isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name)
            and iterable.func.value == "enumerate" and iterable.args
            and isinstance(target, cst.Tuple) and len(target.elements) == 2):
        source = iterable.args[0]
        wrapped = cst.Call(func=cst.Name("accumulation_windows"),
                           args=[cst.Arg(source.value, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                                 cst.Arg(cst.Name("__STEPS__"))])
        outer_iter: cst.BaseExpression = iterable.with_changes(args=[source.with_changes(value=wrapped),
                                                                     *iterable.args[1:]])
        index_target = target.elements[0].value
        element = target.elements[1].value
        outer_target = cst.Tuple([cst.Element(index_target, comma=cst.Comma(
            whitespace_after=cst.SimpleWhitespace(" "))), cst.Element(cst.Name(window))], lpar=[], rpar=[])
        inner_target = element.with_changes(lpar=[], rpar=[]) if isinstance(element, cst.Tuple) \
            else element  # type: ignore[assignment]
    else:
        outer_iter = cst.Call(func=cst.Name("accumulation_windows"),
                              args=[cst.Arg(iterable, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                                    cst.Arg(cst.Name("__STEPS__"))])
    inner_iter: cst.BaseExpression = cst.Name(window)
    if micro is not None:
        element_target = inner_target
        if isinstance(element_target, cst.Tuple) and not element_target.lpar:
            element_target = element_target.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        inner_target = cst.Tuple([cst.Element(cst.Name(micro), comma=cst.Comma(
            whitespace_after=cst.SimpleWhitespace(" "))), cst.Element(element_target)], lpar=[], rpar=[])
        inner_iter = expression(f"enumerate({window})")
    return outer_iter, outer_target, inner_target, inner_iter


def _replace_steps(node: cst.CSTNode, steps: str) -> Any:
    class Put(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
            return expression(steps) if updated_node.value == "__STEPS__" else updated_node

    return node.visit(Put())


def _no_sync_statement(model: str, sync: str, body: list[cst.BaseStatement]) -> cst.With:
    body, leading = first_without_leading_lines(body)
    manager = expression(
        f'contextlib.nullcontext() if {sync} or not hasattr({model}, "no_sync") else {model}.no_sync()')
    return cst.With(items=[cst.WithItem(manager)], body=indented(body), leading_lines=leading)


def _helper_edits(located: Located, edits: Edits, helper: cst.FunctionDef,
                  backward: cst.Call) -> bool:
    """Give the helper ``accumulation_steps``/``sync_gradients`` and gate its update part."""
    stmts = list(helper.body.body) if isinstance(helper.body, cst.IndentedBlock) else []
    anchor = top_statement(located, backward, stmts)
    if anchor is None:
        return False
    b = stmts.index(anchor)  # type: ignore[arg-type]
    updates = [i for i in range(b + 1, len(stmts)) if is_update(stmts[i])]
    if not updates:
        return False
    first, last = updates[0], updates[-1]
    zero_before = [s for s in stmts[:b] if only_call(s, "zero_grad")]
    gated_has_zero = any("zero_grad" in method_calls(s) for s in stmts[first:last + 1])
    edits.rewrite[backward] = lambda call: divide_backward(call, "accumulation_steps")

    def rewrite(fn: cst.FunctionDef) -> cst.FunctionDef:
        body: list[Any] = list(fn.body.body)  # aligned with ``stmts``
        removed = set() if gated_has_zero else {stmts.index(z) for z in zero_before}
        moved = [body[i].with_changes(leading_lines=[]) for i in sorted(removed)]
        gated, leading = first_without_leading_lines([*body[first:last + 1], *moved])
        gate = cst.If(test=cst.Name("sync_gradients"), body=indented(gated), leading_lines=leading)
        kept: list[Any] = []
        carry: list[cst.EmptyLine] = []
        for i, stmt in enumerate(body[:first]):
            if i in removed:
                carry.extend(getattr(stmt, "leading_lines", []))
                continue
            if carry:
                stmt = stmt.with_changes(leading_lines=[*carry, *getattr(stmt, "leading_lines", [])])
                carry = []
            kept.append(stmt)
        new_body = [*kept, gate, *body[last + 1:]]
        fn = fn.with_changes(body=fn.body.with_changes(body=new_body))
        return add_parameters(fn, [("accumulation_steps", "int", "1"),
                                   ("sync_gradients", "bool", "True")])

    edits.rewrite[helper] = rewrite
    return True


def _forward_model(located: Located, data: Mapping[str, Any], helper: cst.FunctionDef | None,
                   call: cst.Call | None) -> str | None:
    """The model expression in the loop's scope (a helper's parameter mapped to its argument)."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        return None
    if helper is None or call is None:
        return model
    params = [p.name.value for p in helper.params.params]
    if isinstance(call.func, cst.Attribute) and params and params[0] in ("self", "cls"):
        params = params[1:]  # a method called through its instance
    head = model.split(".")[0]
    if head in ("self", "cls"):
        return model
    if head not in params:
        return model if head == "self" else None
    index = params.index(head)
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == head:
            return code_of(arg.value) + model[len(head):]
    positional = [a for a in call.args if a.keyword is None and not a.star]
    if index < len(positional):
        return code_of(positional[index].value) + model[len(head):]
    return None


def add_accumulation(source: str, finding: Finding, steps: int) -> FixResult | None:
    data = finding.fix_data
    located = Located(source)
    module = located.module
    loops = located.at(finding.span.line, finding.span.column, (cst.For, cst.While))
    if not loops:
        return None
    loop = loops[0]
    assert isinstance(loop, cst.For | cst.While)
    if not isinstance(loop.body, cst.IndentedBlock) or loop.orelse is not None:
        return None
    stmts = list(loop.body.body)
    backward_pos = data.get("backward")
    call_pos = data.get("call")
    helper_name = data.get("helper")
    if not backward_pos:
        return None
    anchor_pos = call_pos if helper_name else backward_pos
    if not anchor_pos:
        return None
    anchor = index_containing(located, stmts, anchor_pos[0], anchor_pos[1])
    if anchor is None:
        return None
    backward = call_at(located, backward_pos[0], backward_pos[1])
    if backward is None:
        return None
    helper = function_by_name(module, helper_name) if helper_name else None
    helper_call = call_at(located, call_pos[0], call_pos[1]) if helper_name and call_pos else None
    if helper_name and (helper is None or helper_call is None):
        return None

    function = _enclosing_function(located, loop)
    taken = all_names(function if function is not None else module)
    edits = Edits()
    window = fresh_name(taken, "window", "batch_window", "accumulation_window")
    ddp = bool(data.get("ddp"))
    model = _forward_model(located, data, helper, helper_call)
    needs_micro = helper is not None or (ddp and model is not None)
    micro = fresh_name(taken, "micro_step", "micro_batch_index") if needs_micro else None

    if helper is not None and not _helper_edits(located, edits, helper, backward):
        return None
    setting, note = _setting(located, edits, data, loop, function, steps)

    seeds = _target_names(loop.target) if isinstance(loop, cst.For) else set()
    if isinstance(loop, cst.For) and isinstance(loop.iter, cst.Call) and isinstance(loop.iter.func, cst.Name) \
            and loop.iter.func.value == "enumerate" and isinstance(loop.target, cst.Tuple) \
            and len(loop.target.elements) == 2:
        seeds = _target_names(loop.target.elements[1].value)
    start, end = _inner_range(stmts, anchor, seeds)
    hoisted = [i for i in range(start, end + 1) if only_call(stmts[i], "zero_grad")]
    # What the loop bound counts is kept. A loop over data (or over indices the micro-step
    # reads) counts micro-batches: it is cut into windows. A counter loop (``range(max_iters)``
    # whose index the micro-step ignores) or a ``while`` counts optimizer steps: each step
    # runs the micro-step ``k`` times.
    counter = isinstance(loop, cst.For) and _is_range(loop.iter) and not any(
        names(stmts[i]).used & _target_names(loop.target) for i in range(start, end + 1))
    is_for = isinstance(loop, cst.For) and not counter
    divisor = f"len({window})" if is_for else setting
    if helper is None:
        edits.rewrite[backward] = lambda call: divide_backward(call, divisor)
    sync = (f"{micro} == len({window}) - 1" if is_for else f"{micro} == {setting} - 1") if micro else ""
    if helper_call is not None:
        edits.rewrite[helper_call] = _chain(edits.rewrite.get(helper_call), lambda call: add_keywords(
            call, [("accumulation_steps", divisor), ("sync_gradients", "sync_gradients")]))

    mean = _window_mean(stmts, anchor, end, backward, helper_call, taken, divisor)

    def rewrite_loop(updated: cst.For | cst.While) -> cst.BaseStatement:
        body: list[Any] = list(updated.body.body)
        inner = [body[i] for i in range(start, end + 1) if i not in hoisted]
        lifted = [body[i] for i in hoisted]
        inner, leading = first_without_leading_lines(inner)
        if mean is not None:  # what is logged after the step is the window's mean loss
            name, total, add = mean
            lifted.append(statement(f"{total} = 0.0\n"))
            inner.append(statement(add))
            body[end + 1:] = [_renamed(s, name, total) for s in body[end + 1:]]
        if helper is not None:
            inner = [statement(f"sync_gradients = {sync}\n"), *inner]
        if ddp and model is not None:
            sync_expr = "sync_gradients" if helper is not None else sync
            split = 1 if helper is not None else 0
            inner = [*inner[:split], _no_sync_statement(model, sync_expr, inner[split:])]
        if isinstance(updated, cst.For) and is_for:
            outer_iter, outer_target, inner_target, inner_iter = _split_for(updated, window, micro)
            outer_iter = _replace_steps(outer_iter, setting)
            micro_loop: cst.BaseStatement = cst.For(target=inner_target, iter=inner_iter,
                                                    body=indented(inner), leading_lines=leading)
            new_body = [*body[:start], *lifted, micro_loop, *body[end + 1:]]
            return updated.with_changes(target=outer_target, iter=outer_iter,
                                        body=updated.body.with_changes(body=new_body))
        index = micro or "_"
        micro_loop = cst.For(target=cst.Name(index), iter=expression(f"range({setting})"),
                             body=indented(inner), leading_lines=leading)
        new_body = [*body[:start], *lifted, micro_loop, *body[end + 1:]]
        return updated.with_changes(body=updated.body.with_changes(body=new_body))

    edits.rewrite[loop] = _chain(edits.rewrite.get(loop), rewrite_loop)
    notes = _per_step_quantities(edits, function if function is not None else module,
                                 data.get("batch_expr"), setting)
    if is_for and not _defines(module, "accumulation_windows"):
        add_module_function(edits, module, WINDOWS_HELPER)
    if ddp and model is not None:
        ensure_import(edits, module, "contextlib")
    fixed = edits.apply(module).code
    bound = code_of(loop.iter) if isinstance(loop, cst.For) else code_of(loop.test)
    if is_for:
        meaning = (f"the loop bound `{bound}` counts micro-batches and still takes each once: "
                   f"it now makes 1/{setting} as many optimizer steps (a last, shorter window "
                   "is stepped too)")
    else:
        meaning = (f"the loop bound `{bound}` counts optimizer steps and still does: each step "
                   f"now takes `{setting}` micro-batches, so the run reads `{setting}` times the data")
    if mean is not None:
        notes.append(f"`{mean[0]}` after the step is now the window's mean loss `{mean[1]}`")
    return FixResult(fixed, [f"accumulate `{setting}` micro-batches per optimizer step ({note})",
                             meaning, *notes])


def _is_range(iterable: cst.BaseExpression) -> bool:
    return (isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name)
            and iterable.func.value == "range")


def _window_mean(stmts: Sequence[cst.BaseStatement], anchor: int, end: int, backward: cst.Call,
                 helper_call: cst.Call | None, taken: set[str], divisor: str
                 ) -> tuple[str, str, str] | None:
    """(loss name, total name, statement adding to it) when the loss of a micro-step is read
    after the step (logged, returned): it then reads the mean over the window instead of
    the last micro-batch's loss. None when nothing reads it there."""
    if helper_call is not None:  # ``loss = train_step(...)``: the helper's return value
        anchor_stmt = stmts[anchor]
        small = anchor_stmt.body[0] if isinstance(anchor_stmt, cst.SimpleStatementLine) else None
        if not (isinstance(small, cst.Assign) and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Name)):
            return None
        loss, value = small.targets[0].target.value, f"{small.targets[0].target.value}"
    else:
        receiver = backward.func.value if isinstance(backward.func, cst.Attribute) else None
        if not isinstance(receiver, cst.Name):
            return None
        loss, value = receiver.value, f"{receiver.value}.detach()"
    after = stmts[end + 1:]
    if not any(loss in names(s).used for s in after) or any(loss in names(s).assigned for s in after):
        return None
    total = fresh_name(taken, "window_loss", "mean_loss")
    return loss, total, f"{total} += {value} / {divisor}\n"


def _renamed(stmt: cst.CSTNode, old: str, new: str) -> Any:
    """A statement with every read of the name ``old`` reading ``new``."""
    class Rename(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
            return updated_node.with_changes(value=new) if updated_node.value == old else updated_node

    return stmt.visit(Rename())


_PER_STEP = re.compile(r"per_(step|iter|update|optimizer_step)s?$")


def _per_step_quantities(edits: Edits, scope: cst.CSTNode, batch_expr: object, setting: str) -> list[str]:
    """``tokens_per_step = batch_size * seq_len`` counts one micro-batch: scale it to a step."""
    if not isinstance(batch_expr, str) or not batch_expr:
        return []
    found: list[cst.Assign] = []

    class Visitor(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            if (len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name)
                    and _PER_STEP.search(node.targets[0].target.value)
                    and isinstance(node.value, cst.BinaryOperation)
                    and isinstance(node.value.operator, cst.Multiply)
                    and batch_expr in {code_of(n) for n in _factors(node.value)}):
                found.append(node)

        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            return node is scope

    scope.visit(Visitor())
    notes = []
    for assign in found:
        def scaled(node: Any) -> Any:
            return node.with_changes(value=cst.BinaryOperation(
                left=node.value, operator=cst.Multiply(whitespace_before=cst.SimpleWhitespace(" "),
                                                       whitespace_after=cst.SimpleWhitespace(" ")),
                right=parenthesized(expression(setting))))

        edits.rewrite[assign] = scaled
        notes.append(f"`{code_of(assign.targets[0].target)}` now counts a whole optimizer step")
    return notes


def _factors(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply) and not node.lpar:
        return [*_factors(node.left), *_factors(node.right)]
    return [node]


def _defines(module: cst.Module, name: str) -> bool:
    return any(isinstance(s, cst.FunctionDef) and s.name.value == name for s in module.body)


@fixer("TA201")
def fix_no_accumulation(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    steps = int(options.get("accumulation-steps", 8))
    for finding in findings:
        result = add_accumulation(source, finding, steps)
        if result is not None:
            result.source = fit_new_lines(result.source, source, line_length(options))
            return result
    return FixResult(source)


# --------------------------------------------------------------------------- TA202–TA206


def _divider(divisor: str) -> Rewrite:
    return lambda node: divide_backward(node, divisor)


@fixer("TA202")
def fix_unscaled_loss(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        divisor = finding.fix_data.get("divisor")
        call = call_at(located, finding.span.line, finding.span.column)
        if not divisor or call is None:
            continue
        edits.rewrite[call] = _divider(divisor)
        notes.append(f"divide the loss by {divisor} (line {finding.line})")
    if not notes:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


def _simple_statement(located: Located, line: int, column: int) -> cst.SimpleStatementLine | None:
    call = call_at(located, line, column)
    if call is None:
        return None
    stmt = located.statement_of(call)
    return stmt if isinstance(stmt, cst.SimpleStatementLine) else None


def _after_step(located: Located, step_stmt: cst.CSTNode) -> cst.CSTNode:
    """The last statement of the step's run: the step, then scaler.update()/scheduler.step()."""
    _, stmts = block_of(located, step_stmt)
    index = stmts.index(step_stmt)  # type: ignore[arg-type]
    last = step_stmt
    for stmt in stmts[index + 1:]:
        calls = method_calls(stmt)
        code = code_of(stmt)
        if ("update" in calls and "scaler" in code.lower()) or ("step" in calls and "sched" in code.lower()):
            last = stmt
        else:
            break
    return last


def _moved(stmt: cst.SimpleStatementLine) -> cst.SimpleStatementLine:
    """A statement to re-insert elsewhere: its comment lines go with it, blank lines do not."""
    return stmt.with_changes(leading_lines=[line for line in stmt.leading_lines if line.comment])


@fixer("TA203")
def fix_per_micro_batch_update(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    moved: set[cst.CSTNode] = set()
    for finding in findings:
        data = finding.fix_data
        op_stmt = _simple_statement(located, finding.span.line, finding.span.column)
        step = data.get("step")
        step_stmt = _simple_statement(located, step[0], step[1]) if step else None
        if op_stmt is None or step_stmt is None or op_stmt is step_stmt or op_stmt in moved:
            continue
        if len(op_stmt.body) != 1:
            continue
        moved.add(op_stmt)
        edits.remove.add(op_stmt)
        if data.get("kind") == "clip":
            _, stmts = block_of(located, step_stmt)
            index = stmts.index(step_stmt)
            anchor: cst.CSTNode = step_stmt
            # After an unscale_ that precedes the step in the same block.
            if index and "unscale_" in method_calls(stmts[index - 1]):
                anchor = step_stmt
            edits.insert_before(anchor, _moved(op_stmt))
        else:
            edits.insert_after(_after_step(located, step_stmt), _moved(op_stmt))
        notes.append(f"run `{code_of(op_stmt.body[0]).strip()}` once per optimizer step")
    if not notes:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


@fixer("TA204")
def fix_missing_zero_grad(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        optimizer = finding.fix_data.get("optimizer")
        step_stmt = _simple_statement(located, finding.span.line, finding.span.column)
        if not optimizer or step_stmt is None:
            continue
        edits.insert_after(_after_step(located, step_stmt),
                           statement(f"{optimizer}.zero_grad(set_to_none=True)\n"))
        notes.append(f"clear gradients after each step ({optimizer}.zero_grad)")
    if not notes:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


def _sync_expression(located: Located, data: Mapping[str, Any], backward: cst.Call) -> str | None:
    """Source of the test that is true on the micro-batch that ends a window."""
    gate = data.get("gate")
    if data.get("accumulation") == "gated" and gate:
        tests = located.at(gate[0], gate[1], cst.BaseExpression)
        if not tests:
            return None
        test = code_of(tests[0]).strip()
        simple = re.fullmatch(r"[\w.\[\]() %+\-*/=<>!]+", test) is not None and " or " not in test \
            and " and " not in test
        if gate[2]:
            return f"not {test}" if simple and " " not in test else f"not ({test})"
        return test if simple else f"({test})"
    current: cst.CSTNode | None = backward
    while current is not None and not isinstance(current, cst.For):
        current = located.parents.get(current)
    if not isinstance(current, cst.For):
        return None
    iterable, target = current.iter, current.target
    if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) and iterable.args:
        if iterable.func.value == "range" and isinstance(target, cst.Name) and len(iterable.args) == 1:
            return f"{target.value} == {code_of(iterable.args[0].value)} - 1"
        if iterable.func.value == "enumerate" and isinstance(target, cst.Tuple) \
                and isinstance(target.elements[0].value, cst.Name) and len(iterable.args) == 1:
            return f"{code_of(target.elements[0].value)} == len({code_of(iterable.args[0].value)}) - 1"
    return None


@fixer("TA205")
def fix_ddp_no_sync(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    for finding in findings:
        data = finding.fix_data
        model, forward_pos = data.get("model"), data.get("forward")
        backward = call_at(located, finding.span.line, finding.span.column)
        forward = call_at(located, forward_pos[0], forward_pos[1]) if forward_pos else None
        if not model or backward is None or forward is None:
            continue
        sync = _sync_expression(located, data, backward)
        if sync is None:
            continue
        # The smallest block holding both the forward and the backward statements.
        back_stmt = located.statement_of(backward)
        block, stmts = block_of(located, back_stmt)
        first = top_statement(located, forward, stmts)
        while first is None and not isinstance(block, cst.Module):
            holder = located.parent(block)
            block, stmts = block_of(located, holder)
            back_stmt = holder
            first = top_statement(located, forward, stmts)
        if first is None:
            continue
        i, j = stmts.index(first), stmts.index(back_stmt)  # type: ignore[arg-type]
        if i > j:
            continue
        edits = Edits()
        holder_block = block

        def rewrite(node: Any, lo: int = i, hi: int = j, model: str = model, sync: str = sync) -> Any:
            body = list(node.body)
            wrapped = _no_sync_statement(model, sync, body[lo:hi + 1])
            return node.with_changes(body=[*body[:lo], wrapped, *body[hi + 1:]])

        edits.rewrite[holder_block] = rewrite
        ensure_import(edits, located.module, "contextlib")
        return FixResult(edits.apply(located.module).code,
                         [f"skip the all-reduce on non-boundary micro-batches ({model}.no_sync())"])
    return FixResult(source)


@fixer("TA206")
def fix_zero_grad_before_step(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        step = finding.fix_data.get("step")
        zero_stmt = _simple_statement(located, finding.span.line, finding.span.column)
        step_stmt = _simple_statement(located, step[0], step[1]) if step else None
        if zero_stmt is None or step_stmt is None or len(zero_stmt.body) != 1:
            continue
        edits.remove.add(zero_stmt)
        edits.insert_after(_after_step(located, step_stmt), _moved(zero_stmt))
        notes.append("clear gradients after the step, not before it")
    if not notes:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)
