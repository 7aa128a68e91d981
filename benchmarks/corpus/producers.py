"""Producer parts: where the token ids come from and where the labels are made (``data.py``).

A producer is three choices: a *source* (how a list of token ids is made: random
ints, a character tokenizer class, a loop of appends, an encode helper, one packed
stream), a *tensor* maker (``torch.tensor``/``torch.as_tensor``/``torch.from_numpy``)
and a *formula* (how labels are made from the ids: clone + slice, ``full_like`` +
slice, a roll, an ``x``/``y`` pair), placed in a *container* (a map-style or
iterable data set returning a dict or a tuple, a collate function, a collator
class, a batch function or a batch generator).

Every formula has a shifted form (labels[t] = ids[t + 1]) and, where the spelling
allows one, an unshifted form (labels = ids, the loss shifts).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.corpus.text import block

SOURCES = ("randint", "random_ints", "char_class", "tokenizer_attr", "append_loop", "encode_helper",
           "packed_stream")
TENSORS = ("native", "tensor", "as_tensor", "from_numpy")
# "native": the source already made tensors (torch.randint), nothing converts them.
# Formulas in SHIFT_ONLY have no unshifted spelling (their clean twin shifts at the producer).
FORMULAS = ("clone_slice", "full_like_slice", "roll_masked", "pair_slices",
            "roll_unmasked", "pad_mismatch")
SHIFT_ONLY = frozenset({"roll_masked", "roll_unmasked", "pad_mismatch"})
# The label code each formula adds whatever the twin (beside TA102 on a double shift).
FORMULA_CODES = {"roll_unmasked": "TA101", "pad_mismatch": "TA104"}
# TA103 (a roll whose wrap is neutralised) is only reported where TA102 is not.
ADVICE_WHEN_SINGLE = {"roll_masked": "TA103"}
CONTAINERS = ("map_dict", "map_tuple", "iterable_dict", "iterable_tuple", "collate_fn",
              "collator_class", "batch_fn", "batch_gen")
DICT_CONTAINERS = frozenset({"map_dict", "iterable_dict", "collate_fn", "collator_class"})
ITERABLE_CONTAINERS = frozenset({"iterable_dict", "iterable_tuple"})
# Containers that make whole batches themselves (no DataLoader).
DIRECT_CONTAINERS = frozenset({"batch_fn", "batch_gen"})
# Containers whose formula runs on a (batch, time) tensor.
BATCHED_CONTAINERS = frozenset({"collate_fn", "collator_class", "batch_fn", "batch_gen"})


@dataclass(frozen=True)
class ProducerChoice:
    """One producer: the four choices above."""

    source: str
    tensor: str
    formula: str
    container: str


@dataclass(frozen=True)
class Produced:
    """What the rest of the project needs to know about ``data.py``."""

    text: str
    batch: str  # "dict" or "tuple"
    dataset_class: str | None  # map/iterable data sets: the class to instantiate with (split)
    collate: str | None  # the collate_fn expression for the DataLoader, if any
    direct: str | None  # batch_fn / batch_gen: the function to call with (split)
    imports: tuple[str, ...]  # names train code imports from data.py


HEADER = """\
import random

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

VOCAB = 64
BLOCK = 16
BATCH = 4
PAD_ID = 0
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"


def make_text(split, size=3000):
    rng = random.Random(0 if split == "train" else 1)
    return "".join(rng.choice(ALPHABET) for _ in range(size))
"""

# How a list of token-id lists (one per example, BLOCK + 1 long) is made; ``sequences``.
SOURCE_DEFS = {
    "randint": """\
def make_sequences(split, count=48):
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    return torch.randint(0, VOCAB, (count, BLOCK + 1), generator=generator)
""",
    "random_ints": """\
def make_sequences(split, count=48):
    rng = random.Random(0 if split == "train" else 1)
    return [[rng.randrange(VOCAB) for _ in range(BLOCK + 1)] for _ in range(count)]
""",
    "char_class": """\
class CharTokenizer:
    def __init__(self, text):
        chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.itos = {i: c for c, i in self.stoi.items()}

    def encode(self, text):
        return [self.stoi.get(c, 0) for c in text]


def make_sequences(split):
    text = make_text(split)
    tokenizer = CharTokenizer(ALPHABET + text)
    step = BLOCK + 1
    return [tokenizer.encode(text[i:i + step]) for i in range(0, len(text) - step, step)]
