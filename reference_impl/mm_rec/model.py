"""MM-Rec (Multi-Memory Recurrence) in miniature.

embedding -> N x MMRecBlock -> RMSNorm -> LM head tied to the embedding.

A block mixes along time with a gated linear recurrence

    h_t = gamma_t * h_{t-1} + gate_t * z_t

(the linearised form of h_t = z_t * sigma(W_g h_{t-1}) + gamma_t * h_{t-1}: the
gate reads the input instead of the previous state), computed with a chunked
associative scan, then reads a bank of learned memory slots with multi-head
attention, and ends with a SwiGLU feed-forward layer. Both halves are
pre-norm residual branches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm_rec.configs import CONFIGS, MMRecConfig

__all__ = [
    "CONFIGS",
    "MMRecBlock",
    "MMRecConfig",
    "MMRecModel",
    "chunked_linear_scan",
    "sequential_linear_scan",
]


def sequential_linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference recurrence h_t = a_t * h_{t-1} + b_t over dim 1, one step at a time."""
    h = torch.zeros_like(b[:, 0])
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _scan_in_place(a: torch.Tensor, b: torch.Tensor) -> None:
    """Inclusive scan of h_t = a_t * h_{t-1} + b_t along dim -2, overwriting `a` and `b`.

    Log-depth (Hillis-Steele) scan over the pairs (a, b), whose operator is
    (a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2). After the pass with
    offset k, position t holds the composition of the min(2k, t + 1) steps
    ending at t; afterwards `b` holds h (from h = 0) and `a` the running
    product of a. It only multiplies numbers in [0, 1], so it is stable for any
    decay, unlike the closed form that divides by a running product.
    """
    length = b.shape[-2]
    k = 1
    while k < length:
        # The products are taken before the in-place updates: the slices overlap.
        b_update = a[..., k:, :] * b[..., :-k, :]
        a_update = a[..., k:, :] * a[..., :-k, :]
        b[..., k:, :] += b_update
        a[..., k:, :] = a_update
        k *= 2


