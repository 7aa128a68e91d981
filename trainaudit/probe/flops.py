"""FLOPs of matmul-like calls from shapes alone, and whether they ran in a lower precision.

Each counter gets the call's arguments and its result, so the arithmetic is a
few multiplications: no tracing, no extra kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

LOW_PRECISION = (torch.bfloat16, torch.float16)

FlopCounter = Callable[[Sequence[Any], Mapping[str, Any], Any], int]


def _arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _linear(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    weight = _arg(args, kwargs, 1, "weight")
    return 2 * int(out.numel()) * int(weight.shape[-1])


def _matmul(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    first = _arg(args, kwargs, 0, "input")
    return 2 * max(int(out.numel()), 1) * int(first.shape[-1])


def _add_matmul(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    # addmm(bias, m1, m2), baddbmm(input, b1, b2), addbmm(input, b1, b2): m1 @ m2 is the cost.
    m1 = args[1] if len(args) > 1 else kwargs.get("mat1", kwargs.get("batch1"))
    m2 = args[2] if len(args) > 2 else kwargs.get("mat2", kwargs.get("batch2"))
    return 2 * int(m1.numel()) * int(m2.shape[-1])


def _conv(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    weight = _arg(args, kwargs, 1, "weight")
    return 2 * int(out.numel()) * (int(weight.numel()) // max(int(weight.shape[0]), 1))


def _conv_transpose(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    source = _arg(args, kwargs, 0, "input")
    weight = _arg(args, kwargs, 1, "weight")
    return 2 * int(source.numel()) * (int(weight.numel()) // max(int(weight.shape[0]), 1))


def _attention(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    query = _arg(args, kwargs, 0, "query")
    key = _arg(args, kwargs, 1, "key")
    value = _arg(args, kwargs, 2, "value")
    length, width = int(query.shape[-2]), int(query.shape[-1])
    batch = int(query.numel()) // max(length * width, 1)
    return 2 * batch * length * int(key.shape[-2]) * (width + int(value.shape[-1]))


def _multi_head_attention(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    # F.multi_head_attention_forward(query, key, value, embed_dim, ...): (L, N, E) layout.
    query, key = args[0], args[1]
    width = int(query.shape[-1])
    length, source = int(query.shape[0]), int(key.shape[0])
    batch = int(query.shape[1]) if query.dim() == 3 else 1
    projections = 2 * batch * width * width * (2 * length + 2 * source)
    return projections + 4 * batch * length * source * width


def _einsum(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    equation = args[0] if args else kwargs.get("equation", "")
    operands = list(args[1:])
    if len(operands) == 1 and isinstance(operands[0], list | tuple):
        operands = list(operands[0])
    tensors = [op for op in operands if isinstance(op, torch.Tensor)]
    if not isinstance(equation, str) or not tensors:
        return 0
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if "..." in equation or len(inputs) != len(tensors):
        return 2 * max(int(t.numel()) for t in tensors)
    sizes: dict[str, int] = {}
    for letters, tensor in zip(inputs, tensors, strict=True):
        for letter, size in zip(letters, tensor.shape, strict=False):
            sizes[letter] = int(size)
    return 2 * math.prod(sizes.values())


def _first_tensor(args: Sequence[Any]) -> Any | None:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, torch.Tensor):
                    return item
    return None


def runs_in_low_precision(args: Sequence[Any]) -> bool:
    """Whether a matmul-like call computes in bf16/fp16: its inputs are, or autocast is on."""
    first = _first_tensor(args)
    if first is None:
        return False
    if first.dtype in LOW_PRECISION:
        return True
    device = first.device.type
    try:
        return bool(torch.is_autocast_enabled(device)
                    and torch.get_autocast_dtype(device) in LOW_PRECISION)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return False


def matmul_counters() -> dict[Any, FlopCounter]:
    """The matmul-like callables a TorchFunctionMode sees, keyed by identity."""
    table: dict[Any, FlopCounter] = {F.linear: _linear}
    for name in ("matmul", "mm", "bmm"):
        table[getattr(torch, name)] = _matmul
        table[getattr(torch.Tensor, name)] = _matmul
    table[torch.Tensor.__matmul__] = _matmul
    table[torch.Tensor.__rmatmul__] = _matmul
    for name in ("addmm", "baddbmm", "addbmm"):
        table[getattr(torch, name)] = _add_matmul
        table[getattr(torch.Tensor, name)] = _add_matmul
    for name in ("conv1d", "conv2d", "conv3d"):
        table[getattr(F, name)] = _conv
    for name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        table[getattr(F, name)] = _conv_transpose
    table[F.scaled_dot_product_attention] = _attention
    table[F.multi_head_attention_forward] = _multi_head_attention
    table[torch.einsum] = _einsum
    return table
