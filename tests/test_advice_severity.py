"""Severity of the rules whose findings are advice in some code (docs/severity.md): TA201 in
code that falls back to the CPU, TA301 and TA401 everywhere."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import check_tree, write_tree
from trainaudit.diagnostics import Severity

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

GPU_ONLY_SMALL_BATCH = """\
import torch
from torch import nn

model = nn.Linear(8, 2).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = torch.utils.data.DataLoader(list(range(64)), batch_size=4)
for x, y in loader:
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x.cuda()), y.cuda())
    loss.backward()
    optimizer.step()
"""


def severities(root: Path, code: str) -> list[tuple[int, Severity]]:
    return sorted((f.span.line, f.severity) for f in check_tree(root, select=(code,)).findings)


def test_small_batch_in_a_tutorial_that_falls_back_to_the_cpu_is_advice(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "loops" / "portable_tutorial_small_batch.py", tmp_path / "train.py")
    assert severities(tmp_path, "TA201") == [(15, Severity.INFO)]


def test_small_batch_where_a_gpu_is_required_is_a_warning(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train.py": GPU_ONLY_SMALL_BATCH})
    assert severities(tmp_path, "TA201") == [(7, Severity.WARNING)]


def test_float32_training_on_a_gpu_is_advice(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train.py": GPU_ONLY_SMALL_BATCH})
    assert severities(tmp_path, "TA301") == [(9, Severity.INFO)]


def test_long_sequence_model_without_checkpointing_is_advice(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "checkpointing" / "long_seq_modulelist.py", tmp_path / "model.py")
    assert severities(tmp_path, "TA401") == [(30, Severity.INFO)]  # as in its .expected
