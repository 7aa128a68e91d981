"""Test-wide settings: the flow model raises on what it mishandles instead of dropping
the entry (a user's run keeps going; a test must see the bug)."""

import os

os.environ.setdefault("TRAINAUDIT_DEBUG", "1")
