"""Character tokenizer, windowed text data set and the train/val loaders.

The label construction in `TextDataset.__getitem__` is the reviewed code, kept
as it was on purpose (SPEC §1): the roll is harmless because the wrapped
position is set to -100, but the labels come out already shifted by one, and
the trainer shifts them a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
VAL_FRACTION = 0.1


class CharTokenizer:
    """Character-level tokenizer; id 0 is padding, id 1 stands for unseen characters."""

    pad_token = "<pad>"
    unk_token = "<unk>"

    def __init__(self, chars: Sequence[str]) -> None:
        # Sorted so the same corpus always gives the same ids, whatever the order of files.
        self.chars = sorted(set(chars))
        self.itos = [self.pad_token, self.unk_token, *self.chars]
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        self.pad_id = 0
        self.unk_id = 1

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every character that occurs in `text`."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding and unknown included."""
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Map text to ids; characters outside the vocabulary become `unk_id`."""
        return [self.stoi.get(ch, self.unk_id) for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Map ids back to text, dropping padding."""
        return "".join(self.itos[i] for i in ids if i != self.pad_id)


def load_corpus(data_dir: str | Path = DEFAULT_DATA_DIR) -> str:
    """Concatenate the `*.txt` files of `data_dir` in name order."""
    files = sorted(Path(data_dir).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt files in {data_dir}")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def split_tokens(
    ids: torch.Tensor, val_fraction: float = VAL_FRACTION
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream into train and validation parts (the tail is validation)."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def load_token_splits(
    data_dir: str | Path = DEFAULT_DATA_DIR, val_fraction: float = VAL_FRACTION
) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """Tokenizer plus train and validation token ids, the split every script shares."""
    text = load_corpus(data_dir)
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_ids, val_ids = split_tokens(ids, val_fraction)
    return tokenizer, train_ids, val_ids


class TextDataset(Dataset):
    """Non-overlapping windows of `seq_len` tokens with next-token labels."""

    def __init__(self, token_ids: torch.Tensor, seq_len: int) -> None:
        if len(token_ids) < seq_len:
            raise ValueError(f"{len(token_ids)} tokens is less than one window of {seq_len}")
        self.token_ids = token_ids
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.token_ids) // self.seq_len

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        start = idx * self.seq_len
        input_ids = self.token_ids[start : start + self.seq_len].clone()

        # Labels are the next token at each position; the last one has no next token.
        labels = torch.roll(input_ids, shifts=-1, dims=0)
        labels[-1] = -100

        return {"input_ids": input_ids, "labels": labels}


def create_dataloaders(
    data_dir: str | Path,
    seq_len: int,
    batch_size: int,
    *,
    seed: int = 1337,
    num_workers: int = 0,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader, CharTokenizer]:
    """Train and validation loaders over the corpus in `data_dir`, and the tokenizer.

    Under DDP the train set is sharded with a `DistributedSampler`; every rank
    sees the whole validation set so all ranks reach the same early-stopping
    decision without exchanging losses.
    """
    tokenizer, train_ids, val_ids = load_token_splits(data_dir)
    train_set = TextDataset(train_ids, seq_len)
    val_set = TextDataset(val_ids, seq_len)

    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = (
        DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        if distributed
        else None
    )
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
    )
    val_loader = DataLoader(
        val_set,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return train_loader, val_loader, tokenizer
