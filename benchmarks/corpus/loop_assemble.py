"""Assemble one twin of a loop composition into the files of a small training project.

The loop trains ``Net`` (``model.py``) on a 16-sample random classification set in
batches of 4, accumulating ``ACCUM = 2`` micro-batches per optimizer step: two
optimizer steps per pass. Loop shapes: ``plain`` (one pass in ``train()``, evaluating
after every optimizer step), ``epoch`` (``EPOCHS`` passes, evaluating at each epoch's
end), ``helper`` (the same, the micro-batch in ``train_step`` of ``steps.py``) and
``trainer`` (a ``Trainer`` class in ``trainer.py``; with the Lightning gate a
``LightningModule`` in ``lit.py``). ``train()`` calls ``model.train()`` once, so an
evaluation that does not restore the mode leaves every later step in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.corpus.loop_composition import LoopComposition
from benchmarks.corpus.loop_parts import (
    CLIP_HELPER,
    CONSTANTS,
    Names,
    criterion_expr,
    evaluation_file,
    loss_function,
    loss_lines,
    model_file,
)
from benchmarks.corpus.text import block, imports_text

MAKE_LOADER = """\
def make_loader(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, 8, generator=generator)
    y = torch.randint(0, 4, (SAMPLES,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)
"""
SCHEDULERS = {
    "per_step": "torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))",
    "per_epoch": "torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)",
    "plateau": "torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=2) if USE_PLATEAU else None",
    "onecycle": "torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=1000)",
}
DS_CONFIG = ('DS_CONFIG = {"train_micro_batch_size_per_gpu": BATCH, '
             '"gradient_accumulation_steps": ACCUM}\n')


@dataclass
class _File:
    """A generated module: its imports, then the constants, then its parts."""

    imports: set[str] = field(default_factory=lambda: {"import torch"})
    parts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return imports_text(self.imports) + "\n" + CONSTANTS + "\n\n" + "\n\n".join(self.parts)


class _Twin:
    """One twin of a composition: which bug it carries, and the lines its parts make."""

    def __init__(self, c: LoopComposition, twin: str) -> None:
        self.c = c
        self.bug = c.bug if twin == "bug" else None
        self.restores = self.bug != "TA502"
        self.files: dict[str, str] = {}

    def forward(self, file: _File, names: Names) -> list[str]:
        """Forward and loss of one micro-batch in ``file``; the loss divided unless TA202."""
        c = self.c
        lines, imports = loss_lines(c.loss, c.reduction, names)
        file.imports |= imports
        if c.loss.startswith("crit_"):
            file.imports.add("from torch import nn")
        if c.loss == "fn_same":
            file.imports.add("import torch.nn.functional as F")
            file.parts.insert(0, loss_function(c.reduction))
        if c.loss == "fn_other":
            self.files["losses.py"] = ("import torch.nn.functional as F\n\n\n"
                                       + loss_function(c.reduction))
        if self.bug != "TA202" and c.gate not in ("accelerate", "deepspeed", "lightning"):
            lines.append("loss = loss / ACCUM")
        return lines

    def prelude(self) -> list[str]:
        """What the function running the forward makes first: a local criterion."""
        if self.c.loss == "crit_local":
            return [f"criterion = {criterion_expr(self.c.reduction)}"]
        return []

    def micro_batch(self, file: _File, names: Names, p: str) -> list[str]:
        """Forward, loss and backward of one micro-batch (or the ``train_step`` call)."""
        c = self.c
        if c.shape == "helper":
            return [f"loss = train_step({', '.join(self.step_args(p))})"]
        backward = f"{p}scaler.scale(loss).backward()" if c.scaler != "none" else "loss.backward()"
        return [*self.forward(file, names), backward]

    def step_args(self, p: str) -> list[str]:
        args = [f"{p}model", "x", "y"]
        if self.c.scaler != "none":
            args.append(f"{p}scaler")
        if self.c.loss == "crit_arg":
            args.append("criterion")
        return args

    def steps_file(self) -> str:
        """``steps.py``: ``train_step(model, x, y, ...)`` runs one micro-batch."""
        file = _File()
        names = Names()
        body = [*self.prelude(), *self.forward(file, names)]
        body.append("scaler.scale(loss).backward()" if self.c.scaler != "none" else "loss.backward()")
        params = ["model", "x", "y"] + (["scaler"] if self.c.scaler != "none" else [])
        params += ["criterion"] if self.c.loss == "crit_arg" else []
        file.parts.append(f"def train_step({', '.join(params)}):\n"
                          + block([*body, "return loss.detach()"], 4))
        return file.text()

    def clip(self, file: _File, p: str) -> list[str]:
        c = self.c
        if c.clip == "none":
            return []
        if c.clip == "inline":
            return [f"torch.nn.utils.clip_grad_norm_({p}model.parameters(), MAX_NORM)"]
        if c.clip == "helper_same":
            if CLIP_HELPER not in file.parts:
                file.parts.insert(0, CLIP_HELPER)
        else:
            file.imports.add("from optim_utils import clip_gradients")
            self.files["optim_utils.py"] = _File(parts=[CLIP_HELPER]).text()
        return [f"clip_gradients({p}model)"]

    def update(self, file: _File, p: str) -> list[str]:
        """The optimizer step at the window's end: unscale, clip, step, schedule, clear."""
        c = self.c
        clip = self.clip(file, p)
        out: list[str] = []
        if c.scaler != "none":
            unscale = [f"{p}scaler.unscale_({p}optimizer)"] if clip else []
            if self.bug != "TA303":
                out += [*unscale, *clip]
            elif c.scaler == "unscale_order":
                out += [*clip, *unscale]
            else:
                out += clip
            out += [f"{p}scaler.step({p}optimizer)", f"{p}scaler.update()"]
        else:
            out += [*clip, f"{p}optimizer.step()"]
        out += self.scheduled(p, "step")
        out.append(f"{p}optimizer.zero_grad()")
        return out

    def scheduled(self, p: str, where: str) -> list[str]:
        """The scheduler's step where it belongs: ``"step"`` (after the optimizer step),
        ``"epoch"`` (at the epoch's end) or ``"micro"`` (the TA203 bug: every micro-batch)."""
        kind = self.c.scheduler
        if kind == "none":
            return []
        own = ("micro" if self.bug == "TA203" else
               "epoch" if kind == "per_epoch" else "step")
        if own != where:
            return []
        if kind == "plateau":
            return [f"if {p}scheduler is not None:", f"    {p}scheduler.step(loss.item())"]
        return [f"{p}scheduler.step()"]

    def evaluation(self, p: str, where: str) -> list[str]:
        """The evaluation call: after every optimizer step (plain) or at the epoch's end."""
        c = self.c
        if c.evaluation == "none" or (where == "step") != (c.shape == "plain"):
            return []
        self.files["evaluation.py"] = evaluation_file(c.evaluation, self.restores)
        model = "engine" if c.gate == "deepspeed" else f"{p}model"
        return [f"val_loss = evaluate({model}, {p}val_loader)"]

    def step_loop(self, file: _File, p: str, names: Names) -> list[str]:
        """The loop over the micro-batches of one pass, with its accumulation gate."""
        c = self.c
        micro = self.micro_batch(file, names, p)
        window_end = [*self.update(file, p), *self.evaluation(p, "step")]
        if c.gate == "modulo":
            return [f"for i, (x, y) in enumerate({p}loader):", block(
                [*micro, *self.scheduled(p, "micro"), "if (i + 1) % ACCUM == 0:",
                 block(window_end, 4).rstrip("\n")], 4).rstrip("\n")]
        return ["micro = 0", f"for x, y in {p}loader:", block(
            [*micro, "micro += 1", *self.scheduled(p, "micro"), "if micro == ACCUM:",
             block([*window_end, "micro = 0"], 4).rstrip("\n")], 4).rstrip("\n")]

    def deepspeed_loop(self, file: _File) -> list[str]:
        micro = self.forward(file, Names(model="engine"))
        boundary = [*self.scheduled("", "step"), *self.evaluation("", "step")]
        lines = [*micro, "engine.backward(loss)",
                 "boundary = engine.is_gradient_accumulation_boundary()", "engine.step()",
                 *self.scheduled("", "micro")]
        if boundary:
            lines += ["if boundary:", block(boundary, 4).rstrip("\n")]
        return ["for x, y in loader:", block(lines, 4).rstrip("\n")]

    def accelerate_loop(self, file: _File) -> list[str]:
        micro = self.forward(file, Names())
        window = [*micro, "accelerator.backward(loss)", "optimizer.step()",
                  *self.scheduled("", "step"), "optimizer.zero_grad()"]
        lines = ["with accelerator.accumulate(model):", block(window, 4).rstrip("\n")]
        evaluated = self.evaluation("", "step")
        if evaluated:
            lines += ["if accelerator.sync_gradients:", block(evaluated, 4).rstrip("\n")]
        return ["for x, y in loader:", block(lines, 4).rstrip("\n")]

    def passes(self, file: _File, p: str, names: Names) -> list[str]:
        """One pass (``plain``) or ``EPOCHS`` of them, each ending with the epoch's work."""
        c = self.c
        if c.gate == "deepspeed":
            inner = self.deepspeed_loop(file)
        elif c.gate == "accelerate":
            inner = self.accelerate_loop(file)
        else:
            inner = self.step_loop(file, p, names)
        if c.shape == "plain":
            return inner
        end = [*self.evaluation(p, "epoch"), *self.scheduled(p, "epoch")]
        return ["for epoch in range(EPOCHS):", block([*inner, *end], 4).rstrip("\n")]


def _signature(c: LoopComposition) -> list[str]:
    """The objects ``train()`` (or the Trainer) is handed, in order."""
    if c.gate == "deepspeed":
        first = ["engine", "loader", "val_loader"]
    elif c.gate == "accelerate":
        first = ["accelerator", "model", "loader", "val_loader", "optimizer"]
    else:
        first = ["model", "loader", "val_loader", "optimizer"]
    first += ["scheduler"] if c.scheduler != "none" else []
    first += ["scaler"] if c.scaler != "none" else []
    return first


def _setup(c: LoopComposition, train: _File) -> list[str]:
    """``main()`` up to the call of the loop: data, model, optimizer, scheduler, scaler."""
    lines = ["torch.manual_seed(0)", "model = Net()", "loader = make_loader(0)",
             "val_loader = make_loader(1)"]
    if c.gate == "deepspeed":
        train.imports.add("import deepspeed")
        train.parts.insert(0, DS_CONFIG)
        lines += ["engine, optimizer, _, _ = deepspeed.initialize(",
                  "    model=model, model_parameters=model.parameters(), config=DS_CONFIG)"]
    else:
        lines.append("optimizer = torch.optim.SGD(model.parameters(), lr=0.1)")
    if c.scheduler != "none":
        lines.append(f"scheduler = {SCHEDULERS[c.scheduler]}")
    if c.gate == "accelerate":
        train.imports.add("from accelerate import Accelerator")
        lines += ["accelerator = Accelerator(gradient_accumulation_steps=ACCUM)",
                  "model, optimizer, loader, val_loader = accelerator.prepare(",
                  "    model, optimizer, loader, val_loader)"]
        if c.scheduler != "none":
            lines.append("scheduler = accelerator.prepare(scheduler)")
    if c.scaler != "none":
        lines.append('scaler = torch.amp.GradScaler("cpu")')
    return lines


def assemble(c: LoopComposition, twin: str) -> dict[str, str]:
    """The files of one twin of a composition (relative path → text)."""
    t = _Twin(c, twin)
    train = _File({"import torch", "from torch.utils.data import DataLoader, TensorDataset",
                   "from model import Net"})
    train.parts.append(MAKE_LOADER)
    main = _setup(c, train)
    args = _signature(c)
    if c.loss == "crit_arg":
        train.imports.add("from torch import nn")
        main.append(f"criterion = {criterion_expr(c.reduction)}")
    if c.gate == "lightning":
        t.files["lit.py"] = _lightning(t)
        train.imports.add("import lightning.pytorch as pl")
        train.imports.add("from lit import LitNet")
        main = ["torch.manual_seed(0)", "loader = make_loader(0)",
                "trainer = pl.Trainer(max_epochs=EPOCHS, accumulate_grad_batches=ACCUM, "
                'accelerator="cpu", logger=False)',
                "trainer.fit(LitNet(), train_dataloaders=loader)"]
    elif c.shape == "trainer":
        t.files["trainer.py"] = _trainer(t, args)
        train.imports.add("from trainer import Trainer")
        criterion = "criterion" if c.loss == "crit_arg" else ""
        main += [f"trainer = Trainer({', '.join(args)})", f"trainer.fit({criterion})"]
    else:
        if c.shape == "helper":
            t.files["steps.py"] = t.steps_file()
            train.imports.add("from steps import train_step")
        params = args + (["criterion"] if c.loss == "crit_arg" else [])
        local = [] if c.shape == "helper" else t.prelude()
        body = ["model.train()" if c.gate != "deepspeed" else "engine.train()", *local,
                *t.passes(train, "", Names())]
        train.parts.append(f"def train({', '.join(params)}):\n" + block(body, 4))
        main.append(f"train({', '.join(params)})")
    if "evaluation.py" in t.files and c.shape != "trainer":
        train.imports.add("from evaluation import evaluate")
    train.parts.append("def main():\n" + block(main, 4))
    train.parts.append('if __name__ == "__main__":\n    main()\n')
    t.files["train.py"] = train.text()
    t.files["model.py"] = model_file(c.reduction)
    return t.files


def _trainer(t: _Twin, args: list[str]) -> str:
    """``trainer.py``: a ``Trainer`` holding the objects on ``self``; ``fit`` runs the epochs."""
    c = t.c
    file = _File()
    init = [f"self.{a} = {a}" for a in args]
    names = Names(model="self.model", criterion="self.criterion")
    if c.loss == "crit_self":
        file.imports.add("from torch import nn")
        init.append(f"self.criterion = {criterion_expr(c.reduction)}")
    elif c.loss in ("crit_local", "crit_arg"):
        names = Names(model="self.model")
    criterion = "criterion" if c.loss == "crit_arg" else ""
    # The epoch loop lives in fit(); its inner step loop is train_epoch().
    inner = [*t.prelude(), *t.step_loop(file, "self.", names)]
    end = [*t.evaluation("self.", "epoch"), *t.scheduled("self.", "epoch")]
    fit = ["self.model.train()", "for epoch in range(EPOCHS):",
           block([f"self.train_epoch({criterion})", *end], 4).rstrip("\n")]
    if "evaluation.py" in t.files:
        file.imports.add("from evaluation import evaluate")
    methods = [
        f"def __init__(self, {', '.join(args)}):\n" + block(init, 4),
        f"def fit(self{', criterion' if criterion else ''}):\n" + block(fit, 4),
        f"def train_epoch(self{', criterion' if criterion else ''}):\n" + block(inner, 4),
    ]
    file.parts.append("class Trainer:\n" + block(["\n".join(methods).rstrip("\n")], 4))
    return file.text()


def _lightning(t: _Twin) -> str:
    """``lit.py``: a LightningModule; Lightning accumulates (``accumulate_grad_batches``)."""
    c = t.c
    file = _File({"import torch", "import lightning.pytorch as pl", "from model import Net"})
    names = Names(model="self.model", criterion="self.criterion")
    init = ["super().__init__()", "self.model = Net()"]
    if c.loss == "crit_self":
        file.imports.add("from torch import nn")
        init.append(f"self.criterion = {criterion_expr(c.reduction)}")
    step = ["x, y = batch", *t.forward(file, names)]
    configure = ["optimizer = torch.optim.SGD(self.parameters(), lr=0.1)"]
    if c.scheduler == "none":
        configure.append("return optimizer")
    elif t.bug == "TA203":  # stepped by hand in training_step: on every micro-batch
        configure += [f"self.scheduler = {_scheduler(c)}", "return optimizer"]
        step.append("self.scheduler.step()")
    else:
        configure += [f"scheduler = {_scheduler(c)}",
                      'return {"optimizer": optimizer, '
                      '"lr_scheduler": {"scheduler": scheduler, "interval": "step"}}']
    methods = [
        "def __init__(self):\n" + block(init, 4),
        "def training_step(self, batch, batch_idx):\n" + block([*step, "return loss"], 4),
        "def configure_optimizers(self):\n" + block(configure, 4),
    ]
    file.parts.append("class LitNet(pl.LightningModule):\n"
                      + block(["\n".join(methods).rstrip("\n")], 4))
    return file.text()


def _scheduler(c: LoopComposition) -> str:
    return SCHEDULERS[c.scheduler]
