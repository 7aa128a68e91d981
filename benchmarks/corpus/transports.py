"""Transport parts: how batches travel from the producer to the step.

A transport is how the loaders are made (inline ``DataLoader``s, a factory in
``loaders.py`` returning 2–4 loaders as a tuple, a dict or a list read by index,
or the producer's own batch function) and how the step loop walks them
(``enumerate``, ``itertools.islice``, ``zip`` with a range, a tqdm-like
pass-through generator, ``accelerator.prepare``). The device move is in
``consumers.step_lines``.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.corpus.producers import Produced

LOADERS = ("inline", "inline_kwargs", "factory_tuple", "factory_dict", "factory_index", "factory_four", "direct")
WRAPPERS = ("plain", "enumerate", "islice", "zip_range", "progress", "accelerate")

PROGRESS_FILE = '''\
def progress(iterable, desc=""):
    """A pass-through stand-in for a progress bar."""
    for item in iterable:
        yield item
'''

_FACTORY = """\
from torch.utils.data import DataLoader

{data_import}

BATCH = 4


def create_data_loaders(batch_size=BATCH, num_workers=0):
{sets}
    train_loader = DataLoader(train_set, batch_size=batch_size{train_kw}, num_workers=num_workers,
                              pin_memory=False{collate})
{others}
    return {returned}
"""


@dataclass(frozen=True)
class LoaderSetup:
    """Lines (in ``main``) that bind ``train_loader`` and ``val_loader``; what they need."""

    lines: list[str]
    imports: set[str]
    files: dict[str, str]


def _shuffle(produced: Produced) -> str:
    # An IterableDataset takes no shuffle.
    return "" if produced.dataset_class == "TokenStream" else ", shuffle=True, drop_last=True"


def loader_setup(loader: str, produced: Produced) -> LoaderSetup:
    """How the project makes its loaders."""
    if loader == "direct":
        assert produced.direct is not None
        if produced.direct == "get_batch":
            # No loader: the loop calls get_batch itself.
            return LoaderSetup(["train_loader = None",
                                'val_loader = [get_batch("val") for _ in range(2)]'],
                               {"from data import get_batch"}, {})
        return LoaderSetup(['train_loader = batches("train")',
                            'val_loader = islice(batches("val"), 2)'],
                           {"from data import batches", "from itertools import islice"}, {})
    dataset = produced.dataset_class
    assert dataset is not None
    collate = f", collate_fn={produced.collate}" if produced.collate else ""
    data_import = "from data import " + ", ".join(produced.imports)
    if loader == "inline":
        return LoaderSetup([
            f'train_set = {dataset}("train")',
            f'val_set = {dataset}("val")',
            f"train_loader = DataLoader(train_set, batch_size=BATCH{_shuffle(produced)}, "
            f"num_workers=0{collate})",
            f"val_loader = DataLoader(val_set, batch_size=BATCH{collate})",
        ], {"from torch.utils.data import DataLoader", data_import}, {})
    if loader == "inline_kwargs":
        return LoaderSetup([
            f'train_set = {dataset}(split="train")',
            f'val_set = {dataset}(split="val")',
            f"train_loader = DataLoader(dataset=train_set, batch_size=BATCH{_shuffle(produced)}, "
            "num_workers=0, pin_memory=False, persistent_workers=False, "
            f"generator=torch.Generator().manual_seed(0){collate})",
            f"val_loader = DataLoader(dataset=val_set, batch_size=BATCH, shuffle=False{collate})",
        ], {"from torch.utils.data import DataLoader", data_import}, {})
    names = {"factory_tuple": ["train", "val"], "factory_dict": ["train", "val"],
             "factory_index": ["train", "val", "test"],
             "factory_four": ["train", "val", "test", "calib"]}[loader]
    sets = "\n".join(f'    {name}_set = {dataset}("{"train" if name == "train" else "val"}")'
                     for name in names)
    others = "\n".join(f"    {name}_loader = DataLoader({name}_set, batch_size=batch_size{collate})"
                       for name in names[1:])
    loaders = [f"{name}_loader" for name in names]
    if loader == "factory_dict":
        returned = "{" + ", ".join(f'"{n}": {n}_loader' for n in names) + "}"
        calls = ["loaders = create_data_loaders(batch_size=BATCH)",
                 'train_loader = loaders["train"]', 'val_loader = loaders["val"]']
    elif loader == "factory_index":
        returned = "[" + ", ".join(loaders) + "]"
        calls = ["loaders = create_data_loaders(BATCH)", "train_loader = loaders[0]",
                 "val_loader = loaders[1]"]
    elif loader == "factory_four":
        returned = ", ".join(loaders)
        calls = ["train_loader, val_loader, _test_loader, _calib_loader = "
                 "create_data_loaders(batch_size=BATCH)"]
    else:
        returned = ", ".join(loaders)
        calls = ["train_loader, val_loader = create_data_loaders(batch_size=BATCH)"]
    text = _FACTORY.format(data_import=data_import, sets=sets, train_kw=_shuffle(produced),
                           collate=collate, others=others, returned=returned)
    return LoaderSetup(calls, {"from loaders import create_data_loaders"}, {"loaders.py": text})


def loop_header(wrapper: str, loader_ref: str, produced: Produced) -> tuple[list[str], set[str]]:
    """The ``for`` line of the step loop (and, unindented, a first body line for a batch
    function)."""
    if produced.direct == "get_batch":
        return ["for step in range(MAX_STEPS):", 'batch = get_batch("train")'], {
            "from data import get_batch"}
    if wrapper == "enumerate":
        return [f"for step, batch in enumerate({loader_ref}):"], set()
    if wrapper == "islice":
        return [f"for batch in islice({loader_ref}, MAX_STEPS):"], {"from itertools import islice"}
    if wrapper == "zip_range":
        return [f"for step, batch in zip(range(MAX_STEPS), {loader_ref}):"], set()
    if wrapper == "progress":
        return [f'for batch in progress({loader_ref}, desc="train"):'], {
            "from progress import progress"}
    return [f"for batch in {loader_ref}:"], set()


def accelerate_lines() -> tuple[list[str], set[str]]:
    """``accelerator.prepare`` of the model, the optimizer and the training loader."""
    return (["accelerator = Accelerator()",
             "model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)"],
            {"from accelerate import Accelerator"})
