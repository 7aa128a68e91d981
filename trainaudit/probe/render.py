"""Print a probe report as a rich table followed by its findings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from trainaudit.probe.report import ProbeReport

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_OFFSET_MEANING = {0: "no shift", 1: "next token (correct)", 2: "double shift", 3: "triple shift"}


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _rows(report: ProbeReport) -> list[tuple[str, str]]:
    offset = report.label_offset
    if offset is None:
        label = "not measured"
    else:
        label = (f"{offset} ({_OFFSET_MEANING.get(offset, 'shifted')}; "
                 f"{report.label_positions_matched}/{report.label_positions_checked} positions)")
    batch = "-" if report.batch_size is None else (
        f"{report.batch_size} x {report.sequence_length} tokens x {report.world_size} process(es)")
    autocast = (f"{report.autocast_fraction:.0%} of {report.matmul_flops:,} matmul FLOPs"
                if report.matmul_flops else "no matmul-like calls seen")
    checkpointing = (f"yes ({report.checkpoint_regions} regions)" if report.checkpointing
                     else "no")
    clipping = "-" if not report.clip_calls else (
        "YES (before unscale_)" if report.clipped_scaled_gradients else "no")
    return [
        ("script", report.script_exit),
        ("optimizer steps", str(report.optimizer_steps)),
        ("micro-batches per step",
         f"{report.micro_batches_per_step:g} ({report.backward_calls} backward calls)"),
        ("batch", batch),
        ("label offset", label),
        ("wrapped label positions", str(report.wrapped_label_positions)),
        ("autocast share", autocast),
        ("checkpointing", checkpointing),
        ("activation memory per step", _bytes(report.activation_bytes_per_step)),
        ("clipping on scaled gradients", clipping),
        ("step time", f"{report.step_seconds * 1000:,.1f} ms"),
        ("peak CUDA memory", _bytes(report.peak_cuda_memory_bytes)),
    ]


def render_report(report: ProbeReport, console: Console) -> None:
    """Print the measurements, then one line per finding (or that there are none)."""
    table = Table(title="trainaudit probe", show_header=True, header_style="bold")
    table.add_column("measured")
    table.add_column("value")
    for name, value in _rows(report):
        table.add_row(name, value)
    console.print(table)
    if report.script_error:
        console.print(Text(report.script_error.rstrip(), style="red"))
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