""",
    # The data set holds the tokenizer and encodes in __init__ (the layout SPEC §1 reviews).
    "tokenizer_attr": """\
class CharTokenizer:
    def __init__(self, alphabet):
        self.stoi = {c: i for i, c in enumerate(alphabet)}
        self.vocab_size = len(self.stoi)

    def encode(self, text):
        ids = []
        for ch in text:
            ids.append(self.stoi.get(ch, 0))
        return ids


def make_chunks(split):
    text = make_text(split)
    step = BLOCK + 1
    return [text[i:i + step] for i in range(0, len(text) - step, step)]


def make_sequences(split):
    tokenizer = CharTokenizer(ALPHABET)
    return [tokenizer.encode(chunk) for chunk in make_chunks(split)]
""",
    "append_loop": """\
def encode(text):
    ids = []
    for ch in text:
        ids.append(ALPHABET.index(ch) + 1)
    return ids


def make_sequences(split):
    text = make_text(split)
    step = BLOCK + 1
    sequences = []
    for start in range(0, len(text) - step, step):
        sequences.append(encode(text[start:start + step]))
    return sequences
""",
    "encode_helper": """\
def encode(text):
    return [ord(ch) % VOCAB for ch in text]


def make_sequences(split):
    text = make_text(split)
    step = BLOCK + 1
    chunks = [text[i:i + step] for i in range(0, len(text) - step, step)]
    return [encode(chunk) for chunk in chunks]
""",
    "packed_stream": """\
def encode(text):
    return [ALPHABET.index(ch) for ch in text]


def make_sequences(split):
    return encode(make_text(split))
