"""Library calls the flow model knows: torch tensor ops, losses, data loaders, Hugging
Face models and trainers. Anything else is an opaque result."""

from __future__ import annotations

import ast
from dataclasses import replace
from typing import TYPE_CHECKING

from trainaudit.model.flow.frame import mark
from trainaudit.model.flow.functions import call_function
from trainaudit.model.flow.operations import (
    COPY_METHODS,
    ITERATION_PASS_THROUGH,
    MODEL_WRAPPERS,
    POSITION_KEEPING_METHODS,
)
from trainaudit.model.flow.program import FlowModule
from trainaudit.model.flow.tensors import as_tokens, condition_mask, reproduce, roll
from trainaudit.model.flow.values import (
    UNKNOWN,
    Arguments,
    CausalLM,
    Const,
    Instance,
    Library,
    ListOf,
    Loader,
    Logits,
    LossFunction,
    LossValue,
    MaskMark,
    MaskValue,
    OneOf,
    Opaque,
    Partial,
    Record,
    Site,
    Tokens,
    Value,
    join_all,
    mask_of,
)
from trainaudit.model.module import int_value

if TYPE_CHECKING:
    from trainaudit.model.flow.frame import Evaluator, Frame

# Packages whose names the model reads through the semantics below, never through their
# source, also where the checked tree holds it (checking torch's or accelerate's own
# repository): the code there uses the library as its users do, and the internals are
# beyond the model. Every name of a tensor package; a framework's classes (``Accelerator``,
# a model, a trainer: their methods carry the semantics) and the functions named below;
# a framework's other functions (a test helper building loaders) are read from source.
TENSOR_PACKAGES = frozenset({"torch", "numpy", "jax"})
FRAMEWORKS = frozenset({"transformers", "accelerate", "peft", "optimum", "tqdm"})
ROLLS = {"torch.roll": "torch", "numpy.roll": "numpy", "jax.numpy.roll": "numpy"}
LOSS_FUNCTIONS = {"torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss",
                  "torch.cross_entropy", "torch.nn.functional.cross_entropy_loss"}
LOSS_CLASSES = {"torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss",
                "torch.nn.modules.loss.CrossEntropyLoss", "torch.nn.modules.loss.NLLLoss"}
TO_TENSOR = {"torch.tensor", "torch.as_tensor", "torch.LongTensor", "torch.IntTensor",
             "torch.from_numpy", "numpy.array", "numpy.asarray", "torch.Tensor",
             "numpy.int64", "torch.flatten", "torch.squeeze", "torch.atleast_1d"}
# Tensors shaped like their first argument, filled with a value (None: the second argument).
FILLED_LIKE: dict[str, MaskValue | None] = {
    "torch.full_like": None, "torch.zeros_like": MaskValue(0), "torch.ones_like": MaskValue(1),
    "torch.empty_like": MaskValue(), "numpy.full_like": None, "numpy.zeros_like": MaskValue(0),
    "numpy.ones_like": MaskValue(1), "numpy.empty_like": MaskValue()}
STACKS = {"torch.stack", "numpy.stack", "torch.vstack", "numpy.vstack"}
CATS = {"torch.cat", "torch.concat", "torch.concatenate", "numpy.concatenate"}
LOADERS = {"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"}
SPLITS = {"torch.utils.data.random_split", "torch.utils.data.Subset"}
WRAPPERS = MODEL_WRAPPERS | ITERATION_PASS_THROUGH
TRAINERS = {"transformers.Trainer", "transformers.Seq2SeqTrainer",
            "transformers.trainer.Trainer"}
PAD_SEQUENCE = {"torch.nn.utils.rnn.pad_sequence"}
_NAMED = WRAPPERS | TRAINERS


def is_modelled(qualified: str, is_class: bool) -> bool:
    """The dotted name (a class, or not) is read as the library, not from the checked
    tree's source."""
    root = qualified.split(".", 1)[0]
    return root in TENSOR_PACKAGES or (root in FRAMEWORKS and (is_class or qualified in _NAMED))


def _arg(args: list[Value], kwargs: dict[str, Value], index: int, *names: str) -> Value | None:
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[index] if len(args) > index else None


def _node_arg(node: ast.Call, index: int, *names: str) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg in names:
            return kw.value
    positional = [a for a in node.args if not isinstance(a, ast.Starred)]
    return positional[index] if len(positional) > index else None


