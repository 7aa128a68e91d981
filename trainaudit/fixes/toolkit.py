"""The fix toolkit: one edit collector, one call locator, one ``ensure_import``,
and the small builders every codemod needs.

A fixer reads its finding's typed payload (``trainaudit.payloads``), locates
the nodes the finding names (``call_at``, ``statement_at_line``), plans edits
on the original tree (``Edits``), applies them in one pass and, where it added
a name, ``ensure_import``-s it. It never re-analyses the file: what it needs
to know came with the finding.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding, Span
from trainaudit.fixes import FixResult
from trainaudit.fixes.cst import Located, code_of
from trainaudit.model.precision.scope import bound_names as names_bound_in
from trainaudit.payloads import Payload, payload_of

Rewrite = Callable[[Any], Any]


# -- the edit collector -------------------------------------------------------------------


class Edits(cst.CSTTransformer):
    """Edits planned on the original tree, applied in one pass (``apply``).

    ``rewrite[node]`` gets the node with its children already edited; statements
    can be removed or get statements inserted before/after them. Comments above
    a statement stay above what is inserted before it (unless what is inserted
    brings comment lines of its own: a statement moved there); a block left empty
    gets a ``pass``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rewrite: dict[cst.CSTNode, Rewrite] = {}
        self.before: dict[cst.CSTNode, list[cst.BaseStatement]] = {}
        self.after: dict[cst.CSTNode, list[cst.BaseStatement]] = {}
        self.remove: set[cst.CSTNode] = set()

    def replace(self, node: cst.CSTNode, rewrite: Rewrite) -> None:
        """Rewrite ``node``; a second rewrite of the same node runs after the first."""
        first = self.rewrite.get(node)
        self.rewrite[node] = rewrite if first is None else (lambda n: rewrite(first(n)))

    def insert_before(self, stmt: cst.CSTNode, *new: cst.BaseStatement) -> None:
        self.before.setdefault(stmt, []).extend(new)

    def insert_after(self, stmt: cst.CSTNode, *new: cst.BaseStatement) -> None:
        self.after.setdefault(stmt, []).extend(new)

    def on_leave(self, original_node: Any, updated_node: Any) -> Any:
        before = self.before.get(original_node, [])
        after = self.after.get(original_node, [])
        if original_node in self.remove:
            if before or after:
                return cst.FlattenSentinel([*before, *after])
            return cst.RemovalSentinel.REMOVE
        result = updated_node
        if original_node in self.rewrite:
            result = self.rewrite[original_node](updated_node)
        if isinstance(result, cst.IndentedBlock) and not result.body:
            result = result.with_changes(body=[cst.SimpleStatementLine([cst.Pass()])])
        if not (before or after):
            return result
        if before and not getattr(before[0], "leading_lines", ()) and isinstance(
                result, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            first = before[0].with_changes(leading_lines=result.leading_lines)
            before = [first, *before[1:]]
            result = result.with_changes(leading_lines=())
        return cst.FlattenSentinel([*before, result, *after])

    @property
    def empty(self) -> bool:
        return not (self.rewrite or self.before or self.after or self.remove)

    def apply(self, module: cst.Module) -> cst.Module:
        result = module.visit(self)
        assert isinstance(result, cst.Module)
        return result


def edit_each(source: str, findings: Sequence[Finding], kind: type[Payload],
              edit: Callable[[Located, Edits, Finding, Payload], str | None],
              imports: tuple[str, str] | None = None) -> FixResult:
    """The loop most fixers are: for each finding carrying a payload of ``kind``, ``edit``
    plans its edits and returns a note (None: nothing it can do there); the edits are
    applied in one pass, then ``imports`` (statement, name it binds) is ensured."""
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        payload = payload_of(finding, kind)
        note = None if payload is None else edit(located, edits, finding, payload)
        if note is not None:
            notes.append(note)
    if not notes:
        return FixResult(source)
    module = edits.apply(located.module)
    if imports is not None:
        module = ensure_import(module, *imports)
    return FixResult(module.code, notes)


def replace_with(node: cst.CSTNode) -> Rewrite:
    """A rewrite that puts ``node`` in place of whatever is there."""
    return lambda _: node


# -- locating what a finding names --------------------------------------------------------


def call_at(located: Located, where: Span | tuple[int, int]) -> cst.Call | None:
    """The call a finding points at: the outermost call starting at a 1-based position,
    or, given a ``Span``, the call with exactly that start and end."""
    line, column = (where.line, where.column) if isinstance(where, Span) else where
    for candidate in located.at(line, column, cst.Call):
        assert isinstance(candidate, cst.Call)
        if not isinstance(where, Span):
            return candidate
        end = located.range(candidate).end
        if (end.line, end.column) == (where.end_line, where.end_column - 1):
            return candidate
    return None


def simple_statement(located: Located, node: cst.CSTNode) -> cst.SimpleStatementLine | None:
    """The simple statement holding a node, if it is one."""
    stmt = located.statement_of(node)
    return stmt if isinstance(stmt, cst.SimpleStatementLine) else None


def statement_at_line(located: Located, line: int) -> cst.BaseStatement | None:
    """The outermost statement that starts on a line."""
    best: cst.BaseStatement | None = None
    for node, pos in located.positions.items():
        if not (isinstance(node, cst.SimpleStatementLine | cst.BaseCompoundStatement)
                and pos.start.line == line):
            continue
        if best is None or located.range(best).end.line < pos.end.line or \
                (located.range(best).end.line == pos.end.line and _contains(node, best)):
            best = node
    return best


def _contains(outer: cst.CSTNode, inner: cst.CSTNode) -> bool:
    return any(child is inner or _contains(child, inner) for child in outer.children)


# -- imports and names --------------------------------------------------------------------


def ensure_import(module: cst.Module, code: str, binds: str) -> cst.Module:
    """Add an import statement unless the file already binds ``binds``. A plain
    ``import x`` joins the file's first run of plain imports in name order; anything
    else goes after the top imports (after the torch imports, where there are some),
    else after the docstring."""
    if binds in bound_names(module.code):
        return module
    body = list(module.body)
    new = statement(code)
    index = _plain_import_slot(body, code[len("import "):]) if code.startswith("import ") else None
    if index is None:
        index = _after_top_imports(body)
    elif index < len(body) and not _is_plain_import(body[index - 1] if index else None):
        # first of the imports: it takes the comments and blank lines above them
        first = body[index]
        new = new.with_changes(leading_lines=first.leading_lines)
        body[index] = first.with_changes(leading_lines=())
    body.insert(index, new)
    return module.with_changes(body=body)


def _is_plain_import(stmt: cst.CSTNode | None) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Import)


