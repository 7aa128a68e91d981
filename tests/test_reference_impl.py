"""The reference MM-Rec trainer runs, learns, and keeps the reviewed bugs (SPEC §1, §7)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROOT = REPO_ROOT / "reference_impl"
TRAINER = REFERENCE_ROOT / "mm_rec" / "scripts" / "train_base_model.py"
DATA_LOADER = REFERENCE_ROOT / "mm_rec" / "data" / "text_data_loader.py"
sys.path.insert(0, str(REFERENCE_ROOT))

from mm_rec.data.text_data_loader import (  # noqa: E402
    CharTokenizer,
    TextDataset,
    load_corpus,
    load_token_splits,
)
from mm_rec.evaluate import load_checkpoint, next_token_loss, validation_token_ids  # noqa: E402
from mm_rec.model import chunked_linear_scan, sequential_linear_scan  # noqa: E402

FINAL_LINE = re.compile(r"^final: step=(\d+) val_loss=(\S+) best_val_loss=(\S+) tokens_per_s=(\d+)")


def run_trainer(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the trainer as a user would: as a script, from a directory that is not the repo."""
    command = [*(launcher or [sys.executable]), str(TRAINER), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        command, cwd=REPO_ROOT.parent, env=env, capture_output=True, text=True, timeout=300
    )


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("seq_len", [128, 100, 1])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64, 256])
def test_chunked_scan_equals_sequential_recurrence(seq_len: int, chunk_size: int) -> None:
    generator = torch.Generator().manual_seed(seq_len * 1000 + chunk_size)
    a = torch.rand(2, seq_len, 5, dtype=torch.float64, generator=generator).requires_grad_()
    b = torch.randn(2, seq_len, 5, dtype=torch.float64, generator=generator).requires_grad_()
    expected = sequential_linear_scan(a, b)
    actual = chunked_linear_scan(a, b, chunk_size)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)

    # The hand-written backward must agree with autograd through the loop.
    grad_out = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    expected_grads = torch.autograd.grad(expected, (a, b), grad_out)
    actual_grads = torch.autograd.grad(actual, (a, b), grad_out)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_chunked_scan_runs_in_float32_under_low_precision_inputs() -> None:
    a = torch.full((1, 300, 4), 0.99, dtype=torch.bfloat16)
    b = torch.ones(1, 300, 4, dtype=torch.bfloat16)
    h = chunked_linear_scan(a, b, 64)
    assert h.dtype == torch.float32
    # bf16 rounds 0.99 to 0.98828125; h_300 is the sum of its powers, (1 - a^300) / (1 - a).
    a32 = torch.tensor(0.99, dtype=torch.bfloat16).float()
    torch.testing.assert_close(h[0, -1, 0], (1 - a32**300) / (1 - a32))


# ------------------------------------------------------------------------------ the data


def test_dataset_labels_are_rolled_with_the_wrapped_position_ignored() -> None:
    tokens = torch.arange(10, 30)
    dataset = TextDataset(tokens, seq_len=8)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["input_ids"].tolist() == list(range(18, 26))
    assert item["labels"].tolist() == [*range(19, 26), -100]


def test_reviewed_code_is_kept_verbatim() -> None:
    # The linter's end-to-end tests need the bugs where the review found them.
    loader_source = DATA_LOADER.read_text(encoding="utf-8")
    assert "labels = torch.roll(input_ids, shifts=-1, dims=0)" in loader_source
    assert "labels[-1] = -100" in loader_source
    trainer_source = TRAINER.read_text(encoding="utf-8")
    for line in [
        "shift_logits = logits[..., :-1, :].contiguous()",
        "shift_labels = labels[..., 1:].contiguous()",
        "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
        'parser.add_argument("--batch-size", type=int, default=4)',
    ]:
        assert line in trainer_source
    assert not re.search(r"\bautocast\(|\bGradScaler\(", trainer_source)
    assert not re.search(r"\bcheckpoint\(|torch\.utils\.checkpoint", trainer_source)


def test_tokenizer_round_trips_and_is_deterministic() -> None:
    text = load_corpus()
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.itos[:2] == ["<pad>", "<unk>"]
    assert tokenizer.chars == sorted(set(text))
    sample = text[:500]
    assert tokenizer.decode(tokenizer.encode(sample)) == sample
    assert tokenizer.encode("~") == [tokenizer.unk_id]


def test_corpus_is_large_and_regenerates_byte_for_byte() -> None:
    corpus = REFERENCE_ROOT / "data" / "corpus.txt"
    assert corpus.stat().st_size >= 200_000
    result = subprocess.run(
        [sys.executable, str(REFERENCE_ROOT / "data" / "make_corpus.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_and_validation_splits_do_not_overlap() -> None:
    _, train_ids, val_ids = load_token_splits()
    assert len(val_ids) == int((len(train_ids) + len(val_ids)) * 0.1)
    torch.testing.assert_close(validation_token_ids(), val_ids)


# --------------------------------------------------------------------------- the trainer


def test_train_step_is_deterministic_with_the_seed() -> None:
    sys.path.insert(0, str(TRAINER.parent))
    try:
        import train_base_model as trainer
    finally:
        sys.path.remove(str(TRAINER.parent))
    from dataclasses import replace

    from mm_rec.model import CONFIGS, MMRecModel

    _, train_ids, _ = load_token_splits()
    dataset = TextDataset(train_ids, seq_len=64)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in ("input_ids", "labels")}

    def three_losses() -> list[float]:
        torch.manual_seed(1337)
        model = MMRecModel(replace(CONFIGS["tiny"], vocab_size=80, num_layers=2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        return [trainer.train_step(model, batch, optimizer, scheduler, "cpu") for _ in range(3)]

    first = three_losses()
    assert first == three_losses()
    assert first[2] < first[0]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 20-step CPU run of the trainer script; its output folder and stdout."""
    out_dir = tmp_path_factory.mktemp("run")
    result = run_trainer(
        ["--steps", "20", "--eval-interval", "10", "--seq-len", "128", "--out-dir", str(out_dir)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out_dir, result.stdout


def test_trainer_finishes_and_saves_checkpoints(short_run: tuple[Path, str]) -> None:
    out_dir, stdout = short_run
    assert (out_dir / "final.pt").is_file()
    assert (out_dir / "best.pt").is_file()
    match = FINAL_LINE.match(stdout.strip().splitlines()[-1])
    assert match, stdout[-2000:]
    assert int(match.group(1)) == 20
    train_losses = [float(m) for m in re.findall(r"\| loss (\d+\.\d+)", stdout)]
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses


def test_next_token_loss_on_the_checkpoint(short_run: tuple[Path, str]) -> None:
    out_dir, _ = short_run
    model = load_checkpoint(out_dir / "final.pt")
    assert not model.training
    val_ids = validation_token_ids()[:4097]
    loss = next_token_loss(model, val_ids, seq_len=128, batch_size=8, device="cpu")
    assert math.isfinite(loss)
    # Better than guessing uniformly over the vocabulary after 20 steps.
    assert loss < math.log(model.config.vocab_size)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
def test_torchrun_two_processes_with_gloo(tmp_path: Path) -> None:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    result = run_trainer(
        ["--steps", "3", "--seq-len", "64", "--eval-batches", "2", "--out-dir", str(tmp_path)],
        launcher=launcher,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "batch 4 x 2 process(es)" in result.stdout
    # Only rank 0 prints and saves.
    assert result.stdout.count("final: step=3 ") == 1
    assert (tmp_path / "final.pt").is_file()
