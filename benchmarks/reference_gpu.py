"""Tokens/s and peak memory of the reference MM-Rec trainer, before and after the fixes.

Three training steps are timed on the same batches from the bundled corpus:

  unfixed   the reference trainer's own `train_step`: fp32, every activation kept.
  fixed     the same model with bf16 autocast and activation checkpointing per
            block (`checkpoint(block, x, use_reentrant=False)`), wrapped here at
            run time until the codemodded trainer can be imported instead.
  baseline  a plain MM-Rec-like model and step written below by hand (LayerNorm,
            nn.MultiheadAttention, a log-space chunked scan), with the same
            dims and the same settings as `fixed`: the comparison of SPEC §8.

On a GPU (the numbers that matter):
    python benchmarks/reference_gpu.py --config base --seq-len 8192 --batch-size 1 \
        --steps 10 --warmup 3
A CPU smoke test (slow, small):
    python benchmarks/reference_gpu.py --device cpu --config tiny --seq-len 128 \
        --steps 2 --warmup 1

Prints a table, then one JSON line with the same figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reference_root(argv: list[str]) -> Path:
    """``--reference PATH``: which copy of reference_impl to import (read before the imports)."""
    for i, arg in enumerate(argv):
        if arg == "--reference" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if arg.startswith("--reference="):
            return Path(arg.split("=", 1)[1]).resolve()
    return REPO_ROOT / "reference_impl"


sys.path.insert(0, str(_reference_root(sys.argv)))

from mm_rec.configs import CONFIGS, MMRecConfig  # noqa: E402
from mm_rec.data.text_data_loader import DEFAULT_DATA_DIR, create_dataloaders  # noqa: E402
from mm_rec.model import MMRecModel  # noqa: E402
from mm_rec.scripts.train_base_model import train_step  # noqa: E402

Batch = dict[str, torch.Tensor]
StepFn = Callable[[nn.Module, Batch, torch.optim.Optimizer, object, str], float]


# --------------------------------------------------------------- (b) the fixes, at run time


class CheckpointedBlock(nn.Module):
    """Recompute a block's activations in backward instead of keeping them."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return checkpoint(self.block, x, use_reentrant=False)
        return self.block(x)


def add_checkpointing(model: nn.Module) -> nn.Module:
    """Wrap every entry of `model.blocks` in a `CheckpointedBlock`."""
    model.blocks = nn.ModuleList(CheckpointedBlock(b) for b in model.blocks)
    return model


