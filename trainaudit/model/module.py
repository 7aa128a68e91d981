"""Facts about one parsed file: imports and aliases, definitions, calls, positions.

Detection uses the standard library ``ast`` (fast); fixes use LibCST. Positions
are converted here to 1-based character columns, which both sides agree on.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from trainaudit.diagnostics import Span

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class ImportTable:
    """Local names bound by imports, mapped to fully qualified names."""

    aliases: dict[str, str] = field(default_factory=dict)
    # Dotted names of modules this file imports (candidates: ``from a import b``
    # records both ``a`` and ``a.b`` since ``b`` may be a module).
    modules: set[str] = field(default_factory=set)


def physical_lines(source: str) -> list[str]:
    """The lines as the parser counts them, ends kept (``str.splitlines`` also splits at
    form feeds and other separators, which would shift every later line number)."""
    if _OTHER_SEPARATOR.search(source) is None:
        return source.splitlines(keepends=True)  # the same lines, much faster
    return _LINE.findall(source)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_OTHER_SEPARATOR = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _resolve_relative(module_name: str, is_package: bool, level: int, target: str | None) -> str:
    parts = module_name.split(".") if module_name else []
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)] if level - 1 <= len(parts) else []
    if target:
        parts.append(target)
    return ".".join(parts)


def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones included, without descending into expressions (imports
    are statements: enough to find them all, at a fraction of a full walk)."""
    stack = list(reversed(body))
    while stack:
        stmt = stack.pop()
        yield stmt
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(stmt, name, None)
            if isinstance(block, list):
                stack.extend(reversed([s for s in block if isinstance(s, ast.stmt)]))
            if name in ("handlers", "cases") and isinstance(block, list):
                for part in block:
                    stack.extend(reversed(getattr(part, "body", [])))


def build_import_table(tree: ast.Module, module_name: str, is_package: bool,
                       nodes: Iterable[ast.AST] | None = None) -> ImportTable:
    """Collect every import in the file (top level and nested); ``nodes``: the tree's, walked."""
    table = ImportTable()
    for node in ast.walk(tree) if nodes is None else nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                table.modules.add(alias.name)
                if alias.asname:
                    table.aliases[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    table.aliases.setdefault(head, head)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module_name, is_package, node.level, node.module)
            else:
                base = node.module or ""
            if base:
                table.modules.add(base)
            for alias in node.names:
                if alias.name == "*":
                    continue
                qualified = f"{base}.{alias.name}" if base else alias.name
                table.modules.add(qualified)
                table.aliases[alias.asname or alias.name] = qualified
    return table


def parameter_names(function: FunctionNode) -> set[str]:
    """Every name a function's parameters bind (``*args`` and ``**kwargs`` included)."""
    spec = function.args
    return {a.arg for a in (*spec.posonlyargs, *spec.args, *spec.kwonlyargs,
                            spec.vararg, spec.kwarg) if a is not None}


