"""The text of the loop corpus's parts: loss forms, the model, the clipping helper and the
evaluation helpers with every way of restoring the training mode (clean) or not (bug).

Every template is written for this project. A loss's *raw* value is the mean over the
micro-batch: ``reduction="mean"``, or ``reduction="sum"`` divided by the number of
targets (``sum_norm``); the accumulation division by ``ACCUM`` is the loop's, not the
loss form's.
"""

from __future__ import annotations

from dataclasses import dataclass

CONSTANTS = "ACCUM = 2\nBATCH = 4\nSAMPLES = 16\nEPOCHS = 3\nMAX_NORM = 1.0\nUSE_PLATEAU = True\n"


@dataclass(frozen=True)
class Names:
    """How the code where the forward runs names the model and the criterion."""

    model: str = "model"
    criterion: str = "criterion"


def _reduced(call: str, reduction: str, targets: str = "y") -> str:
    """``call`` with the keyword of the reduction (its arguments end with ``)``), normalised."""
    if reduction == "mean":
        return call
    return f'{call[:-1]}, reduction="sum") / {targets}.numel()'


def criterion_expr(reduction: str) -> str:
    """The criterion as the project makes it."""
    return "nn.CrossEntropyLoss()" if reduction == "mean" else 'nn.CrossEntropyLoss(reduction="sum")'


def loss_lines(loss: str, reduction: str, names: Names) -> tuple[list[str], set[str]]:
    """Forward and the raw loss of one micro-batch ``(x, y)``: the lines and their imports."""
    model = names.model
    if loss == "model_loss":
        return [f"_, loss = {model}(x, y)"], set()
    forward = f"logits = {model}(x)"
    if loss == "inline":
        return ([forward, "loss = " + _reduced("F.cross_entropy(logits, y)", reduction)],
                {"import torch.nn.functional as F"})
    if loss.startswith("crit_"):
        norm = "" if reduction == "mean" else " / y.numel()"
        return [forward, f"loss = {names.criterion}(logits, y){norm}"], set()
    if loss in ("fn_same", "fn_other"):
        imports = {"from losses import compute_loss"} if loss == "fn_other" else set()
        return [forward, "loss = compute_loss(logits, y)"], imports
    raise ValueError(loss)


def loss_function(reduction: str) -> str:
    """``compute_loss(logits, targets)``, the user's loss function."""
    body = _reduced("F.cross_entropy(logits, targets)", reduction, "targets")
    return f"def compute_loss(logits, targets):\n    return {body}\n"


def model_file(reduction: str) -> str:
    """``model.py``: a small classifier with dropout whose forward scores targets when given."""
    loss = _reduced("F.cross_entropy(logits, targets)", reduction, "targets")
    return f"""\
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, features=8, classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Linear(16, classes))

    def forward(self, x, targets=None):
        logits = self.body(x)
        if targets is None:
            return logits
        return logits, {loss}
"""


CLIP_HELPER = """\
def clip_gradients(model, max_norm=MAX_NORM):
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
"""

_SCORE = "total += F.cross_entropy(model(x), y).item()"

_EVALUATIONS = {
    ("train_after", "clean"): f"""\
@torch.no_grad()
def evaluate(model, loader):
    model.eval()
    total = 0.0
    for x, y in loader:
        {_SCORE}
    model.train()
    return total
""",
    ("was_training", "clean"): f"""\
def evaluate(model, loader):
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in loader:
            {_SCORE}
    model.train(was_training)
    return total
""",
    ("try_finally", "clean"): f"""\
def evaluate(model, loader, limit=2):
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for count, (x, y) in enumerate(loader):
                {_SCORE}
                if count + 1 >= limit:
                    return total / limit
        return total
    finally:
        model.train()
""",
    # The early return leaves before the restore: the loader always has more batches.
    ("try_finally", "bug"): f"""\
def evaluate(model, loader, limit=2):
    model.eval()
    total = 0.0
    with torch.no_grad():
        for count, (x, y) in enumerate(loader):
            {_SCORE}
            if count + 1 >= limit:
                return total / limit
    model.train()
    return total
""",
    ("context_manager", "clean"): f"""\
@contextmanager
def evaluating(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate(model, loader):
    total = 0.0
    with evaluating(model), torch.no_grad():
        for x, y in loader:
            {_SCORE}
    return total
""",
}


# The bug twin of a clean helper: its restore replaced (a forgotten line, a context manager
# whose exit does nothing).
_FORGOTTEN = {
    "train_after": ("    model.train()\n", ""),
    "was_training": ("    model.train(was_training)\n",
                     '    print("evaluated; training mode was", was_training)\n'),
    "context_manager": ("    try:\n        yield model\n    finally:\n        model.train(was_training)\n",
                        "    yield model\n"),
}


def evaluation_file(evaluation: str, restores: bool) -> str:
    """``evaluation.py``: ``evaluate(model, loader)`` restoring the mode its way, or not."""
    imports = "import torch\nimport torch.nn.functional as F\n"
    if evaluation == "context_manager":
        imports = "from contextlib import contextmanager\n\n" + imports
    if restores or evaluation not in _FORGOTTEN:
        text = _EVALUATIONS[evaluation, "clean" if restores else "bug"]
    else:
        old, new = _FORGOTTEN[evaluation]
        text = _EVALUATIONS[evaluation, "clean"]
        if old not in text:
            raise AssertionError(f"the {evaluation} template lost its restore")
        text = text.replace(old, new)
    return imports + "\n\n" + text