def _plain_import_slot(body: Sequence[cst.BaseStatement], name: str) -> int | None:
    """Where ``import name`` goes: in name order in the first run of plain imports, else
    before the first import; None when the file imports nothing."""
    run = []
    for i, stmt in enumerate(body):
        if _is_plain_import(stmt):
            run.append(i)
        elif run:
            break
    for i in run:
        stmt = body[i]
        assert isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Import)
        if code_of(stmt.body[0].names[0].name) > name:
            return i
    if run:
        return run[-1] + 1
    # No plain imports: before the first import (after ``from __future__``), if any.
    return next((i for i, stmt in enumerate(body) if isinstance(stmt, cst.SimpleStatementLine)
                 and isinstance(stmt.body[0], cst.ImportFrom) and not _is_future(stmt.body[0])),
                None)


def _is_future(small: cst.ImportFrom) -> bool:
    return small.module is not None and code_of(small.module) == "__future__"


def _after_top_imports(body: Sequence[cst.BaseStatement]) -> int:
    index = 0
    after_torch = None
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and all(
                isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body):
            index = i + 1
            if _imports_torch(stmt):
                after_torch = i + 1
        elif i == 0 and isinstance(stmt, cst.SimpleStatementLine) and isinstance(
                stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.SimpleString):
            index = 1  # after the docstring
        elif isinstance(stmt, cst.If | cst.Try) and index:
            continue  # ``try: import x`` blocks inside the import section
        elif index or not isinstance(stmt, cst.SimpleStatementLine):
            break
    return after_torch if after_torch is not None else index