class ModuleFacts:
    """One parsed file and the facts every rule family reads from it."""

    def __init__(self, path: str, module_name: str, source: str, tree: ast.Module,
                 is_package: bool = False, imports: ImportTable | None = None,
                 physical: list[str] | None = None) -> None:
        """``physical``: ``physical_lines(source)`` where the caller has them already."""
        self.path = path
        self.module_name = module_name
        self.source = source
        self.tree = tree
        self.is_package = is_package
        self.physical = physical if physical is not None else physical_lines(source)
        self.lines = [line.rstrip("\r\n") for line in self.physical]
        self.imports = imports if imports is not None else build_import_table(
            tree, module_name, is_package, self.nodes)

    # -- names -----------------------------------------------------------------

    def qualname(self, node: ast.AST) -> str | None:
        """Dotted name of a ``Name``/``Attribute`` chain with import aliases resolved.

        ``F.cross_entropy`` → ``torch.nn.functional.cross_entropy``; a local name
        that no import binds is returned as is (``train_step``); anything else
        (a call, a subscript) gives None.
        """
        if isinstance(node, ast.Name):
            return self.imports.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def call_name(self, call: ast.Call) -> str | None:
        """Qualified name of what a call calls, if it is a plain name chain."""
        return self.qualname(call.func)

    def is_imported(self, name: str) -> bool:
        return name in self.imports.aliases

    # -- definitions -------------------------------------------------------------

    @cached_property
    def functions(self) -> dict[str, FunctionNode]:
        """Every function, keyed by its dotted path within the file (``Trainer.step``)."""
        found: dict[str, FunctionNode] = {}

        def visit(body: list[ast.stmt], prefix: str) -> None:
            for stmt in body:
                if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = prefix + stmt.name
                    found.setdefault(name, stmt)
                    visit(stmt.body, name + ".")
                elif isinstance(stmt, ast.ClassDef):
                    visit(stmt.body, prefix + stmt.name + ".")
                elif isinstance(stmt, ast.If | ast.Try | ast.With | ast.For | ast.While):
                    for block in child_blocks(stmt):
                        visit(block, prefix)

        visit(self.tree.body, "")
        return found

    @cached_property
    def classes(self) -> dict[str, ast.ClassDef]:
        """Every class, keyed by its dotted path within the file."""
        found: dict[str, ast.ClassDef] = {}
        for node in self.nodes:
            if isinstance(node, ast.ClassDef):
                found.setdefault(self.scope_name(node), node)
        return found

    def class_bases(self, cls: ast.ClassDef) -> list[str]:
        """Qualified names of a class's bases (``torch.utils.data.Dataset``)."""
        return [name for base in cls.bases if (name := self.qualname(base))]

    @cached_property
    def nodes(self) -> list[ast.AST]:
        """Every node of the tree in ``ast.walk`` order, walked once for all rules and facts
        (iterate this, not ``ast.walk(module.tree)``: walking is most of a rule's cost)."""
        return self._walk[0]

    @cached_property
    def nodes_by_type(self) -> dict[type, list[ast.AST]]:
        """Every node grouped by its type, in walk order (one pass over ``nodes``)."""
        found: dict[type, list[ast.AST]] = {}
        for node in self.nodes:
            found.setdefault(type(node), []).append(node)
        return found

    @cached_property
    def parents(self) -> dict[ast.AST, ast.AST]:
        """Child → parent for every node of the tree (keys in walk order)."""
        return self._walk[1]

    @cached_property
    def _walk(self) -> tuple[list[ast.AST], dict[ast.AST, ast.AST]]:
        # ast.walk's breadth-first order, with the parents recorded on the way.
        nodes: list[ast.AST] = [self.tree]
        parent: dict[ast.AST, ast.AST] = {}
        append = nodes.append
        index = 0
        known = _CHILDREN
        while index < len(nodes):
            node = nodes[index]
            index += 1
            if not _child_fields(type(node)):
                continue  # a leaf (``Name``, ``Constant``): nothing below it to collect
            children = known[node] = child_nodes(node)
            for child in children:
                parent[child] = node
                append(child)
        return nodes, parent

    def ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        parents = self.parents
        while node in parents:
            node = parents[node]
            yield node

    def enclosing_function(self, node: ast.AST) -> FunctionNode | None:
        for anc in self.ancestors(node):
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
                return anc
        return None

    def enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        for anc in self.ancestors(node):
            if isinstance(anc, ast.ClassDef):
                return anc
        return None

    def scope_name(self, node: ast.AST) -> str:
        """Dotted path of a def/class node within the file (``Trainer.step``)."""
        names = [getattr(node, "name", "")]
        for anc in self.ancestors(node):
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.append(anc.name)
        return ".".join(reversed([n for n in names if n]))

    @cached_property
    def calls_by_function(self) -> dict[str, list[ast.Call]]:
        """Calls made directly in each function's body (not in nested defs); '' is module level."""
        result: dict[str, list[ast.Call]] = {"": []}
        for name, fn in self.functions.items():
            result[name] = list(iter_calls(fn.body))
        result[""] = list(iter_calls(self.tree.body))
        return result

    def local_callee(self, call: ast.Call, caller: str) -> str | None:
        """The function of this file a call resolves to (``train_step(...)``, ``self.step(...)``)."""
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.functions:
            return func.id
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id in ("self", "cls") and "." in caller):
            candidate = f"{caller.rsplit('.', 1)[0]}.{func.attr}"
            if candidate in self.functions:
                return candidate
        return None

    @cached_property
    def call_graph(self) -> dict[str, set[str]]:
        """Function → functions of this file it calls."""
        graph: dict[str, set[str]] = {}
        for caller, calls in self.calls_by_function.items():
            graph[caller] = {c for call in calls if (c := self.local_callee(call, caller))}
        return graph

    def reachable_from(self, function: str) -> list[str]:
        """The function and every function of this file it calls, transitively, in visit order."""
        seen: list[str] = []
        stack = [function]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.append(name)
            stack.extend(sorted(self.call_graph.get(name, ()), reverse=True))
        return seen

    # -- positions ---------------------------------------------------------------

    def _char_col(self, line: int, byte_col: int) -> int:
        if 1 <= line <= len(self.lines):
            text = self.lines[line - 1]
            if not text.isascii():
                return len(text.encode("utf-8")[:byte_col].decode("utf-8", "replace"))
        return byte_col

    def span(self, node: ast.AST) -> Span:
        """1-based line/column span of a node, columns in characters."""
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        end_line = getattr(node, "end_lineno", None) or line
        end_col = getattr(node, "end_col_offset", None)
        if end_col is None:
            end_col = col
        return Span(line, self._char_col(line, col) + 1, end_line,
                    self._char_col(end_line, end_col) + 1)

    @cached_property
    def _line_starts(self) -> list[int]:
        starts = [0]
        for line in self.physical:
            starts.append(starts[-1] + len(line))
        return starts

    def segment(self, node: ast.AST) -> str:
        """Source text of a node (``ast.get_source_segment`` re-splits the file every call)."""
        span = self.span(node)
        if not hasattr(node, "lineno") or span.end_line > len(self.lines):
            return ast.get_source_segment(self.source, node) or ""
        starts = self._line_starts
        begin = starts[span.line - 1] + span.column - 1
        end = starts[span.end_line - 1] + span.end_column - 1
        return self.source[begin:end]


