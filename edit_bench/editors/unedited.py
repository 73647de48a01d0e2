"""The identity editor: evaluates the base model as it is (the "Baseline" rows of the papers' tables), or a
saved edit."""

from __future__ import annotations

from .base import Editor


class Unedited(Editor):
    """Changes nothing.

    Args:
        delta: an ``edit.safetensors`` written by ``fit``: it is validated and added on load, and the model
            is evaluated as it then is. The only editor that takes a delta, so an editor's name in a
            result always means that editor's own edit. The original values of the tensors it changes are
            kept: the delta's baseline (``baseline: true``) is the base model without it.
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "none"
    families = ("sd1", "sd2", "sdxl", "sd3", "flux")
    multi_request = True
    files = {"delta": "input"}

    def __init__(self, delta: str | None = None, base: str = "toy"):
        super().__init__(base=base)
        self.delta = delta

    def edited_parameters(self):
        """The tensors the delta changes (none without a delta)."""
        if self.delta is None:
            return {}
        t2i = self.t2i
        return {n: t2i.get_parameter(n) for n in self._delta_tensors}

    def edit(self, requests=(), preserve=()):
        """Add the delta (the requests are the delta's own)."""
        if self.delta is not None:
            self._add_delta()
