"""The checked program as the flow model sees it: modules parsed on demand, their
definitions, imports resolved within the checked tree.

Phase 1 keeps the source of every file that may matter (``FlowSource``); the project phase
parses a module only when a query reaches it, once.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cached_property

from trainaudit.model.flow.outline import (
    DefinitionNode,
    Outline,
    definitions_in,
    parse_owner,
)
from trainaudit.model.flow.values import Ref, Site
from trainaudit.model.module import (
    FunctionNode,
    ImportTable,
    ModuleFacts,
    child_blocks,
    physical_lines,
)
from trainaudit.model.project import ModuleSummary, Project

FAMILY = "flow"
SINK_IMPORT_DEPTH = 2  # import hops from a driver (a training loop) to a module with a loss


@dataclass(frozen=True)
class FlowSource:
    """What phase 1 keeps of a file for the flow model: its outline, and the functions
    where a query starts (they hold a loss, a model call with labels, a roll, a trainer).
    The text itself is read again when a query reaches the module (``Project.text_of``)."""

    is_package: bool
    entries: tuple[str, ...]  # dotted paths in the file; "" is the module body
    sinks: bool = True  # the file itself holds a loss, a roll, a trainer or a labels= call
    defines: frozenset[str] = frozenset()  # top-level functions and classes
    calls: frozenset[str] = frozenset()  # simple names the file calls (``f(...)``, ``x.f(...)``)
    outline: Outline | None = None  # None: parse the whole file when it is read
    # Top-level definitions with the simple names each calls.
    calls_by_definition: tuple[tuple[str, frozenset[str]], ...] = ()


class FlowModule:
    """One module: its facts, and its definitions parsed one top-level definition at a
    time, when a query first reads one."""

    def __init__(self, summary: ModuleSummary, flow: FlowSource, source: str,
                 tree: ast.Module | None = None) -> None:
        """``tree``: the module already parsed whole (a latent file), read as it is."""
        self._outline = flow.outline if tree is None else None
        self._lines = physical_lines(source)
        self._parsed: dict[str, DefinitionNode] = {}
        if self._outline is not None:
            try:
                tree = ast.parse(self._outline.skeleton(self._lines), filename=summary.path)
            except (SyntaxError, ValueError):  # a stub the file's layout defeats: read it all
                self._outline = None
        if tree is None:
            tree = ast.parse(source, filename=summary.path)
        if self._outline is None:
            self._parsed = definitions_in(tree.body)
        imports = ImportTable(dict(summary.aliases), set(summary.imports))
        self.facts = ModuleFacts(summary.path, summary.module_name, source, tree,
                                 flow.is_package, imports, self._lines)
        self.name = summary.module_name
        self.path = summary.path
        self.entries = flow.entries
        self._owners_read: set[str] = set()

    def has_definition(self, qualname: str) -> bool:
        """A function, class or method of this dotted path is defined in the module."""
        if self._outline is None:
            return qualname in self._parsed
        return qualname in self._outline.members

    @cached_property
    def bound_by_code(self) -> frozenset[str]:
        """Names module-level statements bind other than definitions and imports
        (assignments, loop and ``with`` targets), read from the module body."""
        names: set[str] = set()
        stack = list(self.facts.tree.body)
        while stack:
            stmt = stack.pop()
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue  # not module code (a stub in the skeleton)
            targets: list[ast.expr] = []
            if isinstance(stmt, ast.Assign):
                targets = stmt.targets
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
                targets = [stmt.target]
            elif isinstance(stmt, ast.With | ast.AsyncWith):
                targets = [item.optional_vars for item in stmt.items if item.optional_vars]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            for block in child_blocks(stmt):
                stack.extend(block)
        return frozenset(names)

    def defines_class(self, qualname: str) -> bool:
        """The definition of this dotted path is a class (known without parsing it)."""
        if self._outline is None:
            return isinstance(self._parsed.get(qualname), ast.ClassDef)
        member = self._outline.members.get(qualname)
        return member is not None and member[1]

    def definition(self, qualname: str) -> DefinitionNode | None:
        """The definition's node (its top-level owner is parsed on first use)."""
        if self._outline is not None and qualname not in self._parsed:
            member = self._outline.members.get(qualname)
            if member is None or member[0] in self._owners_read:
                return None
            owner = member[0]
            self._owners_read.add(owner)
            node = parse_owner(self._lines, self._outline, owner, self.path)
            if node is not None:
                self._parsed[owner] = node
                if not isinstance(node, ast.ClassDef):  # a class's members are owners
                    self._parsed.update(definitions_in(node.body, f"{owner}."))
        return self._parsed.get(qualname)

    def function(self, qualname: str) -> FunctionNode | None:
        node = self.definition(qualname)
        return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None

    def class_node(self, qualname: str) -> ast.ClassDef | None:
        node = self.definition(qualname)
        return node if isinstance(node, ast.ClassDef) else None

    def site(self, node: ast.AST) -> Site:
        return Site(self.path, self.facts.span(node), self.facts.segment(node)[:120])

    def text(self, node: ast.AST) -> str:
        return self.facts.segment(node)