def _ignore(kwargs: dict[str, Value], node: ast.Call) -> MaskValue:
    value = kwargs.get("ignore_index")
    if value is None:
        return MaskValue(-100)
    return mask_of(value) or MaskValue()


def _per_token(kwargs: dict[str, Value]) -> bool:
    reduction = kwargs.get("reduction")
    return isinstance(reduction, Const) and reduction.value == "none"


def call(interp: Evaluator, qualname: str, args: list[Value], kwargs: dict[str, Value],
         node: ast.Call, frame: Frame) -> Value:
    site = frame.module.site(node)
    short = qualname.rsplit(".", 1)[-1]
    if qualname in ROLLS:
        return _roll(args, kwargs, node, frame, ROLLS[qualname])
    if qualname in LOSS_FUNCTIONS:
        logits = _arg(args, kwargs, 0, "input") or UNKNOWN
        labels = _arg(args, kwargs, 1, "target") or UNKNOWN
        interp.listener.loss(site, logits, labels, _ignore(kwargs, node), _per_token(kwargs),
                             False, argument_roots(node, frame.module))
        return LossValue(site, _per_token(kwargs))
    if qualname in LOSS_CLASSES:
        return LossFunction(_ignore(kwargs, node), _per_token(kwargs), site)
    if qualname in TO_TENSOR or qualname in WRAPPERS:
        first = _arg(args, kwargs, 0, "data", "model", "module", "iterable")
        return _to_tensor(first, site) if qualname in TO_TENSOR else (first or UNKNOWN)
    if qualname in FILLED_LIKE:
        tokens = as_tokens(_arg(args, kwargs, 0, "input") or UNKNOWN)
        if tokens is not None:
            fill = FILLED_LIKE[qualname]
            value = mask_of(_arg(args, kwargs, 1, "fill_value") or UNKNOWN) \
                if fill is None else fill
            return replace(tokens, blank=value or MaskValue(), made=site, wrap=None,
                           trimmed=None)
    if qualname in STACKS:
        return _batched(_arg(args, kwargs, 0, "tensors"))
    if qualname in PAD_SEQUENCE:
        padded = _batched(_arg(args, kwargs, 0, "sequences"))
        pad = kwargs.get("padding_value", Const(0))
        if isinstance(padded, Tokens) and isinstance(pad, Const) \
                and isinstance(pad.value, int | float) and not isinstance(pad.value, bool):
            mark = MaskMark(MaskValue(int(pad.value)), site, "pad")
            return replace(padded, masks=(*padded.masks, mark))
        return padded
    if qualname == "torch.nn.functional.pad":
        return _pad(args, kwargs, node, frame)
    if qualname in CATS:
        return _cat(args, node, frame)
    if qualname == "torch.where" and len(args) == 3 and isinstance(args[2], Tokens):
        mask = args[1]
        if isinstance(mask, Const) and type(mask.value) is int:
            return condition_mask(args[2], MaskValue(mask.value), site)
        return args[2]
    if qualname in LOADERS:
        dataset = _arg(args, kwargs, 0, "dataset") or UNKNOWN
        batch = _arg(args, kwargs, 1, "batch_size")
        # Only a batch size the code gives: with the default (1) the items may be batches.
        return Loader(dataset, kwargs.get("collate_fn"), site, node, batch)
    if qualname in SPLITS:
        dataset = _arg(args, kwargs, 0, "dataset") or UNKNOWN
        if short == "random_split":  # each part yields the data set's items
            return Record("list", tuple((i, dataset) for i in range(4)))
        return dataset
    if qualname == "functools.partial" and args:
        return Partial(args[0], tuple(args[1:]), tuple(sorted(kwargs.items())))
    if _is_causal_lm(qualname):
        return CausalLM(site)
    if qualname == "argparse.ArgumentParser":
        return Arguments(())
    if qualname in TRAINERS:
        _trainer(interp, kwargs, node, frame)
        return Opaque(("trainer", site.path, site.span.line))
    if qualname in ("builtins.enumerate",):
        inner = _arg(args, kwargs, 0, "iterable")
        element = interp.element_of(inner, node, frame) if inner is not None else UNKNOWN
        return ListOf(Record("tuple", ((0, Opaque(("index", site.span.line))), (1, element))),
                      inner)
    if qualname == "builtins.zip":
        parts = tuple((i, interp.element_of(a, node, frame)) for i, a in enumerate(args))
        return ListOf(Record("tuple", parts))
    if qualname == "builtins.next" and args:
        return interp.element_of(args[0], node, frame)
    if qualname == "builtins.getattr" and len(args) >= 2 and isinstance(args[1], Const) \
            and isinstance(args[1].value, str):
        # ``getattr(transformers, cfg["model_class"])`` with the name known
        owner, name = args[0], args[1].value
        if isinstance(owner, Library):
            return interp.resolve_qualified(f"{owner.qualname}.{name}", frame.module.path)
        if isinstance(owner, Instance) and owner.attr(name) is not None:
            return owner.attr(name) or UNKNOWN
        return args[2] if len(args) > 2 else Opaque(("getattr", name, site.span.line))
    if qualname == "builtins.dict" and not args:
        return Record("dict", tuple(kwargs.items()))
    if args and isinstance(args[0], Logits) and qualname.startswith("torch."):
        return args[0]  # log_softmax and friends keep positions
    return Opaque(("lib", qualname, site.span.line, site.span.column))


