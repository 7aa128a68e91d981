"""Activation checkpointing per block (use_reentrant=False) when --checkpoint is given."""

import torch
from tinylm import TinyLM, next_token_loss, parse_args, token_batch

args = parse_args(batch_size=1, seq_len=1024, layers=4)
generator = torch.Generator().manual_seed(0)
model = TinyLM(layers=args.layers, checkpointing=args.checkpoint, reentrant=args.reentrant)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    loss = next_token_loss(model(input_ids), input_ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
