"""Train an MM-Rec language model on the bundled corpus.

This is the reviewed trainer, reproduced with its bugs on purpose (SPEC §1):
the data set already shifts the labels by one and `train_step` shifts them
again, the optimizer steps every batch of 4 (no gradient accumulation), the
forward runs in fp32 (no autocast), and the blocks keep every activation (no
checkpointing). trainaudit is meant to find and fix exactly these.

One process, on a CPU:
    python reference_impl/mm_rec/scripts/train_base_model.py --steps 200

Two processes with DDP (gloo on a CPU, nccl with --device cuda):
    torchrun --nproc_per_node 2 reference_impl/mm_rec/scripts/train_base_model.py --steps 5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import DataLoader, DistributedSampler

# Make `mm_rec` importable when this file is run as a script from any directory.
REFERENCE_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REFERENCE_ROOT))

from mm_rec.data.text_data_loader import CharTokenizer, TextDataset, load_token_splits  # noqa: E402
from mm_rec.model import CONFIGS, MMRecConfig, MMRecModel  # noqa: E402

# A CPU cannot train on the published sequence lengths in reasonable time.
CPU_MAX_SEQ_LEN = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults give a 200-step tiny run on a CPU."""
    parser = argparse.ArgumentParser(description="Train MM-Rec on a text corpus.")
    parser.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=200, help="max optimizer steps")
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sample (default: the config's, capped on a CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=REFERENCE_ROOT / "data")
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="checkpoint folder (default: reference_impl/runs/<config>)",
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument(
        "--eval-batches", type=int, default=8, help="validation batches per evaluation"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="evaluations without improvement before stopping early",
    )
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads per process (default: cores / local processes)",
    )
    return parser.parse_args(argv)


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    device: str,
) -> float:
    """One optimizer step on one batch; returns the loss."""
    optimizer.zero_grad()
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)

    logits = model(input_ids)

    # Next-token prediction: logits at t are scored against the label at t + 1.
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    loss = F.cross_entropy(
        shift_logits.view(-1, shift_logits.size(-1)),
        shift_labels.view(-1),
        ignore_index=-100,
    )

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, device: str, max_batches: int | None = None
) -> float:
    """Mean validation loss over at most `max_batches` batches, computed as in training."""
    model.eval()
    losses = []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        input_ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        logits = model(input_ids)
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        loss = F.cross_entropy(
            shift_logits.view(-1, shift_logits.size(-1)),
            shift_labels.view(-1),
            ignore_index=-100,
        )
        losses.append(loss.item())
    model.train()
    return sum(losses) / max(1, len(losses))


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    config: MMRecConfig,
    tokenizer: CharTokenizer,
    step: int,
    val_loss: float,
    args: argparse.Namespace,
) -> None:
    """Write weights, config and vocabulary: everything `evaluate.load_checkpoint` needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "config": asdict(config),
            "vocab": tokenizer.chars,
            "step": step,
            "val_loss": val_loss,
            # Strings only, so the file loads with torch.load(weights_only=True).
            "args": {k: str(v) for k, v in vars(args).items()},
        },
        path,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the options, train, validate, save."""
    args = parse_args(argv)

    # -------------------------------------------------------------- processes
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device
    if ddp:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank = dist.get_rank()
        world_size = dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
    else:
        rank, world_size = 0, 1
    master = rank == 0

    # Processes on one machine share its cores; oversubscribing them slows every one down.
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or max(1, (cores or 1) // local_procs))
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------------- data
    tokenizer, train_ids, val_ids = load_token_splits(args.data_dir)
    config = replace(CONFIGS[args.config], vocab_size=tokenizer.vocab_size)
    seq_len = args.seq_len or config.max_seq_len
    if args.seq_len is None and device == "cpu":
        seq_len = min(seq_len, CPU_MAX_SEQ_LEN)
    out_dir = args.out_dir or REFERENCE_ROOT / "runs" / args.config

    train_dataset = TextDataset(train_ids, seq_len)
    val_dataset = TextDataset(val_ids, seq_len)
    train_sampler = (
        DistributedSampler(train_dataset, num_replicas=world_size, rank=rank, seed=args.seed)
        if ddp
        else None
    )
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_dataset,
        batch_size=args.batch_size,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        generator=generator,
        num_workers=args.num_workers,
        drop_last=True,
    )
    val_loader = DataLoader(
        val_dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers
    )

    # ------------------------------------------------------------------ model
    model = MMRecModel(config).to(device)
    raw_model = model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None
        )
    if master:
        print(f"config {args.config}: {config}")
        print(
            f"parameters: {raw_model.num_parameters():,}  seq_len {seq_len}  "
            f"batch {args.batch_size} x {world_size} process(es)  device {device}"
        )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay
    )
    warmup_steps = max(1, min(args.warmup_steps, args.steps - 1))
    warmup = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    cosine = CosineAnnealingLR(
        optimizer, T_max=max(1, args.steps - warmup_steps), eta_min=args.lr * 0.1
    )
    scheduler = SequentialLR(optimizer, schedulers=[warmup, cosine], milestones=[warmup_steps])

    # ------------------------------------------------------------------- loop
    tokens_per_step = args.batch_size * seq_len * world_size
    step = 0
    epoch = 0
    best_val_loss = math.inf
    val_loss = math.nan
    evals_without_improvement = 0
    train_seconds = 0.0
    window_loss, window_steps, window_seconds = 0.0, 0, 0.0
    stop = False
    model.train()
    while not stop:
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        for batch in train_loader:
            t0 = time.perf_counter()
            loss = train_step(model, batch, optimizer, scheduler, device)
            dt = time.perf_counter() - t0
            step += 1
            train_seconds += dt
            window_loss, window_steps, window_seconds = (
                window_loss + loss,
                window_steps + 1,
                window_seconds + dt,
            )

            if master and (step % args.log_interval == 0 or step == 1):
                lr = scheduler.get_last_lr()[0]
                print(
                    f"step {step:5d} | loss {window_loss / window_steps:.4f} | lr {lr:.2e} | "
                    f"{tokens_per_step * window_steps / window_seconds:,.0f} tokens/s",
                    flush=True,
                )
                window_loss, window_steps, window_seconds = 0.0, 0, 0.0

            if step % args.eval_interval == 0 or step == args.steps:
                # Every rank evaluates the same validation batches with the same weights.
                val_loss = evaluate(raw_model, val_loader, device, args.eval_batches)
                if val_loss < best_val_loss:
                    best_val_loss = val_loss
                    evals_without_improvement = 0
                    if master:
                        save_checkpoint(
                            out_dir / "best.pt", raw_model, config, tokenizer, step, val_loss, args
                        )
                else:
                    evals_without_improvement += 1
                if master:
                    print(
                        f"step {step:5d} | val loss {val_loss:.4f} | best {best_val_loss:.4f}",
                        flush=True,
                    )
                if evals_without_improvement >= args.patience:
                    if master:
                        print(f"early stop: no improvement in {args.patience} evaluations")
                    stop = True

            if ddp:
                # Rank 0 decides, so no rank can leave the loop while another waits in a
                # collective.
                flag = torch.tensor([int(stop or step >= args.steps)], device=device)
                dist.broadcast(flag, src=0)
                stop = bool(flag.item())
            stop = stop or step >= args.steps
            if stop:
                break
        epoch += 1

    if master:
        save_checkpoint(out_dir / "final.pt", raw_model, config, tokenizer, step, val_loss, args)
        tokens_per_s = tokens_per_step * step / max(train_seconds, 1e-9)
        print(f"saved {out_dir / 'final.pt'}")
        print(
            f"final: step={step} val_loss={val_loss:.4f} best_val_loss={best_val_loss:.4f} "
            f"tokens_per_s={tokens_per_s:.0f}",
            flush=True,
        )
    if ddp:
        # Wait for rank 0's checkpoint before tearing gloo down: a rank that destroys the
        # group while another is still busy can abort ("terminate called without an
        # active exception").
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
