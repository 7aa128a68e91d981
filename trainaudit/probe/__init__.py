"""`trainaudit probe`: run a training script for a few optimizer steps and measure it.

The static rules say what a script *looks* like it does; the probe runs it, in
this process, and reports what it really did (SPEC §3): the label shift the
loss sees, micro-batches per optimizer step, the share of matmul FLOPs run in
a lower precision, checkpointing, activation memory, clipping of scaled
gradients and step time.

This package imports torch only when a probe runs, so the linter works
without it.
"""

from __future__ import annotations

from typing import IO

from trainaudit.probe.render import render_report
from trainaudit.probe.report import ProbeError, ProbeFinding, ProbeReport

__all__ = ["ProbeError", "ProbeFinding", "ProbeReport", "render_report", "run_probe"]


def run_probe(
    argv: list[str],
    *,
    steps: int = 5,
    module: bool = False,
    cwd: str | None = None,
    sample_steps: int = 1,
    progress: IO[str] | None = None,
) -> ProbeReport:
    """Run ``argv`` as ``python SCRIPT ARGS`` (or ``python -m MODULE ARGS`` with ``module``).

    The script runs in this process with ``sys.argv`` and ``sys.path[0]`` set as
    Python would set them, in ``cwd`` when given. It is stopped cleanly after
    ``steps`` optimizer steps (or ends earlier by itself, by ``sys.exit`` or by
    an error, which ``ProbeReport.script_exit`` records). The per-call probes
    (FLOPs, precision, label shift) watch the first ``sample_steps`` steps; the
    cheap ones watch all. With ``progress``, a line goes there every few seconds
    of a long run. Afterwards ``sys.argv``, ``sys.path``, the working
    folder, environment variables, the script's own modules, RNG and grad-mode
    state and every patched torch function and hook are as they were.

    Raises ProbeError when torch is missing or the script or module does not exist.
    """
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ProbeError("trainaudit probe needs torch: pip install 'trainaudit[torch]'") from exc
    from trainaudit.probe.runner import run

    return run(list(argv), steps=steps, module=module, cwd=cwd, sample_steps=sample_steps,
               progress=progress)
