"""What ``check`` misses on the loop corpus today, by the parts that cause it.

Each entry: (code, the parts a bug twin has) → why ``check`` misses that code there. The
measure report sorts every miss under the first entry whose parts the twin has; a miss
no entry explains is reported as UNKNOWN (a new defect, or an entry to add).
"""

from __future__ import annotations

KNOWN: list[tuple[str, dict[str, str], str]] = [
]


def known_cause(parts: dict[str, str], code: str) -> str | None:
    """The known reason ``code`` is missed on a bug twin with these parts, if any."""
    for known_code, needs, reason in KNOWN:
        if known_code == code and all(parts.get(a) == p for a, p in needs.items()):
            where = ", ".join(f"{a}={p}" for a, p in needs.items())
            return f"{code} ({where}): {reason}"
    return None
