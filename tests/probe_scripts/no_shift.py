"""No shift anywhere: logits at t are scored against the token at t."""

import torch
from tinylm import VOCAB, TinyLM, parse_args, token_batch

args = parse_args()
generator = torch.Generator().manual_seed(0)
model = TinyLM(layers=args.layers)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = torch.nn.CrossEntropyLoss()
for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    logits = model(input_ids)
    loss = criterion(logits.reshape(-1, VOCAB), input_ids.reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
