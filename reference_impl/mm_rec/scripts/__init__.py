"""Entry-point scripts (run them as files, not modules)."""