def _imports_torch(stmt: cst.SimpleStatementLine) -> bool:
    for small in stmt.body:
        if isinstance(small, cst.Import):
            names = [code_of(a.name) for a in small.names]
        elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative:
            names = [code_of(small.module)]
        else:
            continue
        if any(n == "torch" or n.startswith("torch.") for n in names):
            return True
    return False


def bound_names(source: str) -> set[str]:
    """Every name a file binds anywhere (imports, assignments, defs, parameters)."""
    return names_bound_in(ast.parse(source))


def fresh_name(taken: set[str], *candidates: str) -> str:
    """The first candidate not taken, else the last one numbered."""
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    base = candidates[-1]
    index = 2
    while f"{base}{index}" in taken:
        index += 1
    return f"{base}{index}"


# -- building code -------------------------------------------------------------------------


def statement(code: str) -> cst.SimpleStatementLine | cst.BaseCompoundStatement:
    return cst.parse_statement(code if code.endswith("\n") else code + "\n")


def expression(code: str) -> cst.BaseExpression:
    return cst.parse_expression(code)


def string(value: str) -> cst.SimpleString:
    return cst.SimpleString(f'"{value}"')


def arg_with_comma(arg: cst.Arg) -> cst.Arg:
    if isinstance(arg.comma, cst.Comma):
        return arg
    return arg.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))


def keyword_arg(name: str, value: cst.BaseExpression) -> cst.Arg:
    return cst.Arg(value=value, keyword=cst.Name(name),
                   equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                         whitespace_after=cst.SimpleWhitespace("")))


def append_args(call: cst.Call, extra: Sequence[cst.Arg]) -> cst.Call:
    """Add arguments at the end, keeping the call's layout (see ``_joined``)."""
    return call.with_changes(args=_joined(list(call.args), list(extra)))


def unparenthesized(expr: cst.BaseExpression) -> cst.BaseExpression:
    if getattr(expr, "lpar", None):
        return expr.with_changes(lpar=[], rpar=[])
    return expr


def as_receiver(expr: cst.BaseExpression) -> cst.BaseExpression:
    """An expression fit to have ``.attr`` after it (parenthesised when needed)."""
    if isinstance(expr, cst.Name | cst.Attribute | cst.Call | cst.Subscript) or getattr(expr, "lpar", None):
        return expr
    return expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])

_SPACE_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def _line_break(indent: str, comment: cst.TrailingWhitespace | None = None
                ) -> cst.ParenthesizedWhitespace:
    """A line break inside brackets, the next line indented by ``indent`` (relative to the
    statement), keeping a comment at the end of the line broken."""
    return cst.ParenthesizedWhitespace(first_line=comment or cst.TrailingWhitespace(),
                                       indent=True, last_line=cst.SimpleWhitespace(indent))


def _broken(whitespace: object) -> cst.ParenthesizedWhitespace | None:
    return whitespace if isinstance(whitespace, cst.ParenthesizedWhitespace) else None


def _after_item(item: Any) -> str:
    """The name of the whitespace after an item when it has no comma (an Arg or a Param)."""
    return "whitespace_after_arg" if isinstance(item, cst.Arg) else "whitespace_after_param"


