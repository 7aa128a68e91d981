"""What a probe run measured, as data (SPEC §3), kept apart from how it is printed.

Nothing here imports torch: the linter and the CLI load this module on machines
without it.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any


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
    # Autocast as entered by the script: "absent", "disabled" (entered, but off on this
    # device or by enabled=False) or "enabled"; the devices it was entered for.
    autocast_state: str = "absent"
    autocast_devices: list[str] = field(default_factory=list)
    # GradScaler as used: "none", "disabled" (scale 1, clipping order not measurable), "enabled".
    scaler_state: str = "none"
    # Throughput over the timed steps (the first, warm-up step excluded when there are two):
    # ``step_seconds`` is their median; the fastest and slowest of them show the spread.
    timed_steps: int = 0
    step_seconds_min: float = 0.0
    step_seconds_max: float = 0.0
    # The median CPU time of the process per timed step: steady on a shared machine.
    cpu_seconds_per_step: float = 0.0
    tokens_per_step: int | None = None
    tokens_per_second: float | None = None
    seconds_per_token: float | None = None
    timing_includes_warmup: bool = False
    # Accumulation, measured on the first window of micro-batches (SPEC TA202 / TA203).
    scheduler_steps: int = 0
    scheduler_steps_per_optimizer_step: float | None = None
    loss_scale_at_backward: float | None = None
    window_grad_norms: list[float] = field(default_factory=list)
    # Backward passes while a trained model was in eval mode (TA502 at run time).
    eval_mode_backward_calls: int = 0
    rank: int | None = None
    ranks: list[ProbeReport] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """All fields, SPEC §3 keys first, findings as a list of objects."""
        data: dict[str, object] = {"version": 1}
        for key, value in asdict(self).items():
            if key not in ("findings", "ranks"):
                data[key] = value
        data["findings"] = [finding.to_json() for finding in self.findings]
        data["ranks"] = [rank.to_json() for rank in self.ranks]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeReport:
        """A report from :meth:`to_json`'s output; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["findings"] = [ProbeFinding(f["code"], f["name"], f["severity"], f["message"])
                              for f in data.get("findings", [])]
        values["ranks"] = [cls.from_json(rank) for rank in data.get("ranks", [])]
        required = {f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING}
        if missing := sorted(required - set(values)):
            raise ProbeError(f"not a trainaudit probe report (no {', '.join(missing)})")
        return cls(**values)
