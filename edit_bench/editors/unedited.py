"""The identity editor: evaluates the base model as it is (the "Baseline" rows of the papers' tables)."""

from __future__ import annotations

from .base import Editor


class Unedited(Editor):
    """Changes nothing. With ``delta`` it evaluates a saved edit as is."""

    edits = "none"
    supports_batch = True