def child_blocks(stmt: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The statement lists a compound statement holds (bodies, ``else``, ``finally``,
    handlers)."""
    for name in ("body", "orelse", "finalbody"):
        block = getattr(stmt, name, None)
        if block:
            yield block
    for handler in getattr(stmt, "handlers", ()):
        yield handler.body
    for case in getattr(stmt, "cases", ()):
        yield case.body


# Fields that hold no code: the parser's shared singletons (``Load()``, ``Add()``,
# ``Eq()``), which no reader asks for as nodes, and identifiers, numbers and comments
# (``name`` stays: a ``type X = ...`` statement's is a node).
_NOT_CODE = frozenset({"ctx", "op", "ops", "id", "attr", "arg", "asname", "module",
                       "level", "is_async", "conversion", "type_comment", "kind"})
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {ast.Constant: ()}


def _child_fields(kind: type) -> tuple[str, ...]:
    """The fields of a node type that may hold nodes (empty: a leaf such as ``Name``)."""
    fields = _CHILD_FIELDS.get(kind)
    if fields is None:
        fields = _CHILD_FIELDS[kind] = tuple(
            name for name in getattr(kind, "_fields", ()) if name not in _NOT_CODE)
    return fields


def child_nodes(node: ast.AST) -> list[ast.AST]:
    """``ast.iter_child_nodes`` as a list, without its two generator layers (hot path), and
    without the context and operator singletons."""
    children: list[ast.AST] = []
    for name in _child_fields(type(node)):
        value = getattr(node, name, None)
        if isinstance(value, ast.AST):
            children.append(value)
        elif type(value) is list:  # of nodes; of names in ``global``; ``None`` keys of a dict
            children += [item for item in value if isinstance(item, ast.AST)]
    return children


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def iter_calls(body: list[ast.stmt]) -> Iterator[ast.Call]:
    """Calls in statements, not descending into nested function or class definitions
    (in source order; shares ``walk_local``'s memo, which walks the same nodes)."""
    return (node for node in walk_local(body) if isinstance(node, ast.Call))


# walk_local's results by body: facts of several families walk the same function bodies.
# Each entry keeps its body alive, so an id is not reused while cached; the engine
# clears this after each file (clear_walk_cache).
_LOCAL_WALKS: dict[int, tuple[list[ast.stmt], tuple[ast.AST, ...]]] = {}


# Each node's children, as the module's walk found them (``ModuleFacts._walk``), for the
# local walks of the same file's bodies; cleared with them.
_CHILDREN: dict[ast.AST, list[ast.AST]] = {}


def clear_walk_cache() -> None:
    _LOCAL_WALKS.clear()
    _CHILDREN.clear()


def walk_local(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of a function body in source order, not entering nested defs/classes."""
    cached = _LOCAL_WALKS.get(id(body))
    if cached is None or cached[0] is not body:
        cached = (body, _walk_local(body))
        _LOCAL_WALKS[id(body)] = cached
    return iter(cached[1])


def _walk_local(body: list[ast.stmt]) -> tuple[ast.AST, ...]:
    found: list[ast.AST] = []
    append = found.append
    stack: list[ast.AST] = list(reversed(body))
    known = _CHILDREN
    while stack:
        node = stack.pop()
        append(node)
        if isinstance(node, _SCOPES):
            continue
        children = known.get(node)
        if children is None:
            children = child_nodes(node)
        if children:
            stack.extend(reversed(children))
    return tuple(found)


def int_value(node: ast.AST | None) -> int | None:
    """The int a literal denotes (``-1``, ``+2``), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    return None


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    """A call argument given by position or keyword."""
    found = keyword(call, name)
    if found is not None:
        return found
    positional = [a for a in call.args if not isinstance(a, ast.Starred)]
    if len(positional) > position and len(positional) == len(call.args):
        return positional[position]
    return None
