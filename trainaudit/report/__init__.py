"""Renderers: the same findings as text, JSON, GitHub annotations or SARIF."""

from __future__ import annotations

from trainaudit.report.formats import FORMATS, render

__all__ = ["FORMATS", "render"]
