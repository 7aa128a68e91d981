"""Runs the rules over files and collects findings.

Phase 1, per file (in worker processes for large trees, cacheable): read,
text prefilter, parse, module rules, family summaries, suppression comments.
Phase 2, once: project rules over all summaries (facts that cross files).
Then selection, per-file ignores and suppressions, and sorting.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from trainaudit.config import Config, is_test_path
from trainaudit.diagnostics import Finding
from trainaudit.discover import SourceFile
from trainaudit.model.module import ModuleFacts, clear_walk_cache
from trainaudit.model.project import ModuleSummary, Project
from trainaudit.notebook import CellStarts, cell_starts, in_cells, is_notebook
from trainaudit.parsing import module_name_for, parse_or_report, parse_source, syntax_finding
from trainaudit.registry import (
    SUMMARIZERS,
    Gate,
    ModuleRule,
    ProjectRule,
    RuleContext,
    applies_to_tests,
    load_rules,
)
from trainaudit.sources import DecodeError, source_of, text_check
from trainaudit.suppression import (
    SuppressionComment,
    Suppressions,
    parse_suppressions,
    suppressing_line,
    suppression_comments,
)

# Below this many files, processes cost more than they save.
PARALLEL_THRESHOLD = 48


@dataclass
class FileResult:
    """Everything phase 1 learns about one file; picklable (it crosses processes and the cache)."""

    path: str
    checked: bool = False
    parsed: bool = False  # the rules ran on it (it decoded and parsed)
    findings: list[Finding] = field(default_factory=list)
    summary: ModuleSummary | None = None
    suppressions: Suppressions = field(default_factory=dict)
    # Directives with codes, where they are (read when TA002 is selected).
    comments: tuple[SuppressionComment, ...] = ()
    # A notebook's cells in the analysed source (see trainaudit/notebook.py).
    cells: CellStarts = ()
    errors: list[str] = field(default_factory=list)
    cached: bool = False
    # Hash of the bytes analysed (set when ``Settings.hash_sources``); the cache's key.
    digest: str | None = None


@dataclass
class CheckResult:
    """The outcome of a run."""

    findings: list[Finding]
    files_seen: int
    files_checked: int
    files_cached: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sources: dict[str, str] = field(default_factory=dict)
    # Findings of advice rules that were not selected, by code: counted, not reported.
    advice_not_shown: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """What a worker needs to analyse files: picklable, derived from the config."""

    enabled: frozenset[str]
    options: Mapping[str, Any]
    # The text prefilter skips files that contain no rule trigger; off only in tests
    # that prove it hides nothing (or with TRAINAUDIT_NO_PREFILTER=1).
    prefilter: bool = True
    hash_sources: bool = False


def syntax_check(file: SourceFile, text: str | None = None, digest: str | None = None
                 ) -> FileResult:
    """TA001 alone, for a file given explicitly that the prefilter skipped: a file named on
    the command line that does not parse is reported whatever it contains. ``digest``
    (the skipped result's) keeps the cache's phase-2 memo valid."""
    result = FileResult(file.display, checked=True, digest=digest)
    if text is None:
        try:
            text = source_of(file.display, file.path.read_bytes())
        except OSError as exc:
            result.errors.append(f"{file.display}: cannot read: {exc.strerror or exc}")
            return result
        except DecodeError as exc:
            result.findings.append(syntax_finding(file.display, f"file cannot be read: {exc}"))
            return result
    parsed = parse_or_report(file.display, text)
    if isinstance(parsed, Finding):
        result.findings.append(parsed)
    # A file that parses had nothing for the rules: it counts as skipped, not checked.
    result.checked = bool(result.findings)
    return result


class Analyzer:
    """Phase 1 for one process: the rules and summarizers, instantiated once."""

    def __init__(self, settings: Settings) -> None:
        rules = load_rules()
        self.settings = settings
        self.context = RuleContext(settings.options)
        # TA001 is the engine's own (it parses); the others read parsed files.
        file_rules = {code: cls for code, cls in sorted(rules.items())
                   if code != "TA001" and issubclass(cls, ModuleRule)}
        self.module_rules = [cls() for code, cls in file_rules.items() if code in settings.enabled]
        project_rules = [cls for code, cls in rules.items()
                         if code in settings.enabled and issubclass(cls, ProjectRule)]
        wanted = {f for cls in project_rules for f in cls.families}
        if any(not cls.families for cls in project_rules):
            wanted = set(SUMMARIZERS)
        self.summarizers = [s for s in SUMMARIZERS.values() if s.family in wanted]
        # What each selected rule (by code) and summarizer (by family) needs to see a file.
        self.gates: dict[str, Gate] = {r.code: Gate.of(r.triggers, r.requires)
                                       for r in self.module_rules}
        self.gates.update((s.family, Gate.of(s.triggers, s.requires)) for s in self.summarizers)
        # A syntax error is reported in any file some rule would look at, selected or not.
        self.syntax_gates: list[Gate] = []
        if "TA001" in settings.enabled:
            self.syntax_gates = [Gate.of(cls.triggers, cls.requires) for code, cls in file_rules.items()
                                 if code not in self.gates]
            self.syntax_gates += [Gate.of(s.triggers, s.requires) for s in SUMMARIZERS.values()
                                  if s.family not in self.gates]
        self.prefilter = settings.prefilter

    def readers(self, data: bytes) -> frozenset[str] | None:
        """The text prefilter: the selected rules (codes) and summarizers (families) that
        could find something in a file, from its raw bytes; None when the prefilter is off.
        Empty: the file is skipped unparsed."""
        if not self.prefilter:
            return None
        found = frozenset(name for name, gate in self.gates.items() if gate.passes(data))
        if found or not any(gate.passes(data) for gate in self.syntax_gates):
            return found
        return frozenset(("TA001",))

    def wants(self, text: str) -> bool:
        """Whether any rule would read this file (the prefilter's verdict)."""
        readers = self.readers(text.encode("utf-8", "surrogatepass"))
        return readers is None or bool(readers)

    def analyse(self, file: SourceFile, text: str | None = None) -> FileResult:
        if text is None:
            try:
                data = file.path.read_bytes()
            except OSError as exc:
                return FileResult(file.display,
                                  errors=[f"{file.display}: cannot read: {exc.strerror or exc}"])
            return self.analyse_bytes(file, data)
        readers = self.readers(text.encode("utf-8", "surrogatepass"))
        if readers is not None and not readers:
            return FileResult(file.display)
        return self._analyse_text(file, text, readers)

    def analyse_bytes(self, file: SourceFile, data: bytes) -> FileResult:
        """Phase 1 on a file's raw bytes: the prefilter, decoding, then the rules."""
        result = FileResult(file.display)
        if self.settings.hash_sources:
            result.digest = content_digest(data)
        readers = self.readers(data)  # before decoding: triggers and patterns are ASCII
        if readers is not None and not readers:
            return result
        try:
            text = source_of(file.display, data)
        except DecodeError as exc:
            result.checked = True
            if "TA001" in self.settings.enabled:
                result.findings.append(syntax_finding(file.display, f"file cannot be read: {exc}"))
            return result
        return self._analyse_text(file, text, readers, result)

    def _analyse_text(self, file: SourceFile, text: str, readers: frozenset[str] | None,
                      result: FileResult | None = None) -> FileResult:
        result = result or FileResult(file.display)
        result.checked = True
        result.suppressions = parse_suppressions(text)
        if is_notebook(file.display):
            result.cells = cell_starts(text)
        if "TA002" in self.settings.enabled:
            result.comments = suppression_comments(text)
        tree, text, cell_errors = parse_source(file.display, text, notebook=bool(result.cells))
        if "TA001" in self.settings.enabled:
            result.findings += cell_errors
        if isinstance(tree, Finding):
            if "TA001" in self.settings.enabled:
                result.findings.append(tree)
            return result
        result.parsed = True
        name, is_package = module_name_for(file.display)
        module = ModuleFacts(file.display, name, text, tree, is_package)
        for rule in self.module_rules:
            if readers is not None and rule.code not in readers:
                continue
            try:
                result.findings.extend(rule.check(module, self.context))
            except Exception:  # a broken rule must not stop the run
                result.errors.append(_crash(rule.code, file.display))
        summary = ModuleSummary(file.display, name, frozenset(module.imports.modules),
                                dict(module.imports.aliases), file=os.path.abspath(file.path),
                                text_check=text_check(text))
        for summarize in self.summarizers:
            if readers is not None and summarize.family not in readers:
                continue
            try:
                summary.facts[summarize.family] = summarize.function(module)
            except Exception:
                result.errors.append(_crash(f"facts:{summarize.family}", file.display))
        result.summary = summary
        clear_walk_cache()
        return result


def content_digest(data: bytes) -> str:
    """The hash that identifies a file's content in the cache."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _crash(what: str, path: str) -> str:
    last = traceback.format_exc().strip().splitlines()[-1]
    return f"internal error: {what} crashed on {path}: {last}"


_WORKER: Analyzer | None = None


def _worker_init(settings: Settings) -> None:
    global _WORKER
    _WORKER = Analyzer(settings)


def _worker_run(files: list[SourceFile]) -> list[FileResult]:
    assert _WORKER is not None
    return [_WORKER.analyse(f) for f in files]


def _chunks(items: Sequence[SourceFile], size: int) -> Iterable[list[SourceFile]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _size_of(file: SourceFile) -> int:
    try:
        return os.stat(file.path).st_size
    except OSError:
        return 0


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# A hook for a per-file result cache: (file, analyse) -> FileResult.
FileCache = Callable[[SourceFile, Callable[[SourceFile], FileResult]], FileResult]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a check runs. Parsing allocates millions of AST
    nodes and the results hold millions more; every collection traverses what is alive
    (measured on the torch package with one core: 15 s of 57 in the collector). Trees and
    values are freed by reference counting; what a check leaves alive is moved out of the
    collector's sight (``gc.freeze``) before it is switched back on, so the first
    collection after the check does not traverse it all again. The cost: cyclic garbage
    made during a check is never collected (small: a check's project model)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def analyse_files(files: Sequence[SourceFile], settings: Settings, *,
                  overlay: Mapping[str, str] | None = None, jobs: int | None = None,
                  progress: Callable[[int], None] | None = None) -> list[FileResult]:
    """Phase 1 over many files, in processes when there are enough of them."""
    overlay = overlay or {}
    jobs = jobs or default_jobs()
    results: list[FileResult] = []
    if jobs > 1 and len(files) >= PARALLEL_THRESHOLD and not overlay:
        import multiprocessing

        ctx = multiprocessing.get_context("fork") if hasattr(os, "fork") else None
        # Largest files first, in small chunks: one big file handed out last would
        # otherwise keep one worker busy while the others wait (a tree's sizes vary 1000x).
        order = sorted(range(len(files)), key=lambda i: -_size_of(files[i]))
        size = max(1, min(16, len(files) // (jobs * 32)))
        placed: list[FileResult | None] = [None] * len(files)
        position = 0
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(settings,)) as pool:
            for batch in pool.map(_worker_run, _chunks([files[i] for i in order], size)):
                for result in batch:
                    placed[order[position]] = result
                    position += 1
                if progress:
                    progress(len(batch))
        return [r for r in placed if r is not None]
    analyzer = Analyzer(settings)
    for file in files:
        results.append(analyzer.analyse(file, overlay.get(file.display)))
        if progress:
            progress(1)
    return results


def run_project_rules(results: Sequence[FileResult], settings: Settings,
                      texts: Mapping[str, str] | None = None) -> tuple[list[Finding], list[str]]:
    """Phase 2: project rules over every file's summary (``texts``: the overlay's)."""
    latent = [ModuleSummary(r.path, module_name_for(r.path)[0], frozenset(), {})
              for r in results if not r.checked and r.path.endswith(".py")]
    project = Project([r.summary for r in results if r.summary is not None], texts, latent)
    context = RuleContext(settings.options)
    findings: list[Finding] = []
    errors: list[str] = []
    for code, cls in sorted(load_rules().items()):
        if code not in settings.enabled or not issubclass(cls, ProjectRule):
            continue
        try:
            findings.extend(cls().check(project, context))
        except Exception:
            errors.append(_crash(code, "the project"))
    return findings, errors


# Phase 2: (every file's phase-1 result, settings) -> (findings, internal errors).
ProjectPhase = Callable[[Sequence[FileResult], Settings], tuple[list[Finding], list[str]]]


def settings_for(config: Config) -> Settings:
    prefilter = os.environ.get("TRAINAUDIT_NO_PREFILTER", "") in ("", "0")
    return Settings(config.enabled_codes(), dict(config.options), prefilter=prefilter)


def _unused_suppressions(files: Sequence[SourceFile], by_path: Mapping[str, FileResult],
                         used: Mapping[str, set[tuple[int, str]]], settings: Settings,
                         ignored: Callable[[str, str], bool]) -> list[Finding]:
    """TA002 over the files that parsed (rules/suppression.py says which codes it judges)."""
    from trainaudit.rules.suppression import unused_suppressions

    rules = load_rules()
    found: list[Finding] = []
    for file in files:
        result = by_path.get(file.display)
        if result is None or not result.parsed or not result.comments:
            continue
        path = file.display

        def judged(code: str, path: str = path, walked: bool = not file.explicit) -> bool:
            rule = rules.get(code)
            return (rule is not None and code != "TA002" and code in settings.enabled
                    and not ignored(code, path) and (walked or issubclass(rule, ModuleRule)))

        found += [f for f in unused_suppressions(path, result.comments, used.get(path, set()),
                                                 judged)
                  if not ignored("TA002", path)
                  and suppressing_line("TA002", (f.line,), result.suppressions) is None]
    return found


def check_files(files: Sequence[SourceFile], config: Config, *,
                overlay: Mapping[str, str] | None = None, jobs: int | None = None,
                progress: Callable[[int], None] | None = None,
                analyse: Callable[..., list[FileResult]] | None = None,
                project: ProjectPhase | None = None, place_in_cells: bool = True,
                context: Sequence[SourceFile] = (), count_advice: bool = False
                ) -> CheckResult:
    """Check files and return the findings that survive selection and suppression.

    ``analyse`` replaces phase 1 and ``project`` phase 2 (the cache passes both).
    Findings in notebooks are placed in their cells unless ``place_in_cells`` is false
    (the fixer works on the analysed source's lines). ``context``: other files of the
    project, read for the cross-file rules; only their findings that also involve one
    of ``files`` (at the finding or a related place) are reported. ``count_advice``:
    the advice rules not selected run too, and their findings are only counted
    (``CheckResult.advice_not_shown``).
    """
    started = time.perf_counter()
    settings = settings_for(config)
    unselected = config.unselected_advice() if count_advice else frozenset()
    if unselected:
        settings = replace(settings, enabled=settings.enabled | unselected)
    run = analyse or analyse_files
    # Both phases and the cache's loads; set before phase 1's workers fork (they inherit it).
    with _collector_paused():
        everything: list[FileResult] = run([*files, *context], settings, overlay=overlay,
                                           jobs=jobs, progress=progress)
        results = everything[:len(files)]
        if "TA001" in settings.enabled:
            results = [syntax_check(file, (overlay or {}).get(file.display), result.digest)
                       if file.explicit and not result.checked else result
                       for file, result in zip(files, results, strict=True)]
        context_results = everything[len(files):]
        project_findings, errors = (
            project([*results, *context_results], settings) if project is not None
            else run_project_rules([*results, *context_results], settings, overlay))
    if context:
        named = {file.display for file in files}
        project_findings = [f for f in project_findings if f.path in named
                            or any(place.path in named for place in f.related)]
    by_path = {r.path: r for r in [*results, *context_results]}
    ignored: dict[str, tuple[str, ...]] = {}

    def ignored_here(code: str, path: str) -> bool:
        if path not in ignored:
            ignored[path] = config.ignored_for(path)
        return any(code.startswith(c) for c in ignored[path])

    tests: dict[str, bool] = {}
    used: dict[str, set[tuple[int, str]]] = {}  # path -> (line of the comment, code)
    findings: list[Finding] = []
    hidden: Counter[str] = Counter()
    for finding in [f for r in results for f in r.findings] + project_findings:
        if finding.code not in settings.enabled or ignored_here(finding.code, finding.path):
            continue
        if not config.check_tests and not applies_to_tests(finding.code):
            if finding.path not in tests:
                tests[finding.path] = is_test_path(finding.path)
            if tests[finding.path]:
                continue
        owner = by_path.get(finding.path)
        lines = (finding.span.line, finding.span.end_line)
        line = suppressing_line(finding.code, lines, owner.suppressions) if owner else None
        if line is not None:
            used.setdefault(finding.path, set()).add((line, finding.code))
            continue
        if finding.code in unselected:
            hidden[finding.code] += 1
            continue
        findings.append(finding)
    if "TA002" in settings.enabled:
        findings += _unused_suppressions(files, by_path, used, settings, ignored_here)
    if place_in_cells and any(r.cells for r in results):
        findings = [in_cells(f, lambda path: by_path[path].cells if path in by_path else ())
                    for f in findings]
    findings = sorted(set(findings), key=Finding.sort_key)
    return CheckResult(
        findings=findings,
        files_seen=len(files),
        files_checked=sum(r.checked for r in results),
        files_cached=sum(r.cached for r in results),
        errors=[e for r in results for e in r.errors] + errors,
        seconds=time.perf_counter() - started,
        advice_not_shown=dict(sorted(hidden.items())),
    )
