"""The per-file cache: hits, misses, invalidation, cross-file facts, corruption, concurrency."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import chdir, config
from trainaudit.cache import CACHE_DIR_NAME, ResultCache, _SafeUnpickler
from trainaudit.discover import discover
from trainaudit.engine import CheckResult, check_files

DATA = (
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
)
# The loop that ties the data set to the step (the flow follows it).
TRAIN_LOOP = (
    "\n\ndef train(model, ids):\n"
    "    for batch in torch.utils.data.DataLoader(TextDataset(ids), batch_size=4):\n"
    "        step(model, batch).backward()\n"
)
# Shifts again at the loss: with DATA, a double shift (TA102) across the two files.
TRAIN_SHIFTING = (
    "import torch\nimport torch.nn.functional as F\n\n"
    "from pkg.data import TextDataset\n\n\n"
    "def step(model, batch):\n"
    "    logits = model(batch['input_ids'])\n"
    "    shift_logits = logits[..., :-1, :]\n"
    "    shift_labels = batch['labels'][..., 1:]\n"
    "    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),\n"
    "                           shift_labels.reshape(-1), ignore_index=-100)\n"
    + TRAIN_LOOP
)
TRAIN_PLAIN = (
    "import torch\nimport torch.nn.functional as F\n\n"
    "from pkg.data import TextDataset\n\n\n"
    "def step(model, batch):\n"
    "    logits = model(batch['input_ids'])\n"
    "    return F.cross_entropy(logits.reshape(-1, logits.size(-1)),\n"
    "                           batch['labels'].reshape(-1), ignore_index=-100)\n"
    + TRAIN_LOOP
)
AMP = "import torch\n\nscaler = torch.cuda.amp.GradScaler()\n"


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def age(path: Path, seconds: float = 10) -> None:
    """Backdate a file, so its stamp is trusted (not 'racy') when cached."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def run(root: Path, jobs: int = 1, **changes: object) -> tuple[CheckResult, ResultCache]:
    with chdir(root):
        cfg = config(**changes)
        files, _ = discover([Path(".")], cfg)
        cache = ResultCache(root, lazy_summaries=True)
        return check_files(files, cfg, jobs=jobs, analyse=cache.analyse,
                           project=cache.project), cache


def keys(result: CheckResult) -> set[tuple[str, int, str]]:
    return {(f.path, f.line, f.code) for f in result.findings}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path, {"pkg/__init__.py": "", "pkg/data.py": DATA, "pkg/train.py": TRAIN_SHIFTING,
                     "amp.py": AMP, "notes.py": "print('no training here')\n"})
    for path in tmp_path.rglob("*.py"):
        age(path)
    return tmp_path


def test_cold_then_warm(tree: Path) -> None:
    cold, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses, cold.files_cached) == (0, 5, 0)
    assert {code for _, _, code in keys(cold)} == {"TA102", "TA302"}
    warm, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses, warm.files_cached) == (5, 0, 5)
    assert cache.stats.project_reused  # nothing changed: phase 2's findings are reused
    assert not cache.stats.summaries_loaded  # so the cross-file facts stay on disk
    assert warm.findings == cold.findings
    assert warm.files_checked == cold.files_checked
    assert (tree / CACHE_DIR_NAME / ".gitignore").read_text().endswith("*\n")


def test_warm_run_reads_no_file(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tree)
    opened: list[str] = []
    real_read_bytes = Path.read_bytes

    def spy(self: Path) -> bytes:
        opened.append(str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    _, cache = run(tree)
    assert cache.stats.hits == 5
    assert [p for p in opened if p.endswith(".py")] == []


def test_edit_misses_only_that_file(tree: Path) -> None:
    run(tree)
    (tree / "amp.py").write_text(AMP + "scaler2 = torch.cuda.amp.GradScaler()\n")
    age(tree / "amp.py", 5)
    result, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)
    assert ("amp.py", 4, "TA302") in keys(result)


def test_touch_is_verified_by_content(tree: Path) -> None:
    run(tree)
    age(tree / "amp.py", 3)  # a new mtime, the same bytes (a branch switch, a touch)
    _, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.verified) == (5, 0, 1)
    _, cache = run(tree)
    assert cache.stats.verified == 0  # the new stamp was stored


