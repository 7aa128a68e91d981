"""The runtime probes: hooks and patches put around a script run, and what they count.

Two tiers keep the overhead down (SPEC §8: at most 10% on a training step):

* always on, cheap: global optimizer step hooks (counting, timing, stopping),
  a wrapper around backward (micro-batches), a saved-tensors pack hook
  (activation bytes), wrappers around clipping and GradScaler, and around the
  checkpoint internals;
* during the first ``sample_steps`` optimizer steps only: a TorchFunctionMode
  that sees every torch call (matmul FLOPs and their precision, the targets
  reaching the loss) and global module hooks (the token ids entering the
  model). Its per-call Python cost is paid in the warm-up step, which the
  step time excludes anyway.

Everything installed is registered on an ExitStack, so leaving it restores
torch exactly as it was, whether the script stopped, finished or raised.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_hooks
import torch.nn.utils.clip_grad
import torch.optim.optimizer as optimizer_hooks
import torch.utils.checkpoint
from torch.amp import GradScaler
from torch.overrides import TorchFunctionMode

from trainaudit.probe.flops import FlopCounter, matmul_counters, runs_in_low_precision
from trainaudit.probe.labels import LabelSample, compare_labels, is_token_tensor
from trainaudit.probe.timing import StepClock
from trainaudit.probe.watchers import (
    AutocastWatch,
    ModeWatch,
    SchedulerWatch,
    WindowWatch,
    loss_per_target,
)

# Label offsets are read from the first few training loss calls: enough to agree, cheap.
MAX_LABEL_SAMPLES = 4
DEFAULT_IGNORE_INDEX = -100


class StopProbe(BaseException):
    """Raised from an optimizer step hook to end the script after the requested steps.

    A BaseException, so the script's ``except Exception`` handlers let it through.
    """


class Patches:
    """Attribute replacements that an ExitStack undoes, exactly (class dicts included)."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack

    def replace(self, owner: Any, name: str, new: Any) -> None:
        namespace = vars(owner)
        had = name in namespace
        old = namespace.get(name)
        setattr(owner, name, new)
        if had:
            self._stack.callback(setattr, owner, name, old)
        else:
            self._stack.callback(delattr, owner, name)


def remove_function_mode(mode: Any) -> bool:
    """Take ``mode`` off the torch function mode stack wherever it is; False if absent."""
    overrides: Any = torch.overrides  # private helpers, untyped
    if not any(m is mode for m in overrides._get_current_function_mode_stack()):
        return False
    above: list[Any] = []
    while True:
        top = overrides._pop_mode()
        if top is mode:
            break
        above.append(top)
    for other in reversed(above):
        overrides._push_mode(other)
    return True


