"""Named MM-Rec sizes, from a CPU-friendly `tiny` to the published `large`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MMRecConfig:
    """Hyper-parameters of an MM-Rec model.

    `vocab_size` is a placeholder here: the trainer replaces it with the size
    of the tokenizer built from the corpus.
    """

    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_memory_slots: int = 32
    max_seq_len: int = 256
    ffn_mult: float = 3.0
    chunk_size: int = 64
    dropout: float = 0.0


CONFIGS: dict[str, MMRecConfig] = {
    "tiny": MMRecConfig(
        vocab_size=256,
        dim=128,
        num_layers=4,
        num_heads=4,
        num_memory_slots=32,
        max_seq_len=256,
        ffn_mult=3.0,
        chunk_size=64,
        dropout=0.0,
    ),
    "small": MMRecConfig(
        vocab_size=256,
        dim=512,
        num_layers=8,
        num_heads=8,
        num_memory_slots=64,
        max_seq_len=2048,
        ffn_mult=3.0,
        chunk_size=128,
        dropout=0.0,
    ),
    "base": MMRecConfig(
        vocab_size=256,
        dim=1024,
        num_layers=12,
        num_heads=16,
        num_memory_slots=128,
        max_seq_len=8192,
        ffn_mult=3.0,
        chunk_size=128,
        dropout=0.1,
    ),
    "large": MMRecConfig(
        vocab_size=256,
        dim=3072,
        num_layers=20,
        num_heads=24,
        num_memory_slots=256,
        max_seq_len=32768,
        ffn_mult=3.0,
        chunk_size=256,
        dropout=0.1,
    ),
}