def test_racy_stamps_are_verified_next_time(tree: Path) -> None:
    amp = tree / "amp.py"
    amp.write_text(AMP)  # modified just now: too recent to trust its mtime
    stamp = amp.stat().st_mtime_ns
    run(tree)
    # Rewritten within the same timestamp tick, same size: only the content tells.
    amp.write_text(AMP.replace("scaler =", "scalar ="))
    os.utime(amp, ns=(stamp, stamp))
    _, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)


def test_cross_file_facts_follow_an_edit_in_one_file(tree: Path) -> None:
    first, _ = run(tree)
    assert "TA102" in {code for _, _, code in keys(first)}
    (tree / "pkg/train.py").write_text(TRAIN_PLAIN)  # the second shift goes away
    age(tree / "pkg/train.py", 5)
    second, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)  # pkg/data.py came from the cache
    assert not cache.stats.project_reused  # phase 2 ran again over the summaries
    assert cache.stats.summaries_loaded
    assert "TA102" not in {code for _, _, code in keys(second)}
    (tree / "pkg/train.py").write_text(TRAIN_SHIFTING)
    age(tree / "pkg/train.py", 4)
    third, cache = run(tree)
    assert keys(third) == keys(first)
    assert not cache.stats.project_reused


@pytest.mark.parametrize("changes", [
    {"ignore": ("TA302",)},
    {"select": ("TA1",)},
    {"options": "changed"},
])
def test_config_change_invalidates(tree: Path, changes: dict[str, object]) -> None:
    run(tree)
    if changes.get("options") == "changed":
        from trainaudit.registry import all_options

        options = all_options()
        name = next(k for k, v in sorted(options.items()) if isinstance(v, int) and not isinstance(v, bool))
        changes = {"options": {**options, name: options[name] + 1}}
    _, cache = run(tree, **changes)
    assert (cache.stats.hits, cache.stats.misses) == (0, 5)
    _, cache = run(tree, **changes)
    assert cache.stats.hits == 5
    _, cache = run(tree)  # the default settings' store is still there
    assert cache.stats.hits == 5


def test_analyse_alone_gives_complete_results(tree: Path) -> None:
    """Without ``project`` (not lazy), cached results come back with their summaries."""
    cold, _ = run(tree)
    with chdir(tree):
        cfg = config()
        files, _ = discover([Path(".")], cfg)
        cache = ResultCache(tree)
        warm = check_files(files, cfg, jobs=1, analyse=cache.analyse)
    assert cache.stats.hits == 5 and cache.stats.summaries_loaded
    assert warm.findings == cold.findings


def test_lost_summaries_are_recomputed(tree: Path) -> None:
    (tree / "pkg/train.py").write_text(TRAIN_PLAIN)
    age(tree / "pkg/train.py")
    run(tree)
    for store in (tree / CACHE_DIR_NAME).rglob("*.summaries"):
        store.write_bytes(b"garbage")
    (tree / "pkg/train.py").write_text(TRAIN_SHIFTING)  # phase 2 must run, data.py is cached
    age(tree / "pkg/train.py", 5)
    result, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)
    assert "TA102" in {code for _, _, code in keys(result)}
    _, cache = run(tree)  # the recomputed summaries were stored again
    (tree / "pkg/train.py").write_text(TRAIN_PLAIN)
    age(tree / "pkg/train.py", 3)
    result, cache = run(tree)
    assert "TA102" not in {code for _, _, code in keys(result)}


def test_suppressions_and_per_file_ignores_apply_to_cached_results(tree: Path) -> None:
    run(tree)
    result, cache = run(tree, per_file_ignores={"amp.py": ("TA302",)})
    assert cache.stats.hits == 5  # per-file ignores act after phase 1: same store
    assert "TA302" not in {code for _, _, code in keys(result)}


def _pack(tree: Path) -> Path:
    packs = list((tree / CACHE_DIR_NAME).rglob("*.pack"))
    assert len(packs) == 1
    return packs[0]


@pytest.mark.parametrize("garbage", [b"", b"\x80\x05garbage", pickle.dumps({"format": 999}),
                                     pickle.dumps(["not", "a", "pack"])])
