"""LibCST helpers shared by the fixers: finding nodes by position, the names a node
reads and binds, the block and function a statement is in, line layout."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, ParentNodeProvider, PositionProvider

from trainaudit.diagnostics import Finding


class Located:
    """A parsed module with positions and parents, for locating the nodes findings point at."""

    def __init__(self, source: str) -> None:
        self.wrapper = MetadataWrapper(cst.parse_module(source))
        self.module = self.wrapper.module
        self.positions = self.wrapper.resolve(PositionProvider)
        self.parents = self.wrapper.resolve(ParentNodeProvider)

    def range(self, node: cst.CSTNode) -> CodeRange:
        return self.positions[node]

    def at(self, line: int, column: int, kind: type[cst.CSTNode] | tuple[type[cst.CSTNode], ...]
           ) -> list[cst.CSTNode]:
        """Nodes of a type starting at a 1-based line and column, outermost first."""
        found = [
            node for node, pos in self.positions.items()
            if isinstance(node, kind) and pos.start.line == line and pos.start.column == column - 1
        ]
        return sorted(found, key=lambda n: (self.positions[n].end.line, self.positions[n].end.column),
                      reverse=True)

    def statement_of(self, node: cst.CSTNode) -> cst.CSTNode:
        """The simple or compound statement that contains a node."""
        current: cst.CSTNode = node
        while not isinstance(current, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            current = self.parents[current]
        return current

    def parent(self, node: cst.CSTNode) -> cst.CSTNode:
        return self.parents[node]


def code_of(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def findings_for(findings: Sequence[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def fitted_call(func: str, args: Sequence[str], *, column: int, limit: int,
                prefix: str = "", suffix: str = "", tail: int = 0) -> str:
    """``prefix func(args) suffix`` as black would lay it out in ``limit`` columns when it
    starts at ``column``: on one line if it fits, else the arguments on one indented line,
    else one per line. Continuation lines are indented relative to the statement (LibCST
    adds the block's own indentation)."""
    one = f"{prefix}{func}({', '.join(args)}){suffix}"
    if column + len(one) + tail <= limit or not args:
        return one
    joined = ", ".join(args)
    if column + 4 + len(joined) <= limit:
        return f"{prefix}{func}(\n    {joined}\n){suffix}"
    return f"{prefix}{func}(\n" + "".join(f"    {a},\n" for a in args) + f"){suffix}"


def line_length(options: Mapping[str, Any]) -> int:
    """The project's line length (config.project_line_length), 88 when not given."""
    value = options.get("line-length", 88)
    return value if isinstance(value, int) and value > 0 else 88


def fit_new_lines(source: str, original: str, limit: int) -> str:
    """Lay out, as black would, what a fix wrote on lines longer than ``limit`` that were
    not in ``original``: per line, its outermost call (arguments wrapped), conditional
    expression (one clause a line, in parentheses) or function header (parameters)."""
    old = set(original.splitlines())
    lines = source.splitlines()
    if all(len(line) <= limit or line in old for line in lines):
        return source
    wrapper = MetadataWrapper(cst.parse_module(source))
    positions = wrapper.resolve(PositionProvider)
    outermost: dict[int, cst.CSTNode] = {}
    for node, pos in positions.items():
        line = lines[pos.start.line - 1]
        if (not isinstance(node, cst.Call | cst.IfExp | cst.FunctionDef) or len(line) <= limit
                or line in old or (pos.start.line != pos.end.line
                                   and not isinstance(node, cst.FunctionDef))):
            continue
        best = outermost.get(pos.start.line)
        if best is None or _width(positions[best]) < _width(pos):
            outermost[pos.start.line] = node
    layouts: dict[cst.CSTNode, Callable[[Any], cst.CSTNode]] = {}
    for number, node in outermost.items():
        pos = positions[node]
        if isinstance(node, cst.FunctionDef):
            plain = node.params.with_changes(params=())
            if plain.deep_equals(cst.Parameters()) and node.returns is None:
                params = [code_of(p.with_changes(comma=cst.MaybeSentinel.DEFAULT))
                          for p in node.params.params]
                header = fitted_call(f"def {node.name.value}", params, column=pos.start.column,
                                     limit=limit, suffix=":")
                parsed = cst.parse_statement(header + "\n    pass\n")
                assert isinstance(parsed, cst.FunctionDef)
                layouts[node] = _header_from(parsed)
            continue
        tail = len(lines[number - 1]) - pos.end.column
        if isinstance(node, cst.Call):
            args = [code_of(a.with_changes(comma=cst.MaybeSentinel.DEFAULT)) for a in node.args]
            text = fitted_call(code_of(node.func), args, column=pos.start.column, limit=limit,
                               tail=tail)
        else:
            assert isinstance(node, cst.IfExp)
            text = (f"(\n    {code_of(node.body)}\n    if {code_of(node.test)}\n"
                    f"    else {code_of(node.orelse)}\n)")
        if "\n" in text:
            layouts[node] = _replaced_by(cst.parse_expression(text))

    class Layout(cst.CSTTransformer):
        def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> Any:
            layout = layouts.get(original_node)
            return updated_node if layout is None else layout(updated_node)

    return wrapper.module.visit(Layout()).code if layouts else source


def _header_from(parsed: cst.FunctionDef) -> Callable[[Any], cst.CSTNode]:
    def layout(fn: Any) -> cst.CSTNode:
        return fn.with_changes(params=parsed.params,  # type: ignore[no-any-return]
                               whitespace_before_params=parsed.whitespace_before_params)
    return layout


def _replaced_by(new: cst.CSTNode) -> Callable[[Any], cst.CSTNode]:
    return lambda _: new


def _width(pos: CodeRange) -> tuple[int, int]:
    return (pos.end.line - pos.start.line, pos.end.column - pos.start.column)


# -- what a node reads and binds, where a statement is ----------------------------------


class _Names(cst.CSTVisitor):
    """Names a node reads (``used``) and binds (``assigned``), and the calls in it."""

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
        self.assigned |= target_names(node.target)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self.assigned |= target_names(node.target)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self.assigned |= target_names(node.target)

    def visit_For(self, node: cst.For) -> None:
        self.assigned |= target_names(node.target)

    def visit_WithItem(self, node: cst.WithItem) -> None:
        if node.asname is not None:
            self.assigned |= target_names(node.asname.name)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.assigned.add(node.name.value)
        return False


def names(node: cst.CSTNode) -> _Names:
    """The names a node reads and binds, and its calls."""
    visitor = _Names()
    node.visit(visitor)
    return visitor


def target_names(node: cst.BaseExpression | cst.BaseAssignTargetExpression) -> set[str]:
    """The names an assignment target binds (``a``, ``a, (b, *c)``)."""
    if isinstance(node, cst.Name):
        return {node.value}
    if isinstance(node, cst.Tuple | cst.List):
        found: set[str] = set()
        for element in node.elements:
            found |= target_names(element.value)
        return found
    if isinstance(node, cst.StarredElement):
        return target_names(node.value)
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


def only_call(stmt: cst.CSTNode, method: str) -> bool:
    """A simple statement that is just ``x.method(...)``."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return False
    expr = stmt.body[0]
    return (isinstance(expr, cst.Expr) and isinstance(expr.value, cst.Call)
            and isinstance(expr.value.func, cst.Attribute) and expr.value.func.attr.value == method)


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


class _Identifiers(cst.CSTVisitor):
    def __init__(self) -> None:
        self.found: set[str] = set()

    def visit_Name(self, node: cst.Name) -> None:
        self.found.add(node.value)


def names_in_scope(module: cst.Module) -> set[str]:
    """Every identifier a name generated anywhere in ``module`` could collide with: the
    locals of every function (enclosing ones included), parameters, globals, imports,
    comprehension targets and attribute names (``self.window_loss``), in every scope.

    A superset on purpose: a fresh name only has to avoid them all, and missing one scope
    (a closure's, a ``global`` one) would let a fix rebind a variable the code still reads."""
    visitor = _Identifiers()
    module.visit(visitor)
    return visitor.found
