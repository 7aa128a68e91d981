"""TA102 never changes what the model is fed (issue 18, item 1): a producer that shifts the
labels *and* cuts the inputs (``x = chunk[:-1]; y = chunk[1:]``, a collator returning
``ids[:, :-1]`` / ``ids[:, 1:]``) beside a loss that shifts again gets no fix: undoing the
data side would feed the model one token more per sequence (past a positional table sized
to the window), and the finding says to remove the other shift instead."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import check_tree, fix_tree

LABELS = Path(__file__).resolve().parent.parent / "fixtures" / "labels"

# Reported, no fix (the flow could not even prove what else the producer returns).
NO_FIX = ["collate_both_sides_mask_label_side", "collate_both_sides_copy_sliced",
          "collate_both_sides_also_unshifted_loss", "collate_both_sides_position_ids"]
# Inputs cut beside shifted labels, every loss shifting again: no fix either.
CUT_INPUTS = ["ta102_collate_both_sides", "ta102_collate_keys_both_sides",
              "ta102_collator_class_both_sides", "ta102_dataset_both_sides"]


@pytest.mark.parametrize("case", NO_FIX + CUT_INPUTS)
def test_no_fix_that_changes_the_models_inputs(case: str, tmp_path: Path) -> None:
    shutil.copy(LABELS / f"{case}.py", tmp_path / "train.py")
    findings = check_tree(tmp_path, select=("TA102",)).findings
    assert [(f.code, f.fix) for f in findings] == [("TA102", None)]
    assert fix_tree(tmp_path, select=("TA102",)) == {}


@pytest.mark.parametrize("case", CUT_INPUTS)
def test_the_message_says_why_there_is_no_fix(case: str, tmp_path: Path) -> None:
    shutil.copy(LABELS / f"{case}.py", tmp_path / "train.py")
    (finding,) = check_tree(tmp_path, select=("TA102",)).findings
    assert finding.message.endswith(
        "No automatic fix: the inputs are cut beside the labels here, so removing this shift "
        "would change what the model is fed; remove the other shift (at the loss, or the "
        "model's) by hand instead")


NANOGPT_WINDOWS = '''\
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

BLOCK = 8


class Windows(Dataset):
    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return len(self.tokens) // (BLOCK + 1)

    def __getitem__(self, i):
        chunk = self.tokens[i * (BLOCK + 1):(i + 1) * (BLOCK + 1)]
        x = chunk[:-1]
        y = chunk[1:]
        return x, y


class TinyGPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(16, 8)
        self.pos = torch.nn.Embedding(BLOCK, 8)  # positions for BLOCK tokens, no more
        self.head = torch.nn.Linear(8, 16)

    def forward(self, x):
        return self.head(self.tok(x) + self.pos(torch.arange(x.size(1))))


def train(model, tokens, optimizer):
    for x, y in DataLoader(Windows(tokens), batch_size=2):
        logits = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 16), y[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()
'''


def test_nanogpt_windows_keep_the_models_input_length(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    (tmp_path / "train.py").write_text(NANOGPT_WINDOWS)
    (finding,) = check_tree(tmp_path, select=("TA102",)).findings
    assert (finding.line, finding.fix) == (18, None)
    assert fix_tree(tmp_path, select=("TA1",)) == {}
    namespace: dict[str, Any] = {}
    exec(compile(NANOGPT_WINDOWS, "train.py", "exec"), namespace)  # the script still runs
    model = namespace["TinyGPT"]()
    loss = namespace["train"](model, torch.randint(0, 16, (90,)),
                              torch.optim.SGD(model.parameters(), lr=0.1))
    assert 0 < loss < 10
