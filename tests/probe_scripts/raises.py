"""Fails after one optimizer step, the way a shape bug does."""

import torch
from tinylm import TinyLM, next_token_loss, token_batch

generator = torch.Generator().manual_seed(0)
model = TinyLM()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
input_ids = token_batch(8, 32, generator)
next_token_loss(model(input_ids), input_ids).backward()
optimizer.step()
raise ValueError("batch has the wrong shape")
