"""The identity editor: evaluates the base model as it is (the "Baseline" rows of the papers' tables), or a
saved edit."""

from __future__ import annotations

from .base import Editor


class Unedited(Editor):
    """Changes nothing.

    Args:
        delta: an ``edit.safetensors`` written by ``fit``: it is validated and added on load, and the model
            is evaluated as it then is. The only editor that takes a delta, so an editor's name in a
            result always means that editor's own edit.
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "none"
    multi_request = True

    def __init__(self, delta: str | None = None, base: str = "toy"):
        super().__init__(base=base)
        self.delta = delta
