"""Call semantics of the flow model: checked functions and classes (parameters bound per
call site), instances and their methods, and the library calls that matter to labels
(tensor ops, losses, loaders, Hugging Face models and trainers)."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainaudit.model.flow import library, lightning
from trainaudit.model.flow.functions import call_function, closure_values, instantiate
from trainaudit.model.flow.operations import (
    PASS_ARGUMENTS,
    POSITION_KEEPING_METHODS,
    SAME_OBJECT_METHODS,
)
from trainaudit.model.flow.tensors import as_tokens
from trainaudit.model.flow.values import (
    UNKNOWN,
    Arguments,
    BoundMethod,
    CausalLM,
    ClassValue,
    Const,
    FunctionValue,
    Instance,
    Library,
    ListOf,
    Loader,
    Logits,
    LossFunction,
    LossValue,
    MaskValue,
    OneOf,
    Opaque,
    Partial,
    Record,
    Tokens,
    Unknown,
    Value,
    constant_key_of,
    join,
    join_all,
    mask_of,
    options_of,
)

if TYPE_CHECKING:
    from trainaudit.model.flow.frame import Evaluator, Frame

BUILTINS = {"enumerate", "zip", "iter", "next", "list", "tuple", "dict", "len", "range",
            "isinstance", "getattr", "sorted", "reversed", "super", "print", "int", "float",
            "str", "min", "max", "sum", "any", "all", "map", "filter", "type"}
# A keyword that passes the token ids to a model.
INPUT_KEYWORDS = ("input_ids", "idx", "input", "inputs", "x", "tokens", "src")


def constant_key(node: ast.expr) -> object | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int) \
            and not isinstance(node.value, bool):
        return node.value
    return None


def mask_value(value: Value, target: ast.AST, frame: Frame) -> MaskValue | None:
    """What a value written into labels is, as a mask: a number or a named token id."""
    if isinstance(value, Tokens | Logits | Record | ListOf):
        return None
    return mask_of(value)


_INT_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


# -- calls --------------------------------------------------------------------------------


def call(interp: Evaluator, node: ast.Call, frame: Frame) -> Value:
    args: list[Value] = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            interp.eval(arg.value, frame)
            args.append(UNKNOWN)
        else:
            args.append(interp.eval(arg, frame))
    # ``**batch`` with a batch of several alternatives: one call per alternative.
    variants: list[dict[str, Value]] = [{}]
    for kw in node.keywords:
        value = interp.eval(kw.value, frame)
        if kw.arg is not None:
            for kwargs in variants:
                kwargs[kw.arg] = value
            continue
        options = value.options if isinstance(value, OneOf) else (value,)
        variants = [_spread(dict(kwargs), option) for kwargs in variants for option in options]
    callee: Value
    receiver: Value | None = None
    if isinstance(node.func, ast.Attribute):
        receiver = interp.eval(node.func.value, frame)
    else:
        callee = interp.eval(node.func, frame)
    result: Value | None = None
    for kwargs in variants:
        if receiver is not None:
            assert isinstance(node.func, ast.Attribute)
            got = method_call(interp, receiver, node.func.attr, args, kwargs, node, frame)
        else:
            got = apply(interp, callee, args, kwargs, node, frame)
        result = got if result is None else join(result, got)
    return result if result is not None else UNKNOWN


def _spread(kwargs: dict[str, Value], value: Value) -> dict[str, Value]:
    if isinstance(value, Record):
        kwargs.update((str(k), v) for k, v in value.items)
        if value.base is not None:
            kwargs["**"] = value.base
    else:
        kwargs["**"] = value
    return kwargs


def apply(interp: Evaluator, callee: Value, args: list[Value], kwargs: dict[str, Value],
          node: ast.Call, frame: Frame) -> Value:
    depth = frame.depth + 1
    if isinstance(callee, OneOf):
        return join_all(apply(interp, option, args, kwargs, node, frame) for option in callee.options)
    if isinstance(callee, FunctionValue):
        free = closure_values(interp, callee) if callee.free or "." in callee.ref.qualname else ()
        return call_function(interp, callee.ref, None, args, kwargs, node, depth, free=free)
    if isinstance(callee, BoundMethod):
        return call_function(interp, callee.function, callee.receiver, args, kwargs, node, depth)
    if isinstance(callee, ClassValue):
        return instantiate(interp, callee.ref, args, kwargs, node, depth)
    if isinstance(callee, Instance):
        for name in ("__call__", "forward"):
            method = interp.program.method(callee.cls, name)
            if method is not None:
                result = call_function(interp, method, callee, args, kwargs, node, depth)
                return aligned_outputs(result, args, kwargs) if name == "forward" else result
        return Opaque((*callee.identity, "called"))
    if isinstance(callee, Partial):
        merged = dict(callee.kwargs)
        merged.update(kwargs)
        return apply(interp, callee.function, [*callee.args, *args], merged, node, frame)
    if isinstance(callee, LossFunction):
        logits = args[0] if args else kwargs.get("input", UNKNOWN)
        labels = args[1] if len(args) > 1 else kwargs.get("target", UNKNOWN)
        site = frame.module.site(node)
        interp.listener.loss(site, logits, labels, callee.ignore, callee.per_token, False,
                             library.argument_roots(node, frame.module))
        return LossValue(site, callee.per_token)
    if isinstance(callee, CausalLM):
        return library.causal_call(interp, callee, args, kwargs, node, frame)
    if isinstance(callee, Library):
        return library.call(interp, callee.qualname, args, kwargs, node, frame)
    if isinstance(callee, Opaque):
        return model_output(args, kwargs, callee, node, frame)
    return UNKNOWN


def model_output(args: list[Value], kwargs: dict[str, Value], callee: Value, node: ast.Call,
                 frame: Frame) -> Value:
    """An unknown callable applied to token ids: outputs aligned with them (a model).
    A tokenizer or processor (made by a ``*Tokenizer`` / ``*Processor`` class) is no
    model: what it returns is an unknown record of its own."""
    if isinstance(callee, Opaque) and _made_by_tokenizer(callee):
        return Opaque(("encoded", frame.module.name, node.lineno, node.col_offset))
    outputs = fed_outputs(args, kwargs)
    if outputs is not None:
        return outputs
    return Opaque(("called", frame.module.name, node.lineno, node.col_offset))


def fed_outputs(args: list[Value], kwargs: dict[str, Value]) -> Value | None:
    """A model's outputs for what it is fed (the first argument or an input keyword):
    logits aligned with each token tensor it may be (hidden states stay what they are);
    None where no alternative is a token tensor."""
    first = args[0] if args else next((kwargs[k] for k in INPUT_KEYWORDS if k in kwargs), None)
    if first is None:
        return None
    outputs: list[Value] = []
    for option in options_of(first):
        tokens = as_tokens(option) if not isinstance(option, Logits) else None
        if isinstance(option, Logits):
            outputs.append(option)
        elif tokens is not None:
            outputs.append(Logits(tokens, 0, tokens.ndim + 1 if tokens.ndim is not None else None))
        else:
            outputs.append(UNKNOWN)
    if all(isinstance(o, Unknown) for o in outputs):
        return None
    return join_all(outputs)


def aligned_outputs(result: Value, args: list[Value], kwargs: dict[str, Value]) -> Value:
    """A checked module's ``forward`` on token ids whose outputs the flow cannot tie to
    what it was fed (a recurrence, chunks joined again, a norm it cannot read): its outputs
    are taken as aligned with the tokens it was fed, the convention the loss site itself
    states when it pairs ``logits[:, :-1]`` with ``labels[:, 1:]``. Outputs tied to one of
    its arguments (shifted or not) are kept as they are."""
    logits = fed_outputs(args, kwargs)
    if logits is None:
        return result
    fed = {t.stream for v in (*args, *kwargs.values()) for o in options_of(v)
           if (t := _fed_tokens(o)) is not None}

    def aligned(option: Value) -> Value:
        if isinstance(option, OneOf):
            return join_all(aligned(inner) for inner in option.options)
        if isinstance(option, Logits):
            return option if option.inputs.stream in fed else logits
        if isinstance(option, Unknown | Opaque):
            return logits
        if isinstance(option, Record):
            key: object = "logits" if option.kind == "dict" else 0
            item = option.get(key)
            if item is not None and not isinstance(item, Record | Const):
                return option.set(key, aligned(item))
        return option

    return join_all(aligned(option) for option in options_of(result))


def _fed_tokens(value: Value) -> Tokens | None:
    if isinstance(value, Logits):
        return value.inputs
    return as_tokens(value) if isinstance(value, Tokens | Opaque) else None


def _made_by_tokenizer(value: Opaque) -> bool:
    key = value.key
    return len(key) > 1 and key[0] == "lib" and isinstance(key[1], str) and any(
        word in key[1] for word in ("Tokenizer", "Processor", "tokenizer"))


def method_call(interp: Evaluator, receiver: Value, name: str, args: list[Value],
                kwargs: dict[str, Value], node: ast.Call, frame: Frame) -> Value:
    depth = frame.depth + 1
    if isinstance(receiver, OneOf):
        return join_all(method_call(interp, option, name, args, kwargs, node, frame) for option in receiver.options)
    if isinstance(receiver, Library):
        return apply(interp, interp.resolve_qualified(f"{receiver.qualname}.{name}", frame.module.path), args,
                     kwargs, node, frame)
    if isinstance(receiver, Instance):
        method = interp.program.method(receiver.cls, name)
        if method is not None:
            return call_function(interp, method, receiver, args, kwargs, node, depth)
        held = receiver.attr(name)
        if held is not None:
            return apply(interp, held, args, kwargs, node, frame)
        return receiver if name in SAME_OBJECT_METHODS else Opaque((*receiver.identity, "call", name))
    if isinstance(receiver, ClassValue):
        method = interp.program.method(receiver.ref, name)
        if method is not None:
            return call_function(interp, method, None, args, kwargs, node, depth)
        return Opaque(("classcall", receiver.ref, name))
    if isinstance(receiver, CausalLM | Loader) and name in SAME_OBJECT_METHODS:
        return receiver
    if isinstance(receiver, CausalLM) and name == "forward":
        return library.causal_call(interp, receiver, args, kwargs, node, frame)
    if isinstance(receiver, Record):
        if name in ("to", "cuda", "copy", "pin_memory"):
            return receiver
        if name in ("get", "pop") and args:
            key = constant_key_of(args[0])
            found = receiver.get(key) if key is not None else None
            if name == "pop" and key is not None and isinstance(node.func, ast.Attribute):
                interp.bind(node.func.value, receiver.without(key), frame)  # the key is gone
            return found if found is not None else Opaque((name, frame.module.name, node.lineno))
        return Opaque(("record-call", frame.module.name, node.lineno, node.col_offset))
    if isinstance(receiver, Arguments):
        return library.parser_method(interp, receiver, name, args, kwargs, node, frame)
    if isinstance(receiver, LossValue):
        return receiver if name in POSITION_KEEPING_METHODS else Opaque(("loss-call", name, node.lineno))
    if name in ("fit", "validate", "test") and lightning.is_trainer(receiver):
        return lightning.run(interp, name, args, kwargs, node, frame)
    if name in PASS_ARGUMENTS and args:  # accelerator.prepare(model, opt, loader, ...)
        return args[0] if len(args) == 1 else Record("tuple", tuple(enumerate(args)))
    if isinstance(receiver, Tokens | Logits | Opaque):
        return library.tensor_method(interp, receiver, name, args, kwargs, node, frame)
    return Opaque(("method", frame.module.name, node.lineno, node.col_offset))


def attribute(interp: Evaluator, value: Value, name: str, node: ast.Attribute,
              frame: Frame) -> Value:
    if isinstance(value, OneOf):
        return join_all(attribute(interp, option, name, node, frame) for option in value.options)
    if isinstance(value, Library):
        return interp.resolve_qualified(f"{value.qualname}.{name}", frame.module.path)
    if isinstance(value, Instance):
        held = value.attr(name)
        if held is not None:
            return held
        method = interp.program.method(value.cls, name)
        if method is not None:
            return BoundMethod(method, value)
        return Opaque((*value.identity, "attr", name))
    if isinstance(value, ClassValue):
        method = interp.program.method(value.ref, name)
        return FunctionValue(method) if method is not None else Opaque(("cls", value.ref, name))
    if isinstance(value, Record):
        field_value = value.get(name)
        return field_value if field_value is not None else Opaque(
            ("attr", frame.module.name, node.lineno, name))
    if isinstance(value, Logits):
        return value if name in ("logits", "data") else Opaque(("logits-attr", name))
    if isinstance(value, CausalLM):
        return value if name in ("module", "_orig_mod", "base_model") else Opaque(
            ("model-attr", value.site, name))
    if isinstance(value, Loader) and name == "dataset":
        return value.dataset
    if isinstance(value, Opaque):
        return value.child("attr", name)
    if isinstance(value, Tokens):
        return Opaque(("tensor-attr", value.stream.key, name))
    return UNKNOWN


def binary(interp: Evaluator, node: ast.BinOp, left: Value, right: Value,
           frame: Frame) -> Value:
    if isinstance(node.op, ast.Mult):
        for loss, mask in ((left, right), (right, left)):
            if isinstance(loss, LossValue):
                interp.listener.masked(loss, mask)
                return loss
    for side in (left, right):
        if isinstance(side, Logits):
            return side
    fold = _INT_OPS.get(type(node.op))
    if fold is not None and isinstance(left, Const) and isinstance(right, Const) \
            and type(left.value) is int and type(right.value) is int:
        try:
            return Const(fold(left.value, right.value))
        except (ArithmeticError, ValueError):
            pass
    return Opaque(("binop", frame.module.name, node.lineno, node.col_offset))


# -- iteration and records --------------------------------------------------------------


def element_of(interp: Evaluator, value: Value, node: ast.expr, frame: Frame) -> Value:
    """What ``for x in value`` binds ``x`` to."""
    if isinstance(value, OneOf):
        result: Value | None = None
        for option in value.options:
            if isinstance(option, Record) and not option.items and option.base is None:
                continue  # an empty list (before a loop filled it) yields nothing
            if option == Const(None):
                continue  # ``None`` (a loader not made on this path) is never iterated
            got = element_of(interp, option, node, frame)
            result = got if result is None else join(result, got)
        return result if result is not None else UNKNOWN
    if isinstance(value, Loader):
        return library.loader_batch(interp, value, frame)
    if isinstance(value, Instance):
        if interp.program.method(value.cls, "__getitem__") is not None \
                or interp.program.method(value.cls, "__iter__") is not None:
            return library.dataset_item(interp, value, frame)
        return Opaque((*value.identity, "iter"))
    if isinstance(value, ListOf):
        return value.element
    if isinstance(value, Record):
        joined: Value | None = None
        for item in value.values():
            joined = item if joined is None else join(joined, item)
        return joined if joined is not None else UNKNOWN
    if isinstance(value, Opaque):
        return value.child("iter")
    return Opaque(("iter", frame.module.name, node.lineno, node.col_offset))


def augmented(current: Value | None, op: ast.operator, added: Value, otherwise: Value) -> Value:
    """``x += y``: a list grown by a list stays a list of their elements."""
    if isinstance(op, ast.Add) and isinstance(current, Record | ListOf) \
            and isinstance(added, Record | ListOf):
        parts: list[Value] = []
        for value in (current, added):
            parts += [value.element] if isinstance(value, ListOf) else value.values()
        if parts:
            joined = parts[0]
            for part in parts[1:]:
                joined = join(joined, part)
            return ListOf(joined)
    return otherwise


def iterated_source(value: Value) -> Value:
    """What a loop really draws from: ``enumerate(loader)`` and ``tqdm(loader)`` draw from
    the loader (kept on the enumerated list as its origin)."""
    return value.origin if isinstance(value, ListOf) and value.origin is not None else value


def unpack(value: Value, index: int) -> Value:
    """Element ``index`` of a value being unpacked (``a, b = value``)."""
    if isinstance(value, Record):
        got = value.get(index) if value.kind != "dict" else None
        return got if got is not None else UNKNOWN
    if isinstance(value, ListOf):
        # Elements of one list are different objects: only an unknown element keeps an
        # identity, one of its own per position.
        element = value.element
        return element.child("unpack", index) if isinstance(element, Opaque) else UNKNOWN
    if isinstance(value, OneOf):
        return join_all(unpack(option, index) for option in value.options)
    if isinstance(value, Opaque):
        return value.child("unpack", index)
    return UNKNOWN


def entered(context: Value, item: ast.withitem) -> Value:
    """What ``with context as x`` binds."""
    if isinstance(context, Opaque):
        return context.child("entered")
    return Opaque(("entered", item.context_expr.lineno, item.context_expr.col_offset))
