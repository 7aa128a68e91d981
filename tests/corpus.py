"""A seeded generator of training-script trees: buggy and clean scripts of every rule
family, multi-file projects (a data set module and trainers that import it), and files
that are not training code at all (one with a syntax error). Used by the prefilter
property test and by benchmarks/bench_check.py."""

from __future__ import annotations

import random

IMPORTS = [
    "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n",
    "import torch as T\nfrom torch.nn import functional as F\nnn = T.nn\ntorch = T\n",
    "import torch\nfrom torch import nn\nfrom torch.nn.functional import cross_entropy\n"
    "F = type('F', (), {'cross_entropy': staticmethod(cross_entropy)})\n",
]
EXTRA_IMPORTS = [
    "", "from torch.cuda import amp\n", "from torch.cuda.amp import autocast, GradScaler\n",
    "from torch.utils.checkpoint import checkpoint as ckpt\n", "import numpy as np\n",
    "from torch import roll as rotate\n", "from torch.optim import AdamW as W\n",
    "from transformers import AutoModelForCausalLM\n",
]
LABELS = [
    "    labels = torch.roll(ids, -1, dims=1)\n",
    "    labels = torch.roll(ids, shifts=-1, dims=-1)\n    labels[:, -1] = -100\n",
    "    labels = torch.roll(ids, -1, 1)\n    labels[:, -1] = 0\n",
    "    labels = ids[:, 1:]\n    ids = ids[:, :-1]\n",
    "    labels = ids.clone()\n",
    "    labels = ids.clone()\n    labels[:, :-1] = ids[:, 1:]\n    labels[:, -1] = -100\n",
    "    targets = torch.roll(ids, -1, 1)\n    labels = targets\n",
]
LOSSES = [
    "    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1))\n",
    "    shift_logits = logits[..., :-1, :].contiguous()\n"
    "    shift_labels = labels[..., 1:].contiguous()\n"
    "    loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))\n",
    "    loss = nn.CrossEntropyLoss(ignore_index=0)(logits.flatten(0, 1), labels.flatten())\n",
    "    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)\n",
    "    loss = model(ids, labels=labels).loss\n",
]
FORWARDS = [
    "    logits = model(ids)\n",
    "    with torch.autocast('cuda', dtype=torch.bfloat16):\n        logits = model(ids)\n",
    "    with torch.autocast('cuda', dtype=torch.float16):\n        logits = model(ids)\n",
    "    with torch.cuda.amp.autocast():\n        logits = model(ids)\n",
]
STEPS = [
    "        loss.backward()\n        optimizer.step()\n        optimizer.zero_grad()\n",
    "        optimizer.zero_grad()\n        loss.backward()\n"
    "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        optimizer.step()\n"
    "        scheduler.step()\n",
    "        loss.backward()\n        optimizer.step()\n",
    "        loss.backward()\n        optimizer.zero_grad()\n        optimizer.step()\n",
    "        (loss / accum).backward()\n        if (i + 1) % accum == 0:\n"
    "            optimizer.step()\n            optimizer.zero_grad()\n",
    "        loss.backward()\n        if (i + 1) % accum == 0:\n            optimizer.step()\n"
    "            optimizer.zero_grad()\n        scheduler.step()\n",
    "        scaler.scale(loss).backward()\n        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
    "        scaler.step(optimizer)\n        scaler.update()\n        optimizer.zero_grad()\n",
    "        scaler.scale(loss).backward()\n        scaler.unscale_(optimizer)\n"
    "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
    "        scaler.step(optimizer)\n        scaler.update()\n        optimizer.zero_grad(set_to_none=True)\n",
]
LOOP_EXTRAS = [
    "", "        total += loss\n", "        total += loss.item()\n",
    "        if i % 100 == 0:\n            model.eval()\n            evaluate(model)\n",
    "        if i % 100 == 0:\n            model.eval()\n            evaluate(model)\n            model.train()\n",
]
SETUPS = [
    "    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)\n",
    "    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n",
    "    optimizer = W(model.parameters())\n",
    "    optimizer = make_optimizer(model)\n",
]
SCALERS = ["", "    scaler = torch.cuda.amp.GradScaler()\n", "    scaler = torch.amp.GradScaler('cuda')\n"]
MODELS = [
    "",
    "class Net(nn.Module):\n    def __init__(self, n=12, seq_len=32768):\n        super().__init__()\n"
    "        self.blocks = nn.ModuleList([nn.Linear(64, 64) for _ in range(n)])\n\n"
    "    def forward(self, x):\n        for block in self.blocks:\n            x = block(x)\n        return x\n\n\n",
    "class Net(nn.Module):\n    def __init__(self, n=12):\n        super().__init__()\n"
    "        self.blocks = nn.ModuleList([nn.Linear(64, 64) for _ in range(n)])\n\n"
    "    def forward(self, x):\n        for block in self.blocks:\n"
    "            x = ckpt(block, x)\n        return x\n\n\n",
    "def load():\n    model = AutoModelForCausalLM.from_pretrained('gpt2', use_cache=True)\n"
    "    model.gradient_checkpointing_enable()\n    return model\n\n\n",
]
EVALS = [
    "",
    "def evaluate(model):\n    model.eval()\n    for ids in val_loader:\n        model(ids)\n\n\n",
    "@torch.no_grad()\ndef evaluate(model):\n    model.eval()\n    for ids in val_loader:\n"
    "        model(ids)\n    model.train()\n\n\n",
]
NOT_TRAINING = [
    "def area(r):\n    return 3.14159 * r * r\n",
    "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "VERSION = '1.0'\nNAMES = ['alpha', 'beta']\n",
    "def broken(:\n    pass\n",  # a syntax error no rule would read
    "import torch\n\n\ndef broken(:\n    loss.backward()\n",  # one a rule would read
    "import torch\n\n\ndef norm(x):\n    return torch.nn.functional.normalize(x, dim=-1)\n",
]
DATASET = (
    "import torch\nfrom torch.utils.data import Dataset\n\n\n"
    "class TokenDataset(Dataset):\n    def __init__(self, ids, n):\n        self.ids, self.n = ids, n\n\n"
    "    def __len__(self):\n        return len(self.ids) // self.n\n\n"
    "    def __getitem__(self, i):\n        input_ids = self.ids[i * self.n:(i + 1) * self.n]\n"
    "{labels}        return {{'input_ids': input_ids, 'labels': labels}}\n"
)
DATASET_LABELS = [
    "        labels = torch.roll(input_ids, shifts=-1, dims=0)\n        labels[-1] = -100\n",
    "        labels = input_ids.clone()\n",
    "        labels = torch.roll(input_ids, -1, 0)\n",
]


