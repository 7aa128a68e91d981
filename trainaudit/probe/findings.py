"""Turn probe measurements into findings under the static rules' codes (SPEC §4)."""

from __future__ import annotations

from trainaudit.catalogue import lookup
from trainaudit.probe.report import ProbeFinding, ProbeReport

# The SPEC §4 default for the rule option `min-effective-batch`.
MIN_EFFECTIVE_BATCH = 32


def _finding(code: str, message: str) -> ProbeFinding:
    info = lookup(code)
    if info is None:  # pragma: no cover - the catalogue lists every code used here
        raise KeyError(code)
    return ProbeFinding(code, info.name, info.severity.value, message)


def _positions(report: ProbeReport) -> str:
    return (f"{report.label_positions_matched}/{report.label_positions_checked} "
            "non-ignored target positions")


def derive_findings(
    report: ProbeReport, *, min_effective_batch: int = MIN_EFFECTIVE_BATCH
) -> list[ProbeFinding]:
    """The findings a report's measurements prove, each message carrying its numbers."""
    found: list[ProbeFinding] = []
    offset = report.label_offset
    if offset is not None and offset >= 2:
        times = "twice" if offset == 2 else f"{offset} times"
        found.append(_finding(
            "TA102",
            f"measured label offset {offset}: the target at position t is the input token at "
            f"t+{offset} on {_positions(report)}; the labels are shifted {times} (where they are "
            f"made and again at the loss), so the model learns to predict {offset} tokens ahead",
        ))
    elif offset == 0:
        found.append(_finding(
            "TA105",
            f"measured label offset 0: the target at position t is the input token at t itself "
            f"on {_positions(report)}; nothing shifts the labels, so the model learns to copy "
            "its input",
        ))
    if report.wrapped_label_positions > 0:
        found.append(_finding(
            "TA101",
            f"{report.wrapped_label_positions} of {report.label_rows_checked} rows are trained on "
            "a wrapped label: the last target is the row's first input token and is not ignored "
            "(a roll whose wrapped position is not masked)",
        ))
    if (report.optimizer_steps > 0 and report.micro_batches_per_step <= 1.0
            and report.batch_size is not None):
        effective = report.batch_size * report.world_size
        if effective < min_effective_batch:
            found.append(_finding(
                "TA201",
                f"{report.micro_batches_per_step:g} micro-batch per optimizer step at batch size "
                f"{report.batch_size} x {report.world_size} process(es): effective batch "
                f"{effective} < {min_effective_batch}; accumulate gradients over several "
                "micro-batches",
            ))
    if report.clipped_scaled_gradients:
        scale = f" (scale {report.clip_scale:g})" if report.clip_scale is not None else ""
        found.append(_finding(
            "TA303",
            f"gradients were clipped while still multiplied by the GradScaler's scale{scale}: "
            "clipping ran before scaler.unscale_(optimizer) in that step, so the threshold "
            "applied to scaled gradients",
        ))
    if report.matmul_flops > 0 and report.low_precision_matmul_flops == 0:
        found.append(_finding(
            "TA301",
            f"0% of {report.matmul_flops:,} matmul-like forward FLOPs ran in bfloat16/float16: "
            "the forward runs in full precision (no autocast)",
        ))
    return found
