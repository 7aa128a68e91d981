"""TA001: the file does not parse. Reported by the engine, which owns parsing."""

from __future__ import annotations

from collections.abc import Iterable

from trainaudit.diagnostics import Finding
from trainaudit.model.module import ModuleFacts
from trainaudit.registry import ModuleRule, RuleContext, register


@register
class SyntaxErrorRule(ModuleRule):
    """A file that cannot be parsed (or decoded) is a finding, never a crash.

    The engine creates these findings while reading files; this class exists so
    the code is selectable, documented and listed like every other rule.
    """

    code = "TA001"
    applies_to_tests = True

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterable[Finding]:
        return ()
