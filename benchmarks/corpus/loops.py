"""Loop-shape parts, and the assembly of one twin into the files of a project.

Loop shapes: a plain loop in ``main``, an epoch loop around a step loop, a
``train_step(model, batch, ...)`` helper in ``steps.py``, a ``Trainer`` class in
``trainer.py`` holding the model, the loaders and the criterion on ``self``, and a
Lightning ``training_step`` fed a loader or a ``LightningDataModule`` (static only). Validation, when chosen, is
``evaluate(model, val_loader, ...)`` in ``evaluation.py`` with the same loss.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.corpus.composition import Composition, shifts
from benchmarks.corpus.consumers import (
    StepNames,
    criterion_expr,
    loss_helper_file,
    needs_criterion,
    step_lines,
)
from benchmarks.corpus.models import construct, model_file, placement_lines
from benchmarks.corpus.producers import Produced, render_producer
from benchmarks.corpus.text import block, imports_text
from benchmarks.corpus.transports import (
    PROGRESS_FILE,
    accelerate_lines,
    loader_setup,
    loop_header,
)

CONSTANTS = "VOCAB = 64\nBATCH = 4\nMAX_STEPS = 3\nEPOCHS = 2\nUSE_COMPILE = False\nUSE_AUX = True\n"
UPDATE = ["optimizer.zero_grad()", "loss.backward()", "optimizer.step()"]
COUNT = ["steps += 1", "if steps >= MAX_STEPS:", "    break"]


class _File:
    """A generated module: its imports and its body."""

    def __init__(self, *imports: str) -> None:
        self.imports: set[str] = set(imports)
        self.parts: list[str] = []

    def text(self) -> str:
        return imports_text(self.imports) + "\n" + CONSTANTS + "\n\n" + "\n\n".join(self.parts)


# (file, loader expression, names, optimizer update lines, via the train_step helper)
# -> the step loop's lines.
StepLoop = Callable[["_File", str, StepNames, list[str], bool], list[str]]


def assemble(c: Composition, twin: str) -> dict[str, str]:
    """The files of one twin of a composition (relative path → text)."""
    producer_shift, loss_shift = shifts(c, twin)
    label_key = "shift_labels" if c.consumer == "hf_renamed" else "labels"
    produced = render_producer(c.producer, bool(producer_shift), label_key)
    loss_shifts = bool(loss_shift)
    files = {"data.py": produced.text, "model.py": model_file(c.body, loss_shifts)}
    if c.consumer == "loss_helper":
        files["losses.py"] = loss_helper_file(loss_shifts)
    if c.wrapper == "progress":
        files["progress.py"] = PROGRESS_FILE
    criterion = needs_criterion(c.consumer)
    train = _File("import torch", "from torch import nn")
    setup = loader_setup(c.loader, produced)
    train.imports |= setup.imports
    files.update(setup.files)
    model_import, model_expr = construct(c.body)
    train.imports.add(model_import)
    # A Lightning data module makes its own loader (lit.py).
    loaders = [] if c.loop == "lightning_dm" else setup.lines
    main = ["torch.manual_seed(0)", 'device = torch.device("cpu")', *loaders,
            f"model = {model_expr}"]
    placed, placed_imports = placement_lines(c.placement)
    train.imports |= placed_imports
    if not (c.loop == "trainer" and c.placement == "to_device"):
        main += placed
    main.append("optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)")
    if criterion and c.loop in ("plain", "epoch", "helper"):
        main.append(f"criterion = {criterion_expr()}")
    if c.wrapper == "accelerate":
        lines, imports = accelerate_lines()
        main += lines
        train.imports |= imports
    step_args = "model, batch, optimizer, device" + (", criterion" if criterion else "")
    eval_call = "evaluate(model, val_loader, device" + (", criterion)" if criterion else ")")
    validate = c.validation == "other_file"
    if validate:
        files["evaluation.py"] = _evaluation(c, loss_shifts, produced, criterion)
        train.imports.add("from evaluation import evaluate")

    def step_loop(file: _File, loader_ref: str, names: StepNames, update: list[str],
                  helper: bool) -> list[str]:
        header, imports = loop_header(c.wrapper, loader_ref, produced)
        file.imports |= imports
        if helper:
            body = [f"train_step({step_args})"]
        else:
            body, imports = step_lines(c.consumer, c.body, loss_shifts, produced.batch, c.move,
                                       names)
            file.imports |= imports
            body += update
        return [header[0], block([*header[1:], *body, *COUNT], 4).rstrip("\n")]

    if c.loop in ("plain", "helper"):
        if c.loop == "helper":
            files["steps.py"] = _steps(c, loss_shifts, produced, criterion)
            train.imports.add("from steps import train_step")
        main += ["model.train()", "steps = 0",
                 *step_loop(train, "train_loader", StepNames(), UPDATE, c.loop == "helper")]
        if validate:
            main.append(f"val_loss = {eval_call}")
    elif c.loop == "epoch":
        inner = step_loop(train, "train_loader", StepNames(), UPDATE, False)
        tail = [f"val_loss = {eval_call}"] if validate else []
        main += ["steps = 0", "for epoch in range(EPOCHS):",
                 block(["model.train()", *inner, *tail], 4).rstrip("\n")]
    elif c.loop == "trainer":
        files["trainer.py"] = _trainer(c, loss_shifts, produced, criterion, step_loop)
        train.imports.add("from trainer import Trainer")
        main += ["trainer = Trainer(model, optimizer, train_loader, val_loader, device)",
                 "trainer.train_epoch()"]
        if validate:
            main.append("val_loss = trainer.validate()")
    else:
        files["lit.py"] = _lightning(c, loss_shifts, produced, criterion)
        train.imports.add("import lightning.pytorch as pl")
        main += ["lit = LitLM(model)",
                 'trainer = pl.Trainer(max_steps=MAX_STEPS, accelerator="cpu", logger=False)']
        if c.loop == "lightning_dm":
            train.imports.add("from lit import LitLM, LMData")
            main += ["trainer.fit(lit, datamodule=LMData())"]
        else:
            train.imports.add("from lit import LitLM")
            main += ["trainer.fit(lit, train_dataloaders=train_loader)"]
    train.parts.append("def main():\n" + block(main, 4))
    train.parts.append('if __name__ == "__main__":\n    main()\n')
    files["train.py"] = train.text()
    return files


def _body(c: Composition, loss_shifts: bool, produced: Produced, names: StepNames,
          file: _File) -> list[str]:
    lines, imports = step_lines(c.consumer, c.body, loss_shifts, produced.batch, c.move, names)
    file.imports |= imports
    return lines


def _steps(c: Composition, loss_shifts: bool, produced: Produced, criterion: bool) -> str:
    file = _File("import torch")
    body = _body(c, loss_shifts, produced, StepNames(), file)
    args = "model, batch, optimizer, device" + (", criterion" if criterion else "")
    file.parts.append(f"def train_step({args}):\n"
                      + block([*body, *UPDATE, "return loss.item()"], 4))
    return file.text()


def _evaluation(c: Composition, loss_shifts: bool, produced: Produced, criterion: bool) -> str:
    file = _File("import torch")
    body = _body(c, loss_shifts, produced, StepNames(), file)
    args = "model, loader, device" + (", criterion" if criterion else "")
    loop = ["for batch in loader:", block([*body, "total += loss.item()", "count += 1",
                                           "if count >= 2:", "    break"], 4).rstrip("\n")]
    file.parts.append(f"def evaluate({args}):\n" + block(
        ["model.eval()", "total = 0.0", "count = 0", "with torch.no_grad():",
         block(loop, 4).rstrip("\n"), "model.train()", "return total / max(count, 1)"], 4))
    return file.text()


def _trainer(c: Composition, loss_shifts: bool, produced: Produced, criterion: bool,
             step_loop: StepLoop) -> str:
    file = _File("import torch", "from torch import nn")
    names = StepNames("self.model", "self.device", "self.criterion")
    placed = "model.to(self.device)" if c.placement == "to_device" else "model"
    init = ["self.device = device", f"self.model = {placed}", "self.optimizer = optimizer",
            "self.train_loader = train_loader", "self.val_loader = val_loader"]
    if criterion:
        init.append(f"self.criterion = {criterion_expr()}")
    update = [u.replace("optimizer", "self.optimizer") for u in UPDATE]
    loop = step_loop(file, "self.train_loader", names, update, False)
    methods = [
        "def __init__(self, model, optimizer, train_loader, val_loader, device):\n"
        + block(init, 4),
        "def train_epoch(self):\n" + block(["self.model.train()", "steps = 0", *loop], 4),
    ]
    if c.validation == "other_file":
        file.imports.add("from evaluation import evaluate")
        crit = ", self.criterion" if criterion else ""
        methods.append("def validate(self):\n"
                       f"    return evaluate(self.model, self.val_loader, self.device{crit})\n")
    file.parts.append("class Trainer:\n" + block(["\n".join(methods).rstrip("\n")], 4))
    return file.text()


def _lightning(c: Composition, loss_shifts: bool, produced: Produced, criterion: bool) -> str:
    file = _File("import torch", "from torch import nn", "import lightning.pytorch as pl")
    names = StepNames("self.model", "self.device", "self.criterion")
    body = _body(c, loss_shifts, produced, names, file)
    init = ["super().__init__()", "self.model = model"]
    if criterion:
        init.append(f"self.criterion = {criterion_expr()}")
    methods = [
        "def __init__(self, model):\n" + block(init, 4),
        "def training_step(self, batch, batch_idx):\n" + block([*body, "return loss"], 4),
        "def configure_optimizers(self):\n"
        "    return torch.optim.AdamW(self.parameters(), lr=1e-3)\n",
    ]
    file.parts.append("class LitLM(pl.LightningModule):\n"
                      + block(["\n".join(methods).rstrip("\n")], 4))
    if c.loop == "lightning_dm":
        collate = f", collate_fn={produced.collate}" if produced.collate else ""
        file.imports |= {"from torch.utils.data import DataLoader",
                         "from data import " + ", ".join(produced.imports)}
        file.parts.append(_DATA_MODULE.format(dataset=produced.dataset_class, collate=collate))
    return file.text()


_DATA_MODULE = """\
class LMData(pl.LightningDataModule):
    def __init__(self, batch_size=BATCH):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage=None):
        self.train_set = {dataset}("train")

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True{collate})
"""
