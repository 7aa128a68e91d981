"""Probes for what a step's figures alone do not show: autocast entered but off, the
scheduler stepped per micro-batch, a loss summed over an accumulation window, and a
progress line for long runs.

Each watcher patches through :class:`trainaudit.probe.probes.Patches`, so the run's
ExitStack takes it out again.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any

import torch
from torch.amp import autocast_mode
from torch.optim import lr_scheduler

from trainaudit.probe.findings import SAME_SCALE_TOLERANCE


class AutocastWatch:
    """Records every training-time ``torch.autocast`` entry: on, or off on this device."""

    def __init__(self) -> None:
        self.enabled_entries = 0
        self.disabled_entries = 0
        self.devices: set[str] = set()

    def install(self, replace: Callable[[Any, str, Any], None]) -> None:
        enter: Callable[[Any], Any] = autocast_mode.autocast.__enter__  # untyped in torch

        @functools.wraps(enter)
        def watched_enter(context: Any) -> Any:
            if torch.is_grad_enabled():
                self.devices.add(str(context.device))
                if context._enabled:
                    self.enabled_entries += 1
                else:  # enabled=False, or a device/dtype torch turned it off for (a warning)
                    self.disabled_entries += 1
            return enter(context)

        replace(autocast_mode.autocast, "__enter__", watched_enter)

    @property
    def state(self) -> str:
        """``"enabled"``, ``"disabled"`` (entered, never on) or ``"absent"``."""
        if self.enabled_entries:
            return "enabled"
        return "disabled" if self.disabled_entries else "absent"


def _scheduler_classes() -> Iterator[type]:
    """LRScheduler and every subclass with a ``step`` of its own (SequentialLR, ...)."""
    seen: set[type] = set()
    pending: list[type] = [lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau]
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if "step" in vars(cls):
            yield cls
        pending.extend(cls.__subclasses__())


class SchedulerWatch:
    """Counts outermost ``scheduler.step()`` calls per scheduler and per optimizer step.

    Calls are binned by the number of optimizer steps taken so far; only the bins
    between two optimizer steps (1 .. N-1) are complete, which leaves out the step
    a scheduler takes when it is built.
    """

    def __init__(self, optimizer_steps: Callable[[], int]) -> None:
        self._optimizer_steps = optimizer_steps
        self._depth = 0  # SequentialLR.step calls its children's step
        self.calls: Counter[tuple[int, int]] = Counter()

    def install(self, replace: Callable[[Any, str, Any], None]) -> None:
        for cls in _scheduler_classes():
            replace(cls, "step", self._watching(vars(cls)["step"]))

    def _watching(self, step: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(step)
        def watched_step(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.calls[(id(scheduler), self._optimizer_steps())] += 1
            self._depth += 1
            try:
                return step(scheduler, *args, **kwargs)
            finally:
                self._depth -= 1

        return watched_step

    def measured(self, optimizer_steps: int) -> tuple[int, float | None]:
        """The busiest scheduler's steps between the first and the last optimizer step,
        and per optimizer step (None without two steps or without a scheduler)."""
        intervals = optimizer_steps - 1
        if intervals < 1 or not self.calls:
            return 0, None
        per_scheduler: Counter[int] = Counter()
        for (scheduler, after), n in self.calls.items():
            if 1 <= after < optimizer_steps:
                per_scheduler[scheduler] += n
        busiest = max(per_scheduler.values(), default=0)
        return busiest, busiest / intervals


# Where F.cross_entropy and F.nll_loss take ``ignore_index`` and ``reduction`` positionally.
_IGNORE_INDEX_ARG, _REDUCTION_ARG = 4, 6


def loss_per_target(result: Any, args: tuple[Any, ...] | Any, kwargs: Any) -> Any:
    """A torch loss's output as a mean over its targets: a ``reduction="sum"`` loss is
    divided by the targets it scored (those not ignored), so a summed loss that the script
    normalises itself (``/ labels.numel()``) reads as the mean it is."""
    args = tuple(args)
    reduction = args[_REDUCTION_ARG] if len(args) > _REDUCTION_ARG else kwargs.get("reduction")
    if reduction != "sum" or not isinstance(result, torch.Tensor):
        return result
    target = args[1] if len(args) > 1 else kwargs.get("target")
    if not isinstance(target, torch.Tensor) or target.is_floating_point():
        return None  # soft targets: what a sum means is not counted here
    ignore = (args[_IGNORE_INDEX_ARG] if len(args) > _IGNORE_INDEX_ARG
              else kwargs.get("ignore_index", -100))
    scored = int((target != ignore).sum())
    return result / scored if scored else None


class WindowWatch:
    """The first accumulation window: the loss each backward received and the gradient norm.

    For every micro-batch before the first optimizer step it records the value
    backpropagated divided by the loss function's output (times the GradScaler's
    scale), and the norm of the accumulated gradients afterwards. Averaged
    gradients show a ratio of 1/k for k micro-batches; summed ones show 1. A
    backward without a model forward of its own since the last one (two losses
    of one batch) is no micro-batch: the window's scale is then unknown.
    """

    def __init__(self) -> None:
        self.active = True
        self.loss_value: float | None = None
        self.forward_seen = False
        self.scale = 1.0
        self.ratios: list[float | None] = []
        self.grad_norms: list[float] = []
        self.parameters: Callable[[], list[Any]] = list

    def on_forward(self) -> None:
        self.forward_seen = True

    def on_loss(self, result: Any) -> None:
        """A loss function's output (as a mean over its targets, :func:`loss_per_target`)."""
        if self.active and isinstance(result, torch.Tensor) and result.numel() == 1:
            self.loss_value = float(result.detach())

    def before_backward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.active:
            return
        tensor = args[0] if args else kwargs.get("tensors", kwargs.get("self"))
        ratio = None
        if (isinstance(tensor, torch.Tensor) and tensor.numel() == 1 and self.forward_seen
                and self.loss_value not in (None, 0.0)):
            assert self.loss_value is not None
            ratio = float(tensor.detach()) / (self.loss_value * self.scale)
        self.ratios.append(ratio)
        self.loss_value = None
        self.forward_seen = False

    def after_backward(self) -> None:
        if not self.active:
            return
        total = 0.0
        with torch.no_grad():
            for parameter in self.parameters():
                if parameter.grad is not None:
                    total += float(parameter.grad.detach().float().pow(2).sum())
        self.grad_norms.append(math.sqrt(total))

    def end_window(self) -> None:
        self.active = False

    def loss_scale(self) -> float | None:
        """The one ratio every micro-batch of the window shared, else None (unknown)."""
        if len(self.ratios) < 2 or any(r is None for r in self.ratios):
            return None
        ratios = [r for r in self.ratios if r is not None]
        first = ratios[0]
        if first <= 0 or any(abs(r / first - 1) > SAME_SCALE_TOLERANCE for r in ratios):
            return None
        return first