def test_corrupt_pack_is_ignored_and_rewritten(tree: Path, garbage: bytes) -> None:
    cold, _ = run(tree)
    _pack(tree).write_bytes(garbage)
    result, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses) == (0, 5)
    assert result.findings == cold.findings
    _, cache = run(tree)
    assert cache.stats.hits == 5


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_planted_pack_cannot_run_code(tree: Path) -> None:
    run(tree)
    pack = _pack(tree)
    pack.write_bytes(pickle.dumps({"format": 2, "key": pack.stem, "entries": _Exploit()}))
    with chdir(tree):
        _, cache = run(tree)
    assert cache.stats.misses == 5
    assert not (tree / "pwned").exists()
    with pytest.raises(pickle.UnpicklingError):
        import io

        _SafeUnpickler(io.BytesIO(pickle.dumps(_Exploit()))).load()


def test_parallel_phase_one_uses_the_cache(tmp_path: Path) -> None:
    write(tmp_path, {f"scripts/s{i:03}.py": AMP if i % 3 == 0 else DATA for i in range(120)})
    for path in tmp_path.rglob("*.py"):
        age(path)
    cold, cache = run(tmp_path, jobs=2)
    assert cache.stats.misses == 120
    warm, cache = run(tmp_path, jobs=2)
    assert (cache.stats.hits, warm.files_cached) == (120, 120)
    assert warm.findings == cold.findings
    (tmp_path / "scripts/s000.py").write_text(DATA)
    age(tmp_path / "scripts/s000.py", 5)
    again, cache = run(tmp_path, jobs=2)
    assert (cache.stats.hits, cache.stats.misses) == (119, 1)
    def codes_of(result: CheckResult) -> list[str]:
        return [f.code for f in result.findings if f.path == "scripts/s000.py"]

    assert (codes_of(cold), codes_of(again)) == (["TA302"], ["TA103"])


def test_cache_lives_under_the_config_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "pyproject.toml").write_text("[tool.trainaudit]\nselect = ['ALL']\nfail-on = 'info'\n")
    monkeypatch.chdir(tree / "pkg")
    cli = subprocess.run([sys.executable, "-m", "trainaudit", "check", "."], capture_output=True,
                         text=True)
    assert cli.returncode == 1, cli.stderr
    assert (tree / CACHE_DIR_NAME).is_dir()
    assert not (tree / "pkg" / CACHE_DIR_NAME).exists()


def test_no_cache_flag_and_env_dir(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    cli = [sys.executable, "-m", "trainaudit", "check", ".", "--format", "json"]
    subprocess.run([*cli, "--no-cache"], cwd=tree, capture_output=True, check=False)
    assert not (tree / CACHE_DIR_NAME).exists()
    elsewhere = tmp_path_factory.mktemp("cachedir")
    env = {**os.environ, "TRAINAUDIT_CACHE_DIR": str(elsewhere)}
    subprocess.run(cli, cwd=tree, capture_output=True, env=env, check=False)
    assert not (tree / CACHE_DIR_NAME).exists()
    assert list(elsewhere.rglob("*.pack"))


def test_concurrent_runs(tree: Path) -> None:
    """Eight processes at once on a cold cache: identical output, a readable pack after."""
    for i in range(60):  # enough files for the process pool in each run
        write(tree, {f"more/m{i:02}.py": AMP if i % 2 else DATA})
    cli = [sys.executable, "-m", "trainaudit", "check", ".", "--format", "json"]
    runs = [subprocess.Popen(cli, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(8)]
    outputs = [p.communicate() for p in runs]
    assert {p.returncode for p in runs} == {1}
    assert all(err == "" for _, err in outputs), outputs
    findings = {json.dumps(json.loads(out)["findings"], sort_keys=True) for out, _ in outputs}
    assert len(findings) == 1
    assert not list((tree / CACHE_DIR_NAME).rglob("*.tmp"))  # no temporary files left behind
    for path in tree.rglob("*.py"):
        age(path)
    _, cache = run(tree)  # after the race, one more run makes every entry trusted
    _, cache = run(tree)
    assert (cache.stats.hits, cache.stats.misses) == (65, 0)
