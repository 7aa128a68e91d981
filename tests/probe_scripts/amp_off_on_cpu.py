"""float16 AMP written for CUDA and switched off elsewhere, clipping before unscale_.

On a CPU autocast and the GradScaler are both disabled: the autocast is present but
off, and the clipping order cannot be measured (the scale is 1).
"""

import sys

import torch
from tinylm import TinyLM, next_token_loss, token_batch

device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
use_amp = device == "cuda"
generator = torch.Generator().manual_seed(0)
model = TinyLM().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler(device, enabled=use_amp)
for _ in range(10):
    input_ids = token_batch(8, 32, generator).to(device)
    with torch.autocast(device_type=device, dtype=torch.float16, enabled=use_amp):
        loss = next_token_loss(model(input_ids), input_ids)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