class ModeWatch:
    """Backward passes through a model left in eval mode (TA502 at run time).

    The models are the outermost modules run with gradients enabled during the sampling
    window (the training forwards). Every backward afterwards reads their ``.training``
    flag: a backward while one of them is in eval mode received a loss whose forward
    ran with dropout off and batch-norm statistics frozen (an evaluation that switched
    the model to eval mode and nothing switched back). One attribute read per model per
    backward: cheap enough to stay on for the whole run.
    """

    def __init__(self) -> None:
        self.models: weakref.WeakSet[Any] = weakref.WeakSet()
        self.eval_mode_backwards = 0

    def on_training_forward(self, module: Any) -> None:
        self.models.add(module)

    def before_backward(self) -> None:
        if any(not model.training for model in self.models):
            self.eval_mode_backwards += 1


class ProgressLine:
    """Prints how far a long probe has got to ``stream`` every few seconds (a daemon thread)."""

    def __init__(self, stream: IO[str], steps: int, done: Callable[[], int],
                 *, first: float = 5.0, every: float = 10.0) -> None:
        self._stream, self._steps, self._done = stream, steps, done
        self._first, self._every = first, every
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="trainaudit-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        wait = self._first
        while not self._stop.wait(wait):
            elapsed = time.perf_counter() - self._started
            self._stream.write(f"trainaudit probe: {self._done()}/{self._steps} optimizer steps "
                               f"after {elapsed:.0f} s\n")
            self._stream.flush()
            wait = self._every
