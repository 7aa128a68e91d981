"""Two losses of one batch, each sent to backward on its own, one optimizer step: not an
accumulation window (one forward), so no loss scale can be read from it."""

import torch
import torch.nn.functional as F
from tinylm import VOCAB, TinyLM, next_token_loss, token_batch

generator = torch.Generator().manual_seed(0)
model = TinyLM()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(10):
    input_ids = token_batch(4, 32, generator)
    logits = model(input_ids)
    # each loss goes to backward as the loss function returned it, as a summed window would
    next_token_loss(logits, input_ids).backward(retain_graph=True)
    F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), input_ids[:, 1:].reshape(-1),
                    label_smoothing=0.1).backward()
    optimizer.step()
    optimizer.zero_grad()
