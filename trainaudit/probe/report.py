"""What a probe run measured, as data (SPEC §3), kept apart from how it is printed.

Nothing here imports torch: the linter and the CLI load this module on machines
without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class ProbeError(Exception):
    """The probe could not run the script at all (no torch, no such file or module)."""


@dataclass(frozen=True)
class ProbeFinding:
    """A measured bug, reported under the code of the static rule that finds it in source."""

    code: str
    name: str
    severity: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "name": self.name, "severity": self.severity,
                "message": self.message}


@dataclass
class ProbeReport:
    """The measurements of one `trainaudit probe` run.

    ``activation_bytes_per_step`` is the activation memory a step holds: bytes of
    the distinct storages saved for backward by one forward pass (the largest
    micro-batch of the step), averaged over the optimizer steps. With gradient
    accumulation the micro-batches' activations never coexist, so the figure is
    comparable between runs at the same micro-batch size and sequence length.
    ``activation_bytes_per_micro_batch`` is the plain mean over backward calls.

    ``script_exit`` says how the script ended: ``"stopped"`` (the probe stopped it
    after the requested optimizer steps), ``"finished"`` (it returned by itself),
    ``"exit(CODE)"`` (it called ``sys.exit``) or ``"error: Type: message"`` (an
    exception escaped it; ``script_error`` then holds the traceback).
    """

    label_offset: int | None
    wrapped_label_positions: int
    micro_batches_per_step: float
    optimizer_steps: int
    autocast_fraction: float
    checkpointing: bool
    activation_bytes_per_step: int
    step_seconds: float
    clipped_scaled_gradients: bool
    peak_cuda_memory_bytes: int | None
    backward_calls: int
    script_exit: str
    findings: list[ProbeFinding] = field(default_factory=list)
    # Evidence behind the headline figures.
    label_positions_checked: int = 0
    label_positions_matched: int = 0
    label_rows_checked: int = 0
    batch_size: int | None = None
    sequence_length: int | None = None
    world_size: int = 1
    matmul_flops: int = 0
    low_precision_matmul_flops: int = 0
    checkpoint_regions: int = 0
    activation_bytes_per_micro_batch: int = 0
    clip_calls: int = 0
    clip_scale: float | None = None
    script_error: str | None = None

    def to_json(self) -> dict[str, object]:
        """All fields, SPEC §3 keys first, findings as a list of objects."""
        data: dict[str, object] = {"version": 1}
        for key, value in asdict(self).items():
            if key != "findings":
                data[key] = value
        data["findings"] = [finding.to_json() for finding in self.findings]
        return data
