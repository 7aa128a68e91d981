"""Loss semantics and object identity in the loop model: how a loss is reduced, which
object a receiver is, which wrappers hold it."""

from __future__ import annotations

import ast
import textwrap

import pytest

from trainaudit.model.loops import TrainingLoop, find_training_loops
from trainaudit.model.module import ModuleFacts
from trainaudit.model.objects import file_objects


def _module(source: str) -> ModuleFacts:
    text = textwrap.dedent(source)
    return ModuleFacts("train.py", "train", text, ast.parse(text))


def _loop(source: str) -> TrainingLoop:
    loops = find_training_loops(_module(source))
    assert len(loops) == 1
    return loops[0]


_LOOP = """\
    import torch
    import torch.nn.functional as F
    criterion = torch.nn.CrossEntropyLoss({criterion})

    def train(model, loader, optimizer):
        for x, y in loader:
            loss = {loss}
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
"""


@pytest.mark.parametrize(("loss", "criterion", "reduction"), [
    ("F.cross_entropy(model(x), y)", "", "mean"),
    ("F.cross_entropy(model(x), y, reduction='sum')", "", "sum"),
    ("F.cross_entropy(model(x), y, reduction='none').sum()", "", "sum"),
    ("F.cross_entropy(model(x), y, reduction='none').mean()", "", "mean"),
    ("F.mse_loss(model(x), y, reduction=kind)", "", "unknown"),
    ("criterion(model(x), y)", "", "mean"),
    ("criterion(model(x), y)", "reduction='sum'", "sum"),
    ("model(x).loss", "", None),  # a model the file cannot see: not known
])
def test_reduction(loss: str, criterion: str, reduction: str | None) -> None:
    loop = _loop(_LOOP.format(loss=loss, criterion=criterion))
    assert loop.losses[0].reduction == reduction


def test_reduction_read_from_the_model_class_forward() -> None:
    loop = _loop("""\
        import torch
        import torch.nn.functional as F

        class LM(torch.nn.Module):
            def forward(self, x, y):
                return F.cross_entropy(self.head(x), y, reduction="sum")

        model = torch.compile(LM().cuda())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in batches:
            model(x, y).backward()
            optimizer.step()
            optimizer.zero_grad()
    """)
    assert loop.losses[0].reduction == "sum"


_OBJECTS = """\
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Distiller:
        def __init__(self, student, teacher):
            self.student = student.cuda()
            self.teacher = teacher

        def step(self, batch):
            net = self.student
            model = DDP(net)
            raw = model.module
            self.teacher.eval()
            return net, model, raw
"""


def test_identity_follows_aliases_and_wrappers() -> None:
    module = _module(_OBJECTS)
    names = {n.id: n for n in ast.walk(module.tree) if isinstance(n, ast.Name)}
    teacher = next(n.func.value for n in ast.walk(module.tree) if isinstance(n, ast.Call)  # type: ignore[attr-defined]
                   and isinstance(n.func, ast.Attribute) and n.func.attr == "eval")
    objects = file_objects(module)
    keys = {objects.key(names[n], "Distiller.step") for n in ("net", "model", "raw")}
    assert len(keys) == 1
    assert objects.key(teacher, "Distiller.step") not in keys
    assert {objects.name(names[n], "Distiller.step") for n in ("net", "model", "raw")} == {"self.student"}
    assert objects.wrappers(names["model"], "Distiller.step") == {"DistributedDataParallel"}
    assert objects.made_by_class(names["net"], "Distiller.step") is None
    assert objects.kind(names["model"], "Distiller.step") == "model"
