"""Rules, summarizers and how they are registered.

A rule reads facts and yields findings. ``ModuleRule`` sees one parsed file;
``ProjectRule`` sees the summaries of every checked file (cross-file facts).
A *summarizer* turns one parsed file into a small picklable fact record that
project rules read; summaries are what crosses processes and the cache.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from trainaudit.catalogue import BY_CODE, RuleInfo
from trainaudit.diagnostics import Finding, FixPayload, Related, Span

if TYPE_CHECKING:
    from trainaudit.model.module import ModuleFacts
    from trainaudit.model.project import Project


# A disjunction of conjunctions of regular expressions over a file's text:
# ``(("a", "b"), ("c",))`` means "(a and b) or c". Empty: no condition.
Clauses = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Gate:
    """The text prefilter of one rule or summarizer: what a file must contain for it to
    find anything. Any trigger substring (a fast scan), then one clause whose patterns all
    match. Both are *necessary* conditions, so a file that fails cannot hold a finding
    (tests/test_prefilter.py checks that on every fixture). Patterns should start with a
    literal (``backward\\s*\\(``, not ``\\bbackward``): ``re`` then scans for it quickly."""

    triggers: tuple[bytes, ...]
    clauses: tuple[tuple[re.Pattern[bytes], ...], ...]

    @classmethod
    def of(cls, triggers: tuple[str, ...], requires: Clauses) -> Gate:
        return cls(tuple(t.encode() for t in triggers),
                   tuple(tuple(_compile(p) for p in clause) for clause in requires))

    def passes(self, data: bytes) -> bool:
        if self.triggers and not any(t in data for t in self.triggers):
            return False
        return not self.clauses or any(all(p.search(data) for p in clause)
                                       for clause in self.clauses)


@functools.cache
def _compile(pattern: str) -> re.Pattern[bytes]:
    return re.compile(pattern.encode())


@dataclass(frozen=True)
class RuleContext:
    """What a rule may read besides facts: its options (config merged over defaults)."""

    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        return self.options[name]


class Rule:
    """Base of all rules. Subclasses set ``code`` and ``triggers`` and implement ``check``."""

    code: ClassVar[str]
    # Substrings of which at least one must occur in a file for the rule to see it.
    triggers: ClassVar[tuple[str, ...]] = ()
    # Then, where set, a finer necessary condition (see ``Gate``): regex clauses of which
    # one must match entirely. Checked on the raw bytes only of files with a trigger.
    requires: ClassVar[Clauses] = ()
    # Options the rule reads, kebab-case, with their defaults.
    options: ClassVar[dict[str, Any]] = {}
    # Whether the rule reports in test files (``tests/``, ``test_*.py``, ``*_test.py``,
    # ``conftest.py``). Tests step optimisers over fixed gradients, evaluate without
    # no_grad and run tiny batches on purpose, so loop, precision, checkpointing and
    # hygiene rules stay quiet there; a wrong label shift is a bug wherever it is.
    # ``check-tests = true`` in the config turns every rule on in tests.
    applies_to_tests: ClassVar[bool] = False

    @property
    def info(self) -> RuleInfo:
        return BY_CODE[self.code]

    def finding(self, path: str, span: Span, message: str, *,
                related: Sequence[Related] = (), payload: FixPayload | None = None,
                fixable: bool = True) -> Finding:
        """A finding of this rule; ``payload`` is what its fixer needs (``trainaudit.payloads``)."""
        info = self.info
        return Finding(code=info.code, name=info.name, severity=info.severity, path=path,
                       span=span, message=message, fix=info.fix if fixable else None,
                       related=tuple(related), payload=payload)


class ModuleRule(Rule):
    """A rule that needs only one file."""

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterable[Finding]:
        raise NotImplementedError

    def report(self, module: ModuleFacts, node: ast.AST, message: str, *,
               related: Sequence[Related] = (), payload: FixPayload | None = None,
               fixable: bool = True) -> Finding:
        return self.finding(module.path, module.span(node), message, related=related,
                            payload=payload, fixable=fixable)


class ProjectRule(Rule):
    """A rule over the summaries of all checked files (facts that cross files)."""

    # The summarizer families the rule reads; empty means all of them.
    families: ClassVar[tuple[str, ...]] = ()

    def check(self, project: Project, ctx: RuleContext) -> Iterable[Finding]:
        raise NotImplementedError


Summarize = Callable[["ModuleFacts"], Any]


@dataclass(frozen=True)
class Summarizer:
    family: str
    triggers: tuple[str, ...]
    function: Summarize
    requires: Clauses = ()


RULES: dict[str, type[Rule]] = {}
SUMMARIZERS: dict[str, Summarizer] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: make a rule known by its code."""
    if cls.code not in BY_CODE:
        raise ValueError(f"{cls.__name__}: code {cls.code} is not in the catalogue")
    if cls.code in RULES:
        raise ValueError(f"{cls.code} registered twice ({RULES[cls.code].__name__}, {cls.__name__})")
    RULES[cls.code] = cls
    return cls


def summarizer(family: str, *, triggers: tuple[str, ...],
               requires: Clauses = ()) -> Callable[[Summarize], Summarize]:
    """Function decorator: register the per-file fact extractor of one rule family."""

    def decorate(function: Summarize) -> Summarize:
        SUMMARIZERS[family] = Summarizer(family, triggers, function, requires)
        return function

    return decorate


def load_rules() -> dict[str, type[Rule]]:
    """Import every rule module once, so their decorators run."""
    import trainaudit.rules  # noqa: F401  (registers on import)

    return RULES


def applies_to_tests(code: str) -> bool:
    """Whether findings of ``code`` are reported in test files by default (codes without a
    rule class, such as the engine's own, are)."""
    cls = load_rules().get(code)
    return cls is None or cls.applies_to_tests


def all_options() -> dict[str, Any]:
    """Every rule option with its default value."""
    merged: dict[str, Any] = {}
    for cls in load_rules().values():
        merged.update(cls.options)
    return merged
