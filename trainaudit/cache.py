"""The per-file result cache, in ``.trainaudit_cache/`` under the config root (like ruff's).

Phase 1 results (findings, the file's summary, its suppression comments) are
stored per file, keyed by the file's content hash; the whole store is keyed by
the tool's version and code, the Python version and the settings (selected
codes, rule options, prefilter). Phase 2 always runs, over cached and fresh
summaries alike, so cross-file findings follow an edit in any file.

A warm run must not read the files: each entry also keeps the file's stamp
(mtime, size) when it was analysed. A file whose stamp is unchanged is a hit
without being opened; one whose stamp changed is hashed, and is a hit again if
its content is unchanged (a ``touch`` or a branch switch). A store is three
files, each read and written at most once per run: the pack (stamps, hashes,
findings, suppressions), the summaries (the cross-file facts, loaded only when
phase 2 has to run) and the last phase-2 findings with the content hashes they
came from (reused as they are when no file changed).

Concurrent runs are safe: a pack is written to a temporary file and renamed
over the old one, a run that finds the pack changed since it read it merges
its entries into the newer one, and a pack that cannot be read (truncated,
foreign, from another version) counts as empty. The pack is a pickle read by
an unpickler that only builds trainaudit's own data classes and plain
containers, so a pack planted in a repository cannot run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainaudit import __version__
from trainaudit.diagnostics import Finding
from trainaudit.discover import SourceFile
from trainaudit.engine import FileResult, Settings, analyse_files, content_digest, run_project_rules
from trainaudit.model.project import ModuleSummary

CACHE_DIR_NAME = ".trainaudit_cache"
CACHE_DIR_ENV = "TRAINAUDIT_CACHE_DIR"
_FORMAT = 5  # 3: findings carry a typed payload only (no fix_data dict); 4: flow outlines; 5: summaries without sources
# A file modified less than this long before it was stamped might be modified again
# within the file system's timestamp granularity without its stamp changing ("racy",
# as git calls it); such an entry is verified by content on the next run.
_RACY_NS = 1_000_000_000

# Pack entry: (mtime_ns or None when racy, size, content digest, phase-1 result without
# its summary, whether it has one). Summaries entry: (content digest, summary).
Entry = tuple[int | None, int, str, FileResult, bool]
SummaryEntry = tuple[str, ModuleSummary]


def cache_dir_for(root: Path) -> Path:
    """Where the cache lives: ``$TRAINAUDIT_CACHE_DIR`` or ``<root>/.trainaudit_cache``."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override) if override else root / CACHE_DIR_NAME