def argument_roots(node: ast.Call, module: FlowModule) -> tuple[Site | None, Site | None]:
    """The tensors a loss call's logits and labels start from (``logits`` in
    ``logits.view(-1, V)``), for a fix that shifts them."""
    roots: list[Site | None] = []
    for index, name in ((0, "input"), (1, "target")):
        arg = _node_arg(node, index, name)
        while (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute)
               and arg.func.attr in POSITION_KEEPING_METHODS - COPY_METHODS):
            arg = arg.func.value
        roots.append(module.site(arg) if isinstance(arg, ast.Name | ast.Attribute
                                                    | ast.Subscript) else None)
    return roots[0], roots[1]


def _is_causal_lm(qualname: str) -> bool:
    parts = qualname.split(".")
    if parts[-1] in ("from_pretrained", "from_config", "_from_config"):
        parts = parts[:-1]
    name = parts[-1] if parts else ""
    return (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")) and \
        qualname.split(".")[0] in ("transformers", "peft", "optimum")


def _roll(args: list[Value], kwargs: dict[str, Value], node: ast.Call, frame: Frame,
          lib: str) -> Value:
    source = _node_arg(node, 0, "input", "a")
    value = _arg(args, kwargs, 0, "input", "a")
    shift_node = _node_arg(node, 1, "shifts", "shift")
    dims_node = _node_arg(node, 2, "dims", "axis", "dim")
    return _rolled(value, source, shift_node, dims_node, node, frame, lib)


def _rolled(value: Value | None, source: ast.expr | None, shift_node: ast.expr | None,
            dims_node: ast.expr | None, node: ast.Call, frame: Frame, lib: str) -> Value:
    tokens = as_tokens(value) if value is not None else None
    shift = int_value(shift_node)
    dims = int_value(dims_node) if dims_node is not None else None
    if tokens is None or source is None or shift is None or (dims_node is not None and dims is None):
        return Opaque(("roll", frame.module.name, node.lineno, node.col_offset))
    target = frame.assigned_to(node)
    return roll(tokens, shift, dims, node, source, frame.module, target is not None, lib,
                frame.module.text(target) if target is not None else None)


def _to_tensor(value: Value | None, site: Site) -> Value:
    """``torch.tensor(x)`` and friends. A tensor made from what the flow cannot read as
    one (a list a tokenizer filled, an unknown) is a token stream of its own, made here:
    its relations (a clone shifted by one) are known whatever it holds."""
    if isinstance(value, Record) and value.kind == "list" and len(value.items) == 1:
        inner = value.items[0][1]
        if isinstance(inner, Tokens):
            return inner.with_ndim(inner.ndim + 1 if inner.ndim is not None else 2)
    if isinstance(value, ListOf) and isinstance(value.element, Tokens):
        inner = value.element
        return inner.with_ndim(inner.ndim + 1 if inner.ndim is not None else 2)
    if isinstance(value, Tokens | Opaque | Const | Logits):
        return value
    return Opaque(("tensor", site.path, site.span.line, site.span.column))


def _batched(value: Value | None) -> Value:
    """``stack`` of items: one more axis, the first item's stream."""
    element: Value | None = None
    if isinstance(value, ListOf):
        element = value.element
    elif isinstance(value, Record) and value.items:
        element = value.items[0][1]
    tokens = as_tokens(element) if element is not None else None
    if tokens is None:
        return Opaque(("stacked", id(value))) if value is None else (
            value.child("stacked") if isinstance(value, Opaque) else UNKNOWN)
    return tokens.with_ndim(tokens.ndim + 1 if tokens.ndim is not None else None)


def _pad(args: list[Value], kwargs: dict[str, Value], node: ast.Call, frame: Frame) -> Value:
    value = _arg(args, kwargs, 0, "input")
    inner = _node_arg(node, 0, "input")
    if not isinstance(value, Tokens) or inner is None:
        return Opaque(("pad", frame.module.name, node.lineno))
    fill = kwargs.get("value", args[3] if len(args) > 3 else Const(0))
    tail = MaskValue(fill.value) if isinstance(fill, Const) and type(fill.value) is int else None
    return reproduce(value, "pad", node, frame.module, inner, tail, frame.assigned_to(node) is not None)


def _cat(args: list[Value], node: ast.Call, frame: Frame) -> Value:
    parts = args[0] if args else None
    elts = node.args[0].elts if node.args and isinstance(node.args[0], ast.List | ast.Tuple) else []
    if not isinstance(parts, Record) or len(elts) != 2:
        return Opaque(("cat", frame.module.name, node.lineno))
    first = parts.get(0)
    if not isinstance(first, Tokens):
        return Opaque(("cat", frame.module.name, node.lineno))
    tail_node = elts[1]
    tail = None
    if isinstance(tail_node, ast.Call):
        fill = _node_arg(tail_node, 1, "fill_value")
        number = int_value(fill)
        tail = MaskValue(number) if number is not None else None
    return reproduce(first, "cat", node, frame.module, elts[0], tail, frame.assigned_to(node) is not None)


def causal_call(interp: Evaluator, model: CausalLM, args: list[Value],
                kwargs: dict[str, Value], node: ast.Call, frame: Frame) -> Value:
    """A Hugging Face causal LM: logits aligned with ``input_ids``; given ``labels``, the
    model shifts them itself (unless ``shift_labels`` is passed)."""
    inputs = kwargs.get("input_ids", args[0] if args else None)
    tokens = as_tokens(inputs) if inputs is not None else None
    if tokens is None:
        return Opaque(("hf-output", frame.module.name, node.lineno, node.col_offset))
    logits = Logits(tokens, 0, tokens.ndim + 1 if tokens.ndim is not None else None)
    site = frame.module.site(node)
    if "shift_labels" in kwargs:
        interp.listener.loss(site, logits, kwargs["shift_labels"], MaskValue(-100), False,
                             False, (None, None))
    elif "labels" in kwargs:
        interp.listener.loss(site, logits, kwargs["labels"], MaskValue(-100), False, True,
                             (None, None))
    return Record("object", (("logits", logits), (0, logits), ("loss", LossValue(site))))


def parser_method(interp: Evaluator, parser: Arguments, name: str, args: list[Value],
                  kwargs: dict[str, Value], node: ast.Call, frame: Frame) -> Value:
    """``parser.add_argument("--batch-size", type=int, default=4)`` records the default;
    ``parser.parse_args()`` is the namespace of defaults (what a run without flags gets)."""
    if name == "add_argument":
        flags = [a.value for a in args if isinstance(a, Const) and isinstance(a.value, str)]
        dest = kwargs.get("dest")
        if isinstance(dest, Const) and isinstance(dest.value, str):
            key = dest.value
        else:
            longs = [f for f in flags if f.startswith("--")] or flags
            key = longs[0].lstrip("-").replace("-", "_") if longs else ""
        if key and isinstance(node.func, ast.Attribute):
            default = kwargs.get("default", Const(None))
            interp.bind(node.func.value, Arguments((*parser.defaults, (key, default))), frame)
        return Opaque(("action", node.lineno))
    if name in ("parse_args", "parse_known_args"):
        namespace = Record("object", parser.defaults)
        if name == "parse_known_args":
            return Record("tuple", ((0, namespace), (1, Opaque(("extra", node.lineno)))))
        return namespace
    return Opaque(("parser-call", name, node.lineno))


def tensor_method(interp: Evaluator, receiver: Value, name: str, args: list[Value],
                  kwargs: dict[str, Value], node: ast.Call, frame: Frame) -> Value:
    """``x.clone()``, ``x.view(-1)``, ``x.roll(-1, 0)``, ``x.masked_fill(m, v)``..."""
    if isinstance(receiver, Logits):
        if name in ("size", "argmax", "item", "max", "topk", "dim", "numel", "sum", "mean"):
            return Opaque(("logits-call", name, node.lineno))
        return receiver
    if name == "roll":
        assert isinstance(node.func, ast.Attribute)
        return _rolled(receiver, node.func.value, _node_arg(node, 0, "shifts"),
                       _node_arg(node, 1, "dims"), node, frame, "torch")
    if name in ("masked_fill", "masked_fill_") and isinstance(receiver, Tokens | Opaque):
        tokens = as_tokens(receiver)
        fill = _arg(args, kwargs, 1, "value")
        if tokens is None or not isinstance(fill, Const) or type(fill.value) is not int:
            return receiver
        result = condition_mask(tokens, MaskValue(fill.value), frame.module.site(node))
        if name.endswith("_") and isinstance(node.func, ast.Attribute):
            interp.bind(node.func.value, result, frame)
        return result
    if isinstance(receiver, Opaque) and name not in POSITION_KEEPING_METHODS:
        return receiver.child("call", name, node.lineno, node.col_offset)
    tokens = as_tokens(receiver)
    if tokens is None or name not in POSITION_KEEPING_METHODS:
        return Opaque(("tensor-call", name, node.lineno))
    if name in COPY_METHODS:
        return replace(tokens, made=frame.module.site(node))
    if name in ("flatten",) or (name in ("view", "reshape") and len(args) == 1
                                and isinstance(args[0], Const) and args[0].value == -1):
        return tokens.with_ndim(1)
    if name == "unsqueeze" and tokens.ndim is not None:
        return tokens.with_ndim(tokens.ndim + 1)
    return tokens


# -- data --------------------------------------------------------------------------------


def dataset_item(interp: Evaluator, dataset: Value, frame: Frame) -> Value:
    """``dataset[i]``: the value of its ``__getitem__`` (a list's element)."""
    if isinstance(dataset, OneOf):
        return join_all(dataset_item(interp, option, frame) for option in dataset.options)
    if isinstance(dataset, Instance):
        method = interp.program.method(dataset.cls, "__getitem__")
        if method is not None:
            item = call_function(interp, method, dataset, [Opaque(("index", dataset.identity))],
                                 {}, None, frame.depth + 1)
        else:  # an iterable data set: what its ``__iter__`` yields
            method = interp.program.method(dataset.cls, "__iter__")
            if method is None:
                return Opaque((*dataset.identity, "item"))
            items = call_function(interp, method, dataset, [], {}, None, frame.depth + 1)
            item = items.element if isinstance(items, ListOf) else Opaque(
                (*dataset.identity, "item"))
        found = interp.program.ref_node(method)
        if found is not None:
            site = found[0].site(found[1])
            item = mark(item, replace(site, text=f"item of {dataset.cls.qualname}"))
        return item
    if isinstance(dataset, ListOf):
        return dataset.element
    if isinstance(dataset, Opaque):
        return dataset.child("item")
    return UNKNOWN


def default_collate(item: Value) -> Value:
    """PyTorch's default collation: every tensor gains a batch axis."""
    if isinstance(item, Tokens):
        return item.with_ndim(item.ndim + 1 if item.ndim is not None else None)
    if isinstance(item, Record):
        return Record(item.kind if item.kind != "list" else "list",
                      tuple((k, default_collate(v)) for k, v in item.items))
    if isinstance(item, OneOf):
        return OneOf(tuple(default_collate(o) for o in item.options))
    return item


def loader_batch(interp: Evaluator, loader: Loader, frame: Frame) -> Value:
    item = dataset_item(interp, loader.dataset, frame)
    if loader.collate is not None and loader.call is not None and not (
            isinstance(loader.collate, Const) and loader.collate.value is None):
        batch = interp.apply(loader.collate, [ListOf(item)], {}, loader.call, frame)
    else:
        batch = default_collate(item)
    return mark(batch, replace(loader.site, text="batch of this loader"))


def _trainer(interp: Evaluator, kwargs: dict[str, Value], node: ast.Call,
             frame: Frame) -> None:
    """An HF ``Trainer`` runs ``model(**collate(items))`` on its data sets."""
    model = kwargs.get("model")
    if not isinstance(model, CausalLM):
        return
    collator = kwargs.get("data_collator")
    for key in ("train_dataset", "eval_dataset"):
        dataset = kwargs.get(key)
        if dataset is None:
            continue
        item = dataset_item(interp, dataset, frame)
        if collator is None:
            batch = default_collate(item)
        elif isinstance(collator, Library):
            continue  # a library collator (DataCollatorForLanguageModeling) makes its own labels
        else:
            batch = interp.apply(collator, [ListOf(item)], {}, node, frame)
        if isinstance(batch, Record):
            causal_call(interp, model, [], {str(k): v for k, v in batch.items}, node, frame)
