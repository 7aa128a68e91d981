"""What `trainaudit probe` adds to a training step (SPEC §8: at most 10%).

Runs one CPU training workload N optimizer steps without the probe and N steps
under `run_probe`, alternating, in this one process, and times every optimizer
step with the same global step hook in both modes. Prints the mean step time
both ways (median over the steps after the warm-up, then the mean over rounds),
the ratio, and the cost of the
first step, in which the probe's per-call instruments are active.

The workload is the reference MM-Rec trainer's tiny config when
`reference_impl/` is present, else a small test script.

    python benchmarks/probe_overhead.py [--steps 40] [--rounds 5] [--warmup 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import runpy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.optim.optimizer as optimizer_hooks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainaudit.probe import run_probe  # noqa: E402
from trainaudit.probe.runner import _GlobalState  # noqa: E402

REFERENCE = ROOT / "reference_impl" / "mm_rec" / "scripts" / "train_base_model.py"
FALLBACK = ROOT / "tests" / "probe_scripts" / "correct_shift.py"


class _Stop(BaseException):
    pass


class StepClock:
    """Time stamps at the end of every optimizer step; optionally stops the script."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.started = 0.0
        self.stop_after: int | None = None

    def reset(self, stop_after: int | None) -> None:
        self.ends, self.started, self.stop_after = [], time.perf_counter(), stop_after

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.ends.append(time.perf_counter())
        if self.stop_after is not None and len(self.ends) >= self.stop_after:
            raise _Stop

    def median_step(self, warmup: int) -> float:
        """Median step time after the warm-up: robust to other processes' bursts."""
        ends = self.ends[warmup - 1:] if warmup else [self.started, *self.ends]
        return statistics.median(b - a for a, b in itertools.pairwise(ends))


def workload(steps: int, threads: int) -> list[str]:
    if REFERENCE.is_file():
        return [str(REFERENCE), "--config", "tiny", "--steps", str(steps + 10),
                "--eval-interval", "100000", "--log-interval", "100000",
                "--threads", str(threads)]
    torch.set_num_threads(threads)
    return [str(FALLBACK), "--steps", str(steps + 10)]


def run_plain(argv: list[str], clock: StepClock, steps: int) -> None:
    """The script as `python SCRIPT ARGS` would run it, stopped after `steps` steps."""
    saved = _GlobalState.capture()
    clock.reset(stop_after=steps)
    try:
        sys.argv[:] = argv
        sys.path[0:1] = [str(Path(argv[0]).parent)]
        runpy.run_path(argv[0], run_name="__main__")
    except _Stop:
        pass
    finally:
        saved.restore()


def run_probed(argv: list[str], clock: StepClock, steps: int) -> dict[str, Any]:
    clock.reset(stop_after=None)
    report = run_probe(argv, steps=steps)
    assert report.optimizer_steps == steps, report.script_exit
    return {"step_seconds": report.step_seconds, "label_offset": report.label_offset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the mean")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    options = parser.parse_args()

    argv = workload(options.steps, options.threads)
    print(f"workload: {' '.join(Path(a).name if '/' in a else a for a in argv)}")
    print(f"torch {torch.__version__}, {options.threads} threads, "
          f"{options.steps} steps x {options.rounds} rounds, warm-up {options.warmup} steps")
    clock = StepClock()
    handle = optimizer_hooks.register_optimizer_step_post_hook(clock)
    plain: list[float] = []
    probed: list[float] = []
    first_plain: list[float] = []
    first_probed: list[float] = []
    try:
        run_plain(argv, clock, options.steps)  # warm the caches and the allocator
        for round_ in range(options.rounds):
            run_plain(argv, clock, options.steps)
            plain.append(clock.median_step(options.warmup))
            first_plain.append(clock.ends[0] - clock.started)
            info = run_probed(argv, clock, options.steps)
            probed.append(clock.median_step(options.warmup))
            first_probed.append(clock.ends[0] - clock.started)
            print(f"round {round_ + 1}: plain {plain[-1] * 1e3:7.2f} ms/step   "
                  f"probed {probed[-1] * 1e3:7.2f} ms/step   ratio {probed[-1] / plain[-1]:.3f}   "
                  f"(probe's own step_seconds {info['step_seconds'] * 1e3:.2f} ms, "
                  f"label offset {info['label_offset']})")
    finally:
        handle.remove()
    mean_plain, mean_probed = statistics.mean(plain), statistics.mean(probed)
    print(f"step time, plain : {mean_plain * 1e3:.2f} ms")
    print(f"step time, probed: {mean_probed * 1e3:.2f} ms")
    print(f"overhead ratio   : {mean_probed / mean_plain:.3f} "
          f"(median of rounds {statistics.median(p / q for p, q in zip(probed, plain, strict=True)):.3f})")
    print(f"first step (script start to step 1, per-call probes on): plain "
          f"{statistics.mean(first_plain) * 1e3:.1f} ms, probed "
          f"{statistics.mean(first_probed) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
