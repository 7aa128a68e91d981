"""Gradient accumulation over 4 micro-batches with a scheduler; flags add each bug.

--undivided: the loss is not divided by the 4 micro-batches (TA202).
--scheduler-every-micro-batch: scheduler.step() runs every micro-batch (TA203).
--summed: the loss is summed over the tokens and divided by their count (the mean, spelled
out), then divided by the micro-batches or not as --undivided says.
"""

import sys

import torch
import torch.nn.functional as F
from tinylm import VOCAB, TinyLM, next_token_loss, token_batch

ACCUMULATION_STEPS = 4
undivided = "--undivided" in sys.argv
scheduler_every_micro_batch = "--scheduler-every-micro-batch" in sys.argv
summed = "--summed" in sys.argv
generator = torch.Generator().manual_seed(0)
model = TinyLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=100)
for micro_step in range(40):
    input_ids = token_batch(4, 32, generator)
    if summed:
        labels = input_ids[:, 1:].reshape(-1)
        logits = model(input_ids)[:, :-1].reshape(-1, VOCAB)
        loss = F.cross_entropy(logits, labels, reduction="sum") / labels.numel()
    else:
        loss = next_token_loss(model(input_ids), input_ids)
    (loss if undivided else loss / ACCUMULATION_STEPS).backward()
    if (micro_step + 1) % ACCUMULATION_STEPS == 0:
        optimizer.step()
        optimizer.zero_grad()
        if not scheduler_every_micro_batch:
            scheduler.step()
    if scheduler_every_micro_batch:
        scheduler.step()
