"""Objects handed from one file to another: a criterion built in ``train.py`` and called as
a parameter in ``steps.py`` or a ``Trainer`` method (TA202), and a scaled backward in a
``train_step`` of another file with the clip beside the scaler's step (TA303)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import check_tree, write_tree

STEPS = """\
ACCUM = 2


def train_step(model, x, y, criterion):
    loss = criterion(model(x), y)
    loss.backward()
    return loss.detach()
"""

TRAIN = """\
import torch
from torch import nn

from steps import ACCUM, train_step


def train(model, loader, optimizer, criterion):
    for i, (x, y) in enumerate(loader):
        train_step(model, x, y, criterion)
        if (i + 1) % ACCUM == 0:
            optimizer.step()
            optimizer.zero_grad()


def main(model, loader):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    train(model, loader, optimizer, criterion)
"""


def _found(tmp_path: Path, files: dict[str, str], code: str) -> list[tuple[str, int]]:
    write_tree(tmp_path, files)
    return [(f.path, f.line) for f in check_tree(tmp_path, select=(code,)).findings]


def test_a_criterion_passed_into_another_files_step_is_read_where_it_is_built(tmp_path: Path) -> None:
    assert _found(tmp_path, {"steps.py": STEPS, "train.py": TRAIN}, "TA202") == [("steps.py", 6)]


def test_a_summed_criterion_or_a_divided_loss_is_no_ta202(tmp_path: Path) -> None:
    summed = TRAIN.replace("nn.CrossEntropyLoss()", 'nn.CrossEntropyLoss(reduction="sum")')
    assert _found(tmp_path / "a", {"steps.py": STEPS, "train.py": summed}, "TA202") == []
    divided = STEPS.replace("criterion(model(x), y)", "criterion(model(x), y) / ACCUM")
    assert _found(tmp_path / "b", {"steps.py": divided, "train.py": TRAIN}, "TA202") == []
    # A sum made its micro-batch's mean (divided by its own element count) is a mean again.
    per_token = STEPS.replace("criterion(model(x), y)", "criterion(model(x), y) / y.numel()")
    assert _found(tmp_path / "c", {"steps.py": per_token, "train.py": summed}, "TA202") == [("steps.py", 6)]


TRAINER = """\
ACCUM = 2


class Trainer:
    def __init__(self, model, loader, optimizer):
        self.model = model
        self.loader = loader
        self.optimizer = optimizer

    def fit(self, criterion):
        for _ in range(3):
            self.train_epoch(criterion)

    def train_epoch(self, criterion):
        for i, (x, y) in enumerate(self.loader):
            loss = criterion(self.model(x), y)
            loss.backward()
            if (i + 1) % ACCUM == 0:
                self.optimizer.step()
                self.optimizer.zero_grad()
"""

FIT = """\
import torch
from torch import nn

from trainer import Trainer


def main(model, loader):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, loader, optimizer)
    trainer.fit(nn.CrossEntropyLoss())
    criterion = nn.CrossEntropyLoss()
    trainer.fit(criterion)
"""


def test_a_criterion_handed_to_a_method_of_another_files_class(tmp_path: Path) -> None:
    assert _found(tmp_path, {"trainer.py": TRAINER, "train.py": FIT}, "TA202") == [("trainer.py", 17)]


SCALED_STEP = """\
def train_step(model, x, y, scaler):
    loss = model(x, y)
    scaler.scale(loss).backward()
    return loss.detach()
"""

CLIPS_BESIDE_THE_STEP = """\
import torch

from steps import train_step


def train(model, loader, optimizer):
    scaler = torch.amp.GradScaler("cpu")
    for x, y in loader:
        train_step(model, x, y, scaler)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
"""


def test_a_clip_after_another_files_scaled_backward(tmp_path: Path) -> None:
    files = {"steps.py": SCALED_STEP, "train.py": CLIPS_BESIDE_THE_STEP}
    assert _found(tmp_path / "bug", files, "TA303") == [("train.py", 10)]
    unscaled = CLIPS_BESIDE_THE_STEP.replace(
        "        torch.nn.utils.clip_grad_norm_", "        scaler.unscale_(optimizer)\n"
        "        torch.nn.utils.clip_grad_norm_")
    assert _found(tmp_path / "clean", {**files, "train.py": unscaled}, "TA303") == []


LIT = """\
import lightning.pytorch as pl
import torch
import torch.nn.functional as F


class Lit(pl.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.sched.step()
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return optimizer
"""

LIT_MAIN = """\
import lightning.pytorch as pl

from lit import Lit

ACCUMULATE = 4


def main(net, loader):
    pl.Trainer(max_epochs=1, accumulate_grad_batches=ACCUMULATE).fit(Lit(net), loader)
"""


def test_a_scheduler_stepped_in_training_step_while_lightning_accumulates(tmp_path: Path) -> None:
    write_tree(tmp_path, {"lit.py": LIT, "train.py": LIT_MAIN})
    findings = check_tree(tmp_path, select=("TA203",)).findings
    assert [(f.path, f.line) for f in findings] == [("lit.py", 14)]
    assert "advances 4x too fast" in findings[0].message


def test_no_accumulation_or_a_scheduler_lightning_steps_is_quiet(tmp_path: Path) -> None:
    once = LIT_MAIN.replace("ACCUMULATE = 4", "ACCUMULATE = 1")
    assert _found(tmp_path / "a", {"lit.py": LIT, "train.py": once}, "TA203") == []
    returned = LIT.replace("        self.sched.step()\n", "").replace(
        "        return optimizer\n",
        '        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.sched, '
        '"interval": "step"}}\n')
    assert _found(tmp_path / "b", {"lit.py": returned, "train.py": LIT_MAIN}, "TA203") == []