class Program:
    """Every module the flow model may read, by module name, parsed when first asked."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._modules: dict[str, FlowModule | None] = {}
        self._by_name = {s.module_name: s for s in project.modules if FAMILY in s.facts}
        self._latent: dict[str, ModuleSummary] = {}  # skipped files an import reached

    def module(self, name: str) -> FlowModule | None:
        if name not in self._modules:
            summary = self._by_name.get(name) or self._latent.get(name)
            module = None
            source = self.project.text_of(summary) if summary is not None else None
            if summary is not None and source is not None:
                try:
                    module = _flow_module(summary, source)
                except (SyntaxError, ValueError, RecursionError):
                    module = None
            self._modules[name] = module
        return self._modules[name]

    def modules_with_entries(self) -> list[FlowModule]:
        """Modules whose entries are run: those with a sink, and those that import one
        (transitively, within the checked tree); a driver that reaches no sink cannot
        bind a value any sink reads."""
        reaching = self._reaching_sinks()
        found = []
        for summary in self.project.modules:
            flow = summary.facts.get(FAMILY)
            if flow is not None and flow.entries and summary.path in reaching:
                module = self.module(summary.module_name)
                if module is not None:
                    found.append(module)
        return found

    def _reaching_sinks(self) -> set[str]:
        """Modules with a sink, and those that call into one: a module importing a sink
        module and calling a name it defines (a trainer calling its loss helper), to
        ``SINK_IMPORT_DEPTH`` such hops. An import alone is not enough: in a library
        where everything imports everything, that would be every file."""
        flows = {s.path: s.facts[FAMILY] for s in self.project.modules if FAMILY in s.facts}
        # A sink module is called through the definitions that hold its sinks; a module
        # reached in turn (a step helper calling a loss helper) through its definitions
        # that call those.
        frontier = {path: flow.defines for path, flow in flows.items() if flow.sinks}
        seen = set(frontier)
        importers = self.project.importers
        for _ in range(SINK_IMPORT_DEPTH):
            reached: dict[str, frozenset[str]] = {}
            for path, names in frontier.items():
                for source in importers.get(path, ()):
                    flow = flows.get(source)
                    if source in seen or flow is None or not flow.calls & names:
                        continue
                    calling = frozenset(name for name, called in flow.calls_by_definition
                                        if called & names)
                    reached[source] = reached.get(source, frozenset()) | calling
            seen |= set(reached)
            frontier = reached
        return seen

    def resolve(self, qualified: str, importer: str | None = None
                ) -> tuple[FlowModule, str] | None:
        """``pkg.data.build_loaders`` → the checked module and the name in it. A module
        name that several checked files end with (``fp8_utils`` in three sibling folders)
        is the importer's neighbour, or the one of exactly that name, or none: an
        ambiguous import is unknown, not a guess."""
        parts = qualified.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            dotted = ".".join(parts[:cut])
            summary = self._pick(self.project.module_candidates(dotted)
                                 or self.project.latent_candidates(dotted), dotted, importer)
            if summary is not None and FAMILY not in summary.facts \
                    and summary.module_name not in self._by_name:
                self._latent.setdefault(summary.module_name, summary)
            if summary is not None:
                module = self.module(summary.module_name)
                return (module, ".".join(parts[cut:])) if module is not None else None
        return None

    @staticmethod
    def _pick(candidates: list[ModuleSummary], dotted: str,
              importer: str | None) -> ModuleSummary | None:
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        exact = [c for c in candidates if c.module_name == dotted]
        if len(exact) == 1:
            return exact[0]
        if importer is not None:
            folder = importer.rsplit("/", 1)[0] if "/" in importer else ""
            near = [c for c in candidates
                    if (c.path.rsplit("/", 1)[0] if "/" in c.path else "") == folder]
            if len(near) == 1:
                return near[0]
        return None


    def ref_node(self, ref: Ref) -> tuple[FlowModule, ast.FunctionDef | ast.AsyncFunctionDef
                                          | ast.ClassDef] | None:
        module = self.module(ref.module)
        if module is None:
            return None
        node = module.definition(ref.qualname)
        return (module, node) if node is not None else None

    def bases(self, ref: Ref) -> list[Ref]:
        """The checked classes a class derives from (nearest first)."""
        found = self.ref_node(ref)
        if found is None or not isinstance(found[1], ast.ClassDef):
            return []
        module, node = found
        assert isinstance(node, ast.ClassDef)
        refs = []
        for base in node.bases:
            name = module.facts.qualname(base)
            if name is None:
                continue
            local = name if module.has_definition(name) else None
            if local is not None:
                refs.append(Ref(module.name, local))
                continue
            target = self.resolve(name, module.path)
            if target is not None and target[0].has_definition(target[1]):
                refs.append(Ref(target[0].name, target[1]))
        return refs

    def method(self, cls: Ref, name: str, depth: int = 0) -> Ref | None:
        """The method ``name`` of a checked class or its checked bases."""
        found = self.ref_node(cls)
        if found is None or depth > 8:
            return None
        qualname = f"{cls.qualname}.{name}"
        if found[0].has_definition(qualname) and not found[0].defines_class(qualname):
            return Ref(cls.module, qualname)
        for base in self.bases(cls):
            method = self.method(base, name, depth + 1)
            if method is not None:
                return method
        return None

    def library_bases(self, cls: Ref, depth: int = 0) -> list[str]:
        """Qualified names of the bases outside the checked tree (``torch.nn.Module``)."""
        found = self.ref_node(cls)
        if found is None or not isinstance(found[1], ast.ClassDef) or depth > 8:
            return []
        module, node = found
        assert isinstance(node, ast.ClassDef)
        names = []
        for base in node.bases:
            name = module.facts.qualname(base)
            if name is not None and not module.has_definition(name) \
                    and self.resolve(name, module.path) is None:
                names.append(name)
        for parent in self.bases(cls):
            names += self.library_bases(parent, depth + 1)
        return names


def _flow_module(summary: ModuleSummary, source: str) -> FlowModule:
    """A module as the flow reads it; a file phase 1 skipped (latent) is parsed whole,
    once, here: its imports from that tree, no entries of its own."""
    if FAMILY in summary.facts:
        return FlowModule(summary, summary.facts[FAMILY], source)
    tree = ast.parse(source, filename=summary.path)
    facts = ModuleFacts(summary.path, summary.module_name, source, tree,
                        summary.path.endswith("__init__.py"))
    summary = ModuleSummary(summary.path, summary.module_name,
                            frozenset(facts.imports.modules), dict(facts.imports.aliases),
                            file=summary.file)
    return FlowModule(summary, FlowSource(facts.is_package, (), sinks=False), source, tree)