def world_size() -> int:
    """Processes training together: torch.distributed's view, else the launcher's."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class _SamplingMode(TorchFunctionMode):
    """Sees torch calls during the sampling window and hands the interesting ones on."""

    def __init__(self, session: ProbeSession) -> None:
        super().__init__()
        self.session = session

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        session = self.session
        if session.sampling:
            try:
                counter = session.flop_counters.get(func)
                special = session.special_calls.get(func) if counter is None else None
            except TypeError:  # an unhashable callable: not one we watch
                counter = special = None
            if counter is not None:
                return session.on_matmul(counter, func, args, kwargs)
            if special is not None:
                return special(func, args, kwargs)
        return func(*args, **kwargs)


class ProbeSession:
    """What the probes count during one script run."""

    def __init__(self, *, steps: int, sample_steps: int = 1) -> None:
        self.steps = steps
        self.sample_steps = max(1, sample_steps)
        self.clock = StepClock()
        self.stopping = False
        self.sampling = True
        # optimizer steps and micro-batches
        self.optimizer_steps = 0
        self.trained_steps = 0  # steps with a backward pass before them
        self._backward_calls_at_step = 0
        self.backward_calls = 0
        self.in_backward = 0
        self.world_size: int | None = None
        # activation memory
        self.pass_bytes = 0
        self.pass_storages: set[int] = set()
        self.pass_totals: list[int] = []
        self.step_peak = 0
        self.step_peaks: list[int] = []
        # precision
        self.flops = 0
        self.low_precision_flops = 0
        # labels
        self.module_depth = 0
        self.root_ids: Any = None
        self.embedding_pending = False
        self.batch_size: int | None = None
        self.sequence_length: int | None = None
        self.label_samples: list[LabelSample] = []
        # checkpointing, clipping, scaling
        self.checkpoint_regions = 0
        self.clip_calls = 0
        self.in_clip = False
        self.clipped_scaled = False
        self.clip_scale: float | None = None
        self.scalers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.scaler_enabled: set[bool] = set()
        # autocast entries, scheduler steps, the first accumulation window
        self.autocast = AutocastWatch()
        self.schedulers = SchedulerWatch(lambda: self.optimizer_steps)
        self.window = WindowWatch()
        self.modes = ModeWatch()
        self.unscaled: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()
        # sampling-window instruments
        self.flop_counters: dict[Any, FlopCounter] = matmul_counters()
        self.special_calls: dict[Any, Callable[[Any, Sequence[Any], Mapping[str, Any]], Any]] = {
            F.cross_entropy: self.on_loss,
            F.nll_loss: self.on_loss,
            F.embedding: self.on_embedding,
        }
        self._mode: _SamplingMode | None = None
        self._module_hooks: list[Any] = []

    # ------------------------------------------------------------ installing

    def install(self, stack: ExitStack) -> None:
        """Put every probe in place; closing ``stack`` takes them all out again."""
        patches = Patches(stack)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self.pack, _unpack))
        self._install_optimizer_hooks(stack)
        self._install_backward(patches)
        self._install_clipping(patches)
        self._install_scaler(patches)
        self._install_checkpoint(patches)
        self.autocast.install(patches.replace)
        self.schedulers.install(patches.replace)
        stack.callback(self.end_sampling)
        self._module_hooks = [
            module_hooks.register_module_forward_pre_hook(self.before_forward),
            module_hooks.register_module_forward_hook(self.after_forward, always_call=True),
        ]
        mode: Any = _SamplingMode(self)
        self._mode = mode
        mode.__enter__()

    def _install_optimizer_hooks(self, stack: ExitStack) -> None:
        stack.callback(optimizer_hooks.register_optimizer_step_pre_hook(self.before_step).remove)
        stack.callback(optimizer_hooks.register_optimizer_step_post_hook(self.after_step).remove)

    def _install_backward(self, patches: Patches) -> None:
        patches.replace(torch.Tensor, "backward", self._counting_backward(torch.Tensor.backward))
        patches.replace(torch.autograd, "backward",
                        self._counting_backward(torch.autograd.backward))

    def _counting_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def backward(*args: Any, **kwargs: Any) -> Any:
            if self.in_backward:  # Tensor.backward calls torch.autograd.backward
                return original(*args, **kwargs)
            self.on_backward()
            self.modes.before_backward()
            self.window.before_backward(args, kwargs)
            self.in_backward += 1
            try:
                result = original(*args, **kwargs)
            finally:
                self.in_backward -= 1
            self.window.after_backward()
            return result

        return backward

    def _install_clipping(self, patches: Patches) -> None:
        utils = torch.nn.utils
        for name in ("clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_"):
            for owner in (utils, getattr(utils, "clip_grad", None)):
                original = getattr(owner, name, None) if owner is not None else None
                if original is not None:
                    patches.replace(owner, name, self._watching_clip(original))

    def _watching_clip(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def clip(*args: Any, **kwargs: Any) -> Any:
            if self.in_clip:
                return original(*args, **kwargs)
            self.in_clip = True
            try:
                self.on_clip()
                return original(*args, **kwargs)
            finally:
                self.in_clip = False

        return clip

    def _install_scaler(self, patches: Patches) -> None:
        scaler_cls = GradScaler
        scale, unscale, update, step = (
            scaler_cls.scale, scaler_cls.unscale_, scaler_cls.update, scaler_cls.step)

        def watched_scale(scaler: Any, outputs: Any) -> Any:
            self.scalers.add(scaler)
            self.scaler_enabled.add(bool(scaler.is_enabled()))
            if self.window.active and scaler.is_enabled():
                self.window.scale = float(scaler.get_scale())
            return scale(scaler, outputs)

        def watched_unscale(scaler: Any, optimizer: Any) -> Any:
            self.unscaled.setdefault(scaler, set()).add(id(optimizer))
            return unscale(scaler, optimizer)

        def watched_update(scaler: Any, *args: Any, **kwargs: Any) -> Any:
            self.unscaled.pop(scaler, None)
            return update(scaler, *args, **kwargs)

        def watched_step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            before = self.optimizer_steps
            result = step(scaler, optimizer, *args, **kwargs)
            if self.optimizer_steps == before:
                # The scaler skipped optimizer.step (inf/nan gradients): still one loop step.
                self.step_done()
            return result

        for name, wrapper, original in (
            ("scale", watched_scale, scale), ("unscale_", watched_unscale, unscale),
            ("update", watched_update, update), ("step", watched_step, step),
        ):
            patches.replace(scaler_cls, name, functools.wraps(original)(wrapper))

    def _install_checkpoint(self, patches: Patches) -> None:
        # The internals are patched rather than `checkpoint` itself, so a module that did
        # `from torch.utils.checkpoint import checkpoint` before the probe started is seen too.
        ckpt = torch.utils.checkpoint
        hook_cls = getattr(ckpt, "_checkpoint_hook", None)
        function_cls = getattr(ckpt, "CheckpointFunction", None)
        if hook_cls is not None:
            init = hook_cls.__init__

            @functools.wraps(init)
            def hook_init(hook: Any, *args: Any, **kwargs: Any) -> None:
                if torch.is_grad_enabled():
                    self.on_checkpoint()
                init(hook, *args, **kwargs)

            patches.replace(hook_cls, "__init__", hook_init)
        if function_cls is not None:
            forward = function_cls.forward

            @functools.wraps(forward)
            def function_forward(ctx: Any, run_function: Any, preserve: Any, *args: Any) -> Any:
                # Grad mode is off inside Function.forward; inputs needing grad mean training.
                if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
                    self.on_checkpoint()
                return forward(ctx, run_function, preserve, *args)

            patches.replace(function_cls, "forward", staticmethod(function_forward))
        if hook_cls is None and function_cls is None:  # pragma: no cover - other torch layouts
            checkpoint = ckpt.checkpoint

            @functools.wraps(checkpoint)
            def counting_checkpoint(*args: Any, **kwargs: Any) -> Any:
                self.on_checkpoint()
                return checkpoint(*args, **kwargs)

            patches.replace(ckpt, "checkpoint", counting_checkpoint)

    def end_sampling(self) -> None:
        """Take the per-call instruments away; the cheap ones stay until the run ends."""
        self.sampling = False
        for handle in self._module_hooks:
            handle.remove()
        self._module_hooks = []
        self.root_ids = None
        # Inside one of its own calls the mode is off the stack; it then stays, inert,
        # until the run's cleanup calls this again.
        if self._mode is not None and remove_function_mode(self._mode):
            self._mode = None

    # ------------------------------------------------------ always-on probes

    def before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.stopping:  # the script caught StopProbe and went on
            raise StopProbe
        if self.world_size is None:
            self.world_size = world_size()

    def after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step_done()

    def step_done(self) -> None:
        self.optimizer_steps += 1
        self.clock.step_done()
        self.step_peaks.append(self.step_peak)
        self.step_peak = 0
        self.module_depth = 0
        if self.backward_calls > self._backward_calls_at_step:
            self.trained_steps += 1
            self.window.end_window()
            self._backward_calls_at_step = self.backward_calls
        # A step without a backward pass before it (an odd optimizer.step() at set-up)
        # has shown the per-call probes nothing yet, so it does not end their window.
        if self.trained_steps >= self.sample_steps and self.sampling:
            self.end_sampling()
        if self.optimizer_steps >= self.steps:
            self.stopping = True
            raise StopProbe

    def on_backward(self) -> None:
        self.backward_calls += 1
        self.pass_totals.append(self.pass_bytes)
        self.step_peak = max(self.step_peak, self.pass_bytes)
        self.pass_bytes = 0
        self.pass_storages.clear()

    def pack(self, tensor: Any) -> Any:
        """Saved-tensors pack hook: add up the distinct storages a forward saves."""
        if not self.in_backward and not isinstance(tensor, torch.nn.Parameter):
            try:
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.pass_storages:
                    self.pass_storages.add(key)
                    self.pass_bytes += storage.nbytes()
            except (RuntimeError, NotImplementedError, TypeError):  # no plain storage
                self.pass_bytes += tensor.numel() * tensor.element_size()
        # Detached, so the saved value holds no reference cycle through grad_fn.
        return tensor.detach()

    def on_clip(self) -> None:
        self.clip_calls += 1
        for scaler in list(self.scalers):
            if not scaler.is_enabled() or self.unscaled.get(scaler):
                continue
            scale = float(scaler.get_scale())
            if scale != 1.0:
                self.clipped_scaled = True
                self.clip_scale = scale
                return

    def on_checkpoint(self) -> None:
        if not self.in_backward:  # recomputation during backward is not a new region
            self.checkpoint_regions += 1

    # ------------------------------------------------ sampling-window probes

    def before_forward(self, module: Any, args: Any) -> None:
        if self.module_depth == 0 and not self.in_backward and not isinstance(
                module, torch.nn.modules.loss._Loss):
            ids = next((a for a in args if is_token_tensor(a)), None)
            self.root_ids = ids
            if torch.is_grad_enabled():
                self.modes.on_training_forward(module)
            if self.window.active:
                self.window.on_forward()
                self.window.parameters = _parameters_of(module)
            # Called with keywords (model(input_ids=...)): the first embedding lookup tells.
            self.embedding_pending = ids is None
            if ids is not None:
                self._note_batch(ids)
        self.module_depth += 1

    def after_forward(self, module: Any, args: Any, output: Any) -> None:
        self.module_depth = max(0, self.module_depth - 1)

    def _note_batch(self, ids: Any) -> None:
        if self.batch_size is None and torch.is_grad_enabled():
            self.batch_size = int(ids.shape[0]) if ids.dim() == 2 else 1
            self.sequence_length = int(ids.shape[-1])

    def on_embedding(self, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if self.embedding_pending and self.module_depth > 0:
            ids = args[0] if args else kwargs.get("input")
            if is_token_tensor(ids):
                self.root_ids = ids
                self.embedding_pending = False
                self._note_batch(ids)
        return func(*args, **kwargs)

    def on_loss(self, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        result = func(*args, **kwargs)
        logits = args[0] if args else kwargs.get("input")
        if isinstance(logits, torch.Tensor) and logits.requires_grad and not self.in_backward:
            self.window.on_loss(loss_per_target(result, args, kwargs))
        if (len(self.label_samples) < MAX_LABEL_SAMPLES and self.root_ids is not None
                and not self.in_backward and isinstance(logits, torch.Tensor)
                and logits.requires_grad):
            target = args[1] if len(args) > 1 else kwargs.get("target")
            ignore = args[4] if len(args) > 4 else kwargs.get("ignore_index", DEFAULT_IGNORE_INDEX)
            sample = compare_labels(self.root_ids, target, int(ignore))
            if sample is not None:
                self.label_samples.append(sample)
        return result

    def on_matmul(
        self, counter: FlopCounter, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        result = func(*args, **kwargs)
        if not self.in_backward and torch.is_grad_enabled():
            try:
                flops = counter(args, kwargs, result)
            except (AttributeError, IndexError, TypeError, ValueError):
                flops = 0
            self.flops += flops
            if flops and runs_in_low_precision(args):
                self.low_precision_flops += flops
        return result

    # -------------------------------------------------------------- results


def _unpack(tensor: Any) -> Any:
    return tensor


def _parameters_of(module: Any) -> Callable[[], list[Any]]:
    """The module's parameters, read later, without keeping the module alive."""
    ref = weakref.ref(module)

    def parameters() -> list[Any]:
        alive = ref()
        return list(alive.parameters()) if alive is not None else []

    return parameters
