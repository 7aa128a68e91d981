"""TA102's fix of a producer that shifts the labels *and* cuts the inputs (a collator
returning ``ids[:, :-1]`` / ``ids[:, 1:]``): both lines become ``ids``, so the loss's own
shift lines them up. Where the flow cannot prove that is all, the finding has no fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import check_tree, fix_tree
from trainaudit.diagnostics import FixClass

LABELS = Path(__file__).resolve().parent.parent / "fixtures" / "labels"

# Reported, but no fix: the attention mask is cut like the labels; the labels slice a
# copy, not the tensor the inputs slice; another loss reads the labels unshifted;
# position ids the flow cannot read are returned beside them (made for T-1 tokens).
NO_FIX = ["collate_both_sides_mask_label_side", "collate_both_sides_copy_sliced",
          "collate_both_sides_also_unshifted_loss", "collate_both_sides_position_ids"]


@pytest.mark.parametrize("case", NO_FIX)
def test_no_fix_without_proof(case: str, tmp_path: Path) -> None:
    shutil.copy(LABELS / f"{case}.py", tmp_path / "train.py")
    findings = check_tree(tmp_path, select=("TA102",)).findings
    assert [(f.code, f.fix) for f in findings] == [("TA102", None)]
    assert fix_tree(tmp_path, select=("TA102",)) == {}


@pytest.mark.parametrize("pair", sorted((LABELS / "codemods").glob("ta102_*both_sides.in.py")),
                         ids=lambda p: p.name)
def test_both_sides_fix_is_corrective_and_leaves_no_double_shift(pair: Path,
                                                                 tmp_path: Path) -> None:
    shutil.copy(pair, tmp_path / "train.py")
    before = check_tree(tmp_path, select=("TA1",)).findings
    assert [(f.code, f.fix) for f in before] == [("TA102", FixClass.CORRECTIVE)]
    fixed = fix_tree(tmp_path, select=("TA1",))
    (tmp_path / "train.py").write_text(fixed["train.py"])
    assert check_tree(tmp_path, select=("TA1",)).findings == []
