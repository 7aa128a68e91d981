"""The TA201 fix is numerically right: run the codemodded code itself.

8 accumulated micro-batches of 4 must give the gradients (allclose) of one batch of 32
through the original code, the optimizer and scheduler must step once per window, and the
last, shorter window of an epoch must still be stepped.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import check_tree, fix_tree

torch = pytest.importorskip("torch")

HELPER_TRAINER = '''\
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # GPU code (runs on a CPU too)


def train_step(model, batch, optimizer, scheduler):
    optimizer.zero_grad()
    x, y = batch
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()


def train(model, dataset, optimizer, scheduler, batch_size=4, epochs=1):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    steps = 0
    for epoch in range(epochs):
        for batch in loader:
            loss = train_step(model, batch, optimizer, scheduler)
            steps += 1
    return steps
'''

INLINE_TRAINER = '''\
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # GPU code (runs on a CPU too)


def train(model, dataset, optimizer, scheduler, batch_size=4, epochs=1):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    steps = 0
    for epoch in range(epochs):
        for step, (x, y) in enumerate(loader):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            steps += 1
    return steps
'''


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _fixed_and_original(tmp_path: Path, source: str, name: str) -> tuple[ModuleType, ModuleType, str]:
    root = tmp_path / name
    root.mkdir()
    (root / "trainer.py").write_text(source)
    assert {f.code for f in check_tree(root, select=("TA2",)).findings} == {"TA201"}
    fixed = fix_tree(root, select=("TA2",))["trainer.py"]
    (root / "trainer.py").write_text(fixed)
    assert check_tree(root, select=("TA2",)).findings == []
    original = tmp_path / f"{name}_original.py"
    original.write_text(source)
    return _load(root / "trainer.py", f"{name}_fixed"), _load(original, f"{name}_original"), fixed


def _setup(seed: int = 0) -> tuple[Any, Any, Any, list[list[Any]]]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    grads: list[list[Any]] = []

    def capture(opt: Any, args: Any, kwargs: Any) -> None:
        grads.append([p.grad.detach().clone() for p in model.parameters()])

    optimizer.register_step_pre_hook(capture)
    return model, optimizer, scheduler, grads


def _data(n: int) -> Any:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=generator) * 3
    y = torch.randint(0, 3, (n,), generator=generator)
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("source", [HELPER_TRAINER, INLINE_TRAINER], ids=["helper", "inline"])
def test_eight_micro_batches_of_four_equal_one_batch_of_32(tmp_path: Path, source: str) -> None:
    name = "helper_trainer" if source is HELPER_TRAINER else "inline_trainer"
    fixed, original, code = _fixed_and_original(tmp_path, source, name)
    assert "accumulation_steps=8" in code

    model, optimizer, scheduler, grads = _setup()
    optimizer_steps = fixed.train(model, _data(32), optimizer, scheduler)
    assert len(grads) == 1 and optimizer_steps == 1
    assert scheduler.last_epoch == 1  # once per optimizer step, not per micro-batch

    ref_model, ref_optimizer, ref_scheduler, ref_grads = _setup()
    original.train(ref_model, _data(32), ref_optimizer, ref_scheduler, batch_size=32)
    assert len(ref_grads) == 1
    for got, want in zip(grads[0], ref_grads[0], strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)
    for got, want in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_last_partial_window_is_flushed(tmp_path: Path) -> None:
    fixed, original, _ = _fixed_and_original(tmp_path, HELPER_TRAINER, "partial_trainer")
    # 40 samples = one window of 8 micro-batches + one of 2.
    model, optimizer, scheduler, grads = _setup()
    assert fixed.train(model, _data(40), optimizer, scheduler) == 2
    assert len(grads) == 2 and scheduler.last_epoch == 2

    # The second step's gradient is the mean gradient of the last 8 samples at the weights
    # after the first step.
    ref_model, ref_optimizer, ref_scheduler, ref_grads = _setup()
    original.train(ref_model, _data(40), ref_optimizer, ref_scheduler, batch_size=32)
    assert len(ref_grads) == 2
    for got, want in zip(grads[1], ref_grads[1], strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_accumulation_steps_option_is_used(tmp_path: Path) -> None:
    root = tmp_path / "opt"
    root.mkdir()
    (root / "trainer.py").write_text(INLINE_TRAINER)
    fixed = fix_tree(root, select=("TA2",), fix_options={"accumulation-steps": 4})["trainer.py"]
    assert "accumulation_steps=4" in fixed
    (root / "trainer.py").write_text(fixed)
    module = _load(root / "trainer.py", "opt_trainer_fixed")
    model, optimizer, scheduler, grads = _setup()
    assert module.train(model, _data(32), optimizer, scheduler) == 2
    assert len(grads) == 2
