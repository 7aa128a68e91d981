"""Gradient accumulation over 4 micro-batches, the loss divided by 4."""

import torch
from tinylm import TinyLM, next_token_loss, parse_args, token_batch

ACCUMULATION_STEPS = 4
args = parse_args(batch_size=4)
generator = torch.Generator().manual_seed(0)
model = TinyLM(layers=args.layers)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for micro_step in range(args.steps * ACCUMULATION_STEPS):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    loss = next_token_loss(model(input_ids), input_ids) / ACCUMULATION_STEPS
    loss.backward()
    if (micro_step + 1) % ACCUMULATION_STEPS == 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
