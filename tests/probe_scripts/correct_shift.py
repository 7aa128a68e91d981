"""Correct: labels are the inputs, shifted once at the loss. fp32, no accumulation."""

import torch
from tinylm import TinyLM, next_token_loss, parse_args, token_batch

args = parse_args()
torch.manual_seed(0)
generator = torch.Generator().manual_seed(0)
model = TinyLM(layers=args.layers)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    labels = input_ids.clone()
    loss = next_token_loss(model(input_ids), labels)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
print("done")