def _chunked_scan(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t (h_0 = 0) over dim 1 of (batch, time, dim); no autograd."""
    batch, seq_len, dim = b.shape
    size = max(1, min(chunk_size, seq_len))
    pad = (-seq_len) % size
    # Identity steps (a = 1, b = 0) leave the state unchanged, so padding is harmless;
    # pad() also makes the copies that the in-place scan may overwrite.
    a = F.pad(a, (0, 0, 0, pad), value=1.0)
    b = F.pad(b, (0, 0, 0, pad), value=0.0)
    n_chunks = (seq_len + pad) // size
    a = a.view(batch, n_chunks, size, dim)
    b = b.view(batch, n_chunks, size, dim)
    _scan_in_place(a, b)  # every chunk at once, each from a zero state

    # State entering each chunk: scan the chunk summaries (their last step) in
    # turn, then shift by one chunk. log2(n_chunks) passes, not a Python loop.
    a_end = a[:, :, -1].clone()
    h_end = b[:, :, -1].clone()
    _scan_in_place(a_end, h_end)
    carry_in = F.pad(h_end, (0, 0, 1, 0))[:, :n_chunks]
    b.addcmul_(a, carry_in.unsqueeze(2))
    return b.view(batch, n_chunks * size, dim)[:, :seq_len]


class _ChunkedLinearScan(torch.autograd.Function):
    """Autograd for the scan that keeps only a and h, not every pass of the scan."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> torch.Tensor:
        h = _chunked_scan(a, b, chunk_size)
        ctx.save_for_backward(a, h)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        a, h = ctx.saved_tensors
        # The adjoint obeys the same recurrence backwards in time:
        # delta_t = grad_t + a_{t+1} * delta_{t+1}; then dL/db_t = delta_t and
        # dL/da_t = delta_t * h_{t-1}.
        a_next = F.pad(a[:, 1:], (0, 0, 0, 1), value=0.0)
        delta = _chunked_scan(a_next.flip(1), grad_h.flip(1), ctx.chunk_size).flip(1)
        h_prev = F.pad(h[:, :-1], (0, 0, 1, 0))
        return delta * h_prev, delta, None


def chunked_linear_scan(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Compute h_t = a_t * h_{t-1} + b_t (h_0 = 0) over dim 1 of (batch, time, dim) tensors.

    Two levels of associative scan: within chunks of `chunk_size` steps, then
    across the chunks' summaries. Runs in float32 even under autocast: the
    products compound rounding error over a chunk. Backward runs the same scan
    in reverse instead of storing the forward's intermediate passes.
    """
    dtype = torch.promote_types(b.dtype, torch.float32)
    return _ChunkedLinearScan.apply(a.to(dtype), b.to(dtype), chunk_size)


class MemoryAttention(nn.Module):
    """Multi-head attention from every position to a bank of learned memory slots.

    The slots are parameters, not sequence positions, so no causal mask is
    needed: reading them never reveals a future token.
    """

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        if config.dim % config.num_heads:
            raise ValueError(f"dim {config.dim} is not divisible by {config.num_heads} heads")
        self.num_heads = config.num_heads
        self.head_dim = config.dim // config.num_heads
        self.slots = nn.Parameter(torch.randn(config.num_memory_slots, config.dim) * 0.02)
        self.query = nn.Linear(config.dim, config.dim, bias=False)
        self.key_value = nn.Linear(config.dim, 2 * config.dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, seq_len, dim = h.shape
        q = self.query(h).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.key_value(self.slots).chunk(2, dim=-1)
        # (slots, dim) -> (1, heads, slots, head_dim), broadcast over the batch.
        k = k.view(1, -1, self.num_heads, self.head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        v = v.view(1, -1, self.num_heads, self.head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        read = F.scaled_dot_product_attention(q, k, v)
        return read.transpose(1, 2).reshape(batch, seq_len, dim)


class FeedForward(nn.Module):
    """SwiGLU feed-forward layer."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        hidden = int(config.ffn_mult * config.dim)
        self.gate_up = nn.Linear(config.dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MMRecBlock(nn.Module):
    """Gated recurrence + memory-slot read, then a feed-forward layer; both residual."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        dim = config.dim
        self.chunk_size = config.chunk_size
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        # One projection for the candidate z, the input gate and the decay gamma.
        self.to_z_gate_decay = nn.Linear(dim, 3 * dim)
        self.state_norm = nn.RMSNorm(dim, eps=1e-6)
        self.memory = MemoryAttention(config)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)
        self._init_decay_bias()

    def _init_decay_bias(self) -> None:
        """Start the decays at timescales from 2 to 1000 steps, one per channel."""
        dim = self.norm1.normalized_shape[0]
        timescales = torch.logspace(math.log10(2.0), 3.0, dim)
        gamma = 1.0 - 1.0 / timescales
        with torch.no_grad():
            self.to_z_gate_decay.bias.zero_()
            self.to_z_gate_decay.bias[2 * dim :] = torch.logit(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, gate, decay = self.to_z_gate_decay(self.norm1(x)).chunk(3, dim=-1)
        h = chunked_linear_scan(torch.sigmoid(decay), torch.sigmoid(gate) * z, self.chunk_size)
        h = self.state_norm(h)
        x = x + self.dropout(self.out_proj(h + self.memory(h)))
        x = x + self.dropout(self.ffn(self.norm2(x)))
        return x


class MMRecModel(nn.Module):
    """The language model; `forward` returns logits only (the trainer computes the loss)."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([MMRecBlock(config) for _ in range(config.num_layers)])
        self.norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # weight tying
        self.apply(self._init_weights)
        # Residual outputs scaled down so the stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith(("out_proj.weight", "down.weight")):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embed(input_ids))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.lm_head(x)
