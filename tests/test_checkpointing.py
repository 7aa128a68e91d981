"""Activation checkpointing (TA401–TA403): facts, and the codemodded models at run time.

The numerical tests load the code the TA401 fix wrote (never a hand-written
copy): the checkpointed model must give the same loss and gradients as the
original, and keep at most half the activation memory for backward.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import check_tree, fix_tree, found
from trainaudit.model.checkpointing import CheckpointingFacts, const_int
from trainaudit.model.module import ModuleFacts

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROOT = REPO_ROOT / "reference_impl"


def facts_of(source: str) -> CheckpointingFacts:
    source = textwrap.dedent(source)
    return CheckpointingFacts(ModuleFacts("model.py", "model", source, ast.parse(source)))


# -- facts ----------------------------------------------------------------------------------


def test_sequence_lengths_from_fields_calls_argparse_dicts_and_defaults() -> None:
    facts = facts_of("""
        import argparse
        from dataclasses import dataclass

        @dataclass
        class Config:
            max_seq_len: int = 4 * 1024
            dim: int = 512

        BASE = Config(max_seq_len=2 ** 15)
        RAW = {"context_length": 1 << 13, "lr": 3e-4}
        parser = argparse.ArgumentParser()
        parser.add_argument("--seq-len", type=int, default=16384)
        parser.add_argument("--steps", type=int, default=99999)

        def build(block_size=1024, *, n_ctx=2048):
            return model.generate(ids, max_length=100000)   # generation, not training
    """)
    assert [(s.name, s.value, s.line) for s in facts.sequence_lengths] == [
        ("max_seq_len", 4096, 7), ("max_seq_len", 32768, 10), ("context_length", 8192, 11),
        ("seq_len", 16384, 13), ("block_size", 1024, 16), ("n_ctx", 2048, 16)]


def test_const_int_folds_simple_arithmetic_only() -> None:
    assert [const_int(ast.parse(e, mode="eval").body) for e in
            ("8192", "4 * 1024", "2 ** 13", "1 << 13", "8192 // 2", "n * 2", "8192.0")] == [
        8192, 4096, 8192, 8192, 4096, None, None]


def test_block_stacks_of_each_shape() -> None:
    facts = facts_of("""
        from torch import nn

        class A(nn.Module):
            def __init__(self):
                super().__init__()
                self.transformer = nn.ModuleDict(dict(h=nn.ModuleList([B() for _ in range(4)])))
                self.seq = nn.Sequential(*[B() for _ in range(4)])
                self.pair = nn.Sequential(nn.Linear(2, 2), nn.ReLU())   # not a repeated stack

            def forward(self, x, states):
                for i, (block, s) in enumerate(zip(self.transformer.h, states)):
                    x, s = block(x, s)
                for i in range(4):
                    x = self.layers[i](x)
                x = self.pair(x)
                return self.seq(x)
    """)
    assert [(s.stack, s.kind, s.checkpointed, facts.module.segment(s.call)) for s in facts.block_stacks] == [
        ("self.transformer.h", "loop", False, "block(x, s)"),
        ("self.layers", "index", False, "self.layers[i](x)"),
        ("self.seq", "sequential", False, "self.seq(x)"),
    ]


def test_ta401_threshold_is_an_option(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(textwrap.dedent("""
        from torch import nn

        class M(nn.Module):
            def __init__(self, depth=4, max_seq_len=2048):
                super().__init__()
                self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(depth)])

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return x
    """))
    assert found(check_tree(tmp_path, select=("TA401",))) == set()
    lowered = {"long-sequence-threshold": 2048}
    assert found(check_tree(tmp_path, select=("TA401",), options=lowered)) == {
        ("model.py", 11, 17, "TA401")}


# -- the codemodded model at run time -------------------------------------------------------

torch = pytest.importorskip("torch")

TOY_MODEL = '''
"""Four pre-norm MLP blocks, declared for long sequences."""
import torch
from torch import nn

MAX_SEQ_LEN = 8192


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x, scale):
        return x + scale * self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class ToyModel(nn.Module):
    def __init__(self, vocab=64, dim=64, depth=4, max_seq_len=MAX_SEQ_LEN):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, scale=1.0 / (i + 1))
        return self.head(x)
'''


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward (parameters excluded, storages once)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return sum(storages.values())


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType, str]:
    root = tmp_path_factory.mktemp("toy")
    (root / "model.py").write_text(TOY_MODEL)
    assert found(check_tree(root, select=("TA4",))) == {("model.py", 30, 17, "TA401")}
    fixed_source = fix_tree(root, select=("TA4",))["model.py"]
    (root / "model_fixed.py").write_text(fixed_source)
    (root / "model.py").write_text(fixed_source)
    assert found(check_tree(root, select=("TA4",))) == set()
    return load(root / "model_fixed.py", "toy_fixed"), load_original(root), fixed_source


def load_original(root: Path) -> ModuleType:
    (root / "model_original.py").write_text(TOY_MODEL)
    return load(root / "model_original.py", "toy_original")


def test_codemod_keeps_keyword_arguments_of_the_block(toy_models: tuple[ModuleType, ModuleType, str]) -> None:
    source = toy_models[2]
    assert "x = checkpoint(block, x, scale=1.0 / (i + 1), use_reentrant=False)" in source
    assert "self.gradient_checkpointing = True" in source


def test_checkpointed_toy_model_matches_loss_and_gradients(
        toy_models: tuple[ModuleType, ModuleType, str]) -> None:
    fixed_module, original_module, _ = toy_models
    torch.manual_seed(0)
    original = original_module.ToyModel()
    checkpointed = fixed_module.ToyModel()
    checkpointed.load_state_dict(original.state_dict())
    assert checkpointed.gradient_checkpointing and checkpointed.training
    ids = torch.randint(0, 64, (2, 256))
    loss_a, grads_a = loss_and_grads(original, ids)
    loss_b, grads_b = loss_and_grads(checkpointed, ids)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(original.parameters()))
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)


def test_checkpointing_halves_saved_activations_at_sequence_1024(
        toy_models: tuple[ModuleType, ModuleType, str]) -> None:
    fixed_module, _, _ = toy_models
    torch.manual_seed(0)
    model = fixed_module.ToyModel()
    ids = torch.randint(0, 64, (2, 1024))
    with_checkpointing = saved_activation_bytes(model, ids)
    model.gradient_checkpointing_enable(False)
    without = saved_activation_bytes(model, ids)
    assert with_checkpointing <= 0.5 * without, (with_checkpointing, without)
    model.eval()  # checkpointing is for training only
    model.gradient_checkpointing_enable()
    assert saved_activation_bytes(model, ids) == without


@pytest.mark.skipif(not (REFERENCE_ROOT / "mm_rec" / "model.py").exists(), reason="no reference model")
def test_reference_model_through_the_codemod(tmp_path: Path) -> None:
    """The MM-Rec model as the fix rewrites it: same numbers, at most half the activations."""
    copy = tmp_path / "reference_impl"
    shutil.copytree(REFERENCE_ROOT, copy, ignore=shutil.ignore_patterns("runs", "__pycache__", "*.pt"))
    before = check_tree(copy, select=("TA4",))
    assert {(f.path, f.code) for f in before.findings} == {("mm_rec/model.py", "TA401")}
    fixed = fix_tree(copy, select=("TA4",))
    assert set(fixed) == {"mm_rec/model.py"}
    (copy / "mm_rec" / "model.py").write_text(fixed["mm_rec/model.py"])
    assert found(check_tree(copy, select=("TA4",))) == set()

    sys.path.insert(0, str(REFERENCE_ROOT))
    try:
        from mm_rec.configs import CONFIGS
        from mm_rec.model import MMRecModel

        checkpointed_module = load(copy / "mm_rec" / "model.py", "mm_rec_model_checkpointed")
    finally:
        sys.path.remove(str(REFERENCE_ROOT))
    config = CONFIGS["tiny"]
    torch.manual_seed(0)
    original = MMRecModel(config)
    checkpointed = checkpointed_module.MMRecModel(config)
    checkpointed.load_state_dict(original.state_dict())
    ids = torch.randint(0, config.vocab_size, (1, 512))
    loss_a, grads_a = loss_and_grads(original, ids)
    loss_b, grads_b = loss_and_grads(checkpointed, ids)
    torch.testing.assert_close(loss_b, loss_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)

    ids = torch.randint(0, config.vocab_size, (1, 1024))
    with_checkpointing = saved_activation_bytes(checkpointed, ids)
    without = saved_activation_bytes(original, ids)
    assert with_checkpointing <= 0.5 * without, (with_checkpointing, without)
