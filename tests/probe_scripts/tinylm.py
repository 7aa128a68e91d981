"""A tiny language model and token data shared by the probe test scripts.

The scripts import it the way a training script imports its project's modules:
from its own folder, which `python script.py` puts first on sys.path.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

VOCAB = 64

# One thread: these models are tiny, and on a shared machine several OpenMP threads
# waiting on one another cost far more than they compute.
torch.set_num_threads(1)


def parse_args(**defaults: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=defaults.get("steps", 20))
    parser.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 8))
    parser.add_argument("--seq-len", type=int, default=defaults.get("seq_len", 32))
    parser.add_argument("--layers", type=int, default=defaults.get("layers", 2))
    parser.add_argument("--checkpoint", action="store_true", help="checkpoint every block")
    parser.add_argument("--reentrant", action="store_true", help="use_reentrant=True")
    return parser.parse_args()


def token_batch(batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Random token rows, so no shift can match by accident."""
    return torch.randint(0, VOCAB, (batch_size, seq_len), generator=generator)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A causal running mean mixes the tokens; the MLP does the rest.
        h = self.norm(x)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)
        h = h + torch.cumsum(h, dim=1) / steps[:, None]
        return x + self.down(F.gelu(self.up(h)))


class TinyLM(nn.Module):
    def __init__(self, dim: int = 64, layers: int = 2, checkpointing: bool = False,
                 reentrant: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.checkpointing = checkpointing
        self.reentrant = reentrant

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=self.reentrant)
            else:
                x = block(x)
        return self.head(self.norm(x))


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The usual loss-side shift: logits at t against labels at t + 1."""
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, VOCAB), shift_labels.view(-1),
                           ignore_index=-100)
