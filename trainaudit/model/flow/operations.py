"""Operations by category, once for the whole flow model: what keeps a token tensor's
positions, what moves them, what keeps an object the same object. The transfer functions
(``tensors``, ``library``, ``calls``) read these tables; an operation in none of them is
unknown, and its result an opaque value with an identity of its own.

Positions move only through the operations ``tensors`` models one by one: slices along
the sequence axis, ``roll``, ``F.pad`` / ``cat`` of a slice, and a slice written into a
copy or a filled tensor (``labels[:-1] = ids[1:]``).
"""

from __future__ import annotations

# Tensor methods that keep every value at its position (a copy, a dtype, a device; the
# shape may change around the sequence axis: a view, a squeeze, a batch axis added).
POSITION_KEEPING_METHODS = frozenset({
    "clone", "contiguous", "detach", "long", "int", "float", "to", "cuda", "cpu", "type",
    "view", "reshape", "pin_memory", "numpy", "tolist", "view_as", "reshape_as", "type_as",
    "squeeze", "unsqueeze", "flatten", "astype", "copy", "tensor", "half", "bfloat16",
    "double", "short", "clamp", "clip", "requires_grad_"})
# Of those, the ones that make a new tensor (writes into it leave the source alone).
COPY_METHODS = frozenset({"clone", "copy", "detach"})
# Methods of a model, module or loader that return the object itself.
SAME_OBJECT_METHODS = frozenset({"to", "cuda", "cpu", "train", "eval", "half", "float",
                                 "bfloat16", "double", "requires_grad_", "share_memory", "type",
                                 "apply", "compile"})
# Library callables that return their first argument's object, wrapped: a model under a
# parallel wrapper or a compiler.
MODEL_WRAPPERS = frozenset({
    "torch.nn.parallel.DistributedDataParallel", "torch.nn.DataParallel", "torch.compile",
    "peft.get_peft_model", "torch.nn.parallel.DataParallel",
    "torch.distributed.fsdp.FullyShardedDataParallel"})
# Library callables whose iteration yields the elements of their first argument (all, fewer,
# or again): a progress bar, a list, ``islice``.
ITERATION_PASS_THROUGH = frozenset({
    "tqdm.tqdm", "tqdm.auto.tqdm", "builtins.iter", "builtins.list", "builtins.tuple",
    "builtins.sorted", "itertools.islice", "itertools.cycle"})
# Methods of framework objects that hand their arguments back, prepared.
PASS_ARGUMENTS = frozenset({"prepare", "prepare_model", "prepare_data_loader", "setup",
                            "setup_dataloaders"})
