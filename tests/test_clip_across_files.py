"""Clipping helpers imported from another file (issue 17). TA303: the finding is where the
loop calls the helper, its fix puts ``unscale_`` before that call, and the fixed trainer
clips unscaled gradients when it runs. TA203: a helper clipping on every micro-batch is
reported, and moved, at its call."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import check_tree, fix_tree

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "precision"

UTILS = '''\
    import torch


    def clip_gradients(model, max_norm):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
'''

# Runs on a CPU: the scaler and autocast are the CPU's, the helper's norms are kept.
TRAIN = '''\
    import torch
    import torch.nn.functional as F

    from utils import clip_gradients

    norms = []


    def train(model, loader, optimizer):
        scaler = torch.amp.GradScaler("cpu")
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
                loss = F.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            norms.append(float(clip_gradients(model, 1.0)))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
'''


def _write(root: Path, train: str = TRAIN, utils: str = UTILS) -> None:
    (root / "train.py").write_text(textwrap.dedent(train))
    (root / "utils.py").write_text(textwrap.dedent(utils))


def _findings(root: Path) -> list[tuple[str, int, int, str, bool]]:
    return sorted((f.path, f.line, f.column, f.code, f.fix is not None)
                  for f in check_tree(root, select=("TA303",)).findings)


def test_clip_in_a_helper_of_another_file_is_reported_at_the_call(tmp_path: Path) -> None:
    _write(tmp_path)
    result = check_tree(tmp_path, select=("TA303",))
    assert [(f.path, f.line, f.column, f.code) for f in result.findings] == [("train.py", 15, 28, "TA303")]
    finding = result.findings[0]
    assert finding.message == ("`clip_gradients(model, 1.0)` clips gradients still scaled by `scaler` "
                               "(in utils.py:5): call `scaler.unscale_(optimizer)` before it")
    assert [(r.path, r.line, r.column) for r in finding.related] == [("utils.py", 5, 12)]


def _train_norms(root: Path) -> list[float]:
    """Run ``train`` from ``root`` on a CPU and return the norms the helper measured."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(root))
    try:
        for name in ("train", "utils"):
            sys.modules.pop(name, None)
        import train  # type: ignore[import-not-found]

        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        loader = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(3)]
        train.train(model, loader, torch.optim.SGD(model.parameters(), lr=0.01))
        return list(train.norms)
    finally:
        sys.path.remove(str(root))
        for name in ("train", "utils"):
            sys.modules.pop(name, None)


def test_the_fix_unscales_before_the_helper_call_and_the_clip_sees_true_norms(tmp_path: Path) -> None:
    broken, repaired = tmp_path / "broken", tmp_path / "repaired"
    for root in (broken, repaired):
        root.mkdir()
        _write(root)
    changed = fix_tree(repaired, select=("TA303",))
    assert list(changed) == ["train.py"]  # the helper stays as it is
    assert ("        scaler.scale(loss).backward()\n"
            "        scaler.unscale_(optimizer)\n"
            "        norms.append(float(clip_gradients(model, 1.0)))\n") in changed["train.py"]
    (repaired / "train.py").write_text(changed["train.py"])
    assert _findings(repaired) == []
    # Before the fix the helper measures the norm times the loss scale (65536 at first).
    scaled, unscaled = _train_norms(broken), _train_norms(repaired)
    assert len(scaled) == len(unscaled) == 3
    assert all(norm > 1000 for norm in scaled)
    assert all(norm < 100 for norm in unscaled)


TWO_CLIPS = TRAIN.replace(
    "            norms.append(float(clip_gradients(model, 1.0)))\n",
    "            norms.append(float(clip_gradients(model, 1.0)))\n"
    "            clip_gradients(model, 0.5)\n")


