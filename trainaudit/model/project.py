"""Facts that cross files: which checked module imports which, and family summaries."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from trainaudit.model.module import ModuleFacts
from trainaudit.notebook import is_notebook, without_unparsable_cells
from trainaudit.sources import DecodeError, source_of, text_check

T = TypeVar("T")


@dataclass
class ModuleSummary:
    """What one file contributes to cross-file rules; small and picklable."""

    path: str
    module_name: str
    imports: frozenset[str]
    aliases: dict[str, str]
    facts: dict[str, Any] = field(default_factory=dict)
    file: str = ""  # where to read the file again (``Project.text_of``)
    text_check: int = 0  # ``sources.text_check`` of the analysed text


class Project:
    """All checked files' summaries, with imports resolved within the checked tree."""

    def __init__(self, summaries: list[ModuleSummary], texts: Mapping[str, str] | None = None,
                 latent: Sequence[ModuleSummary] = ()) -> None:
        """``texts``: analysed texts by path that are not the files on disk (an editor's
        buffer, stdin, a fix being checked). ``latent``: files of the checked tree that
        phase 1 skipped (no rule's trigger in their text), without facts: a helper the flow
        reaches through an import (a progress bar, a tokenizer, a model) is read then."""
        self.modules = sorted(summaries, key=lambda s: s.path)
        self._latent = list(latent)
        self._texts = dict(texts or {})
        self.by_path = {s.path: s for s in self.modules}
        # Every dotted suffix of a module's name resolves to it, so
        # ``mm_rec.data.loader`` finds ``reference_impl/mm_rec/data/loader.py``
        # whatever folder the check was started from.
        self._by_suffix: dict[str, list[ModuleSummary]] = {}
        self._resolved_modules: dict[str, ModuleSummary | None] = {}
        self._by_name: dict[str, ModuleSummary] = {}  # the first module of each full name
        for summary in self.modules:
            self._by_name.setdefault(summary.module_name, summary)
        self._resolved_symbols: dict[str, tuple[ModuleSummary, str] | None] = {}
        self._cache: dict[str, Any] = {}
        for summary in self.modules:
            parts = summary.module_name.split(".")
            for start in range(len(parts)):
                self._by_suffix.setdefault(".".join(parts[start:]), []).append(summary)

    def text_of(self, summary: ModuleSummary) -> str | None:
        """The text phase 1 analysed, read again (phase 1 does not ship every file's
        source to this process); None if the file is gone or no longer the same. A latent
        file (``text_check`` 0: phase 1 did not read it) is read as it is now."""
        if summary.path in self._texts:
            return self._texts[summary.path]
        try:
            text = source_of(summary.path, Path(summary.file or summary.path).read_bytes())
        except (OSError, DecodeError):
            return None
        if not summary.text_check:
            return text  # a latent file: phase 1 did not read it
        if text_check(text) != summary.text_check and is_notebook(summary.path):
            text = without_unparsable_cells(text)[0]  # as phase 1 analysed it
        return text if text_check(text) == summary.text_check else None

    @cached_property
    def _latent_by_suffix(self) -> dict[str, list[ModuleSummary]]:
        found: dict[str, list[ModuleSummary]] = {}
        for summary in self._latent:
            parts = summary.module_name.split(".")
            for start in range(len(parts)):
                found.setdefault(".".join(parts[start:]), []).append(summary)
        return found

    def latent_candidates(self, dotted: str) -> list[ModuleSummary]:
        """Every skipped file whose module name ends with ``dotted``."""
        return list(self._latent_by_suffix.get(dotted, []))

    def resolve_module(self, dotted: str) -> ModuleSummary | None:
        """The checked file a dotted module name refers to, if any (longest, unique match)."""
        # Memoised: rules ask about the same few names very many times, and a suffix
        # shared by many files (``data``, ``train``) makes each answer cost O(files).
        if dotted in self._resolved_modules:
            return self._resolved_modules[dotted]
        found = self._resolve_module(dotted)
        self._resolved_modules[dotted] = found
        return found

    def _resolve_module(self, dotted: str) -> ModuleSummary | None:
        candidates = self._by_suffix.get(dotted, [])
        if len(candidates) == 1:
            return candidates[0]
        exact = self._by_name.get(dotted)
        return exact if exact is not None else (candidates[0] if candidates else None)

    def module_candidates(self, dotted: str) -> list[ModuleSummary]:
        """Every checked module whose name ends with ``dotted``."""
        return list(self._by_suffix.get(dotted, []))

    def resolve_symbol(self, qualified: str) -> tuple[ModuleSummary, str] | None:
        """Split ``pkg.data.TextDataset`` into the checked module and the name in it."""
        if qualified in self._resolved_symbols:
            return self._resolved_symbols[qualified]
        found: tuple[ModuleSummary, str] | None = None
        parts = qualified.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = self.resolve_module(".".join(parts[:cut]))
            if module is not None:
                found = (module, ".".join(parts[cut:]))
                break
        self._resolved_symbols[qualified] = found
        return found

    @cached_property
    def import_graph(self) -> dict[str, set[str]]:
        """Path → paths of checked modules it imports."""
        graph: dict[str, set[str]] = {}
        for summary in self.modules:
            targets: set[str] = set()
            for name in summary.imports:
                target = self.resolve_module(name)
                if target is not None and target.path != summary.path:
                    targets.add(target.path)
            graph[summary.path] = targets
        return graph

    @cached_property
    def _components(self) -> dict[str, int]:
        neighbours: dict[str, set[str]] = {s.path: set() for s in self.modules}
        for src, targets in self.import_graph.items():
            for dst in targets:
                neighbours[src].add(dst)
                neighbours[dst].add(src)
        component: dict[str, int] = {}
        for index, start in enumerate(neighbours):
            if start in component:
                continue
            stack = [start]
            while stack:
                node = stack.pop()
                if node in component:
                    continue
                component[node] = index
                stack.extend(neighbours[node] - component.keys())
        return component

    @cached_property
    def importers(self) -> dict[str, set[str]]:
        """Path → paths of checked modules that import it (the import graph reversed)."""
        reverse: dict[str, set[str]] = {}
        for source, targets in self.import_graph.items():
            for target in targets:
                reverse.setdefault(target, set()).add(source)
        return reverse

    def component(self, path: str) -> int | None:
        """An id shared by the files linked by imports (either way, transitively)."""
        return self._components.get(path)

    def connected(self, path_a: str, path_b: str) -> bool:
        """Whether two files are linked by imports within the checked tree (either way)."""
        if path_a == path_b:
            return True
        comps = self._components
        return path_a in comps and comps.get(path_a) == comps.get(path_b)

    def cached(self, name: str, make: Callable[[], T]) -> T:
        """A value computed once per project (a family's analysis), kept on it."""
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]  # type: ignore[no-any-return]

    def module_of(self, summary: ModuleSummary) -> ModuleFacts | None:
        """A checked file read again and parsed, once per project (a project rule that needs
        more of a file than its summary keeps); None when it is gone or does not parse."""
        def parse() -> ModuleFacts | None:
            text = self.text_of(summary)
            try:
                tree = ast.parse(text, filename=summary.path) if text is not None else None
            except SyntaxError:
                return None
            return ModuleFacts(summary.path, summary.module_name, text, tree,
                               summary.path.endswith("__init__.py")) if text is not None and tree else None
        return self.cached(f"module:{summary.path}", parse)

    def facts(self, family: str) -> Iterator[tuple[ModuleSummary, Any]]:
        """Each module's summary for one rule family, where it has one."""
        for summary in self.modules:
            if family in summary.facts:
                yield summary, summary.facts[family]
