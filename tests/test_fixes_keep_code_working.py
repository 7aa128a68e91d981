"""Fixes never break working code (issue 18): a generated name never reuses one in scope,
a clip comes after ``unscale_``, a "safe" rename respects the torch the project declares,
autocast covers the loss, a moved scheduler call keeps its guard, generated lines fit.

Where the fixed code can run on a CPU it is run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import check_tree, fix_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "fixtures"


def fixed(tmp_path: Path, source: str, name: str = "train.py", **changes: Any) -> str:
    (tmp_path / name).write_text(textwrap.dedent(source))
    out = fix_tree(tmp_path, **changes).get(name)
    assert out is not None, "no fix"
    return out


def execute(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "fixed"}
    exec(compile(source, "train.py", "exec"), namespace)
    return namespace


# -- item 2: the accumulation fix's names never collide with names in scope -------------------

SMOOTHED = '''\
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    window = 3  # how many recent losses the log averages


    def train(model, data, optimizer):
        loader = torch.utils.data.DataLoader(data, batch_size=4)
        recent = []
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            recent.append(loss.item())
            recent = recent[-window:]
        return sum(recent) / len(recent)
'''


def test_accumulation_loop_variable_avoids_a_global_the_loop_reads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    out = fixed(tmp_path, SMOOTHED, select=("TA201",))
    assert "for batch_window in accumulation_windows(loader, accumulation_steps):" in out
    assert "recent = recent[-window:]" in out
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    logged = execute(out)["train"](model, data, torch.optim.SGD(model.parameters(), lr=0.1))
    assert 0.1 < logged < 5


METHOD_WITH_ATTRIBUTE = '''\
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"


    class Trainer:
        def __init__(self, model, optimizer):
            self.model, self.optimizer = model, optimizer
            self.window_loss = 0.0

        def fit(self, data):
            def log(value):
                self.window_loss += value

            micro_step = 0
            for x, y in torch.utils.data.DataLoader(data, batch_size=4):
                loss = F.cross_entropy(self.model(x.to(device)), y.to(device))
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad()
                micro_step += 1
                log(loss.item())
            return micro_step
'''


def test_accumulation_names_avoid_attributes_and_enclosing_locals(tmp_path: Path) -> None:
    out = fixed(tmp_path, METHOD_WITH_ATTRIBUTE, select=("TA201",))
    assert re.search(r"^\s+mean_loss = 0\.0$", out, re.MULTILINE)
    assert not re.search(r"^\s+window_loss\b", out, re.MULTILINE)
    assert "micro_step += 1" in out


def _trainer_log(root: Path) -> list[float]:
    """Run the reference trainer in ``root`` for 2 optimizer steps; the losses it logs."""
    result = subprocess.run(
        [sys.executable, "mm_rec/scripts/train_base_model.py", "--steps", "2", "--seq-len", "32",
         "--log-interval", "1", "--eval-interval", "1000", "--eval-batches", "1",
         "--out-dir", str(root / "run")],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return [float(m) for m in re.findall(r"\| loss (\d+\.\d+)", result.stdout)]


def test_reference_trainer_logs_the_same_loss_scale_after_accumulation(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    root = tmp_path / "reference_impl"
    shutil.copytree(REPO_ROOT / "reference_impl", root,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    before = _trainer_log(root)
    out = fix_tree(root, select=("TA201",))
    trainer = out["mm_rec/scripts/train_base_model.py"]
    (root / "mm_rec/scripts/train_base_model.py").write_text(trainer)
    after = _trainer_log(root)
    assert len(before) == len(after) == 2
    # Step 1 logs the first window's mean loss: near ln(vocab) both times, not doubled.
    assert 0.8 < after[0] / before[0] < 1.25, (before, after)
    # The trainer's own logging accumulator keeps its meaning: the fix's mean is a new name.
    assert "window_loss + mean_loss," in trainer


# -- item 5: a clip the fix adds comes after unscale_, and TA303 sees every spelling ----------

SCALER_ON_SELF = (FIXTURES / "loops/codemods/ta504_scaler_on_self.in.py").read_text()


def test_clip_fix_unscales_through_a_scaler_held_on_self(tmp_path: Path) -> None:
    out = fixed(tmp_path, SCALER_ON_SELF, select=("TA504",))
    assert ("            self.scaler.scale(loss).backward()\n"
            "            self.scaler.unscale_(self.optimizer)\n"
            "            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)\n"
            "            self.scaler.step(self.optimizer)\n") in out
    (tmp_path / "train.py").write_text(out)
    assert [f.code for f in check_tree(tmp_path, select=("TA303", "TA504")).findings] == []


TWO_STATEMENT_BACKWARD = '''\
    import torch
    import torch.nn.functional as F


    def train(model, loader, optimizer):
        scaler = torch.amp.GradScaler("cuda")
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x.cuda()), y.cuda())
            optimizer.zero_grad()
            loss = scaler.scale(loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
'''


def test_clip_before_unscale_seen_when_the_scaled_loss_is_bound_first(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent(TWO_STATEMENT_BACKWARD))
    assert [(f.code, f.line, f.column) for f in check_tree(tmp_path, select=("TA303",)).findings] \
        == [("TA303", 13, 9)]
    out = fixed(tmp_path, TWO_STATEMENT_BACKWARD, select=("TA303",))
    assert ("        scaler.unscale_(optimizer)\n"
            "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n") in out
    (tmp_path / "train.py").write_text(out)
    assert check_tree(tmp_path, select=("TA303",)).findings == []


# -- item 4: the autocast region covers the loss computed from the forward --------------------

HELPER_FORWARD = (FIXTURES / "precision/codemods/autocast_helper_forward.in.py").read_text()

INLINE_LOSS = (FIXTURES / "precision/codemods/autocast_inline_loss.in.py").read_text()


def _train_under_autocast(source: str) -> float:
    """Run the fixed ``train`` with its autocast switched on for the CPU (bf16), as it is on
    a GPU: a loss outside the region would get bfloat16 probabilities and raise."""
    torch = pytest.importorskip("torch")
    assert 'enabled=torch.device(device).type == "cuda"' in source
    on_cpu = source.replace('enabled=torch.device(device).type == "cuda"',
                            'enabled=torch.device(device).type == "cpu"')
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    loader = [(torch.randn(8, 4), torch.rand(8, 1)) for _ in range(3)]
    return float(execute(on_cpu)["train"](model, loader, torch.optim.SGD(model.parameters(), lr=0.1)))


@pytest.mark.parametrize("source", [HELPER_FORWARD, INLINE_LOSS], ids=["helper", "inline-loss"])
def test_autocast_fix_covers_the_loss_and_runs(tmp_path: Path, source: str) -> None:
    out = fixed(tmp_path, source, select=("TA301",))
    assert 0 < _train_under_autocast(out) < 10
    (tmp_path / "train.py").write_text(out)
    assert check_tree(tmp_path, select=("TA301",)).findings == []


def test_autocast_fix_splits_an_inline_loss_from_its_backward(tmp_path: Path) -> None:
    out = fixed(tmp_path, INLINE_LOSS, select=("TA301",))
    assert ("            loss = F.binary_cross_entropy(probs, y.to(device))\n"
            "        loss.backward()\n") in out


LOSS_IN_ANOTHER_BLOCK = '''\
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"


    def train(model, loader, optimizer):
        for step, (x, y) in enumerate(loader):
            probs = torch.sigmoid(model(x.to(device)))
            if step % 2 == 0:
                loss = F.binary_cross_entropy(probs, y.to(device))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
'''


def test_no_autocast_fix_where_the_loss_cannot_be_covered(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent(LOSS_IN_ANOTHER_BLOCK))
    findings = check_tree(tmp_path, select=("TA301",)).findings
    assert [(f.code, f.line, f.fix) for f in findings] == [("TA301", 9, None)]
    assert "no automatic fix: the loss is computed outside" in findings[0].message
    assert fix_tree(tmp_path, select=("TA301",)) == {}


# -- item 3: a moved scheduler call keeps its guard and every path of the step ----------------

GUARDED_SCHEDULER = (FIXTURES / "loops/codemods/ta203_guarded_scheduler.in.py").read_text()


def _counted_sgd(model: Any) -> tuple[Any, list[int]]:
    """An SGD optimizer over ``model`` and the list that grows by one per step it takes
    (through ``scaler.step`` too; a step the scaler skips is not counted)."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    taken: list[int] = []
    optimizer.register_step_post_hook(lambda *_: taken.append(1))
    return optimizer, taken


