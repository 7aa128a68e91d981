"""Run a training script in this process under the probes, then put everything back."""

from __future__ import annotations

import gc
import importlib.util
import os
import random
import runpy
import site
import sys
import traceback
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from trainaudit.probe.findings import derive_findings
from trainaudit.probe.labels import summarise
from trainaudit.probe.probes import ProbeSession, StopProbe, world_size
from trainaudit.probe.report import ProbeError, ProbeReport
from trainaudit.probe.watchers import ProgressLine


@dataclass
class _Outcome:
    exit: str
    error: str | None = None


@dataclass
class _GlobalState:
    """Interpreter and torch state a script may change, saved before it runs."""

    argv: list[str]
    path: list[str]
    cwd: str
    environ: dict[str, str]
    modules: dict[str, Any]
    stdout: Any
    stderr: Any
    python_rng: Any
    torch_rng: Any
    grad_enabled: bool
    default_dtype: Any
    num_threads: int
    matmul_precision: str
    anomaly: bool
    distributed: bool
    extra: list[Any] = field(default_factory=list)

    @classmethod
    def capture(cls) -> _GlobalState:
        dist = torch.distributed
        return cls(
            argv=list(sys.argv), path=list(sys.path), cwd=os.getcwd(),
            environ=dict(os.environ), modules=_stash_project_modules(),
            stdout=sys.stdout, stderr=sys.stderr,
            python_rng=random.getstate(), torch_rng=torch.get_rng_state(),
            grad_enabled=torch.is_grad_enabled(), default_dtype=torch.get_default_dtype(),
            num_threads=torch.get_num_threads(),
            matmul_precision=torch.get_float32_matmul_precision(),
            anomaly=torch.is_anomaly_enabled(),
            distributed=dist.is_available() and dist.is_initialized(),
        )

    def restore(self) -> None:
        dist = torch.distributed
        if not self.distributed and dist.is_available() and dist.is_initialized():
            try:  # the script's process group would make the next init fail
                dist.destroy_process_group()
            except Exception as exc:  # a broken group must not leave the rest unrestored
                warnings.warn(f"trainaudit probe: could not destroy the process group: {exc}",
                              stacklevel=2)
        sys.argv[:] = self.argv
        sys.path[:] = self.path
        sys.stdout, sys.stderr = self.stdout, self.stderr
        os.chdir(self.cwd)
        for key in set(os.environ) - set(self.environ):
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        _unstash_project_modules(self.modules)
        random.setstate(self.python_rng)
        torch.set_rng_state(self.torch_rng)
        torch.set_grad_enabled(self.grad_enabled)
        torch.set_default_dtype(self.default_dtype)
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_anomaly_enabled(self.anomaly)


def _installed_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        roots.add(user_site)
    # Package folders added by a .pth file or PYTHONPATH (another environment's) count too:
    # taking torch's own modules out of sys.modules would load torch twice.
    roots |= {p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")}
    both = {os.path.abspath(root) for root in roots} | {os.path.realpath(root) for root in roots}
    return tuple(root.rstrip(os.sep) + os.sep for root in both)


def _module_files(module: object) -> list[str]:
    locations: list[object] = [getattr(module, "__file__", None)]
    try:
        locations += list(getattr(module, "__path__", None) or [])
    except TypeError:  # torch.classes and friends: a __path__ that is no list of folders
        pass
    return [p for p in locations if isinstance(p, str) and os.path.isabs(p)]


class _ProjectModules:
    """Tells modules loaded from a project tree from the standard library and site-packages."""

    def __init__(self) -> None:
        self.roots = _installed_roots()
        self._installed_packages: dict[str, bool] = {}

    def _installed(self, module: object) -> bool:
        files = _module_files(module)
        return bool(files) and all(f.startswith(self.roots) for f in files)

    def __contains__(self, name: str) -> bool:
        if name == "trainaudit" or name.startswith(("trainaudit.", "__main__", "__mp_main__")):
            return False
        top = name.partition(".")[0]
        if top not in self._installed_packages:
            self._installed_packages[top] = self._installed(sys.modules.get(top))
        if self._installed_packages[top]:
            return False  # a part of an installed package, however oddly it is loaded
        module = sys.modules.get(name)
        return bool(_module_files(module)) and not self._installed(module)


def _stash_project_modules() -> dict[str, Any]:
    """Take project modules out of ``sys.modules`` so the script imports its own files.

    A run of, say, a fixed copy of a project must not find the modules of the
    original, imported earlier in this process, and a second run must not find
    the first run's. Installed packages (torch's lazily imported parts above
    all) stay loaded.
    """
    project = _ProjectModules()
    stash = {name: module for name, module in list(sys.modules.items()) if name in project}
    for name in stash:
        del sys.modules[name]
    return stash


def _unstash_project_modules(stash: dict[str, Any]) -> None:
    """Forget the project modules the script imported; bring back the ones stashed."""
    project = _ProjectModules()
    for name in [name for name in list(sys.modules) if name in project]:
        del sys.modules[name]
    sys.modules.update(stash)


def _execute(target: str, args: list[str], module: bool) -> _Outcome:
    if module:
        sys.argv[:] = [target, *args]
        sys.path[0:1] = [os.getcwd()]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        script = os.path.abspath(target)
        sys.argv[:] = [target, *args]
        sys.path[0:1] = [os.path.dirname(script)]
        runpy.run_path(script, run_name="__main__")
    return _Outcome("finished")


def _check_target(target: str, module: bool) -> None:
    if module:
        try:
            found = importlib.util.find_spec(target) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ProbeError(f"no module named {target!r}")
    elif not Path(target).is_file():
        raise ProbeError(f"no such script: {target}")


def run(argv: list[str], *, steps: int, module: bool, cwd: str | None,
        sample_steps: int, progress: IO[str] | None = None) -> ProbeReport:
    """Run the script ``argv`` under the probes; see :func:`trainaudit.probe.run_probe`."""
    if not argv:
        raise ProbeError("nothing to run: give a script path (or -m module) and its arguments")
    if steps < 1:
        raise ProbeError(f"steps must be at least 1, not {steps}")
    target, args = argv[0], list(argv[1:])
    session = ProbeSession(steps=steps, sample_steps=sample_steps)
    saved = _GlobalState.capture()
    try:
        if _cuda_in_use():
            torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings():
            if cwd is not None:
                os.chdir(cwd)
            if module:
                sys.path[0:1] = [os.getcwd()]
            _check_target(target, module)
            with ExitStack() as stack:
                if progress is not None:
                    ticker = ProgressLine(progress, steps, lambda: session.optimizer_steps)
                    ticker.start()
                    stack.callback(ticker.stop)
                session.install(stack)
                outcome = _run_guarded(session, target, args, module)
    finally:
        saved.restore()
        gc.collect()
    return _report(session, outcome)


def _run_guarded(session: ProbeSession, target: str, args: list[str], module: bool) -> _Outcome:
    try:
        return _execute(target, args, module)
    except StopProbe:
        return _Outcome("stopped")
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        return _Outcome(f"exit({code})")
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if session.stopping:  # the script turned our stop into an error of its own
            return _Outcome("stopped")
        return _Outcome(f"error: {type(exc).__name__}: {exc}", traceback.format_exc())


def _cuda_in_use() -> bool:
    cuda: Any = torch.cuda
    return bool(cuda.is_available() and cuda.is_initialized())


def _peak_cuda_memory() -> int | None:
    if not (_cuda_in_use()):
        return None
    return max(int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count()))


