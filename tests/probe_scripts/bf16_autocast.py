"""bfloat16 autocast on the CPU around the forward and the loss."""

import torch
from tinylm import TinyLM, next_token_loss, parse_args, token_batch

args = parse_args()
generator = torch.Generator().manual_seed(0)
model = TinyLM(layers=args.layers)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids)
        loss = next_token_loss(logits.float(), input_ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
