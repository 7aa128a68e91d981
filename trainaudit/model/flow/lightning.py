"""Lightning's ``Trainer.fit`` / ``validate``: the module's ``training_step`` and
``validation_step`` run on the batches of the loaders it is given, or of its data
module's (``train_dataloader()`` after ``setup()``), or of its own loader methods."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from trainaudit.model.flow.functions import call_function
from trainaudit.model.flow.values import Instance, Opaque, Value, options_of

if TYPE_CHECKING:
    from trainaudit.model.flow.frame import Evaluator, Frame

TRAINERS = frozenset({"lightning.Trainer", "lightning.pytorch.Trainer",
                      "pytorch_lightning.Trainer", "lightning.pytorch.trainer.Trainer",
                      "pytorch_lightning.trainer.Trainer", "lightning.pytorch.trainer.trainer.Trainer"})
# Trainer methods, and the loader arguments / data-module methods / steps each runs.
_RUNS = {
    "fit": (("train_dataloaders", 1, "train_dataloader", "training_step"),
            ("val_dataloaders", 2, "val_dataloader", "validation_step")),
    "validate": (("dataloaders", 1, "val_dataloader", "validation_step"),),
    "test": (("dataloaders", 1, "test_dataloader", "test_step"),),
}

def is_trainer(value: Value) -> bool:
    """A Lightning ``Trainer`` made by the library (an opaque result of its class)."""
    return isinstance(value, Opaque) and len(value.key) > 1 and value.key[0] == "lib" \
        and value.key[1] in TRAINERS


def run(interp: Evaluator, method: str, args: list[Value], kwargs: dict[str, Value],
        node: ast.Call, frame: Frame) -> Value:
    """``trainer.fit(module, ...)``: each step method run on a batch of its loader."""
    module = kwargs.get("model", args[0] if args else None)
    datamodule = kwargs.get("datamodule")
    if datamodule is None and len(args) > 1 and isinstance(args[1], Instance) \
            and interp.program.method(args[1].cls, "train_dataloader") is not None:
        datamodule = args[1]
    if isinstance(datamodule, Instance):
        datamodule = _set_up(interp, datamodule, frame)
    for option in options_of(module) if module is not None else ():
        if not isinstance(option, Instance):
            continue
        for keyword, position, loader_method, step in _RUNS.get(method, ()):
            loader = kwargs.get(keyword, args[position] if len(args) > position
                                and datamodule is None else None)
            for owner in (datamodule, option):
                if loader is None and isinstance(owner, Instance):
                    made = interp.program.method(owner.cls, loader_method)
                    if made is not None:
                        loader = call_function(interp, made, owner, [], {}, node, frame.depth + 1)
            step_ref = interp.program.method(option.cls, step)
            if loader is None or step_ref is None:
                continue
            batch = interp.element_of(loader, node, frame)
            call_function(interp, step_ref, option, [batch, Opaque(("batch_idx",))], {}, node,
                          frame.depth + 1)
    return Opaque(("lightning", method, node.lineno))


def _set_up(interp: Evaluator, datamodule: Instance, frame: Frame) -> Value:
    """The data module after its ``setup()`` (which makes the data sets its loader methods
    read from ``self``)."""
    setup = interp.program.method(datamodule.cls, "setup")
    if setup is None:
        return datamodule
    built = call_function(interp, setup, datamodule, [Opaque(("stage",))], {}, None,
                          frame.depth + 1, collect_self=True)
    return built if isinstance(built, Instance) else datamodule