def test_scheduler_fix_keeps_its_guard_and_every_step_path(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    out = fixed(tmp_path, GUARDED_SCHEDULER, select=("TA203",))
    assert ("            else:\n"
            "                optimizer.step()\n"
            "            if sched is not None:\n"
            "                sched.step()\n"
            "            steps += 1\n") in out
    train = execute(out)["train"]
    model = torch.nn.Linear(4, 3)
    loader = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 6
    # Both branches of the step (plain and through a GradScaler, which runs on a CPU too),
    # each with and without a scheduler: one scheduler step per optimizer step taken.
    for scaler in (None, torch.amp.GradScaler("cpu")):
        optimizer, taken = _counted_sgd(model)
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        assert train(model, loader, optimizer, sched, scaler) == 3
        assert sched.last_epoch == len(taken) == 3
        # No scheduler: the guard still holds (no AttributeError on None) and steps go on.
        assert train(model, loader, optimizer, None, scaler) == 3
        assert len(taken) == 6
        assert sched.last_epoch == 3
    (tmp_path / "train.py").write_text(out)
    assert check_tree(tmp_path, select=("TA203",)).findings == []


SCHEDULER_LOOP = (FIXTURES / "loops/codemods/ta203_scheduler_loop.in.py").read_text()


def test_scheduler_loop_fix_moves_the_loop_whole_and_runs(tmp_path: Path) -> None:
    # ``for scheduler in self.lr_schedulers: scheduler.step()``: moving the call alone out of
    # its loop would leave ``scheduler`` unbound (NameError) or step only the last one.
    torch = pytest.importorskip("torch")
    out = fixed(tmp_path, SCHEDULER_LOOP, select=("TA203",))
    assert ("                self.optimizer.step()\n"
            "                for scheduler in self.lr_schedulers:\n"
            "                    scheduler.step()\n"
            "                self.optimizer.zero_grad()\n") in out
    trainer_class = execute(out)["Trainer"]
    model = torch.nn.Linear(4, 3)
    optimizer, taken = _counted_sgd(model)
    trainer = trainer_class(model, optimizer, accum=2)
    trainer.lr_schedulers.append(torch.optim.lr_scheduler.StepLR(optimizer, step_size=1))
    trainer.train_epoch([(torch.randn(2, 4), torch.tensor([0, 1]))] * 6)
    assert len(taken) == 3
    assert [s.last_epoch for s in trainer.lr_schedulers] == [3, 3]


def test_scheduler_under_a_guard_shared_with_other_code_is_not_moved(tmp_path: Path) -> None:
    source = GUARDED_SCHEDULER.replace(
        "        if sched is not None:\n            sched.step()\n",
        "        if sched is not None:\n            sched.step()\n"
        "            print(sched.get_last_lr())\n")
    assert source != GUARDED_SCHEDULER
    (tmp_path / "train.py").write_text(textwrap.dedent(source))
    assert [f.code for f in check_tree(tmp_path, select=("TA203",)).findings] == ["TA203"]
    assert fix_tree(tmp_path, select=("TA203",)) == {}


def test_plateau_scheduler_fed_a_metric_is_not_a_per_micro_batch_bug(tmp_path: Path) -> None:
    source = GUARDED_SCHEDULER.replace("            sched.step()\n",
                                       "            sched.step(loss.item())\n")
    assert source != GUARDED_SCHEDULER
    (tmp_path / "train.py").write_text(textwrap.dedent(source))
    assert check_tree(tmp_path, select=("TA203",)).findings == []