def _report(session: ProbeSession, outcome: _Outcome) -> ProbeReport:
    offset, evidence = summarise(session.label_samples)
    steps = session.optimizer_steps
    peaks = session.step_peaks
    passes = session.pass_totals
    report = ProbeReport(
        label_offset=offset,
        wrapped_label_positions=evidence.wrapped if evidence else 0,
        micro_batches_per_step=session.backward_calls / steps if steps else 0.0,
        optimizer_steps=steps,
        autocast_fraction=(session.low_precision_flops / session.flops if session.flops else 0.0),
        checkpointing=session.checkpoint_regions > 0,
        activation_bytes_per_step=sum(peaks) // len(peaks) if peaks else 0,
        step_seconds=session.clock.seconds(),
        clipped_scaled_gradients=session.clipped_scaled,
        peak_cuda_memory_bytes=_peak_cuda_memory(),
        backward_calls=session.backward_calls,
        script_exit=outcome.exit,
        label_positions_checked=evidence.checked if evidence else 0,
        label_positions_matched=evidence.matched if evidence else 0,
        label_rows_checked=evidence.rows if evidence else 0,
        batch_size=session.batch_size,
        sequence_length=session.sequence_length,
        world_size=session.world_size if session.world_size is not None else world_size(),
        matmul_flops=session.flops,
        low_precision_matmul_flops=session.low_precision_flops,
        checkpoint_regions=session.checkpoint_regions,
        activation_bytes_per_micro_batch=sum(passes) // len(passes) if passes else 0,
        clip_calls=session.clip_calls,
        clip_scale=session.clip_scale,
        script_error=outcome.error,
    )
    _add_throughput(report, session)
    report.findings = derive_findings(report)
    return report


def _add_throughput(report: ProbeReport, session: ProbeSession) -> None:
    """Readings derived from the counts: throughput, autocast and scaler states, accumulation."""
    report.autocast_state = session.autocast.state
    report.autocast_devices = sorted(session.autocast.devices)
    enabled = session.scaler_enabled
    report.scaler_state = "enabled" if True in enabled else "disabled" if enabled else "none"
    report.timing_includes_warmup = len(session.clock.ends) < 2
    durations = session.clock.durations()
    if durations:
        report.timed_steps = len(durations)
        report.step_seconds_min, report.step_seconds_max = min(durations), max(durations)
        report.cpu_seconds_per_step = session.clock.cpu_seconds()
    if report.batch_size is not None and report.sequence_length is not None and session.trained_steps:
        tokens = round(report.batch_size * report.sequence_length * report.micro_batches_per_step)
        report.tokens_per_step = tokens
        if report.step_seconds > 0 and tokens:
            report.tokens_per_second = tokens / report.step_seconds
            report.seconds_per_token = report.step_seconds / tokens
    report.scheduler_steps, report.scheduler_steps_per_optimizer_step = (
        session.schedulers.measured(session.optimizer_steps))
    report.loss_scale_at_backward = session.window.loss_scale()
    report.window_grad_norms = [round(n, 6) for n in session.window.grad_norms]
    report.eval_mode_backward_calls = session.modes.eval_mode_backwards
