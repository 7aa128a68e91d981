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

from benchmarks.corpus.compose import ALL_PARTS, sample, vary_one, write_project
from benchmarks.corpus.composition import (
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
KNOWN_ALONE: dict[tuple[str, str, str], list[str]] = {
    ("source", "random_ints", "bug"): [],
    ("source", "char_class", "bug"): [],
    ("source", "tokenizer_attr", "bug"): [],
    ("source", "encode_helper", "bug"): [],
    ("formula", "full_like_slice", "bug"): [],
    ("container", "iterable_dict", "bug"): [],
    ("container", "iterable_tuple", "bug"): [],
    ("container", "batch_fn", "bug"): [],
    ("container", "batch_gen", "bug"): [],
    ("loader", "direct", "bug"): [],
    ("wrapper", "islice", "bug"): [],
    ("wrapper", "progress", "bug"): [],
    ("move", "dict_comp", "bug"): [],
    ("move", "tuple_gen", "bug"): [],
    ("body", "tuple", "bug"): [],
    ("body", "dict", "bug"): [],
    ("body", "hf_getattr", "bug"): [],
    ("body", "hf_table", "bug"): [],
    ("placement", "to_device", "bug"): [],
    ("consumer", "aux_branch", "bug"): [],
    ("consumer", "hf_renamed", "bug"): [],
    ("consumer", "hf_renamed", "clean"): ['TA105'],
    ("loop", "lightning", "bug"): [],
    ("loop", "lightning_dm", "bug"): [],
}

# Twins of the seeded sample and of the named compositions (the mm-rec layout) whose
# label codes are not the truth today:
# "<the composition's parts>/<twin>" -> the parts that alone lose TA102 (KNOWN_ALONE).
KNOWN_MISSES: dict[str, str] = {
    "randint-native-pad_mismatch-map_tuple-factory_four-accelerate-per_tensor_kw-tensor-ddp_guarded-shift_vars-trainer-none-producer/clean": "a combination (no part alone makes it wrong)",
    "randint-native-pad_mismatch-map_tuple-factory_four-accelerate-per_tensor_kw-tensor-ddp_guarded-shift_vars-trainer-none-producer/bug": "a combination (no part alone makes it wrong)",
    "random_ints-tensor-clone_slice-collator_class-factory_dict-islice-dict_comp-tuple-to_device-loss_helper-trainer-none-loss/bug": "source=random_ints, wrapper=islice, move=dict_comp, body=tuple, placement=to_device",
    "char_class-tensor-roll_unmasked-map_tuple-factory_four-enumerate-per_tensor_kw-flag-ddp_guarded-shift_vars-epoch-none-producer/clean": "value lost by source=char_class",
    "char_class-tensor-roll_unmasked-map_tuple-factory_four-enumerate-per_tensor_kw-flag-ddp_guarded-shift_vars-epoch-none-producer/bug": "source=char_class",
    "tokenizer_attr-as_tensor-pair_slices-collate_fn-factory_four-islice-per_tensor_kw-flag-none-loss_helper-helper-other_file-loss/bug": "source=tokenizer_attr, wrapper=islice",
    "append_loop-from_numpy-roll_masked-iterable_dict-factory_index-accelerate-per_tensor_kw-flag-none-loss_helper-plain-other_file-producer/clean": "value lost by container=iterable_dict",
    "append_loop-from_numpy-roll_masked-iterable_dict-factory_index-accelerate-per_tensor_kw-flag-none-loss_helper-plain-other_file-producer/bug": "container=iterable_dict",
    "encode_helper-from_numpy-pair_slices-iterable_dict-factory_index-enumerate-none-hf_pretrained-ddp_guarded-hf_labels-trainer-other_file-loss/bug": "source=encode_helper, container=iterable_dict",
    "packed_stream-as_tensor-clone_slice-iterable_dict-inline-islice-per_tensor-hf_table-compile_guarded-hf_labels-epoch-other_file-loss/bug": "container=iterable_dict, wrapper=islice, body=hf_table",
    "packed_stream-tensor-roll_masked-iterable_tuple-inline_kwargs-zip_range-per_tensor_kw-flag-none-criterion-trainer-other_file-producer/clean": "value lost by container=iterable_tuple",
    "packed_stream-tensor-roll_masked-iterable_tuple-inline_kwargs-zip_range-per_tensor_kw-flag-none-criterion-trainer-other_file-producer/bug": "container=iterable_tuple",
    "tokenizer_attr-as_tensor-full_like_slice-iterable_tuple-factory_tuple-progress-tuple_gen-dict-ddp_guarded-loss_helper-epoch-none-loss/bug": "source=tokenizer_attr, formula=full_like_slice, container=iterable_tuple, wrapper=progress, move=tuple_gen, body=dict",
    "random_ints-from_numpy-pad_mismatch-map_tuple-factory_index-enumerate-per_tensor_kw-dict-compile_guarded-shift_vars-plain-none-producer/clean": "value lost by source=random_ints, body=dict",
    "random_ints-from_numpy-pad_mismatch-map_tuple-factory_index-enumerate-per_tensor_kw-dict-compile_guarded-shift_vars-plain-none-producer/bug": "source=random_ints, body=dict",
    "tokenizer_attr-from_numpy-clone_slice-collate_fn-factory_four-plain-none-flag-compile_guarded-loss_helper-plain-other_file-loss/bug": "source=tokenizer_attr",
    "packed_stream-tensor-full_like_slice-iterable_tuple-factory_dict-zip_range-per_tensor_kw-flag-ddp_guarded-criterion-helper-none-producer/bug": "formula=full_like_slice, container=iterable_tuple",
    "random_ints-from_numpy-roll_masked-map_dict-factory_four-islice-per_tensor-tuple-to_device-inline_ce-helper-other_file-producer/clean": "value lost by source=random_ints, wrapper=islice, body=tuple, placement=to_device",
    "random_ints-from_numpy-roll_masked-map_dict-factory_four-islice-per_tensor-tuple-to_device-inline_ce-helper-other_file-producer/bug": "source=random_ints, wrapper=islice, body=tuple, placement=to_device",
    "tokenizer_attr-from_numpy-pair_slices-iterable_tuple-factory_index-islice-none-hf_getattr-compile_guarded-hf_labels-trainer-none-loss/bug": "source=tokenizer_attr, container=iterable_tuple, wrapper=islice, body=hf_getattr",
    "encode_helper-tensor-roll_unmasked-map_tuple-inline-accelerate-none-tensor-to_device-criterion-trainer-none-producer/clean": "value lost by source=encode_helper, placement=to_device",
    "encode_helper-tensor-roll_unmasked-map_tuple-inline-accelerate-none-tensor-to_device-criterion-trainer-none-producer/bug": "source=encode_helper, placement=to_device",
    "append_loop-as_tensor-pad_mismatch-collator_class-factory_four-enumerate-per_tensor_kw-tuple-compile_guarded-inline_ce-trainer-none-producer/clean": "value lost by body=tuple",
    "append_loop-as_tensor-pad_mismatch-collator_class-factory_four-enumerate-per_tensor_kw-tuple-compile_guarded-inline_ce-trainer-none-producer/bug": "body=tuple",
    "char_class-from_numpy-pad_mismatch-map_dict-factory_tuple-islice-dict_comp-tuple-to_device-inline_ce-epoch-other_file-producer/clean": "value lost by source=char_class, wrapper=islice, move=dict_comp, body=tuple, placement=to_device",
    "char_class-from_numpy-pad_mismatch-map_dict-factory_tuple-islice-dict_comp-tuple-to_device-inline_ce-epoch-other_file-producer/bug": "source=char_class, wrapper=islice, move=dict_comp, body=tuple, placement=to_device",
    "random_ints-tensor-full_like_slice-map_tuple-factory_index-plain-per_tensor_kw-tensor-ddp_guarded-shift_vars-epoch-none-producer/bug": "source=random_ints, formula=full_like_slice",
    "tokenizer_attr-tensor-clone_slice-iterable_dict-factory_index-islice-per_tensor-dict-ddp_guarded-inline_ce-helper-none-loss/bug": "source=tokenizer_attr, container=iterable_dict, wrapper=islice, body=dict",
    "random_ints-from_numpy-roll_masked-iterable_tuple-inline-islice-per_tensor-dict-to_device-loss_helper-plain-other_file-producer/clean": "value lost by source=random_ints, container=iterable_tuple, wrapper=islice, body=dict, placement=to_device",
    "random_ints-from_numpy-roll_masked-iterable_tuple-inline-islice-per_tensor-dict-to_device-loss_helper-plain-other_file-producer/bug": "source=random_ints, container=iterable_tuple, wrapper=islice, body=dict, placement=to_device",
    "packed_stream-as_tensor-full_like_slice-collate_fn-factory_tuple-progress-per_tensor-tensor-to_device-loss_helper-epoch-other_file-loss/bug": "formula=full_like_slice, wrapper=progress, placement=to_device",
    "char_class-tensor-clone_slice-collator_class-factory_index-islice-none-loss_inside-compile_guarded-model_loss-plain-other_file-loss/bug": "source=char_class, wrapper=islice",
    "packed_stream-from_numpy-clone_slice-batch_fn-direct-plain-per_tensor-hf_config-ddp_guarded-hf_labels-epoch-other_file-loss/bug": "container=batch_fn, loader=direct",
    "random_ints-as_tensor-clone_slice-batch_gen-direct-enumerate-per_tensor_kw-flag-none-loss_helper-plain-other_file-producer/bug": "source=random_ints, container=batch_gen, loader=direct",
    "packed_stream-tensor-roll_unmasked-iterable_dict-inline-plain-per_tensor_kw-flag-none-loss_helper-trainer-none-producer/clean": "value lost by container=iterable_dict",
    "packed_stream-tensor-roll_unmasked-iterable_dict-inline-plain-per_tensor_kw-flag-none-loss_helper-trainer-none-producer/bug": "container=iterable_dict",
    "encode_helper-tensor-clone_slice-iterable_tuple-inline_kwargs-enumerate-tuple_gen-tensor-compile_guarded-inline_ce-plain-other_file-producer/bug": "source=encode_helper, container=iterable_tuple, move=tuple_gen",
    "char_class-from_numpy-pair_slices-collator_class-factory_tuple-islice-per_tensor_kw-tuple-none-criterion-helper-none-producer/bug": "source=char_class, wrapper=islice, body=tuple",
    "packed_stream-as_tensor-full_like_slice-iterable_dict-factory_dict-islice-dict_comp-flag-compile_guarded-aux_branch-plain-other_file-producer/bug": "formula=full_like_slice, container=iterable_dict, wrapper=islice, move=dict_comp, consumer=aux_branch",
    "packed_stream-as_tensor-full_like_slice-iterable_tuple-factory_index-progress-per_tensor_kw-flag-none-aux_branch-epoch-none-loss/bug": "formula=full_like_slice, container=iterable_tuple, wrapper=progress, consumer=aux_branch",
    "append_loop-as_tensor-clone_slice-map_tuple-factory_four-plain-per_tensor-flag-none-shift_vars-trainer-other_file-producer/bug": "a combination (no part alone makes it wrong)",
    "encode_helper-as_tensor-pair_slices-batch_fn-direct-plain-none-tensor-to_device-criterion-trainer-other_file-producer/bug": "source=encode_helper, container=batch_fn, loader=direct, placement=to_device",
    "char_class-as_tensor-full_like_slice-iterable_tuple-factory_four-plain-per_tensor-tuple-to_device-shift_vars-trainer-other_file-producer/bug": "source=char_class, formula=full_like_slice, container=iterable_tuple, body=tuple, placement=to_device",
    "append_loop-as_tensor-roll_unmasked-iterable_tuple-inline-enumerate-per_tensor_kw-dict-to_device-criterion-trainer-other_file-producer/clean": "value lost by container=iterable_tuple, body=dict, placement=to_device",
    "append_loop-as_tensor-roll_unmasked-iterable_tuple-inline-enumerate-per_tensor_kw-dict-to_device-criterion-trainer-other_file-producer/bug": "container=iterable_tuple, body=dict, placement=to_device",
    "append_loop-tensor-full_like_slice-map_tuple-inline_kwargs-islice-per_tensor_kw-tuple-none-inline_ce-epoch-other_file-producer/bug": "formula=full_like_slice, wrapper=islice, body=tuple",
    "char_class-tensor-roll_unmasked-map_tuple-inline-zip_range-per_tensor-tensor-compile_guarded-shift_vars-epoch-none-producer/clean": "value lost by source=char_class",
    "char_class-tensor-roll_unmasked-map_tuple-inline-zip_range-per_tensor-tensor-compile_guarded-shift_vars-epoch-none-producer/bug": "source=char_class",
    "encode_helper-tensor-full_like_slice-iterable_dict-factory_four-progress-per_tensor_kw-tensor-compile_guarded-loss_helper-trainer-other_file-loss/bug": "source=encode_helper, formula=full_like_slice, container=iterable_dict, wrapper=progress",
    "tokenizer_attr-tensor-clone_slice-iterable_tuple-factory_index-accelerate-per_tensor-flag-none-shift_vars-trainer-none-loss/bug": "source=tokenizer_attr, container=iterable_tuple",
    "append_loop-as_tensor-roll_masked-iterable_dict-factory_four-zip_range-none-tuple-compile_guarded-shift_vars-epoch-none-producer/clean": "value lost by container=iterable_dict, body=tuple",
    "append_loop-as_tensor-roll_masked-iterable_dict-factory_four-zip_range-none-tuple-compile_guarded-shift_vars-epoch-none-producer/bug": "container=iterable_dict, body=tuple",
    "append_loop-from_numpy-pad_mismatch-collator_class-factory_dict-enumerate-per_tensor-tensor-compile_guarded-loss_helper-helper-other_file-producer/clean": "a combination (no part alone makes it wrong)",
    "append_loop-from_numpy-pad_mismatch-collator_class-factory_dict-enumerate-per_tensor-tensor-compile_guarded-loss_helper-helper-other_file-producer/bug": "a combination (no part alone makes it wrong)",
    "char_class-tensor-clone_slice-map_dict-factory_tuple-enumerate-per_tensor-flag-to_device-aux_branch-helper-other_file-loss/bug": "source=char_class, placement=to_device, consumer=aux_branch",
    "char_class-tensor-roll_masked-map_dict-factory_tuple-enumerate-per_tensor-flag-to_device-aux_branch-helper-other_file-producer/clean": "value lost by source=char_class, placement=to_device, consumer=aux_branch",
    "char_class-tensor-roll_masked-map_dict-factory_tuple-enumerate-per_tensor-flag-to_device-aux_branch-helper-other_file-producer/bug": "source=char_class, placement=to_device, consumer=aux_branch",
}

# Twins with a false TA101/TA102/TA105 today: key -> the false codes.
KNOWN_FALSE_ON_CLEAN: dict[str, list[str]] = {
}


def _codes(folder: Path) -> list[str]:
    return sorted({f["code"] for f in check_project(folder)})


def test_sample_is_deterministic_distinct_and_fits() -> None:
    comps = sample(COUNT, SEED)
    assert comps == sample(COUNT, SEED)
    assert comps != sample(COUNT, SEED + 1)
    assert len(set(comps)) == COUNT
    assert all(problems(c) == [] for c in comps)
    # The i-th composition is built around the i-th part: the first 40 parts all appear.
    assert all(getattr(comps[i], axis) == part for i, (axis, part) in enumerate(ALL_PARTS[:COUNT]))


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
