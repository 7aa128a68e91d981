"""`trainaudit probe diff BEFORE.json AFTER.json`: what changed, and what each change means."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from trainaudit.probe.render import OFFSET_MEANING, describe_autocast, format_bytes
from trainaudit.probe.report import ProbeReport


@dataclass(frozen=True)
class DiffRow:
    """One measurement before and after, and a one-line reading of the change."""

    name: str
    before: str
    after: str
    reading: str


def _ratio(before: float | None, after: float | None) -> float | None:
    return after / before if before and after is not None else None


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2g}x"


def _offset(report: ProbeReport) -> str:
    return "-" if report.label_offset is None else str(report.label_offset)


def _autocast(report: ProbeReport) -> str:
    return f"{report.autocast_fraction:.0%}; {describe_autocast(report)}"


def _per_token(report: ProbeReport) -> str:
    seconds = report.seconds_per_token
    return "-" if seconds is None else f"{seconds * 1e6:,.1f} µs"


def _per_second(report: ProbeReport) -> str:
    rate = report.tokens_per_second
    return "-" if rate is None else f"{rate:,.0f}"


def _read_offset(before: ProbeReport, after: ProbeReport) -> str:
    if before.label_offset == after.label_offset:
        return "unchanged"
    if after.label_offset is None:
        return "not measured after"
    was = "" if before.label_offset is None else f" (was t+{before.label_offset})"
    meaning = {0: ": a copy of the input", 1: ": the next token, as intended"}.get(
        after.label_offset, f": {OFFSET_MEANING.get(after.label_offset, 'shifted')}")
    return f"position t is now trained on token t+{after.label_offset}{was}{meaning}"


def _read_micro_batches(before: ProbeReport, after: ProbeReport) -> str:
    ratio = _ratio(before.micro_batches_per_step, after.micro_batches_per_step)
    if ratio is None or ratio == 1:
        return "unchanged"
    tokens = f" ({after.tokens_per_step:,} tokens)" if after.tokens_per_step else ""
    return (f"{ratio:g}x the data per optimizer step{tokens}: a step takes about {ratio:g}x "
            "as long, so compare time per token, not step time")


def _read_autocast(before: ProbeReport, after: ProbeReport) -> str:
    if after.autocast_state == "disabled":
        return (f"autocast is in the code but off on {', '.join(after.autocast_devices)}, "
                "where it would only be emulated; on a CUDA GPU it runs the matmuls in "
                "bf16/fp16 (tensor cores, half the bytes)")
    if after.autocast_state == "enabled":
        emulated = (" (on a CPU without native bf16 this is emulated: slower here)"
                    if "cpu" in after.autocast_devices else "")
        return f"{after.autocast_fraction:.0%} of matmul FLOPs in bf16/fp16{emulated}"
    return "unchanged: full precision" if before.autocast_state == "absent" else "autocast removed"


def _read_checkpointing(before: ProbeReport, after: ProbeReport) -> str:
    if before.checkpointing == after.checkpointing:
        return "unchanged"
    if after.checkpointing:
        return ("activations recomputed in backward: less memory held, about one extra "
                "forward per micro-batch (on a GPU the memory buys longer sequences)")
    return "no longer checkpointed: more memory, no recomputation"


def _read_activations(before: ProbeReport, after: ProbeReport) -> str:
    ratio = _ratio(before.activation_bytes_per_step, after.activation_bytes_per_step)
    return ("unchanged" if ratio is None or abs(ratio - 1) < 0.01 else
            f"{_times(ratio)} the memory a micro-batch saves for backward")


def _step_time(report: ProbeReport) -> str:
    """The median step time, and the fastest-slowest timed step when there are several."""
    median = f"{report.step_seconds * 1000:,.0f} ms"
    if report.timed_steps < 2:
        return median
    return (f"{median} ({report.step_seconds_min * 1000:,.0f}-"
            f"{report.step_seconds_max * 1000:,.0f})")


def _read_step_time(before: ProbeReport, after: ProbeReport) -> str:
    ratio = _ratio(before.step_seconds, after.step_seconds)
    micro = _ratio(before.micro_batches_per_step, after.micro_batches_per_step)
    if micro and micro != 1:
        return f"{_times(ratio)}, with {micro:g}x the micro-batches per step: read time per token"
    return f"{_times(ratio)}"


def _costs(before: ProbeReport, after: ProbeReport) -> str:
    reasons = []
    if after.checkpointing and not before.checkpointing:
        reasons.append("checkpointing recomputes the forward")
    if after.autocast_state == "enabled" and "cpu" in after.autocast_devices:
        reasons.append("bf16 is emulated on this CPU")
    if after.autocast_state == "disabled":
        reasons.append("autocast is off on this device, so nothing pays the recomputation back")
    return "; ".join(reasons)


def _read_rate(before: ProbeReport, after: ProbeReport) -> str:
    ratio = _ratio(before.tokens_per_second, after.tokens_per_second)
    if ratio is None:
        return "not measured"
    costs = _costs(before, after)
    return f"{_times(ratio)} the tokens per second" + (f" ({costs})" if costs else "")


def _read_per_token(before: ProbeReport, after: ProbeReport) -> str:
    ratio = _ratio(before.seconds_per_token, after.seconds_per_token)
    if ratio is None:
        return "not measured"
    return f"{_times(ratio)} the time to train one token: the fair comparison across batch sizes"


def _cpu_seconds_per_token(report: ProbeReport) -> float | None:
    tokens = report.tokens_per_step
    return report.cpu_seconds_per_step / tokens if tokens and report.cpu_seconds_per_step else None


def _cpu_per_token(report: ProbeReport) -> str:
    value = _cpu_seconds_per_token(report)
    return "-" if value is None else f"{value * 1e6:,.1f} µs"


def _read_cpu_per_token(before: ProbeReport, after: ProbeReport) -> str:
    ratio = _ratio(_cpu_seconds_per_token(before), _cpu_seconds_per_token(after))
    if ratio is None:
        return "not measured"
    return (f"{_times(ratio)} the CPU time per token: the steady reading where other work "
            "shares the machine")


_ROWS: list[tuple[str, Callable[[ProbeReport], str],
                  Callable[[ProbeReport, ProbeReport], str]]] = [
    ("label offset", _offset, _read_offset),
    ("micro-batches per step", lambda r: f"{r.micro_batches_per_step:g}", _read_micro_batches),
    ("autocast share", _autocast, _read_autocast),
    ("checkpointing", lambda r: "yes" if r.checkpointing else "no", _read_checkpointing),
    ("activation memory per step", lambda r: format_bytes(r.activation_bytes_per_step),
     _read_activations),
    ("step time", _step_time, _read_step_time),
    ("tokens/s", _per_second, _read_rate),
    ("time per token", _per_token, _read_per_token),
    ("CPU time per token", _cpu_per_token, _read_cpu_per_token),
]


def diff_reports(before: ProbeReport, after: ProbeReport) -> list[DiffRow]:
    """The before/after rows, each with its reading."""
    return [DiffRow(name, show(before), show(after), read(before, after))
            for name, show, read in _ROWS]


def render_diff(rows: list[DiffRow], console: Console) -> None:
    """Print the rows as a table: measured, before, after, what it means."""
    table = Table(title="trainaudit probe diff", header_style="bold")
    for column in ("measured", "before", "after", "what it means"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.name, row.before, row.after, row.reading)
    console.print(table)
