"""Double shift: the data set rolls the labels (wrap masked) and the loss shifts again."""

import torch
from tinylm import TinyLM, next_token_loss, parse_args, token_batch
from torch.utils.data import DataLoader, Dataset


class TokenDataset(Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = self.rows[index]
        labels = torch.roll(input_ids, shifts=-1, dims=0)
        labels[-1] = -100
        return {"input_ids": input_ids, "labels": labels}


def train_step(model, batch, optimizer):
    optimizer.zero_grad()
    logits = model(batch["input_ids"])
    loss = next_token_loss(logits, batch["labels"])
    loss.backward()
    optimizer.step()
    return loss.item()


args = parse_args(batch_size=4)
torch.manual_seed(0)
rows = token_batch(64, args.seq_len, torch.Generator().manual_seed(0))
loader = DataLoader(TokenDataset(rows), batch_size=args.batch_size, shuffle=True)
model = TinyLM(layers=args.layers)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
step = 0
while step < args.steps:
    for batch in loader:
        train_step(model, batch, optimizer)
        step += 1
        if step >= args.steps:
            break
