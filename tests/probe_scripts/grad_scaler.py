"""A GradScaler (enabled on the CPU, scale 1024); --unscale calls unscale_ before clipping."""

import sys

import torch
from tinylm import TinyLM, next_token_loss, token_batch

unscale_first = "--unscale" in sys.argv
generator = torch.Generator().manual_seed(0)
model = TinyLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
for _ in range(20):
    input_ids = token_batch(8, 32, generator)
    loss = next_token_loss(model(input_ids), input_ids)
    scaler.scale(loss).backward()
    if unscale_first:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
