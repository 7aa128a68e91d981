"""Typed payloads of the loop, hygiene, label and suppression rules: every fixable finding
carries one, fixers read nothing else, and ``Finding`` has no untyped ``fix_data`` left."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tests.helpers import check_tree
from trainaudit.diagnostics import Finding, FixPayload
from trainaudit.fixes import load_fixers
from trainaudit.payloads import (
    ClipBeforeStep,
    DetachAccumulated,
    IgnoreValue,
    MoveToStep,
    NoGradFunction,
    ZeroGradAfterStep,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
_FAMILIES = ("loops", "labels")


def _codemod_inputs() -> list[Path]:
    return sorted(p for family in _FAMILIES
                  for p in (FIXTURES / family / "codemods").glob("*.in.py"))


def _findings(tmp_path: Path, source: Path) -> list[Finding]:
    shutil.copy(source, tmp_path / "train.py")
    return list(check_tree(tmp_path).findings)


def test_finding_has_no_untyped_fix_data() -> None:
    assert {f.name for f in dataclasses.fields(Finding)} >= {"payload"}
    assert "fix_data" not in {f.name for f in dataclasses.fields(Finding)}


@pytest.mark.parametrize("source", _codemod_inputs(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_fixable_finding_carries_a_payload(source: Path, tmp_path: Path) -> None:
    fixable = [f for f in _findings(tmp_path, source) if f.fix is not None]
    unchanged = source.read_text() == source.with_name(
        source.name.replace(".in.py", ".out.py")).read_text()
    assert bool(fixable) != unchanged  # a pair that changes has something to fix
    for finding in fixable:
        assert isinstance(finding.payload, FixPayload), finding.code


@pytest.mark.parametrize(("case", "code", "payload"), [
    ("loops/zero_grad_only_on_skip_branch.py", "TA204", ZeroGradAfterStep("optimizer")),
    ("loops/gated_zero_grad_in_else.py", "TA203", MoveToStep((13, 13), "zero_grad", (11, 12))),
    ("loops/codemods/ta501_add_no_grad.in.py", "TA501", NoGradFunction("evaluate")),
    ("loops/codemods/ta504_add_clip.in.py", "TA504",
     ClipBeforeStep(model="model", optimizer="optimizer", scaler=None, unscaled=False)),
    ("loops/codemods/ta503_all_reduce_detach.in.py", "TA503", DetachAccumulated("val_loss")),
])
def test_payload_and_fixer_reading_only_it(case: str, code: str, payload: FixPayload,
                                           tmp_path: Path) -> None:
    """The rule hands exactly this payload; without it its fixer makes no edit (it never
    re-analyses the file), with it the fixer changes the file."""
    source = (FIXTURES / case).read_text()
    (finding,) = [f for f in _findings(tmp_path, FIXTURES / case) if f.code == code]
    assert finding.payload == payload
    fixer = load_fixers()[code]
    assert fixer(source, [dataclasses.replace(finding, payload=None)], {}).source == source
    assert fixer(source, [finding], {}).source != source


def test_ta104_payload_is_the_loss_ignore_value(tmp_path: Path) -> None:
    cases = [p for p in sorted((FIXTURES / "labels").glob("*.py"))
             if "TA104" in p.with_suffix(".expected").read_text()]
    assert cases
    findings = [f for f in _findings(tmp_path, cases[0]) if f.code == "TA104"]
    assert findings and all(isinstance(f.payload, IgnoreValue) for f in findings if f.fix)
