"""`trainaudit probe`: exact measurements on small training scripts, and a clean exit."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torch.nn.modules.module as module_hooks  # noqa: E402
import torch.optim.optimizer as optimizer_hooks  # noqa: E402
import torch.utils.checkpoint as checkpoint_module  # noqa: E402
from rich.console import Console  # noqa: E402

from trainaudit.probe import ProbeError, ProbeReport, render_report, run_probe  # noqa: E402
from trainaudit.probe.labels import compare_labels, summarise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "probe_scripts"
REFERENCE = ROOT / "reference_impl" / "mm_rec" / "scripts" / "train_base_model.py"

_reports: dict[tuple[str, ...], ProbeReport] = {}


def probe(script: str, *args: str, steps: int = 5) -> ProbeReport:
    """Probe a script of tests/probe_scripts once per argument list."""
    key = (script, *args, str(steps))
    if key not in _reports:
        _reports[key] = run_probe([str(SCRIPTS / script), *args], steps=steps)
    return _reports[key]


def codes(report: ProbeReport) -> set[str]:
    return {finding.code for finding in report.findings}


# ----------------------------------------------------------------- labels


def test_correct_shift_measures_offset_one() -> None:
    report = probe("correct_shift.py", "--steps", "50")
    assert report.script_exit == "stopped"
    assert report.optimizer_steps == 5
    assert report.label_offset == 1
    assert report.wrapped_label_positions == 0
    # batch 8 x (32 - 1) targets, all matching the input one position ahead
    assert (report.label_positions_checked, report.label_positions_matched) == (248, 248)
    assert (report.batch_size, report.sequence_length, report.world_size) == (8, 32, 1)
    assert codes(report) == {"TA201", "TA301"}


def test_double_shift_is_ta102_with_the_evidence() -> None:
    report = probe("double_shift.py")
    assert report.label_offset == 2
    assert report.wrapped_label_positions == 0  # labels[-1] = -100 masks the wrap
    assert (report.label_positions_checked, report.label_positions_matched) == (120, 120)
    assert codes(report) == {"TA102", "TA201", "TA301"}
    ta102 = next(f for f in report.findings if f.code == "TA102")
    assert (ta102.name, ta102.severity) == ("double-label-shift", "error")
    assert "label offset 2" in ta102.message
    assert "120/120" in ta102.message


def test_no_shift_is_ta105() -> None:
    report = probe("no_shift.py")
    assert report.label_offset == 0
    assert codes(report) == {"TA105", "TA201", "TA301"}


def test_unmasked_roll_counts_wrapped_positions() -> None:
    report = probe("unmasked_roll.py")
    assert report.label_offset == 1
    assert report.wrapped_label_positions == 8  # one per row of the batch of 8
    assert report.label_rows_checked == 8
    assert codes(report) == {"TA101", "TA201", "TA301"}
    ta101 = next(f for f in report.findings if f.code == "TA101")
    assert ta101.message.startswith("8 of 8 rows")


def test_keyword_call_with_loss_inside_the_model() -> None:
    # model(input_ids=..., labels=...): the ids come from the first embedding lookup.
    report = probe("keyword_model.py")
    assert report.label_offset == 1
    assert report.batch_size == 8


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (lambda ids: ids[:, 1:].reshape(-1), 1),
        (lambda ids: ids[:, 2:].reshape(-1), 2),
        (lambda ids: ids.clone(), 0),
        (lambda ids: torch.roll(ids, -1, dims=1), 1),
    ],
)
def test_compare_labels_finds_the_shift(target: object, expected: int) -> None:
    ids = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    sample = compare_labels(ids, target(ids), -100)  # type: ignore[operator]
    assert sample is not None
    assert sample.offset == expected


def test_compare_labels_honours_ignore_index_and_refuses_what_it_cannot_match() -> None:
    ids = torch.randint(1, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = 0  # the pad id the loss ignores
    sample = compare_labels(ids, labels, 0)
    assert sample is not None
    assert (sample.offset, sample.wrapped) == (1, 0)
    unmasked = compare_labels(ids, torch.roll(ids, -1, dims=1), -100)
    assert unmasked is not None
    assert unmasked.wrapped == 2
    assert compare_labels(ids, torch.tensor([1, 2]), -100) is None  # classification targets
    assert compare_labels(ids, torch.full((2, 16), 7), -100).offset is None  # type: ignore[union-attr]
    constant = torch.full((2, 16), 5)
    assert compare_labels(constant, constant[:, 1:], -100).offset is None  # type: ignore[union-attr]


# ------------------------------------------------- steps and micro-batches


def test_gradient_accumulation_counts_micro_batches() -> None:
    report = probe("grad_accum.py")
    assert report.optimizer_steps == 5
    assert report.backward_calls == 20
    assert report.micro_batches_per_step == 4.0
    assert "TA201" not in codes(report)
    assert report.label_offset == 1


def test_sys_exit_before_the_requested_steps() -> None:
    report = probe("exits_early.py", steps=5)
    assert report.script_exit == "exit(3)"
    assert report.optimizer_steps == 2


def test_script_that_finishes_early_and_argparse_flags() -> None:
    report = probe("correct_shift.py", "--steps", "2", "--batch-size", "4", "--seq-len", "16",
                   steps=5)
    assert report.script_exit == "finished"
    assert report.optimizer_steps == 2
    assert (report.batch_size, report.sequence_length) == (4, 16)


def test_module_run_with_cwd() -> None:
    report = run_probe(["module_train", "--steps", "3"], module=True, cwd=str(SCRIPTS), steps=5)
    assert report.script_exit == "finished"
    assert report.optimizer_steps == 3
    assert report.label_offset == 1  # x, y = tokens[:, :-1], tokens[:, 1:]
    assert report.sequence_length == 32


def test_script_error_is_reported_not_raised() -> None:
    report = probe("raises.py")
    assert report.script_exit == "error: ValueError: batch has the wrong shape"
    assert report.script_error is not None
    assert "raise ValueError" in report.script_error
    assert report.optimizer_steps == 1


def test_missing_script_or_module_is_a_probe_error() -> None:
    with pytest.raises(ProbeError, match="no such script"):
        run_probe([str(SCRIPTS / "does_not_exist.py")])
    with pytest.raises(ProbeError, match="no module named"):
        run_probe(["no_such_module_for_trainaudit"], module=True)


def test_missing_torch_is_a_clear_probe_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ProbeError, match=r"pip install 'trainaudit\[torch\]'"):
        run_probe(["train.py"])


def test_package_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; import trainaudit.probe as p; "
            "print(sorted(p.__all__))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert "run_probe" in result.stdout


# ---------------------------------------------------------- precision, memory


def test_bf16_autocast_share() -> None:
    report = probe("bf16_autocast.py")
    assert report.autocast_fraction >= 0.9
    assert "TA301" not in codes(report)
    assert probe("correct_shift.py", "--steps", "50").autocast_fraction == 0.0


def test_checkpointing_detected_and_activation_bytes_drop() -> None:
    plain = probe("checkpointed.py", steps=2)
    non_reentrant = probe("checkpointed.py", "--checkpoint", steps=2)
    reentrant = probe("checkpointed.py", "--checkpoint", "--reentrant", steps=2)
    assert not plain.checkpointing
    assert non_reentrant.checkpointing
    assert reentrant.checkpointing
    assert non_reentrant.checkpoint_regions == 4 * 2  # 4 blocks, 2 steps
    assert plain.activation_bytes_per_step > 0
    assert non_reentrant.activation_bytes_per_step <= 0.5 * plain.activation_bytes_per_step
    assert reentrant.activation_bytes_per_step <= 0.5 * plain.activation_bytes_per_step
    assert plain.label_offset == non_reentrant.label_offset == 1


def test_clip_before_unscale_is_ta303() -> None:
    wrong = probe("grad_scaler.py")
    assert wrong.clipped_scaled_gradients
    assert wrong.clip_scale == 1024.0
    assert "TA303" in codes(wrong)
    right = probe("grad_scaler.py", "--unscale")
    assert not right.clipped_scaled_gradients
    assert right.clip_calls == 5
    assert "TA303" not in codes(right)


# ------------------------------------------- accumulation measured at run time


def test_loss_not_divided_over_the_window_is_ta202() -> None:
    wrong = probe("accumulate.py", "--undivided", steps=3)
    assert wrong.loss_scale_at_backward == pytest.approx(1.0)
    assert len(wrong.window_grad_norms) == 4
    assert wrong.window_grad_norms == sorted(wrong.window_grad_norms)  # summed: grows
    assert codes(wrong) == {"TA202", "TA301"}
    ta202 = next(f for f in wrong.findings if f.code == "TA202")
    assert ta202.message.startswith("measured on the first window of 4 micro-batches: each "
                                    "backward received the loss as the loss function returned "
                                    "it (scale 1, not 1/4)")
    right = probe("accumulate.py", steps=3)
    assert right.loss_scale_at_backward == pytest.approx(0.25)
    assert codes(right) == {"TA301"}
    # the same data and weights: the summed window's gradient is 4x the averaged one
    assert wrong.window_grad_norms[-1] == pytest.approx(4 * right.window_grad_norms[-1], rel=1e-4)


def test_two_losses_of_one_batch_are_not_a_window() -> None:
    report = probe("two_losses.py", steps=2)
    assert report.micro_batches_per_step == 2.0
    assert report.loss_scale_at_backward is None
    assert "TA202" not in codes(report)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_scheduler_stepped_every_micro_batch_is_ta203() -> None:
    wrong = probe("accumulate.py", "--scheduler-every-micro-batch", steps=3)
    assert (wrong.scheduler_steps, wrong.scheduler_steps_per_optimizer_step) == (8, 4.0)
    assert codes(wrong) == {"TA203", "TA301"}
    ta203 = next(f for f in wrong.findings if f.code == "TA203")
    assert ta203.message.startswith("measured 4 scheduler steps per optimizer step (8 between "
                                    "optimizer steps 1 and 3, 4 micro-batches per step)")
    right = probe("accumulate.py", steps=3)
    assert (right.scheduler_steps, right.scheduler_steps_per_optimizer_step) == (2, 1.0)


def test_autocast_off_on_this_device_and_a_disabled_scaler() -> None:
    report = probe("amp_off_on_cpu.py", steps=2)
    assert (report.autocast_state, report.autocast_devices) == ("disabled", ["cpu"])
    assert report.autocast_fraction == 0.0
    assert (report.scaler_state, report.clip_calls) == ("disabled", 2)
    assert not report.clipped_scaled_gradients
    assert codes(report) == {"TA201"}  # no TA301: the autocast is there, off on a CPU
    buffer = io.StringIO()
    render_report(report, Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "autocast present but disabled on this device (cpu)" in text
    assert "not measurable (GradScaler disabled: its scale is 1)" in text
    absent = probe("correct_shift.py", "--steps", "50")
    assert absent.autocast_state == "absent"


def test_throughput_excludes_the_warm_up_step() -> None:
    report = probe("grad_accum.py")
    assert report.tokens_per_step == 4 * 4 * 32  # 4 micro-batches of 4 x 32 tokens
    assert not report.timing_includes_warmup
    assert report.tokens_per_second == pytest.approx(report.tokens_per_step / report.step_seconds)
    assert report.seconds_per_token == pytest.approx(report.step_seconds / report.tokens_per_step)
    assert probe("exits_early.py", steps=1).timing_includes_warmup


def test_step_time_is_the_median_of_the_timed_steps_with_their_spread() -> None:
    # One step slowed by another process (a shared machine) must not move the reading
    # (issue 19: two demo runs read 840 and 5,976 tokens/s).
    from trainaudit.probe.timing import StepClock

    clock = StepClock()
    clock.started = 0.0
    clock.ends = [5.0, 5.2, 5.4, 7.4, 7.6, 7.8]  # warm-up, then 0.2 s steps and one 2 s
    assert clock.durations() == pytest.approx([0.2, 0.2, 2.0, 0.2, 0.2])
    assert clock.seconds() == pytest.approx(0.2)
    one = StepClock()
    one.started, one.ends = 1.0, [4.0]
    assert one.seconds() == pytest.approx(3.0)  # the warm-up step is all there is
    # CPU time per step: the process's own clock, which a neighbour does not inflate.
    clock.cpu_started = 0.0
    clock.cpu_ends = [2.0, 2.1, 2.2, 2.3, 2.5, 2.6]
    assert clock.cpu_seconds() == pytest.approx(0.1)


def test_report_shows_the_spread_and_what_its_throughput_measures() -> None:
    report = probe("grad_accum.py")
    assert report.timed_steps == 4
    assert report.step_seconds_min <= report.step_seconds <= report.step_seconds_max
    buffer = io.StringIO()
    render_report(report, Console(file=buffer, width=400, color_system=None))
    text = buffer.getvalue()
    assert "(median of 4 steps after the warm-up; " in text
    assert report.cpu_seconds_per_step > 0
    assert "ms (median; this process's CPU time, which other work on the machine" in text
    assert "throughput: tokens per optimizer step (batch x sequence x micro-batches x " in text


def test_progress_lines_go_to_the_stream_given() -> None:
    import time

    from trainaudit.probe.watchers import ProgressLine

    lines = io.StringIO()
    ticker = ProgressLine(lines, 5, lambda: 2, first=0.0, every=3600)
    ticker.start()
    deadline = time.monotonic() + 30
    while not lines.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    ticker.stop()
    assert lines.getvalue().startswith("trainaudit probe: 2/5 optimizer steps after ")


# ------------------------------------------------------------ global state


def test_global_state_is_restored_after_runs() -> None:
    watched = {
        "Tensor.backward": (vars(torch.Tensor), "backward"),
        "autograd.backward": (vars(torch.autograd), "backward"),
        "clip_grad_norm_": (vars(torch.nn.utils), "clip_grad_norm_"),
        "clip_grad.clip_grad_norm_": (vars(torch.nn.utils.clip_grad), "clip_grad_norm_"),
        "GradScaler.unscale_": (vars(torch.amp.GradScaler), "unscale_"),
        "CheckpointFunction.forward": (vars(checkpoint_module.CheckpointFunction), "forward"),
        "_checkpoint_hook.__init__": (vars(checkpoint_module._checkpoint_hook), "__init__"),
        "Optimizer.step": (vars(torch.optim.Optimizer), "step"),
    }
    before = {name: ns.get(attr) for name, (ns, attr) in watched.items()}
    argv, path, cwd = list(sys.argv), list(sys.path), os.getcwd()
    rng = torch.get_rng_state()
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    for args in (["raises.py"], ["grad_scaler.py"], ["checkpointed.py", "--checkpoint"]):
        run_probe([str(SCRIPTS / args[0]), *args[1:]], steps=2)
    after = {name: ns.get(attr) for name, (ns, attr) in watched.items()}
    assert after == before
    assert (sys.argv, sys.path, os.getcwd()) == (argv, path, cwd)
    assert torch.equal(torch.get_rng_state(), rng)
    assert (torch.get_num_threads(), torch.is_grad_enabled()) == (threads, grad)
    assert torch._C._len_torch_function_stack() == 0
    assert not module_hooks._global_forward_pre_hooks
    assert not module_hooks._global_forward_hooks
    assert not optimizer_hooks._global_optimizer_pre_hooks
    assert not optimizer_hooks._global_optimizer_post_hooks
    assert "tinylm" not in sys.modules  # the scripts' own module is forgotten
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_each_run_imports_its_own_copy_of_the_project(tmp_path: Path) -> None:
    import shutil

    original, fixed = tmp_path / "original", tmp_path / "fixed"
    shutil.copytree(SCRIPTS, original)
    shutil.copytree(SCRIPTS, fixed)
    helper = fixed / "tinylm.py"
    helper.write_text(helper.read_text().replace("labels[..., 1:]", "labels[..., :-1]"))
    sys.path.insert(0, str(original))
    try:
        import tinylm  # the original copy, imported before the probe runs

        first = run_probe([str(fixed / "correct_shift.py")], steps=2)
        second = run_probe([str(original / "correct_shift.py")], steps=2)
        assert (first.label_offset, second.label_offset) == (0, 1)
        assert sys.modules["tinylm"] is tinylm
    finally:
        sys.path.remove(str(original))
        sys.modules.pop("tinylm", None)


# ----------------------------------------------------------------- output


def test_json_has_the_spec_keys() -> None:
    report = probe("double_shift.py")
    data = json.loads(json.dumps(report.to_json()))
    spec_types = {
        "label_offset": int, "wrapped_label_positions": int, "micro_batches_per_step": float,
        "optimizer_steps": int, "autocast_fraction": float, "checkpointing": bool,
        "activation_bytes_per_step": int, "step_seconds": float,
    }
    for key, kind in spec_types.items():
        assert isinstance(data[key], kind), key
    assert 0.0 <= data["autocast_fraction"] <= 1.0
    assert [f["code"] for f in data["findings"]] == ["TA102", "TA201", "TA301"]
    assert set(data["findings"][0]) == {"code", "name", "severity", "message"}


def test_render_report_shows_table_and_findings() -> None:
    buffer = io.StringIO()
    render_report(probe("double_shift.py"), Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "label offset" in text
    assert "2 (double shift; 120/120 positions)" in text
    assert "TA102 double-label-shift [error]" in text


# ------------------------------------------------------ reference trainer


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference_impl/ not present")
def test_reference_trainer_measures_the_reviewed_bugs() -> None:
    report = run_probe([str(REFERENCE), "--steps", "50"], steps=5)
    assert report.script_exit == "stopped"
    assert report.optimizer_steps == 5
    assert report.label_offset == 2
    assert report.micro_batches_per_step == 1.0
    assert report.autocast_fraction == 0.0
    assert report.checkpointing is False
    assert report.batch_size == 4
    # SequentialLR.step calls its children's step: still one scheduler step per step
    assert report.scheduler_steps_per_optimizer_step == 1.0
    assert codes(report) == {"TA102", "TA201", "TA301"}


# ------------------------------------- wrapped labels: evidence, not chance (issue 19)

def _correct_batch(vocab: int, rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = tokens[:-1], y = tokens[1:]`` over random windows: no wrap anywhere."""
    tokens = torch.randint(0, vocab, (rows, length + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("vocab", [2, 3, 5, 10, 50])
def test_correct_script_is_never_reported_as_wrapped(vocab: int) -> None:
    # Before: the last target equal to the row's first token by chance (1 in `vocab`)
    # was a wrap; with 50 tokens, 4 seeds of 12 reported TA101 on 8 rows.
    reported = []
    for seed in range(400):
        samples = []
        for step in range(5):  # one probe's loss calls
            ids, targets = _correct_batch(vocab, 8, 32, seed * 10 + step)
            sample = compare_labels(ids, targets, -100)
            assert sample is not None and sample.offset == 1
            samples.append(sample)
        _, evidence = summarise(samples)
        assert evidence is not None
        if evidence.wrapped:
            reported.append(seed)
    assert reported == []


@pytest.mark.parametrize(("vocab", "rows", "calls"), [(50, 8, 1), (10, 8, 1), (5, 8, 2),
                                                      (2, 8, 4), (2, 4, 6)])
def test_a_real_roll_is_reported_once_the_rows_rule_out_chance(vocab: int, rows: int,
                                                               calls: int) -> None:
    samples = []
    for call in range(calls):
        ids = torch.randint(0, vocab, (rows, 32), generator=torch.Generator().manual_seed(call))
        sample = compare_labels(ids, torch.roll(ids, -1, dims=1), -100)
        assert sample is not None
        samples.append(sample)
    offset, evidence = summarise(samples)
    assert evidence is not None
    assert (offset, evidence.wrapped, evidence.wrap_rows) == (1, rows * calls, rows * calls)
    assert math.exp(evidence.wrap_log_chance) < 1e-6


def test_a_roll_on_too_few_rows_to_tell_from_chance_is_not_reported() -> None:
    ids = torch.randint(0, 2, (4, 32), generator=torch.Generator().manual_seed(3))
    _, evidence = summarise([compare_labels(ids, torch.roll(ids, -1, dims=1), -100)])  # type: ignore[list-item]
    assert evidence is not None
    assert (evidence.wrap_rows, evidence.wrapped) == (4, 0)  # about 2**-4: no proof


def test_summed_loss_normalised_by_the_script_reads_as_its_mean() -> None:
    # `F.cross_entropy(..., reduction="sum") / labels.numel()` is the mean spelled out: the
    # window's scale is read against the mean, so undivided is TA202 and divided is not.
    wrong = probe("accumulate.py", "--summed", "--undivided", steps=3)
    assert wrong.loss_scale_at_backward == pytest.approx(1.0)
    assert codes(wrong) == {"TA202", "TA301"}
    right = probe("accumulate.py", "--summed", steps=3)
    assert right.loss_scale_at_backward == pytest.approx(0.25)
    assert codes(right) == {"TA301"}


# ------------------------------------------------------------ mode at run time


def test_training_in_eval_mode_after_an_evaluation_is_ta502() -> None:
    wrong = probe("eval_mode.py", "--no-restore")
    # 4 steps of 2 micro-batches; the evaluation after step 1 leaves eval mode on, so the
    # 6 backward passes of steps 2-4 run through a model in eval mode.
    assert (wrong.backward_calls, wrong.eval_mode_backward_calls) == (8, 6)
    ta502 = [f for f in wrong.findings if f.code == "TA502"]
    assert [f.message for f in ta502] == [
        "6 of 8 backward passes ran through a model in eval mode (`.training` False): an "
        "evaluation switched it with `model.eval()` and nothing switched it back, so those "
        "training steps ran with dropout off and batch-norm statistics frozen"]
    assert ta502[0].severity == "error"
    for restored in ((), ("--was-training",)):
        right = probe("eval_mode.py", *restored)
        assert (right.backward_calls, right.eval_mode_backward_calls) == (8, 0)
        assert "TA502" not in codes(right)
    assert ProbeReport.from_json(wrong.to_json()).eval_mode_backward_calls == 6
