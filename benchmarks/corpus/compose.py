"""Sample compositions deterministically from a seed and write them out as projects.

Each composition becomes two folders, ``<index>-clean`` and ``<index>-bug``, each
a small training project with its ground truth in ``truth.json``.
"""

from __future__ import annotations

import ast
import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.corpus.composition import AXES, TWINS, Composition, problems, truth
from benchmarks.corpus.loops import assemble

TRUTH_FILE = "truth.json"
C = TypeVar("C")


def all_parts(axes: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """Every (axis, part) pair, in the axes' order."""
    return [(axis, part) for axis, parts in axes.items() for part in parts]


ALL_PARTS = all_parts(AXES)


def _draw(rng: random.Random, axes: dict[str, tuple[str, ...]], build: Callable[..., C],
          axis: str, part: str) -> C:
    chosen = {name: rng.choice(parts) for name, parts in axes.items()}
    chosen[axis] = part
    return build(**chosen)


def sample(count: int, seed: int = 0) -> list[Composition]:
    """``count`` distinct label compositions (see :func:`sample_space`)."""
    return sample_space(count, seed, AXES, Composition, problems)


def sample_space(count: int, seed: int, axes: dict[str, tuple[str, ...]],
                 build: Callable[..., C], misfits: Callable[[C], list[str]],
                 tries: int = 5000) -> list[C]:
    """``count`` distinct compositions whose parts fit together, the same for the same seed.

    The i-th composition is built around the i-th part (cycling over every part of
    every axis), the other axes drawn uniformly with misfits rejected, so a part that
    fits few others (a batch function, Lightning) still appears about
    ``count / len(ALL_PARTS)`` times (``tries`` draws per composition before that part
    is skipped for the turn).
    """
    rng = random.Random(seed)
    parts = all_parts(axes)
    seen: set[C] = set()
    out: list[C] = []
    misses = 0
    while len(out) < count:
        axis, part = parts[(len(out) + misses) % len(parts)]
        for _ in range(tries):
            comp = _draw(rng, axes, build, axis, part)
            if comp not in seen and not misfits(comp):
                seen.add(comp)
                out.append(comp)
                break
        else:  # this part has no unseen fitting composition left
            misses += 1
            if misses > count * len(parts):
                raise RuntimeError(f"only {len(out)} distinct compositions fit")
    return out


def vary_one(base: Composition, axis: str, part: str) -> Composition | None:
    """``base`` with ``axis`` set to ``part``, and as few other axes changed as make it fit
    (tried in the order of ``AXES``; None when no change of up to two axes fits)."""
    first = replace(base, **{axis: part})
    if not problems(first):
        return first
    others = [(a, p) for a, parts in AXES.items() if a != axis for p in parts if p != getattr(base, a)]
    for a, p in others:
        comp = replace(first, **{a: p})
        if not problems(comp):
            return comp
    for i, (a, p) in enumerate(others):
        for b, q in others[i + 1:]:
            if b != a:
                comp = replace(first, **{a: p, b: q})
                if not problems(comp):
                    return comp
    return None


def write_project(root: Path, comp: Any, twin: str,
                  files: Callable[[Any, str], dict[str, str]] = assemble,
                  truth_of: Callable[[Any, str], dict[str, Any]] = truth) -> dict[str, Any]:
    """Write one twin under ``root`` (created, or replaced when it holds an earlier
    project) from ``files(comp, twin)``; return its ground truth, ``truth_of(comp, twin)``."""
    if root.exists():
        if not (root / TRUTH_FILE).exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not a generated project")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name, text in files(comp, twin).items():
        ast.parse(text, filename=f"{comp.key()}/{twin}/{name}")  # a generator bug, not a finding
        (root / name).write_text(text, encoding="utf-8")
    expected = truth_of(comp, twin)
    (root / TRUTH_FILE).write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n",
                                   encoding="utf-8")
    return expected


def write_corpus(root: Path, comps: list[Composition]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Write both twins of every composition; yield each project's folder and truth."""
    for index, comp in enumerate(comps):
        for twin in TWINS:
            folder = root / f"{index:05d}-{twin}"
            yield folder, write_project(folder, comp, twin)


def sample_faults(draw: Callable[[int, int], list[Any]], count: int, seed: int,
                  axes: dict[str, tuple[str, ...]],
                  misfits: Callable[[Any], list[str]]) -> list[str]:
    """What breaks the sampling contract for ``draw(count, seed)`` (empty when nothing):
    the same seed gives the same compositions and another seed others, all distinct, all
    fitting, and the i-th built around the i-th part (the first 40 parts all appear)."""
    comps = draw(count, seed)
    faults = []
    if comps != draw(count, seed):
        faults.append("not deterministic")
    if comps == draw(count, seed + 1):
        faults.append("the seed changes nothing")
    if len(set(comps)) != count:
        faults.append("not distinct")
    faults += [f"{c}: {misfits(c)}" for c in comps if misfits(c)]
    faults += [f"composition {i} is not built around {axis}={part}"
               for i, (axis, part) in enumerate(all_parts(axes)[:min(40, count)])
               if getattr(comps[i], axis) != part]
    return faults