def test_only_the_first_of_two_helper_calls_gets_the_unscale(tmp_path: Path) -> None:
    # One ``unscale_`` per step: a second before ``update()`` raises.
    _write(tmp_path, TWO_CLIPS)
    assert _findings(tmp_path) == [("train.py", 15, 28, "TA303", True), ("train.py", 16, 9, "TA303", False)]
    message = check_tree(tmp_path, select=("TA303",)).findings[1].message
    assert message.endswith("; no automatic fix: the `unscale_` goes before the earlier clip on line 15")
    out = fix_tree(tmp_path, select=("TA303",))["train.py"]
    assert out.count("scaler.unscale_(optimizer)") == 1
    (tmp_path / "train.py").write_text(out)
    assert _findings(tmp_path) == []


STEP_IN_A_HELPER = '''\
    import torch
    import torch.nn.functional as F

    from utils import clip_gradients


    def apply(scaler, optimizer):
        scaler.step(optimizer)
        scaler.update()


    def train(model, loader, optimizer):
        scaler = torch.amp.GradScaler("cpu")
        for x, y in loader:
            for part in (x, x):
                loss = F.mse_loss(model(part), y)
                scaler.scale(loss).backward()
                clip_gradients(model, 1.0)
            apply(scaler, optimizer)
            optimizer.zero_grad()
'''


def test_no_fix_where_one_unscale_per_step_cannot_be_placed(tmp_path: Path) -> None:
    _write(tmp_path, STEP_IN_A_HELPER)
    findings = check_tree(tmp_path, select=("TA303",)).findings
    assert [(f.line, f.column, f.fix) for f in findings] == [(18, 13, None)]
    assert findings[0].message.endswith(
        "; no automatic fix: the scaler's step is not in the function that calls the helper")


@pytest.mark.parametrize("case", ["clip_helper_other_file", "clip_helper_aliased",
                                  "clip_helper_package", "clip_helper_in_method"])
def test_fixed_fixture_is_clean(tmp_path: Path, case: str) -> None:
    shutil.copytree(FIXTURES / case, tmp_path / "case", ignore=shutil.ignore_patterns("expected.txt"))
    changed = fix_tree(tmp_path / "case", select=("TA303",))
    assert len(changed) == 1
    for name, text in changed.items():
        assert text.count(".unscale_(") == 1 + (case == "clip_helper_package")  # finetune had one
        (tmp_path / "case" / name).write_text(text)
    assert check_tree(tmp_path / "case", select=("TA303",)).findings == []


# -- TA203 reads the same helpers: a clip of another file is moved where it is called -------

EVERY_MICRO_BATCH = (FIXTURES.parent / "loops/clip_helper_other_file_every_batch/train.py").read_text()


def test_per_micro_batch_clip_in_a_helper_is_reported_and_moved_at_the_call(tmp_path: Path) -> None:
    _write(tmp_path, EVERY_MICRO_BATCH)
    findings = check_tree(tmp_path, select=("TA203",)).findings
    assert [(f.path, f.line, f.column, f.fix is not None) for f in findings] == [("train.py", 12, 9, True)]
    assert [(r.path, r.line) for r in findings[0].related] == [("train.py", 14), ("utils.py", 5)]
    out = fix_tree(tmp_path, select=("TA203",))
    assert list(out) == ["train.py"]
    assert ("        if (i + 1) % accum == 0:\n"
            "            clip_gradients(model, 1.0)\n"
            "            optimizer.step()\n") in out["train.py"]


def test_a_helper_that_does_more_than_clip_is_not_moved(tmp_path: Path) -> None:
    utils = UTILS + '''

    def clip_and_schedule(model, scheduler):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scheduler.step()
'''
    source = EVERY_MICRO_BATCH.replace("from utils import clip_gradients",
                                       "from utils import clip_and_schedule")
    source = source.replace("def train(model, loader, optimizer, accum=4):",
                            "def train(model, loader, optimizer, scheduler, accum=4):")
    source = source.replace("clip_gradients(model, 1.0)", "clip_and_schedule(model, scheduler)")
    _write(tmp_path, source, utils)
    findings = check_tree(tmp_path, select=("TA203",)).findings
    assert [(f.path, f.line, f.column, f.fix) for f in findings] == [("train.py", 12, 9, None)]
    assert fix_tree(tmp_path, select=("TA203",)) == {}


