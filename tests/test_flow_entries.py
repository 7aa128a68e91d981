"""Where the flow model's queries start: a file that makes a criterion runs the functions
that may call it; a file that only tests for one (a type check, an identity comparison)
does not, since it reads a criterion made elsewhere."""

from __future__ import annotations

import ast
import textwrap

from trainaudit.model.labels.entries import flow_source
from trainaudit.model.module import ModuleFacts

# A method calling something the function holds with two arguments: a criterion in a file
# that makes one, an ordinary method call otherwise.
_HOLDER = """
class Wrapper:
    def compare(self, other, tx):
        return self.helper(other, tx)
"""


def _entries(source: str) -> tuple[str, ...]:
    text = textwrap.dedent(source)
    return flow_source(ModuleFacts("m.py", "m", text, ast.parse(text))).entries


def test_a_criterion_made_here_makes_its_callers_entries() -> None:
    assert "Wrapper.compare" in _entries(_HOLDER + """
import torch
LOSS = torch.nn.CrossEntropyLoss()
""")


def test_a_criterion_only_compared_or_type_tested_makes_no_entry() -> None:
    for test in ("fn is torch.nn.CrossEntropyLoss",
                 "fn in (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)",
                 "isinstance(fn, torch.nn.CrossEntropyLoss)",
                 "issubclass(fn, (torch.nn.NLLLoss, torch.nn.CrossEntropyLoss))"):
        assert _entries(_HOLDER + f"""
import torch
def known(fn):
    return {test}
""") == (), test


def test_a_criterion_class_passed_on_is_made_here() -> None:
    assert "Wrapper.compare" in _entries(_HOLDER + """
import torch
def build(make=torch.nn.CrossEntropyLoss):
    return make()
""")
