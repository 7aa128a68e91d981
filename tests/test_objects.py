"""The object model (``trainaudit.model.objects``): which spellings are one object and what
kind of object it is, read from what built it and how it is used before any name."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from tests.helpers import check_tree, codes, only_training_loop
from trainaudit.model.module import ModuleFacts
from trainaudit.model.objects import file_objects


def _module(source: str) -> ModuleFacts:
    text = textwrap.dedent(source)
    return ModuleFacts("train.py", "train", text, ast.parse(text))


def _name_node(module: ModuleFacts, name: str, line: int) -> ast.Name:
    return next(n for n in ast.walk(module.tree) if isinstance(n, ast.Name) and n.id == name
                and n.lineno == line)


# Nothing here is named like what it is.
UNNAMED = """\
import torch
from torch.amp import GradScaler


def run(net, data, accum):
    w = torch.optim.AdamW(net.parameters(), lr=1e-3)
    decay = torch.optim.lr_scheduler.OneCycleLR(w, max_lr=1e-3, total_steps=100)
    gs = GradScaler("cuda")
    for i, (x, y) in enumerate(data):
        out = torch.nn.functional.cross_entropy(net(x), y) / accum
        gs.scale(out).backward()
        if (i + 1) % accum == 0:
            gs.step(w)
            gs.update()
            w.zero_grad()
        decay.step()
"""


def _kinds(source: str, function: str, spots: dict[str, int]) -> dict[str, str]:
    """The kind of each name as ``function`` reads it on the given line."""
    module = _module(source)
    objects = file_objects(module)
    return {name: objects.kind(_name_node(module, name, line), function)
            for name, line in spots.items()}


def test_kinds_come_from_what_built_them_not_from_names() -> None:
    assert _kinds(UNNAMED, "run", {"w": 6, "decay": 7, "gs": 8, "net": 6}) == {
        "w": "optimizer", "decay": "scheduler", "gs": "scaler",
        "net": "model"}  # net: .parameters()


def test_loop_model_reads_unnamed_objects_and_finds_the_per_micro_batch_scheduler(tmp_path: Path) -> None:
    loop = only_training_loop(UNNAMED)
    assert [op.receiver for op in loop.ops("optimizer_step")] == ["w"]
    assert [op.receiver for op in loop.ops("scheduler_step")] == ["decay"]
    (tmp_path / "train.py").write_text(UNNAMED)
    assert codes(check_tree(tmp_path, select=("TA203",))) == ["TA203"]


def test_an_optimizer_is_what_a_scheduler_or_a_scaler_is_given() -> None:
    module = _module("""\
        import torch
        from mylib import make

        def run(model, loader):
            a = make(model)
            b = make(model)
            sched = torch.optim.lr_scheduler.StepLR(a, 10)
            scaler = torch.amp.GradScaler()
            scaler.unscale_(b)
            scaler.step(b)
        """)
    objects = file_objects(module)
    assert objects.kind(_name_node(module, "a", 5), "run") == "optimizer"
    assert objects.kind(_name_node(module, "b", 6), "run") == "optimizer"


def test_containers_and_records_of_objects() -> None:
    module = _module("""\
        import torch

        def run(model):
            gens = [torch.optim.SGD(model.parameters(), lr=1.0), torch.optim.Adam(model.parameters())]
            state = {"model": model, "optimizer": gens[0], "scheduler": None}
            for g in gens:
                g.step()
            state["optimizer"].step()
            state["model"].train()
        """)
    objects = file_objects(module)
    g = _name_node(module, "g", 7)
    assert objects.kind(g, "run") == "optimizer"
    record = [n for n in ast.walk(module.tree) if isinstance(n, ast.Subscript)
              and isinstance(n.value, ast.Name) and n.value.id == "state"]
    by_key = {n.slice.value: objects.kind(n, "run") for n in record}  # type: ignore[attr-defined]
    assert by_key == {"optimizer": "optimizer", "model": "model"}


def test_a_parameter_every_call_gives_one_object_is_that_object() -> None:
    module = _module("""\
        import torch

        def step(o):
            o.step()

        def evaluate(net):
            net.eval()

        def main(model, ema):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            step(opt)
            step(opt)
            evaluate(model)
            evaluate(ema)
        """)
    objects = file_objects(module)
    assert objects.key(_name_node(module, "o", 4), "step") == objects.key(_name_node(module, "opt", 10), "main")
    assert objects.kind(_name_node(module, "o", 4), "step") == "optimizer"
    # Two objects reach ``net``: it stays a parameter, bound per call by the loop model.
    net = objects.key(_name_node(module, "net", 7), "evaluate")
    assert net not in (objects.key(_name_node(module, "model", 13), "main"),
                       objects.key(_name_node(module, "ema", 14), "main"))
    assert objects.name(_name_node(module, "net", 7), "evaluate") == "net"


def test_a_local_factory_gives_its_kind_not_its_object() -> None:
    module = _module("""\
        import torch

        def build(params):
            optimizer = torch.optim.AdamW(params)
            return optimizer

        def main(model, teacher):
            a = build(model.parameters())
            b = build(teacher.parameters())
            a.step()
        """)
    objects = file_objects(module)
    a, b = _name_node(module, "a", 8), _name_node(module, "b", 9)
    assert objects.kind(a, "main") == objects.kind(b, "main") == "optimizer"
    assert objects.key(a, "main") != objects.key(b, "main")


def test_a_schedule_free_optimizer_with_train_and_eval_is_an_optimizer() -> None:
    module = _module("""\
        import schedulefree

        def main(model, loader):
            opt = schedulefree.AdamWScheduleFree(model.parameters())
            opt.train()
            for x in loader:
                model(x).sum().backward()
                opt.step()
                opt.zero_grad()
        """)
    assert file_objects(module).kind(_name_node(module, "opt", 4), "main") == "optimizer"


def test_a_tokenizer_loaded_from_pretrained_is_no_model() -> None:
    module = _module("""\
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def main():
            tok = AutoTokenizer.from_pretrained("x")
            lm = AutoModelForCausalLM.from_pretrained("x")
            return tok, lm
        """)
    objects = file_objects(module)
    assert objects.kind(_name_node(module, "tok", 4), "main") == ""
    assert objects.kind(_name_node(module, "lm", 5), "main") == "model"


# A step helper whose parameters are named for nothing but annotated with their types.
ANNOTATED = """\
from typing import Optional

import torch
from torch import nn
from torch.amp import GradScaler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def step(m: nn.Module, o: Optimizer, s: "LRScheduler", g: Optional[GradScaler], data, k: int):
    for i, (x, y) in enumerate(data):
        out = torch.nn.functional.cross_entropy(m(x), y) / k
        out.backward()
        if (i + 1) % k == 0:
            o.step()
            o.zero_grad()
        s.step()
    return g
"""


def test_annotated_parameters_take_the_kind_of_their_type() -> None:
    assert _kinds(ANNOTATED, "step", {"m": 12, "o": 15, "s": 17, "g": 18, "k": 12}) == {
        "m": "model", "o": "optimizer", "s": "scheduler", "g": "scaler",
        "k": ""}  # an int tells no kind


def test_an_annotated_scheduler_stepped_per_micro_batch_is_found(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ANNOTATED)
    assert codes(check_tree(tmp_path, select=("TA203",))) == ["TA203"]
    plain = ANNOTATED.replace(': "LRScheduler"', "")
    (tmp_path / "train.py").write_text(plain)
    assert codes(check_tree(tmp_path, select=("TA203",))) == []  # `s` tells nothing
