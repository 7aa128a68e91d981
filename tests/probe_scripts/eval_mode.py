"""Training with an evaluation after every optimizer step; flags choose how it restores the mode.

(no flag): evaluate() ends with model.train() (correct).
--was-training: was_training = model.training; ...; model.train(was_training) (correct).
--no-restore: evaluate() leaves the model in eval mode (TA502): every later step trains in it.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

mode = next((a for a in sys.argv[1:] if a.startswith("--")), "")


@torch.no_grad()
def evaluate(model, x, y):
    was_training = model.training
    model.eval()
    loss = F.cross_entropy(model(x), y).item()
    if mode == "--was-training":
        model.train(was_training)
    elif mode != "--no-restore":
        model.train()
    return loss


generator = torch.Generator().manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 8, generator=generator), torch.randint(0, 4, (32,), generator=generator)
model.train()
for _step in range(4):
    for micro in range(2):
        batch = slice(micro * 16, (micro + 1) * 16)
        (F.cross_entropy(model(x[batch]), y[batch]) / 2).backward()
    optimizer.step()
    optimizer.zero_grad()
    evaluate(model, x, y)
