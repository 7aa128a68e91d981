"""Small helpers that lay out generated code."""

from __future__ import annotations


def block(lines: list[str], indent: int) -> str:
    """Lines (which may hold their own newlines) indented by ``indent`` spaces, newline-ended."""
    pad = " " * indent
    out = []
    for line in lines:
        for piece in line.split("\n"):
            out.append(pad + piece if piece else "")
    return "\n".join(out) + "\n" if out else ""


def imports_text(imports: set[str]) -> str:
    """Import lines in a stable order: plain ``import`` first, then ``from`` imports."""
    plain = sorted(i for i in imports if i.startswith("import "))
    froms = sorted(i for i in imports if i.startswith("from "))
    return "\n".join(plain + froms) + "\n"
