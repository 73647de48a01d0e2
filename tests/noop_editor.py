"""An editor that declares cross-attention edits but changes nothing: the end-to-end toy test must catch it."""

from edit_bench.editors.time import TIME


class NoOpEditor(TIME):
    def edit(self, requests, preserve=()):
        return None