# -- an unscale_ after the clip: the fix moves it, or offers nothing -------------------------

CLIP_THEN_UNSCALE = '''\
    import torch
    import torch.nn.functional as F

    ACCUM = 2


    def clip_gradients(model):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)


    def train(model, loader, optimizer):
        scaler = torch.amp.GradScaler("cpu")
        for i, (x, y) in enumerate(loader):
            scaler.scale(F.mse_loss(model(x), y) / ACCUM).backward()
            if (i + 1) % ACCUM == 0:
                {clip}
                scaler.unscale_(optimizer)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
'''

CLIPS = [("torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)", ("train.py", 16, 13)),
         ("clip_gradients(model)", ("train.py", 8, 12))]  # a helper of the file: at its clip


@pytest.mark.parametrize(("clip", "where"), CLIPS)
def test_the_fix_moves_an_unscale_that_follows_the_clip(tmp_path: Path, clip: str,
                                                        where: tuple[str, int, int]) -> None:
    # The loop corpus's TA303 bug (issue 17): the old fix inserted a second unscale_ before
    # the clip and the fixed step raised "unscale_() has already been called".
    (tmp_path / "train.py").write_text(textwrap.dedent(CLIP_THEN_UNSCALE).format(clip=clip))
    findings = check_tree(tmp_path, select=("TA303",)).findings
    assert [(f.path, f.line, f.column, f.fix) for f in findings] == [(*where, "corrective")]
    fixed = fix_tree(tmp_path, select=("TA303",))["train.py"]
    assert fixed.count(".unscale_(") == 1
    assert (f"            scaler.unscale_(optimizer)\n            {clip}\n"
            "            scaler.step(optimizer)\n") in fixed
    (tmp_path / "train.py").write_text(fixed)
    assert check_tree(tmp_path, select=("TA303",)).findings == []


@pytest.mark.parametrize(("clip", "where"), CLIPS)
def test_no_fix_where_the_unscale_after_the_clip_cannot_move(tmp_path: Path, clip: str,
                                                             where: tuple[str, int, int]) -> None:
    # A statement between the clip and the unscale_ (it may read the clipped gradients):
    # moving is not proven safe, and a second unscale_ would raise.
    source = textwrap.dedent(CLIP_THEN_UNSCALE.replace(
        "}\n", "}\n                print(i)\n")).format(clip=clip)
    assert "print(i)\n            scaler.unscale_(" in source
    (tmp_path / "train.py").write_text(source)
    findings = check_tree(tmp_path, select=("TA303",)).findings
    assert [(f.path, f.line, f.column, f.fix) for f in findings] == [(*where, None)]
    assert findings[0].message.endswith(
        "; no automatic fix: an `unscale_` runs after the clip (a second one would raise)")
    assert fix_tree(tmp_path, select=("TA303",)) == {}


def test_the_fix_moves_an_unscale_that_follows_another_files_clipping_helper(tmp_path: Path) -> None:
    _write(tmp_path, TRAIN.replace("clip_gradients(model, 1.0)))\n",
                                   "clip_gradients(model, 1.0)))\n            scaler.unscale_(optimizer)\n"))
    findings = check_tree(tmp_path, select=("TA303",)).findings
    assert [(f.path, f.line, f.column, f.fix) for f in findings] == [("train.py", 15, 28, "corrective")]
    fixed = fix_tree(tmp_path, select=("TA303",))["train.py"]
    assert ("        scaler.unscale_(optimizer)\n"
            "        norms.append(float(clip_gradients(model, 1.0)))\n"
            "        scaler.step(optimizer)\n") in fixed
    assert fixed.count(".unscale_(") == 1
    (tmp_path / "train.py").write_text(fixed)
    assert check_tree(tmp_path, select=("TA303",)).findings == []
