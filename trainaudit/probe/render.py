"""Print a probe report as a rich table followed by its findings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from trainaudit.probe.report import ProbeReport

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
OFFSET_MEANING = {0: "no shift", 1: "next token (correct)", 2: "double shift", 3: "triple shift"}


def format_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def describe_autocast(report: ProbeReport) -> str:
    """Whether autocast ran: absent, on (for which devices) or present but off here."""
    devices = ", ".join(report.autocast_devices)
    if report.autocast_state == "disabled":
        return f"autocast present but disabled on this device ({devices})"
    return f"autocast on {devices}" if report.autocast_state == "enabled" else "no autocast"


def _autocast(report: ProbeReport) -> str:
    if not report.matmul_flops:
        return "no matmul-like calls seen"
    share = f"{report.autocast_fraction:.0%} of {report.matmul_flops:,} matmul FLOPs"
    return f"{share}; {describe_autocast(report)}"


def _clipping(report: ProbeReport) -> str:
    if not report.clip_calls:
        return "-"
    if report.clipped_scaled_gradients:
        return "YES (before unscale_)"
    if report.scaler_state == "disabled":
        return "not measurable (GradScaler disabled: its scale is 1)"
    return "no" if report.scaler_state == "enabled" else "no (no GradScaler)"


def _accumulation(report: ProbeReport) -> str:
    scale = report.loss_scale_at_backward
    window = len(report.window_grad_norms)
    if window < 2:
        return "-"
    if scale is None:
        return f"{window} micro-batches; loss scale at backward not measurable"
    return f"loss x {scale:.3g} at backward over {window} micro-batches"


def _step_time(report: ProbeReport) -> str:
    median = f"{report.step_seconds * 1000:,.1f} ms"
    if report.timed_steps < 2:
        return median + (" (warm-up step included)" if report.timing_includes_warmup else "")
    return (f"{median} (median of {report.timed_steps} steps after the warm-up; "
            f"{report.step_seconds_min * 1000:,.1f}-{report.step_seconds_max * 1000:,.1f} ms)")


def _cpu_time(report: ProbeReport) -> str:
    if report.cpu_seconds_per_step <= 0:
        return "-"
    return (f"{report.cpu_seconds_per_step * 1000:,.1f} ms (median; this process's CPU time, "
            "which other work on the machine does not inflate)")


def _throughput(report: ProbeReport) -> str:
    if report.tokens_per_second is None or report.seconds_per_token is None:
        return "-"
    text = (f"{report.tokens_per_second:,.0f} tokens/s, {report.seconds_per_token * 1e6:,.1f} "
            "µs per token")
    tokens = report.tokens_per_step
    if report.timed_steps >= 2 and tokens and report.step_seconds_min > 0:
        slowest, fastest = tokens / report.step_seconds_max, tokens / report.step_seconds_min
        text += f" ({slowest:,.0f}-{fastest:,.0f} tokens/s)"
    elif report.timing_includes_warmup:
        text += " (warm-up step included)"
    return text


# What the throughput row measures, against a trainer's own log line (which often times
# its first step alone, or counts evaluation and data loading).
THROUGHPUT_NOTE = (
    "throughput: tokens per optimizer step (batch x sequence x micro-batches x processes) "
    "over the median step time, the warm-up step left out; a trainer's own tokens/s that "
    "times its first step, or includes evaluation and data loading, reads lower.")


def _rows(report: ProbeReport) -> list[tuple[str, str]]:
    offset = report.label_offset
    if offset is None:
        label = "not measured"
    else:
        label = (f"{offset} ({OFFSET_MEANING.get(offset, 'shifted')}; "
                 f"{report.label_positions_matched}/{report.label_positions_checked} positions)")
    batch = "-" if report.batch_size is None else (
        f"{report.batch_size} x {report.sequence_length} tokens x {report.world_size} process(es)")
    checkpointing = (f"yes ({report.checkpoint_regions} regions)" if report.checkpointing
                     else "no")
    schedule = report.scheduler_steps_per_optimizer_step
    return [
        ("script", report.script_exit),
        ("optimizer steps", str(report.optimizer_steps)),
        ("micro-batches per step",
         f"{report.micro_batches_per_step:g} ({report.backward_calls} backward calls)"),
        ("batch", batch),
        ("label offset", label),
        ("wrapped label positions", str(report.wrapped_label_positions)),
        ("accumulation", _accumulation(report)),
        ("scheduler steps per step", "-" if schedule is None else f"{schedule:g}"),
        ("autocast share", _autocast(report)),
        ("checkpointing", checkpointing),
        ("activation memory per step", format_bytes(report.activation_bytes_per_step)),
        ("clipping on scaled gradients", _clipping(report)),
        ("step time", _step_time(report)),
        ("CPU time per step", _cpu_time(report)),
        ("throughput", _throughput(report)),
        ("peak CUDA memory", format_bytes(report.peak_cuda_memory_bytes)),
    ]


def render_report(report: ProbeReport, console: Console) -> None:
    """Print the measurements (each rank's beside the merged ones), then the findings."""
    table = Table(title="trainaudit probe", show_header=True, header_style="bold")
    table.add_column("measured")
    columns = [_rows(report)]
    if report.ranks:
        table.add_column(f"merged ({len(report.ranks)} ranks)")
        columns += [_rows(rank) for rank in report.ranks]
        for rank in report.ranks:
            table.add_column(f"rank {rank.rank}", overflow="fold")
    else:
        table.add_column("value")
    for i, (name, _) in enumerate(columns[0]):
        table.add_row(name, *(column[i][1] for column in columns))
    console.print(table)
    if report.tokens_per_second is not None:
        console.print(Text(THROUGHPUT_NOTE, style="dim"))
    for source in [report, *report.ranks]:
        if source.script_error:
            prefix = "" if source.rank is None else f"rank {source.rank}: "
            console.print(Text(prefix + source.script_error.rstrip(), style="red"))
            break
    if not report.findings:
        console.print("no findings")
        return
    for finding in report.findings:
        line = Text()
        line.append(f"{finding.code} ", style="bold")
        line.append(f"{finding.name} ", style="bold")
        line.append(f"[{finding.severity}] ", style=_SEVERITY_STYLE.get(finding.severity, ""))
        line.append(finding.message)
        console.print(line)
