"""An independent, correct next-token loss, to judge any trainer's checkpoint.

The trainer's own validation loss uses the trainer's label handling, so it
cannot tell a double-shifted model from a right one: both look fine by their
own measure. `next_token_loss` does not use the data set or the trainer: it
cuts windows from raw token ids and scores logits at t against token t + 1.

    python reference_impl/mm_rec/evaluate.py reference_impl/runs/tiny/final.pt
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    # Run as a file: make `mm_rec` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_rec.data.text_data_loader import DEFAULT_DATA_DIR, load_token_splits
from mm_rec.model import MMRecConfig, MMRecModel


@torch.no_grad()
def next_token_loss(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    seq_len: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> float:
    """Mean cross-entropy of predicting x[t + 1] from x[: t + 1] over windows of `token_ids`.

    Windows hold `seq_len + 1` tokens and overlap by one, so every token after
    the first is a target exactly once: inputs are window[:-1], targets window[1:].
    """
    n_windows = (len(token_ids) - 1) // seq_len
    if n_windows < 1:
        raise ValueError(f"need more than {seq_len} tokens, got {len(token_ids)}")
    windows = torch.stack(
        [token_ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n_windows)]
    )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, n_windows, batch_size):
        chunk = windows[start : start + batch_size].to(device)
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        logits = model(inputs).float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += targets.numel()
    model.train(was_training)
    return total / count


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> MMRecModel:
    """Rebuild the model saved by the trainer (`best.pt` or `final.pt`), in eval mode."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = MMRecModel(MMRecConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def validation_token_ids(data_dir: str | Path = DEFAULT_DATA_DIR) -> torch.Tensor:
    """The validation part of the corpus, split exactly as the trainer splits it."""
    _, _, val_ids = load_token_splits(data_dir)
    return val_ids


def main() -> None:
    """Print the next-token validation loss (and perplexity) of checkpoints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    val_ids = validation_token_ids(args.data_dir)
    for path in args.checkpoints:
        model = load_checkpoint(path, args.device)
        loss = next_token_loss(model, val_ids, args.seq_len, args.batch_size, args.device)
        print(f"{path}: next_token_loss={loss:.4f} perplexity={math.exp(loss):.2f}")


if __name__ == "__main__":
    main()
