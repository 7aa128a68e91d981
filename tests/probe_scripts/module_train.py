"""Run as `python -m module_train`: labels shifted on the data side only (correct)."""

import sys

import torch
import torch.nn.functional as F
from tinylm import VOCAB, TinyLM, token_batch


def main() -> None:
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 10
    generator = torch.Generator().manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        tokens = token_batch(8, 33, generator)
        x, y = tokens[:, :-1], tokens[:, 1:]  # nanoGPT-style: targets made shifted
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
