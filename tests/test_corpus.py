"""The generated corpus (benchmarks/corpus, issue 16): the generator's ground truth, and
``check`` against it on a seeded sample.

The static tests state the truth exactly. What ``check`` misses today is listed by
name below, strictly both ways: a listed twin that is now right fails the test (remove
it from the table), an unlisted one that is wrong fails it too. Regenerate the tables
with ``python -m benchmarks.corpus.known`` after the flow model changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from benchmarks.corpus.compose import ALL_PARTS, sample, sample_faults, vary_one, write_project
from benchmarks.corpus.composition import (
    AXES,
    BASELINE,
    NAMED,
    TWINS,
    Composition,
    problems,
    truth,
)
from benchmarks.corpus.loops import assemble
from benchmarks.corpus.probe import probe_project
from benchmarks.corpus.static import FOUND_FALSE, check_project

SEED, COUNT = 16, 40

# The baseline's twins with one part changed (``vary_one``) whose label codes are not the
# truth today: (axis, part, twin) -> the codes ``check`` reports (for the reader; the test
# asserts only that they are still not the truth, and that nothing false is among them).
KNOWN_ALONE: dict[tuple[str, str, str], list[str]] = {}

# Twins of the seeded sample and of the named compositions (the mm-rec layout) whose
# label codes are not the truth today:
# "<the composition's parts>/<twin>" -> the parts that alone lose TA102 (KNOWN_ALONE).
KNOWN_MISSES: dict[str, str] = {}

# Twins with a false TA101/TA102/TA105 today: key -> the false codes.
KNOWN_FALSE_ON_CLEAN: dict[str, list[str]] = {}


def _codes(folder: Path) -> list[str]:
    return sorted({f["code"] for f in check_project(folder)})


def test_sample_is_deterministic_distinct_and_fits() -> None:
    assert sample_faults(sample, COUNT, SEED, AXES, problems) == []


def test_every_part_fits_a_composition_near_the_baseline() -> None:
    assert [(a, p) for a, p in ALL_PARTS if vary_one(BASELINE, a, p) is None] == []


def test_twins_truth() -> None:
    assert truth(BASELINE, "bug") == {
        "key": BASELINE.key(), "twin": "bug", "label_offset": 2, "producer_shift": 1,
        "loss_shift": 1, "codes": ["TA102"], "runnable": True, "parts": BASELINE.parts()}
    clean = truth(BASELINE, "clean")
    assert (clean["label_offset"], clean["producer_shift"], clean["loss_shift"], clean["codes"]) \
        == (1, 0, 1, [])
    rolled = Composition(**{**BASELINE.parts(), "formula": "roll_masked",
                            "clean_mode": "producer"})
    assert [truth(rolled, t)["codes"] for t in TWINS] == [["TA103"], ["TA102"]]
    assert [truth(rolled, t)["label_offset"] for t in TWINS] == [1, 2]
    unmasked = Composition(**{**rolled.parts(), "formula": "roll_unmasked"})
    assert [truth(unmasked, t)["codes"] for t in TWINS] == [["TA101"], ["TA101", "TA102"]]
    padded = Composition(**{**rolled.parts(), "formula": "pad_mismatch"})
    assert [truth(padded, t)["codes"] for t in TWINS] == [["TA104"], ["TA102", "TA104"]]
    hf = vary_one(BASELINE, "body", "hf_config")
    assert hf is not None and hf.consumer == "hf_labels" and not hf.runnable()
    assert [truth(hf, t)["label_offset"] for t in TWINS] == [1, 2]


def test_named_compositions() -> None:
    assert sorted(NAMED) == ["mm-rec-review-fix", "mm-rec-review-roll"]
    fix, roll = NAMED["mm-rec-review-fix"], NAMED["mm-rec-review-roll"]
    assert problems(fix) == problems(roll) == []
    assert fix.runnable() and roll.runnable()
    assert [truth(fix, t)["codes"] for t in TWINS] == [[], ["TA102"]]
    assert [truth(roll, t)["codes"] for t in TWINS] == [["TA103"], ["TA102"]]
    files = assemble(fix, "bug")
    assert sorted(files) == ["data.py", "evaluation.py", "loaders.py", "model.py", "steps.py",
                             "train.py"]
    assert "return [self.stoi.get(c, 0) for c in text]" in files["data.py"]
    assert "ids = torch.tensor(self.sequences[idx], dtype=torch.long)" in files["data.py"]
    assert "train_loader, val_loader = create_data_loaders(batch_size=BATCH)" in files["train.py"]
    assert "    logits, aux_loss = model(ids, return_aux=True)\n" in files["steps.py"]
    assert "torch.roll(ids, shifts=-1, dims=0)" in assemble(roll, "bug")["data.py"]


def test_baseline_files() -> None:
    bug, clean = assemble(BASELINE, "bug"), assemble(BASELINE, "clean")
    assert sorted(bug) == ["data.py", "model.py", "train.py"]
    for files in (bug, clean):
        for text in files.values():
            ast.parse(text)
    assert "        labels[:-1] = ids[1:]\n        labels[-1] = -100\n" in bug["data.py"]
    assert "labels[:-1]" not in clean["data.py"]
    assert "labels = ids.clone()\n" in clean["data.py"]
    shifted_loss = ("loss = F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.size(-1)), "
                    "labels[..., 1:].reshape(-1))")
    assert shifted_loss in bug["train.py"] and shifted_loss in clean["train.py"]


def test_parts_alone(tmp_path: Path) -> None:
    wrong, fixed, false = [], [], []
    for axis, part in ALL_PARTS:
        comp = vary_one(BASELINE, axis, part)
        assert comp is not None
        for twin in TWINS:
            folder = tmp_path / f"{axis}-{part}-{twin}"
            expected = write_project(folder, comp, twin)["codes"]
            found = _codes(folder)
            # A false code is allowed only where KNOWN_ALONE names it.
            false += [(axis, part, twin, c) for c in found
                      if c in FOUND_FALSE and c not in expected
                      and c not in KNOWN_ALONE.get((axis, part, twin), [])]
            if (axis, part, twin) in KNOWN_ALONE:
                if found == expected:
                    fixed.append((axis, part, twin))
            elif found != expected:
                wrong.append((axis, part, twin, found, expected))
    assert fixed == [], f"now right: remove these from KNOWN_ALONE: {fixed}"
    assert wrong == [], "not the truth and not in KNOWN_ALONE: (part, twin, found, expected)"
    assert false == []


def test_seeded_sample_static(tmp_path: Path) -> None:
    wrong, fixed, false, seen = [], [], {}, set()
    for index, comp in enumerate(sample(COUNT, SEED) + list(NAMED.values())):
        for twin in TWINS:
            key = f"{comp.key()}/{twin}"
            seen.add(key)
            folder = tmp_path / f"{index:03d}-{twin}"
            expected = write_project(folder, comp, twin)["codes"]
            found = _codes(folder)
            bad = [c for c in found if c in FOUND_FALSE and c not in expected]
            if bad:
                false[key] = bad
            if key in KNOWN_MISSES:
                if found == expected:
                    fixed.append(key)
            elif found != expected:
                wrong.append((key, found, expected))
    assert fixed == [], f"now right: remove these from KNOWN_MISSES: {fixed}"
    assert wrong == [], "not the truth and not in KNOWN_MISSES: (twin, found, expected)"
    assert false == KNOWN_FALSE_ON_CLEAN
    assert set(KNOWN_MISSES) <= seen, "KNOWN_MISSES names twins the sample no longer holds"


@pytest.mark.slow
def test_probe_measures_the_ground_truth(tmp_path: Path) -> None:
    # Two clean and two bug twins, the first runnable compositions of four producer
    # containers, and the bug twin of the mm-rec layout.
    chosen: list[tuple[Composition, str]] = []
    for comp in sample(COUNT, SEED):
        if comp.runnable() and comp.container not in {c.container for c, _ in chosen}:
            chosen.append((comp, TWINS[len(chosen) % 2]))
    chosen = chosen[:4]
    assert len(chosen) == 4
    chosen.append((NAMED["mm-rec-review-fix"], "bug"))  # the layout SPEC §1 reviews
    measured = []
    for index, (comp, twin) in enumerate(chosen):
        folder = tmp_path / f"{index}-{twin}"
        expected = write_project(folder, comp, twin)
        run = probe_project(folder)
        assert "error" not in run, run.get("error")
        assert run["label_offset"] == expected["label_offset"], comp.key()
        measured.append(run["label_offset"])
    assert measured == [1, 2, 1, 2, 2]


@pytest.mark.slow
def test_fixed_projects_run_and_train_on_the_next_token(tmp_path: Path) -> None:
    # Issue 18: both twins of the mm-rec layout and of two runnable sample compositions,
    # fixed with --unsafe-fixes, compile, gain no warning or error, run, and the bug
    # twins whose TA102 was fixed now train on offset 1.
    from benchmarks.corpus.fixes import fix_and_run

    comps = [NAMED["mm-rec-review-fix"], *[c for c in sample(COUNT, SEED) if c.runnable()][:2]]
    results = []
    for index, comp in enumerate(comps):
        for twin in TWINS:
            folder = tmp_path / f"{index}-{twin}"
            write_project(folder, comp, twin)
            results.append(fix_and_run(folder))
    for result in results:
        assert (result["broken"], result["new_serious"], result["error"]) == ([], [], None)
        assert result["offset"] == result["expected_offset"], result
    mm_rec_bug = results[TWINS.index("bug")]
    assert mm_rec_bug["fixed"].get("TA102") == 1 and mm_rec_bug["offset"] == 1
