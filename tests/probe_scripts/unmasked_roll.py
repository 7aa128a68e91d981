"""Circular shift: a roll whose wrapped position is trained on (nothing masks it)."""

import torch
import torch.nn.functional as F
from tinylm import VOCAB, TinyLM, parse_args, token_batch

args = parse_args()
generator = torch.Generator().manual_seed(0)
model = TinyLM(layers=args.layers)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    targets = torch.roll(input_ids, shifts=-1, dims=1)
    logits = model(input_ids)
    loss = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
