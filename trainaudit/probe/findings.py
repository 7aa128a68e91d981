"""Turn probe measurements into findings under the static rules' codes (SPEC §4)."""

from __future__ import annotations

from trainaudit.catalogue import lookup
from trainaudit.probe.report import ProbeFinding, ProbeReport

# The SPEC §4 default for the rule option `min-effective-batch`.
MIN_EFFECTIVE_BATCH = 32
# Scheduler steps per optimizer step above this are per-micro-batch updates (TA203);
# a second scheduler stepped once per step on the same optimizer is counted apart.
MAX_SCHEDULER_STEPS_PER_STEP = 1.0
# A measured ratio this close to 1 means "the loss went to backward as the loss function
# returned it"; loss values are floats, so exact equality is not to be had.
SAME_SCALE_TOLERANCE = 1e-3


def is_unscaled(ratio: float | None) -> bool:
    """Whether a measured loss scale says the loss reached backward undivided."""
    return ratio is not None and abs(ratio - 1.0) <= SAME_SCALE_TOLERANCE


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
            "(a roll whose wrapped position is not masked; every row matches, which a correct "
            "script does by chance less than once in a million runs)",
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
    found += _accumulation_findings(report)
    if report.eval_mode_backward_calls > 0:
        found.append(_finding(
            "TA502",
            f"{report.eval_mode_backward_calls} of {report.backward_calls} backward passes ran "
            "through a model in eval mode (`.training` False): an evaluation switched it with "
            "`model.eval()` and nothing switched it back, so those training steps ran with "
            "dropout off and batch-norm statistics frozen",
        ))
    if (report.matmul_flops > 0 and report.low_precision_matmul_flops == 0
            and report.autocast_state == "absent"):
        found.append(_finding(
            "TA301",
            f"0% of {report.matmul_flops:,} matmul-like forward FLOPs ran in bfloat16/float16: "
            "the forward runs in full precision (no autocast)",
        ))
    return found


def _accumulation_findings(report: ProbeReport) -> list[ProbeFinding]:
    """TA202 and TA203 from the first window's loss scale and the scheduler's step count."""
    found: list[ProbeFinding] = []
    window = len(report.window_grad_norms)
    if window >= 2 and is_unscaled(report.loss_scale_at_backward):
        norms = ", ".join(f"{n:.3g}" for n in report.window_grad_norms)
        found.append(_finding(
            "TA202",
            f"measured on the first window of {window} micro-batches: each backward received "
            f"the loss as the loss function returned it (scale {report.loss_scale_at_backward:.3g}"
            f", not 1/{window}), and the gradient norm after each micro-batch was {norms}: the "
            f"gradients are summed over the window, {window}x their mean; divide the loss by "
            "the accumulation steps",
        ))
    ratio = report.scheduler_steps_per_optimizer_step
    if ratio is not None and ratio > MAX_SCHEDULER_STEPS_PER_STEP:
        found.append(_finding(
            "TA203",
            f"measured {ratio:g} scheduler steps per optimizer step ({report.scheduler_steps} "
            f"between optimizer steps 1 and {report.optimizer_steps}, "
            f"{report.micro_batches_per_step:g} micro-batches per step): the learning-rate "
            f"schedule runs {ratio:g}x too fast; step the scheduler once per optimizer step",
        ))
    return found
