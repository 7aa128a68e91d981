"""Calls sys.exit(3) after two optimizer steps."""

import sys

import torch
from tinylm import TinyLM, next_token_loss, token_batch

generator = torch.Generator().manual_seed(0)
model = TinyLM()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(100):
    if step == 2:
        sys.exit(3)
    input_ids = token_batch(8, 32, generator)
    loss = next_token_loss(model(input_ids), input_ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
