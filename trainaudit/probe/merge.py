"""One report for the ranks of a multi-process run: each rank's, and what they add up to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

from trainaudit.probe.findings import derive_findings
from trainaudit.probe.report import ProbeReport


def _agreed(values: Sequence[Any]) -> Any:
    """The value every rank measured, else None (the ranks disagree: unknown)."""
    return values[0] if all(v == values[0] for v in values) else None


def _mean(values: Sequence[Any]) -> Any:
    return sum(values) / len(values)


def _largest(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _union(values: Sequence[Any]) -> Any:
    return sorted({item for value in values for item in value})


def _strongest(order: tuple[str, ...]) -> Callable[[Sequence[Any]], Any]:
    return lambda values: max(values, key=order.index)


# How each measurement combines over ranks; fields not named keep rank 0's value.
_COMBINE: dict[str, Callable[[Sequence[Any]], Any]] = {
    "label_offset": _agreed,
    "wrapped_label_positions": sum,
    "micro_batches_per_step": _mean,
    "optimizer_steps": min,
    "checkpointing": any,
    "activation_bytes_per_step": max,
    "step_seconds": max,  # the slowest rank sets the pace of a synchronous step
    "step_seconds_min": max,
    "step_seconds_max": max,
    "timed_steps": min,
    "cpu_seconds_per_step": max,
    "clipped_scaled_gradients": any,
    "peak_cuda_memory_bytes": _largest,
    "backward_calls": sum,
    "label_positions_checked": sum,
    "label_positions_matched": sum,
    "label_rows_checked": sum,
    "matmul_flops": sum,
    "low_precision_matmul_flops": sum,
    "checkpoint_regions": sum,
    "activation_bytes_per_micro_batch": max,
    "clip_calls": sum,
    "autocast_state": _strongest(("absent", "disabled", "enabled")),
    "autocast_devices": _union,
    "scaler_state": _strongest(("none", "disabled", "enabled")),
    "tokens_per_step": lambda values: None if None in values else sum(values),
    "timing_includes_warmup": any,
    "scheduler_steps": max,
    "eval_mode_backward_calls": sum,
    "scheduler_steps_per_optimizer_step": _largest,
}


def merge_ranks(ranks: Sequence[ProbeReport]) -> ProbeReport:
    """The merged report, with ``ranks`` holding each rank's own, sorted by rank."""
    ordered = sorted(ranks, key=lambda r: r.rank or 0)
    if len(ordered) == 1:
        return ordered[0]
    first = ordered[0]
    changes: dict[str, Any] = {}
    for item in fields(ProbeReport):
        combine = _COMBINE.get(item.name)
        if combine is not None:
            changes[item.name] = combine([getattr(r, item.name) for r in ordered])
    merged = replace(first, **changes, rank=None, ranks=list(ordered), findings=[])
    merged.autocast_fraction = (merged.low_precision_matmul_flops / merged.matmul_flops
                                if merged.matmul_flops else 0.0)
    exits = {r.script_exit for r in ordered}
    if len(exits) > 1:
        merged.script_exit = "; ".join(f"rank {r.rank}: {r.script_exit}" for r in ordered)
    merged.world_size = max(first.world_size, len(ordered))
    tokens = merged.tokens_per_step
    if tokens and merged.step_seconds > 0:
        merged.tokens_per_second = tokens / merged.step_seconds
        merged.seconds_per_token = merged.step_seconds / tokens
    merged.findings = derive_findings(merged)
    return merged
