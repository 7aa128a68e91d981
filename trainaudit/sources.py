"""A checked file's text: Python source decoded as the interpreter would, or a notebook's
code cells. Phase 1 analyses it; the project phase reads it again where it needs a file's
text (the flow model) rather than carrying every file's source between processes."""

from __future__ import annotations

import io
import tokenize
import zlib

from trainaudit.notebook import Notebook, NotebookError, is_notebook


class DecodeError(Exception):
    pass


def read_source(data: bytes) -> tuple[str, str]:
    """Decode Python source bytes with their PEP 263 encoding; returns (text, encoding)."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        raise DecodeError(str(exc)) from None
    try:
        return data.decode(encoding), encoding
    except (UnicodeDecodeError, LookupError) as exc:
        raise DecodeError(f"cannot decode as {encoding}: {exc}") from None


def source_of(display: str, data: bytes) -> str:
    """The analysed source of a file's bytes: Python decoded with its PEP 263 encoding,
    or a notebook's code cells (trainaudit/notebook.py)."""
    if not is_notebook(display):
        return read_source(data)[0]
    try:
        return Notebook.parse(data.decode("utf-8")).source
    except (UnicodeDecodeError, NotebookError) as exc:
        raise DecodeError(str(exc)) from None


def text_check(text: str) -> int:
    """A cheap fingerprint of an analysed text, to know a re-read gives the same one."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) ^ len(text)
