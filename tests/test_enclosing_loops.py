"""Enclosing loops in the loop model (an epoch loop around the step loop) and TA502 across
them: the ordered call tree of the epoch loop, helper parameters bound to the caller's
objects, and the fix at the evaluation's call site."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import check_tree, fix_tree, only_training_loop

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "loops"

EPOCHS = """\
def evaluate(net, loader):
    net.eval()
    return len(loader)


def train(model, ema, loader, val_loader, optimizer, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            loss = model(x).sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        evaluate(model, val_loader)
        evaluate(ema, val_loader)
    evaluate(model, val_loader)
"""



def test_training_loop_knows_its_epochonly_training_loop() -> None:
    loop = only_training_loop(EPOCHS)
    assert [outer.header.text for outer in loop.enclosing] == ["for epoch in range(epochs):"]
    outer = loop.enclosing[0]
    # The helper's ``net`` is the caller's object at each call; the call after the epoch
    # loop is no part of it.
    assert [(op.receiver, op.subject) for op in outer.ops("eval_mode")] == [
        ("net", "model"), ("net", "ema")]
    forward = outer.inside(loop)[0]
    assert forward.kind == "forward" and forward.subject == "model"
    first_eval = outer.ops("eval_mode")[0]
    # After the evaluation the next epoch's forward runs (a later pass), not this pass's.
    assert outer.may_run_later(first_eval, forward)
    assert not outer.may_follow(first_eval, forward)


def test_parameter_without_argument_is_unbound() -> None:
    loop = only_training_loop(EPOCHS.replace("def evaluate(net, loader):", "def evaluate(loader, net=None):")
                 .replace("evaluate(model, val_loader)\n        evaluate(ema, val_loader)",
                          "evaluate(val_loader)"))
    assert [op.subject for op in loop.enclosing[0].ops("eval_mode")] == ["?"]


def test_fixed_epoch_loop_is_clean_on_recheck(tmp_path: Path) -> None:
    source = (FIXTURES / "codemods" / "ta502_epoch_loop_evaluate.in.py").read_text()
    (tmp_path / "train.py").write_text(source)
    assert [f.code for f in check_tree(tmp_path, select=("TA502",)).findings] == ["TA502"]
    fixed = fix_tree(tmp_path, select=("TA502",))["train.py"]
    (tmp_path / "train.py").write_text(fixed)
    assert check_tree(tmp_path, select=("TA502",)).findings == []


def test_evaluation_in_another_file_offers_no_fix(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "epoch_evaluate_other_file", tmp_path / "case",
                    ignore=shutil.ignore_patterns("expected.txt"))
    findings = check_tree(tmp_path / "case", select=("TA502",)).findings
    assert [(f.path, f.fix, f.payload) for f in findings] == [("project/evaluation.py", None, None)]
    assert fix_tree(tmp_path / "case", select=("TA502",)) == {}


def test_call_statement_that_leaves_the_block_gets_no_fix(tmp_path: Path) -> None:
    source = (FIXTURES / "codemods" / "ta502_epoch_loop_evaluate.in.py").read_text().replace(
        "            print(epoch, evaluate(model, val_loader))",
        "            if evaluate(model, val_loader) < 0.1:\n                break")
    (tmp_path / "train.py").write_text(source)
    assert [f.code for f in check_tree(tmp_path, select=("TA502",)).findings] == ["TA502"]
    assert fix_tree(tmp_path, select=("TA502",)) == {}


EARLY_RETURN = """\
import torch
import torch.nn.functional as F


def evaluate(model, loader, limit=2):
    model.eval()
    total = 0.0
    with torch.no_grad():
        for count, (x, y) in enumerate(loader):
            total += F.cross_entropy(model(x), y).item()
            if count + 1 >= limit:
                return total / limit
    model.train()
    return total


def train(model, loader, val_loader, optimizer, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        evaluate(model, val_loader)
"""


def test_a_return_before_the_restore_leaves_eval_mode(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(EARLY_RETURN)
    found = [(f.code, f.line) for f in check_tree(tmp_path, select=("TA502",)).findings]
    assert found == [("TA502", 6)]


def test_a_restore_in_finally_runs_on_every_return(tmp_path: Path) -> None:
    source = EARLY_RETURN.replace(
        "    total = 0.0\n    with torch.no_grad():\n"
        "        for count, (x, y) in enumerate(loader):\n"
        "            total += F.cross_entropy(model(x), y).item()\n"
        "            if count + 1 >= limit:\n"
        "                return total / limit\n"
        "    model.train()\n    return total\n",
        "    total = 0.0\n    try:\n        with torch.no_grad():\n"
        "            for count, (x, y) in enumerate(loader):\n"
        "                total += F.cross_entropy(model(x), y).item()\n"
        "                if count + 1 >= limit:\n"
        "                    return total / limit\n"
        "        return total\n    finally:\n        model.train()\n")
    assert source != EARLY_RETURN
    (tmp_path / "train.py").write_text(source)
    assert check_tree(tmp_path, select=("TA502",)).findings == []


def test_a_restore_the_loop_runs_before_each_step_is_kept(tmp_path: Path) -> None:
    """``model.train()`` at the top of the step loop comes before the next step, though
    the helper can return after the evaluation without passing it again."""
    (tmp_path / "train.py").write_text(
        "import torch.nn.functional as F\n\n\n"
        "def evaluate(model, loader):\n    model.eval()\n    for x, y in loader:\n        model(x)\n\n\n"
        "def run_epoch(model, loader, optimizer, val_loader):\n"
        "    for i, (x, y) in enumerate(loader):\n        model.train()\n"
        "        loss = F.cross_entropy(model(x), y)\n        loss.backward()\n"
        "        optimizer.step()\n        optimizer.zero_grad()\n"
        "        if i % 100 == 0:\n            evaluate(model, val_loader)\n\n\n"
        "def main(model, loader, optimizer, val_loader):\n    for epoch in range(10):\n"
        "        run_epoch(model, loader, optimizer, val_loader)\n")
    assert check_tree(tmp_path, select=("TA502",)).findings == []


EARLY_RETURN_IN_STEP_LOOP = EARLY_RETURN.replace(
    "            optimizer.zero_grad()\n        evaluate(model, val_loader)\n",
    "            optimizer.zero_grad()\n            evaluate(model, val_loader)\n")


NO_RESTORE = EARLY_RETURN_IN_STEP_LOOP.replace("    model.train()\n    return total\n",
                                              "    return total\n")


@pytest.mark.parametrize("source", [EARLY_RETURN_IN_STEP_LOOP, NO_RESTORE],
                         ids=["restore_skipped", "no_restore"])
def test_no_fix_where_an_early_return_skips_the_restore(tmp_path: Path, source: str) -> None:
    # The loop corpus's try_finally TA502 bug (issue 17) evaluated in the step loop: the old
    # fix added one more `model.train()` before the last `return`, which the early return
    # skips too, on every round of `fix` (12 of them) without removing the finding. With no
    # restore at all, one at the block's end would be skipped alike.
    assert NO_RESTORE != EARLY_RETURN_IN_STEP_LOOP != EARLY_RETURN
    (tmp_path / "train.py").write_text(source)
    findings = check_tree(tmp_path, select=("TA502",)).findings
    assert [(f.code, f.line, f.fix) for f in findings] == [("TA502", 6, None)]
    assert fix_tree(tmp_path, select=("TA502",)) == {}


def test_a_break_of_a_nested_loop_keeps_the_fix(tmp_path: Path) -> None:
    # `break` leaves only the evaluation's own loop: the restore at the end still runs.
    source = NO_RESTORE.replace("                return total / limit\n", "                break\n")
    assert source != NO_RESTORE
    (tmp_path / "train.py").write_text(source)
    findings = check_tree(tmp_path, select=("TA502",)).findings
    assert [(f.code, f.line, f.fix) for f in findings] == [("TA502", 6, "corrective")]
    fixed = fix_tree(tmp_path, select=("TA502",))["train.py"]
    assert "                break\n    model.train()\n    return total\n" in fixed
    (tmp_path / "train.py").write_text(fixed)
    assert check_tree(tmp_path, select=("TA502",)).findings == []