def autocast_step(
    model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, scheduler: object, device: str
) -> float:
    """A correct step: bf16 autocast forward, one shift only (the data set's), fp32 loss."""
    optimizer.zero_grad(set_to_none=True)
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        logits = model(input_ids)
    loss = F.cross_entropy(
        logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()  # type: ignore[attr-defined]
    return loss.item()


# ------------------------------------------------------ (c) a hand-written MM-Rec-like baseline


def logspace_chunked_scan(log_a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t, chunk by chunk: h = A_t (h_0 + cumsum(b_s / A_s)).

    The textbook closed form. Dividing by the running product A_s overflows
    unless the decay is bounded, hence the clamp on log a in the caller.
    """
    h0 = torch.zeros_like(b[:, 0], dtype=torch.float32)
    outs = []
    for start in range(0, b.shape[1], chunk):
        la = log_a[:, start : start + chunk].float().cumsum(dim=1)
        bb = b[:, start : start + chunk].float()
        h = torch.exp(la) * (h0.unsqueeze(1) + torch.cumsum(bb * torch.exp(-la), dim=1))
        outs.append(h)
        h0 = h[:, -1]
    return torch.cat(outs, dim=1)


class BaselineBlock(nn.Module):
    """Gated decaying recurrence + memory-slot attention + gated MLP, written plainly."""

    chunk = 64
    min_log_decay = -1.0  # exp(64) stays far from fp32 overflow

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        dim, hidden = config.dim, int(config.ffn_mult * config.dim)
        self.ln1 = nn.LayerNorm(dim)
        self.to_z = nn.Linear(dim, dim)
        self.to_gate = nn.Linear(dim, dim)
        self.to_decay = nn.Linear(dim, dim)
        self.state_ln = nn.LayerNorm(dim)
        self.memory = nn.Parameter(torch.randn(config.num_memory_slots, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, config.num_heads, bias=False, batch_first=True)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ln2 = nn.LayerNorm(dim)
        self.fc_gate = nn.Linear(dim, hidden, bias=False)
        self.fc_up = nn.Linear(dim, hidden, bias=False)
        self.fc_down = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.ln1(x)
        log_a = F.logsigmoid(self.to_decay(u) + 2.0).clamp(min=self.min_log_decay)
        b = torch.sigmoid(self.to_gate(u)) * self.to_z(u)
        h = self.state_ln(logspace_chunked_scan(log_a, b, self.chunk).to(x.dtype))
        memory = self.memory.unsqueeze(0).expand(x.shape[0], -1, -1)
        read, _ = self.attn(h, memory, memory, need_weights=False)
        x = x + self.drop(self.proj(h + read))
        u = self.ln2(x)
        return x + self.drop(self.fc_down(F.silu(self.fc_gate(u)) * self.fc_up(u)))


class BaselineModel(nn.Module):
    """Embedding, checkpointed blocks, LayerNorm, tied head."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(BaselineBlock(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)  # N(0, 1) through a tied head: huge logits

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.training else block(x)
        return self.head(self.ln_f(x))


# ------------------------------------------------------------------------------ measuring


def make_optimizer(
    model: nn.Module, lr: float, total_steps: int
) -> tuple[torch.optim.Optimizer, object]:
    """The trainer's optimizer and schedule: AdamW (0.9, 0.95), wd 0.1, warm-up + cosine."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, min(20, total_steps - 1))
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        schedulers=[
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, total_steps - warmup)
            ),
        ],
        milestones=[warmup],
    )
    return optimizer, scheduler


def cycle(loader: torch.utils.data.DataLoader) -> Iterator[Batch]:
    """Repeat a loader forever."""
    while True:
        yield from loader


def measure(
    name: str,
    build: Callable[[], nn.Module],
    step_fn: StepFn,
    batches: list[Batch],
    args: argparse.Namespace,
) -> dict[str, object]:
    """Warm up, then time `args.steps` steps; report tokens/s and peak memory."""
    device = args.device
    is_cuda = device.startswith("cuda")
    gc.collect()
    if is_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(args.seed)
    result: dict[str, object] = {"name": name}
    try:
        model = build().to(device).train()
        optimizer, scheduler = make_optimizer(model, args.lr, args.warmup + args.steps)
        losses = []
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                if is_cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            losses.append(step_fn(model, batches[i % len(batches)], optimizer, scheduler, device))
        if is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        tokens = args.steps * args.batch_size * args.seq_len
        result.update(
            params=sum(p.numel() for p in model.parameters()),
            step_s=round(elapsed / args.steps, 4),
            tokens_per_s=round(tokens / elapsed, 1),
            peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if is_cuda else None,
            first_loss=round(losses[0], 4),
            last_loss=round(losses[-1], 4),
        )
    except torch.OutOfMemoryError as exc:
        result["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    finally:
        model = optimizer = scheduler = None  # free before the next variant
    return result


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base", choices=sorted(CONFIGS))
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--variants", default="unfixed,fixed,baseline", help="comma-separated subset to run"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--reference",
        type=Path,
        default=REPO_ROOT / "reference_impl",
        help="reference_impl copy to import; a copy fixed by `trainaudit fix --apply "
        "--unsafe-fixes` makes the `unfixed` variant run the codemodded trainer's own step",
    )
    parser.add_argument("--label", default=None, help="name printed for the `unfixed` variant")
    return parser.parse_args()


def main() -> None:
    """Run the chosen variants and print the table and the JSON line."""
    args = parse_args()
    train_loader, _, tokenizer = create_dataloaders(
        args.data_dir, args.seq_len, args.batch_size, seed=args.seed
    )
    config = replace(CONFIGS[args.config], vocab_size=tokenizer.vocab_size)
    stream = cycle(train_loader)
    batches = [next(stream) for _ in range(min(len(train_loader), args.warmup + args.steps))]

    variants: dict[str, tuple[Callable[[], nn.Module], StepFn]] = {
        "unfixed": (lambda: MMRecModel(config), train_step),
        "fixed": (lambda: add_checkpointing(MMRecModel(config)), autocast_step),
        "baseline": (lambda: BaselineModel(config), autocast_step),
    }
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(variants))
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)}")

    device_name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else "cpu"
    )
    print(
        f"device {device_name} | torch {torch.__version__} | config {args.config} | "
        f"seq {args.seq_len} x batch {args.batch_size} | {args.steps} timed steps after "
        f"{args.warmup} warm-up"
    )
    results = []
    for name in chosen:
        build, step_fn = variants[name]
        shown = args.label if name == "unfixed" and args.label else name
        results.append(measure(shown, build, step_fn, batches, args))

    print(f"{'variant':<10} {'params':>12} {'tokens/s':>12} {'step s':>8} {'peak GiB':>9}  loss")
    for r in results:
        if "error" in r:
            print(f"{r['name']:<10} {r['error']}")
            continue
        peak = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        print(
            f"{r['name']:<10} {r['params']:>12,} {r['tokens_per_s']:>12,.0f} "
            f"{r['step_s']:>8.3f} {peak:>9}  {r['first_loss']:.3f} -> {r['last_loss']:.3f}"
        )
    record = {
        "device": device_name,
        "torch": torch.__version__,
        "config": args.config,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "reference": str(args.reference),
        "results": results,
    }
    line = json.dumps(record)
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
