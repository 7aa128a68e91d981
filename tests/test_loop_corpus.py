"""The loop corpus (benchmarks/corpus/loop_*.py, issue 17): the generator's ground truth,
``check`` against it on a seeded sample, and the probe's readings against both.

What ``check`` misses today is named in ``benchmarks/corpus/loop_known.py`` by the parts
that cause it; the sample test holds it strictly both ways: a miss no entry explains
fails, and so does a twin an entry covers whose code is now found (remove the entry).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from benchmarks.corpus.compose import all_parts, sample_faults
from benchmarks.corpus.loop_assemble import assemble
from benchmarks.corpus.loop_composition import (
    AXES,
    BASELINE,
    BUGS,
    TWINS,
    LoopComposition,
    problems,
    truth,
)
from benchmarks.corpus.loop_known import KNOWN, known_cause
from benchmarks.corpus.loop_measure import loop_findings, outcome, sample, write
from benchmarks.corpus.probe import probe_in_process

SEED, COUNT = 17, 48


def _vary(**parts: str) -> LoopComposition:
    comp = LoopComposition(**{**BASELINE.parts(), **parts})
    assert problems(comp) == []
    return comp


def test_sample_is_deterministic_distinct_and_fits() -> None:
    assert sample_faults(sample, COUNT, SEED, AXES, problems) == []


def test_every_part_fits_a_bug_of_every_code_it_can_carry() -> None:
    comps = sample(600, 0)
    for axis, part in all_parts(AXES):
        assert any(getattr(c, axis) == part for c in comps), (axis, part)
    # Each code's bug appears with every loss form and loop shape.
    for code in BUGS:
        with_code = [c for c in comps if c.bug == code]
        assert {c.loss for c in with_code} == set(AXES["loss"])
        assert {c.shape for c in with_code} == set(AXES["shape"])


def test_truth_and_problems() -> None:
    assert [truth(BASELINE, t)["codes"] for t in TWINS] == [[], ["TA202"]]
    assert BASELINE.runnable()
    assert "TA502's bug needs an evaluation helper" in problems(
        LoopComposition(**{**BASELINE.parts(), "bug": "TA502", "evaluation": "none"}))
    assert "the framework divides the loss by the accumulation steps itself" in problems(
        LoopComposition(**{**BASELINE.parts(), "gate": "accelerate", "clip": "none"}))
    plateau = LoopComposition(**{**BASELINE.parts(), "scheduler": "plateau", "bug": "TA203"})
    assert "TA203's bug needs a scheduler that counts steps" in problems(plateau)
    assert not _vary(gate="deepspeed", clip="none", bug="TA203").runnable()


def test_baseline_twins_differ_by_the_division_only() -> None:
    bug, clean = assemble(BASELINE, "bug"), assemble(BASELINE, "clean")
    assert sorted(bug) == ["evaluation.py", "model.py", "train.py"]
    for files in (bug, clean):
        for text in files.values():
            ast.parse(text)
    assert clean["train.py"].replace("            loss = loss / ACCUM\n", "") == bug["train.py"]
    assert bug["evaluation.py"] == clean["evaluation.py"]


def test_bug_forms_of_each_code() -> None:
    ta203 = assemble(_vary(bug="TA203"), "bug")["train.py"]
    assert ("            loss.backward()\n            scheduler.step()\n"
            "            if (i + 1) % ACCUM == 0:\n") in ta203
    scaler = _vary(scaler="unscale_order", clip="helper_same", bug="TA303")
    order = assemble(scaler, "bug")["train.py"]
    assert ("clip_gradients(model)\n                scaler.unscale_(optimizer)\n"
            "                scaler.step(optimizer)\n") in order
    assert ("scaler.unscale_(optimizer)\n                clip_gradients(model)\n"
            in assemble(scaler, "clean")["train.py"])
    missing = assemble(_vary(scaler="unscale_missing", bug="TA303"), "bug")["train.py"]
    assert "unscale_" not in missing
    for evaluation in ("train_after", "was_training", "context_manager"):
        comp = _vary(evaluation=evaluation, bug="TA502")
        clean, bug = (assemble(comp, t)["evaluation.py"] for t in TWINS)
        assert ("model.train(" in clean) and ("model.train(" not in bug)
    early = assemble(_vary(evaluation="try_finally", bug="TA502"), "bug")["evaluation.py"]
    assert "                return total / limit\n    model.train()\n" in early
    plateau = assemble(_vary(scheduler="plateau"), "clean")["train.py"]
    assert ("                if scheduler is not None:\n"
            "                    scheduler.step(loss.item())\n") in plateau


def test_seeded_sample_static(tmp_path: Path) -> None:
    unexplained, fixed, false = [], [], []
    for index, comp in enumerate(sample(COUNT, SEED)):
        for twin in TWINS:
            folder = tmp_path / f"{index:03d}-{twin}"
            scored = outcome(write(folder, comp, twin), loop_findings(folder))
            if scored.false or scored.clean_errors:
                false.append((comp.key(), twin, sorted(scored.false),
                              sorted(scored.clean_errors)))
            for code in sorted(scored.missed):
                if known_cause(comp.parts(), code) is None:
                    unexplained.append((comp.key(), code))
            if twin == "bug" and not scored.missed and known_cause(comp.parts(), comp.bug):
                fixed.append((comp.key(), comp.bug))
    assert false == [], "a false loop code or an error on a clean twin"
    assert unexplained == [], "missed, and no KNOWN entry explains it"
    assert fixed == [], "found now: remove the KNOWN entry that covers it"


def test_known_entries_name_real_parts() -> None:
    for code, parts, reason in KNOWN:
        assert code in BUGS and reason
        assert all(part in AXES[axis] for axis, part in parts.items())


def test_each_known_miss_is_still_missed(tmp_path: Path) -> None:
    # The first composition of a fixed sample with the entry's parts and its bug: the code
    # is missed on the bug twin (found now: remove the entry) and the clean twin is clean.
    comps = sample(600, 0)
    for index, (code, parts, _) in enumerate(KNOWN):
        comp = next(c for c in comps if c.bug == code
                    and all(getattr(c, a) == p for a, p in parts.items()))
        found = {}
        for twin in TWINS:
            folder = tmp_path / f"{index}-{twin}"
            found[twin] = outcome(write(folder, comp, twin), loop_findings(folder))
        assert found["bug"].missed == {code}, (code, parts)
        assert not found["clean"].false and not found["clean"].clean_errors


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_probe_readings_are_the_truth_on_runnable_twins(tmp_path: Path) -> None:
    # Every code's bug twin and its clean twin, in the plainest shapes and in a trainer.
    comps = [
        BASELINE,
        _vary(reduction="sum_norm", loss="fn_other", gate="counter"),
        _vary(scheduler="onecycle", bug="TA203", shape="plain"),
        _vary(scaler="unscale_order", clip="helper_other", bug="TA303", shape="trainer"),
        _vary(scaler="unscale_missing", bug="TA303", shape="helper"),
        _vary(evaluation="try_finally", bug="TA502", shape="plain"),
        _vary(evaluation="context_manager", bug="TA502", loss="crit_self", shape="trainer"),
        _vary(evaluation="was_training", bug="TA502", scheduler="plateau"),
    ]
    measured = {}
    for index, comp in enumerate(comps):
        for twin in TWINS:
            folder = tmp_path / f"{index}-{twin}"
            write(folder, comp, twin)
            run = probe_in_process(folder, steps=4)
            assert "error" not in run, run
            measured[comp.key(), twin] = sorted(set(run["probe_codes"]) & set(BUGS))
    assert measured == {(c.key(), t): truth(c, t)["codes"] for c in comps for t in TWINS}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_fixed_loop_projects_compile_gain_nothing_and_run_without_the_bug(tmp_path: Path) -> None:
    # Both twins of a seeded sample and of one composition per fix form, fixed with
    # --unsafe-fixes --select ALL: no changed file that does not compile, no new warning or
    # error, no loop code the fix removed still read by the probe, no clean twin whose
    # probe readings changed (benchmarks/corpus/loop_fixes.py).
    from benchmarks.corpus.loop_fixes import run_sample

    forms = [
        BASELINE,  # TA202, fixed by dividing the loss
        _vary(scheduler="onecycle", bug="TA203", shape="plain"),
        _vary(scaler="unscale_missing", bug="TA303", shape="helper"),
        _vary(scaler="unscale_order", bug="TA303", shape="plain"),  # unscale_ moved up
        _vary(scaler="unscale_order", clip="helper_other", bug="TA303", shape="trainer"),
        _vary(evaluation="try_finally", bug="TA502", shape="plain"),
    ]
    seeded = [c for c in sample(COUNT, SEED) if c.runnable()][:3]
    outcomes = run_sample([*forms, *seeded], tmp_path)
    assert [(o.truth["key"], o.failures()) for o in outcomes if o.failures()] == []
    bugs = [o for o in outcomes if o.truth["twin"] == "bug"]
    assert [sorted(o.removed()) for o in bugs[:len(forms)]] == [
        ["TA202"], ["TA203"], ["TA303"], ["TA303"], ["TA303"], []]
    assert [o.offered(o.truth["codes"][0]) for o in bugs[:len(forms)]] == [
        True, True, True, True, True, False]
    assert all(o.reported(o.truth["codes"][0]) for o in bugs)
    assert not any(o.removed() for o in outcomes if o.truth["twin"] == "clean")
