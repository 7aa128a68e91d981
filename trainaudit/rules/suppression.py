"""TA002: a suppression comment that suppresses nothing (as ruff's RUF100).

Whether a ``# noqa: TA102`` is used is known only after every finding has been
filtered, so the engine judges it (``unused_suppressions``) once the run is done.
It judges only codes it can vouch for: selected for the file, implemented, and
looked for there. A cross-file rule (a project rule) is vouched for only in files
found by walking a folder: a file given alone (pre-commit passes only the changed
files) lacks the files its cross-file findings need. Other tools' codes
(``# noqa: E501``) and bare ``# noqa`` / ``# trainaudit: ignore`` are never judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from trainaudit.diagnostics import Finding, Span
from trainaudit.model.module import ModuleFacts
from trainaudit.payloads import SuppressionEdit
from trainaudit.registry import ModuleRule, RuleContext, register
from trainaudit.suppression import SuppressionComment, without_codes


@register
class UnusedSuppression(ModuleRule):
    """Registered so that the code is selectable, listed and documented, and so that the
    prefilter parses files with a directive naming one of our codes."""

    code = "TA002"
    triggers = ("noqa", "trainaudit")
    requires = ((r"noqa[^\n]*TA[0-9]",), (r"ignore\[[^\n]*TA[0-9]",))

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterable[Finding]:
        return ()


def unused_suppressions(path: str, comments: Iterable[SuppressionComment],
                        used: set[tuple[int, str]], judged: Callable[[str], bool]
                        ) -> list[Finding]:
    """TA002 findings for one file: directives naming judged codes that suppressed nothing
    (``used`` holds the (line, code) pairs that suppressed a finding)."""
    rule = UnusedSuppression()
    findings = []
    for comment in comments:
        unused = [c for c in dict.fromkeys(comment.codes)
                  if judged(c) and (comment.line, c) not in used]
        if not unused:
            continue
        listed = ", ".join(unused)
        span = Span(comment.line, comment.column, comment.line, comment.end_column)
        findings.append(rule.finding(
            path, span,
            f"`{comment.text}` suppresses nothing: no {listed} finding on this line. "
            "Remove the unused code(s).",
            payload=SuppressionEdit(comment.text, without_codes(comment, frozenset(unused)),
                                    comment.starts_comment)))
    return findings