def _joined(items: list[Any], new: list[Any]) -> list[Any]:
    """Append items to a comma-separated list (call arguments, parameters), keeping its
    layout: on the same line as the last item when the items share lines, one a line
    (at the items' indentation) when they are one a line; a trailing comma stays
    trailing, a comment after the last item stays on its line, and the line break
    before the closing bracket stays before it (no trailing space, no item at column 0)."""
    if not items:
        return [n.with_changes(comma=_SPACE_COMMA) for n in new[:-1]] + new[-1:]
    last = items[-1]
    previous = items[-2].comma if len(items) > 1 else None
    between = _broken(getattr(previous, "whitespace_after", None))
    comma = last.comma if isinstance(last.comma, cst.Comma) else None
    closing = _broken(comma.whitespace_after) if comma is not None else None
    if closing is not None:  # ``x,\n)``: a trailing comma, then the closing bracket's line
        indent = between.last_line.value if between is not None \
            else closing.last_line.value + "    "
        old_last = last.with_changes(comma=comma.with_changes(  # type: ignore[union-attr]
            whitespace_after=_line_break(indent, closing.first_line)))
        separator = cst.Comma(whitespace_after=_line_break(indent))
        final = cst.Comma(whitespace_after=_line_break(closing.last_line.value))
        return [*items[:-1], old_last, *(n.with_changes(comma=separator) for n in new[:-1]),
                new[-1].with_changes(comma=final)]
    attribute = _after_item(last)
    trailing_break = comma is None and _broken(getattr(last, attribute, None)) is not None
    if between is not None and (trailing_break or comma is None):
        # One item a line, no trailing comma: the new items go on lines of their own.
        separator = cst.Comma(whitespace_after=_line_break(between.last_line.value))
        old_last = last.with_changes(comma=separator, **{attribute: cst.SimpleWhitespace("")})
        added = [n.with_changes(comma=separator) for n in new[:-1]]
        tail = new[-1].with_changes(**{attribute: getattr(last, attribute)})
        return [*items[:-1], old_last, *added, tail]
    if trailing_break:  # ``f(\n    a, b\n)``: the break before ``)`` moves after the new items
        old_last = last.with_changes(comma=_SPACE_COMMA, **{attribute: cst.SimpleWhitespace("")})
        added = [n.with_changes(comma=_SPACE_COMMA) for n in new[:-1]]
        return [*items[:-1], old_last, *added,
                new[-1].with_changes(**{attribute: getattr(last, attribute)})]
    # All on one line (a trailing comma, if any, stays trailing).
    kept = comma if comma is not None else cst.MaybeSentinel.DEFAULT
    items = [*items[:-1], last.with_changes(comma=_SPACE_COMMA)]
    added = [n.with_changes(comma=_SPACE_COMMA) for n in new[:-1]]
    return [*items, *added, new[-1].with_changes(comma=kept)]


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
    """Append ``name=value`` arguments, keeping the call's layout."""
    no_space = cst.SimpleWhitespace("")
    new = [cst.Arg(value=expression(value), keyword=cst.Name(name),
                   equal=cst.AssignEqual(whitespace_before=no_space, whitespace_after=no_space))
           for name, value in keywords]
    return call.with_changes(args=_joined(list(call.args), new))


def indented(stmts: Sequence[cst.BaseStatement]) -> cst.IndentedBlock:
    """A block of statements (LibCST indents it where it is put)."""
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


def add_module_function(edits: Edits, module: cst.Module, code: str) -> None:
    """Define a function at module level, set off by two blank lines: before the first
    def/class (its comments stay with it), else after the imports."""
    blank = [cst.EmptyLine(), cst.EmptyLine()]
    new = cst.parse_module(code).body[0].with_changes(leading_lines=blank)
    body: list[Any] = list(module.body)
    first_def = next((s for s in body if isinstance(s, cst.FunctionDef | cst.ClassDef)), None)
    if first_def is not None and body.index(first_def):
        edits.insert_after(body[body.index(first_def) - 1], new)
        return
    anchor = first_def or _last_top_import(module)
    if anchor is None or anchor is first_def:
        assert isinstance(new, cst.FunctionDef)  # first in the file: blank lines after it
        edits.insert_before(anchor or body[0], new.with_changes(
            leading_lines=(), body=new.body.with_changes(footer=blank)))
        return
    edits.insert_after(anchor, new)
    following = body[body.index(anchor) + 1:]
    if following:

        def spaced(node: Any) -> Any:
            lines = list(node.leading_lines)
            count = 0
            while count < len(lines) and lines[count].comment is None:
                count += 1
            return node.with_changes(leading_lines=[cst.EmptyLine()] * max(0, 2 - count) + lines)

        edits.replace(following[0], spaced)


def _last_top_import(module: cst.Module) -> cst.BaseStatement | None:
    last = None
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body):
            last = stmt
        elif isinstance(stmt, cst.FunctionDef | cst.ClassDef):
            break
    return last
