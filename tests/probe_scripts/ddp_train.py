"""DDP over gloo when a launcher starts it (WORLD_SIZE > 1), one process otherwise.

Each rank trains on its own token rows, next-token labels shifted at the loss.
"""

import os

import torch
import torch.distributed as dist
from tinylm import TinyLM, next_token_loss, parse_args, token_batch

args = parse_args(batch_size=4, steps=10)
distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
if distributed:
    dist.init_process_group("gloo")
rank = dist.get_rank() if distributed else 0
generator = torch.Generator().manual_seed(rank)
torch.manual_seed(0)
model = TinyLM(layers=1)
if distributed:
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    loss = next_token_loss(model(input_ids), input_ids)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
if distributed:
    dist.destroy_process_group()