def _code_fingerprint() -> str:
    """Stamps of trainaudit's own modules: an edited rule invalidates the cache even
    when the version string did not change (editable installs, development)."""
    package = Path(__file__).resolve().parent
    parts: list[str] = []
    for folder, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(folder, name))
                parts.append(f"{folder[len(str(package)):]}/{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def settings_key(settings: Settings) -> str:
    """The key of one store: everything besides a file's content that shapes its result."""
    material = json.dumps({
        "version": __version__,
        "code": _code_fingerprint(),
        "python": sys.version_info[:2],
        "enabled": sorted(settings.enabled),
        "options": {k: settings.options[k] for k in sorted(settings.options)},
        "prefilter": settings.prefilter,
    }, sort_keys=True, default=repr)
    return hashlib.blake2b(material.encode(), digest_size=12).hexdigest()


# -- reading and writing stores ---------------------------------------------------

_SAFE_BUILTINS = frozenset({"set", "frozenset", "list", "dict", "tuple", "bytearray",
                            "complex", "slice", "range", "bool", "int", "float", "str", "bytes"})
_SAFE_COLLECTIONS = frozenset({"OrderedDict", "defaultdict", "Counter", "deque"})


class _SafeUnpickler(pickle.Unpickler):
    """Builds only trainaudit classes and plain containers; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "builtins" and name in _SAFE_BUILTINS)
            or (module == "collections" and name in _SAFE_COLLECTIONS)
            or module == "trainaudit" or module.startswith("trainaudit.")
        )
        if allowed:
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"cache: refusing to load {module}.{name}")


@dataclass
class _Store:
    """One file of a store as read: its entries, and its stamp to detect a writer since."""

    path: Path
    key: str
    entries: dict[str, Any] = field(default_factory=dict)
    # (mtime_ns, size, inode) of the file when read; None when there was none.
    stamp: tuple[int, int, int] | None = None

    @classmethod
    def read(cls, path: Path, key: str) -> _Store:
        store = cls(path, key, stamp=_file_stamp(path))
        if store.stamp is None:
            return store
        try:
            with path.open("rb") as handle:
                payload = _SafeUnpickler(handle).load()
            if (isinstance(payload, dict) and payload.get("format") == _FORMAT
                    and payload.get("key") == key and isinstance(payload.get("entries"), dict)):
                store.entries = payload["entries"]
        except Exception:  # a corrupt or foreign file is an empty store
            pass
        return store

    def save(self, fresh: Mapping[str, Any]) -> None:
        """Write ``fresh`` over the entries (merged into a newer file another run wrote)."""
        try:
            entries = self.entries
            if _file_stamp(self.path) != self.stamp:
                entries = _Store.read(self.path, self.key).entries
            entries = {k: v for k, v in entries.items() if k in fresh or os.path.exists(k)}
            entries.update(fresh)
            _write_pickle(self.path, {"format": _FORMAT, "key": self.key, "entries": entries})
        except OSError:
            pass  # a read-only tree still gets checked, just not cached


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _write_pickle(path: Path, payload: object) -> None:
    """Write atomically: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _mark_cache_dir(path.parent.parent)
    fd, temp = tempfile.mkstemp(prefix=".store-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _mark_cache_dir(folder: Path) -> None:
    """Keep the cache out of git and out of backups, as ruff does."""
    for name, text in ((".gitignore", "# Automatically created by trainaudit.\n*\n"),
                       ("CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n")):
        target = folder / name
        if not target.exists():
            with contextlib.suppress(OSError):
                target.write_text(text, encoding="utf-8")


# -- the cache ---------------------------------------------------------------------

@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    # Hits whose stamp had changed but whose content had not (verified by hash).
    verified: int = 0
    # Phase 2's findings came from the memo (no file changed since they were computed).
    project_reused: bool = False
    # Whether the summaries had to be loaded (phase 2 ran over cached files).
    summaries_loaded: bool = False


@dataclass
class _Pending:
    """A cached result whose summary is still on disk."""

    file: SourceFile
    ident: str
    digest: str
    result: FileResult


class ResultCache:
    """Phases 1 and 2 with a cache: ``check_files(..., analyse=c.analyse, project=c.project)``.

    With ``lazy_summaries`` (pass ``project`` too, then), cached summaries are loaded
    only if phase 2 must run; otherwise ``analyse`` returns complete results.
    """

    def __init__(self, root: Path, *, lazy_summaries: bool = False) -> None:
        self.directory = cache_dir_for(root)
        self.stats = CacheStats()
        self.lazy_summaries = lazy_summaries
        self._key: tuple[Settings, str] | None = None
        self._pending: list[_Pending] = []
        self._settings: Settings | None = None
        self._jobs: int | None = None

    def store_path(self, key: str, kind: str) -> Path:
        return self.directory / __version__ / f"{key}.{kind}"

    def analyse(self, files: Sequence[SourceFile], settings: Settings, *,
                overlay: Mapping[str, str] | None = None, jobs: int | None = None,
                progress: Callable[[int], None] | None = None) -> list[FileResult]:
        """``analyse_files`` that reuses stored results and stores fresh ones."""
        if overlay:  # editor buffers are not files on disk: nothing to key them by
            return analyse_files(files, settings, overlay=overlay, jobs=jobs, progress=progress)
        self._settings, self._jobs = settings, jobs
        key = self._settings_key(settings)
        pack = _Store.read(self.store_path(key, "pack"), key)
        now = time.time_ns()
        cwd = os.getcwd()
        results: list[FileResult | None] = [None] * len(files)
        ids: list[str] = []
        stamps: list[tuple[int, int] | None] = []
        misses: list[int] = []
        fresh: dict[str, Entry] = {}
        for index, file in enumerate(files):
            ident = os.path.join(cwd, file.path)
            ids.append(ident)
            try:
                stat = os.stat(file.path)
                stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                stamp = None
            stamps.append(stamp)
            entry = pack.entries.get(ident)
            if stamp is None or entry is None or entry[3].path != file.display:
                misses.append(index)
                continue
            mtime, size, digest, stored, has_summary = entry
            if not (mtime == stamp[0] and size == stamp[1]):
                if not (size == stamp[1] and self._same_content(file.path, digest)):
                    misses.append(index)
                    continue
                fresh[ident] = (_trusted(stamp, now), size, digest, stored, has_summary)
                self.stats.verified += 1
            result = replace(stored, cached=True, digest=digest)
            results[index] = result
            if has_summary:
                self._pending.append(_Pending(file, ident, digest, result))
        self.stats.hits = len(files) - len(misses)
        if progress and self.stats.hits:
            progress(self.stats.hits)
        fresh_summaries: dict[str, SummaryEntry] = {}
        if misses:
            analysed = analyse_files([files[i] for i in misses], replace(settings, hash_sources=True),
                                     jobs=jobs, progress=progress)
            for index, result in zip(misses, analysed, strict=True):
                results[index] = result
                stamp = stamps[index]
                if stamp is None or result.digest is None or result.errors:
                    continue
                fresh[ids[index]] = (_trusted(stamp, now), stamp[1], result.digest,
                                     replace(result, digest=None, summary=None),
                                     result.summary is not None)
                if result.summary is not None:
                    fresh_summaries[ids[index]] = (result.digest, result.summary)
        self.stats.misses = len(misses)
        if fresh:
            pack.save(fresh)
        if fresh_summaries or (self._pending and not self.lazy_summaries):
            self._attach_summaries(fresh_summaries)
        return [r for r in results if r is not None]

    def project(self, results: Sequence[FileResult], settings: Settings
                ) -> tuple[list[Finding], list[str]]:
        """Phase 2, memoised: the same files with the same contents and settings give the
        same findings, so when no file changed the last findings are reused; otherwise the
        cached summaries are loaded and phase 2 runs over all of them."""
        if any(r.digest is None for r in results):
            self._attach_summaries({})
            return run_project_rules(results, settings)
        key = self._settings_key(settings)
        inputs = hashlib.blake2b(digest_size=16)
        for r in sorted(results, key=lambda r: r.path):
            inputs.update(f"{r.path}\0{r.digest}\0".encode())
        fingerprint = inputs.hexdigest()
        path = self.store_path(key, "project")
        try:
            with path.open("rb") as handle:
                memo = _SafeUnpickler(handle).load()
            if isinstance(memo, dict) and memo.get("inputs") == fingerprint:
                self.stats.project_reused = True
                return list(memo["findings"]), []
        except Exception:  # missing, corrupt or foreign: compute
            pass
        self._attach_summaries({})
        findings, errors = run_project_rules(results, settings)
        if not errors:
            with contextlib.suppress(OSError):
                _write_pickle(path, {"inputs": fingerprint, "findings": findings})
        return findings, errors

    def _attach_summaries(self, fresh: dict[str, SummaryEntry]) -> None:
        """Give every pending cached result its summary; store ``fresh`` ones. A summary
        missing from the store (or from another content) is recomputed."""
        if not self._pending and not fresh:
            return
        assert self._settings is not None
        key = self._settings_key(self._settings)
        store = _Store.read(self.store_path(key, "summaries"), key)
        if self._pending:
            self.stats.summaries_loaded = True
        lost: list[_Pending] = []
        for pending in self._pending:
            entry = store.entries.get(pending.ident)
            if entry is not None and entry[0] == pending.digest:
                pending.result.summary = entry[1]
            else:
                lost.append(pending)
        self._pending = []
        if lost:
            redone = analyse_files([p.file for p in lost], replace(self._settings, hash_sources=True),
                                   jobs=self._jobs)
            for pending, result in zip(lost, redone, strict=True):
                pending.result.summary = result.summary
                if result.summary is not None and result.digest == pending.digest:
                    fresh[pending.ident] = (pending.digest, result.summary)
        if fresh:
            store.save(fresh)

    def _settings_key(self, settings: Settings) -> str:
        if self._key is None or self._key[0] != settings:
            self._key = (settings, settings_key(settings))
        return self._key[1]

    @staticmethod
    def _same_content(path: Path, digest: str) -> bool:
        try:
            return content_digest(path.read_bytes()) == digest
        except OSError:
            return False


def _trusted(stamp: tuple[int, int], now_ns: int) -> int | None:
    """The mtime to store, or None when it is too recent to vouch for the content."""
    return stamp[0] if now_ns - stamp[0] > _RACY_NS else None