def training_script(rng: random.Random, dataset_module: str | None) -> str:
    pick = rng.choice
    head = pick(IMPORTS) + "".join(rng.sample(EXTRA_IMPORTS, rng.randint(0, 3)))
    if dataset_module:
        head += f"from {dataset_module} import TokenDataset\n"
    body = "\n\n" + pick(MODELS) + pick(EVALS)
    body += "def compute_loss(model, ids, labels):\n" + pick(FORWARDS) + pick(LOSSES) + "    return loss\n\n\n"
    inline = rng.random() < 0.5
    body += "def train(model, loader, scheduler, accum=8, batch_size=4):\n"
    body += pick(SETUPS) + pick(SCALERS) + "    total = 0.0\n    model.train()\n"
    body += "    for i, batch in enumerate(loader):\n"
    if dataset_module:
        body += "        ids, labels = batch['input_ids'], batch['labels']\n"
    else:
        body += "        ids = batch\n" + "".join("    " + line + "\n" for line in pick(LABELS).splitlines())
    if inline:
        body += "".join("    " + line + "\n" for line in (pick(FORWARDS) + pick(LOSSES)).splitlines())
    else:
        body += "        loss = compute_loss(model, ids, labels)\n"
    body += pick(STEPS) + pick(LOOP_EXTRAS) + "    return total\n"
    return head + body


def _project(rng: random.Random, folder: str, package: str) -> dict[str, str]:
    """One project: maybe a data set module, one to three trainers, maybe utilities."""
    files = {f"{folder}/__init__.py": ""}
    dataset_module = None
    if rng.random() < 0.5:
        files[f"{folder}/data.py"] = DATASET.format(labels=rng.choice(DATASET_LABELS))
        dataset_module = f"{package}.data"
    for s in range(rng.randint(1, 3)):
        files[f"{folder}/train_{s}.py"] = training_script(rng, dataset_module)
    for u in range(rng.randint(0, 2)):
        files[f"{folder}/util_{u}.py"] = rng.choice(NOT_TRAINING)
    return files


def corpus(seed: int, n_projects: int) -> dict[str, str]:
    """``n_projects`` projects, ``proj000/`` ... (each a package importable by its name)."""
    rng = random.Random(seed)
    files: dict[str, str] = {}
    for p in range(n_projects):
        files.update(_project(rng, f"proj{p:03}", f"proj{p:03}"))
    return files


def corpus_of_size(seed: int, n_files: int) -> dict[str, str]:
    """Whole projects, 100 to a folder, until there are at least ``n_files`` files."""
    rng = random.Random(seed)
    files: dict[str, str] = {}
    project = 0
    while len(files) < n_files:
        name = f"p{project:05}"
        files.update(_project(rng, f"group{project // 100:03}/{name}", name))
        project += 1
    return files