""",
}

TENSOR_EXPR = {
    "native": "{0}",
    "tensor": "torch.tensor({0}, dtype=torch.long)",
    "as_tensor": "torch.as_tensor({0}, dtype=torch.long)",
    "from_numpy": "torch.from_numpy(np.array({0}, dtype=np.int64))",
}


# One token stream for a batch function, from what the source makes.
STREAM_BODY = {
    "randint": "    return make_sequences(split).flatten()\n",
    "packed_stream": "    return make_sequences(split)\n",
}
STREAM_OF_LISTS = "    return [token for seq in make_sequences(split) for token in seq]\n"


def formula_lines(formula: str, shifted: bool, batched: bool, ids: str = "ids"
                  ) -> tuple[list[str], str, str]:
    """Lines that make the labels from ``ids``, and the names of the inputs and the labels."""
    p = ":, " if batched else ""
    dim = 1 if batched else 0
    if formula == "clone_slice":
        lines = [f"labels = {ids}.clone()"]
        if shifted:
            lines += [f"labels[{p}:-1] = {ids}[{p}1:]", f"labels[{p}-1] = -100"]
        return lines, ids, "labels"
    if formula == "full_like_slice":
        copy = f"labels[{p}:-1] = {ids}[{p}1:]" if shifted else f"labels[{p}:] = {ids}[{p}:]"
        return [f"labels = torch.full_like({ids}, -100)", copy], ids, "labels"
    if formula == "pair_slices":
        target = f"{ids}[{p}1:]" if shifted else f"{ids}[{p}:-1]"
        return [f"x = {ids}[{p}:-1]", f"y = {target}"], "x", "y"
    assert shifted, f"{formula} has no unshifted spelling"
    if formula == "roll_masked":
        return [f"labels = torch.roll({ids}, shifts=-1, dims={dim})",
                f"labels[{p}-1] = -100"], ids, "labels"
    if formula == "roll_unmasked":
        return [f"labels = torch.roll({ids}, shifts=-1, dims={dim})"], ids, "labels"
    if formula == "pad_mismatch":
        return [f"labels = {ids}.clone()", f"labels[{p}:-1] = {ids}[{p}1:]",
                f"labels[{p}-1] = PAD_ID"], ids, "labels"
    raise ValueError(formula)


def _returned(batch: str, inputs: str, labels: str, label_key: str) -> str:
    if batch == "dict":
        return f'{{"input_ids": {inputs}, "{label_key}": {labels}}}'
    return f"{inputs}, {labels}"


def render_producer(choice: ProducerChoice, shifted: bool, label_key: str = "labels") -> Produced:
    """``data.py`` for one producer; ``label_key`` names the labels in a dict batch."""
    container = choice.container
    batch = "dict" if container in DICT_CONTAINERS else "tuple"
    batched = container in BATCHED_CONTAINERS
    make = TENSOR_EXPR[choice.tensor]
    lines, inputs, labels = formula_lines(choice.formula, shifted, batched)
    out = _returned(batch, inputs, labels, label_key)
    packed = choice.source == "packed_stream"
    parts = [HEADER, SOURCE_DEFS[choice.source]]
    if container in DIRECT_CONTAINERS:
        parts.append(_direct(container, choice.source, make, lines, out))
        direct = "get_batch" if container == "batch_fn" else "batches"
        return Produced(_join(parts), batch, None, None, direct, (direct,))
    # A data set over examples of BLOCK + 1 tokens; packed streams are cut into blocks once.
    if packed:
        init = (f"        stream = {make.format('make_sequences(split)')}\n"
                "        count = len(stream) // (BLOCK + 1)\n"
                "        self.blocks = stream[: count * (BLOCK + 1)].view(count, BLOCK + 1)\n")
        size, item = "self.blocks.size(0)", "self.blocks[idx]"
    elif choice.source == "tokenizer_attr":
        init = ("        self.tokenizer = CharTokenizer(ALPHABET)\n"
                "        self.sequences = [self.tokenizer.encode(chunk) for chunk in make_chunks(split)]\n")
        size, item = "len(self.sequences)", make.format("self.sequences[idx]")
    else:
        init = "        self.sequences = make_sequences(split)\n"
        size, item = "len(self.sequences)", make.format("self.sequences[idx]")
    if container in ("collate_fn", "collator_class"):
        parts.append(_map_set("TokenDataset", init, size, [f"ids = {item}"], "ids"))
        parts.append(_collate(container, lines, out))
        collate = "collate_batch" if container == "collate_fn" else "LMCollator()"
        name = "collate_batch" if container == "collate_fn" else "LMCollator"
        return Produced(_join(parts), batch, "TokenDataset", collate, None,
                        ("TokenDataset", name))
    body = [f"ids = {item}", *lines]
    if container in ITERABLE_CONTAINERS:
        parts.append(_iterable_set("TokenStream", init, size, body, out))
        return Produced(_join(parts), batch, "TokenStream", None, None, ("TokenStream",))
    parts.append(_map_set("TextDataset", init, size, body, out))
    return Produced(_join(parts), batch, "TextDataset", None, None, ("TextDataset",))


def _join(parts: list[str]) -> str:
    return "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"


def _map_set(name: str, init: str, size: str, body: list[str], out: str) -> str:
    return (f"class {name}(Dataset):\n"
            "    def __init__(self, split):\n" + init + "\n"
            "    def __len__(self):\n"
            f"        return {size}\n\n"
            "    def __getitem__(self, idx):\n" + block(body, 8) + f"        return {out}\n")


def _iterable_set(name: str, init: str, size: str, body: list[str], out: str) -> str:
    return (f"class {name}(IterableDataset):\n"
            "    def __init__(self, split):\n" + init + "\n"
            "    def __iter__(self):\n"
            f"        for idx in range({size}):\n" + block(body, 12)
            + f"            yield {out}\n")


def _collate(container: str, lines: list[str], out: str) -> str:
    body = ["ids = torch.stack(items)", *lines]
    if container == "collate_fn":
        return "def collate_batch(items):\n" + block(body, 4) + f"    return {out}\n"
    return ("class LMCollator:\n"
            "    def __init__(self, pad_id=PAD_ID):\n"
            "        self.pad_id = pad_id\n\n"
            "    def __call__(self, items):\n" + block(body, 8) + f"        return {out}\n")


def _direct(container: str, source: str, make: str, lines: list[str], out: str) -> str:
    setup = [f"data = {make.format('make_stream(split)')}",
             "generator = torch.Generator().manual_seed(0)"]
    draw = ["starts = torch.randint(len(data) - BLOCK - 1, (BATCH,), generator=generator)",
            "ids = torch.stack([data[i:i + BLOCK + 1] for i in starts.tolist()])", *lines]
    stream = "def make_stream(split):\n" + STREAM_BODY.get(source, STREAM_OF_LISTS)
    if container == "batch_fn":
        return (stream + "\n\ndef get_batch(split):\n" + block(setup + draw, 4)
                + f"    return {out}\n")
    return (stream + "\n\ndef batches(split):\n" + block(setup, 4) + "    while True:\n"
            + block(draw, 8) + f"        yield {out}\n")
