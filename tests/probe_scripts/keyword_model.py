"""HF-style: the model takes keywords and computes the shifted loss itself; labels = inputs."""

import torch
from tinylm import TinyLM, next_token_loss, parse_args, token_batch


class CausalLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = TinyLM()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return next_token_loss(self.lm(input_ids), labels)


args = parse_args()
generator = torch.Generator().manual_seed(0)
model = CausalLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(args.steps):
    input_ids = token_batch(args.batch_size, args.seq_len, generator)
    loss = model(input_ids=input_ids, labels=input_ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
