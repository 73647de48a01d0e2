"""Reading attention through diffusers' attention processors (the seam diffusers gives for reading or changing
attention: ``Attention.set_processor``), never by patching a module's methods.

:class:`AttentionProbabilities` installs on each chosen ``Attention`` a processor that runs diffusers' classic
``AttnProcessor`` (which computes the probabilities explicitly, ``softmax(QKᵀ·scale)``) and hands each call's
probabilities ``[B·heads, query tokens, key tokens]`` to the recorder while it records; :meth:`remove` puts the
original processors back. Used by MACE's attention loss; any method that reads or steers cross-attention maps
(tracers, attention re-steering) takes it from :meth:`T2IModel.attention_probabilities`.
"""

from __future__ import annotations

import contextlib

from torch import Tensor, nn


class _Scores:
    """The ``attn`` an ``AttnProcessor`` sees: the real module, whose ``get_attention_scores`` also reports."""

    def __init__(self, attn: nn.Module, sink):
        self._attn, self._sink = attn, sink

    def __getattr__(self, name):
        return getattr(self._attn, name)

    def get_attention_scores(self, query: Tensor, key: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        probs = self._attn.get_attention_scores(query, key, attention_mask)
        self._sink(probs)
        return probs


class _RecordingProcessor:
    def __init__(self, sink):
        from diffusers.models.attention_processor import AttnProcessor

        self.inner, self.sink = AttnProcessor(), sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        return self.inner(_Scores(attn, self.sink), hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


class AttentionProbabilities:
    """The attention probabilities of ``attns`` (diffusers ``Attention`` modules), one tensor per module call in
    call order, while :meth:`recording` is active; installed until :meth:`remove`."""

    def __init__(self, attns: list[nn.Module]):
        self.attns, self.probs, self._active = attns, [], False
        self._saved = [a.processor for a in attns]
        for a in attns:
            a.set_processor(_RecordingProcessor(self._record))

    def _record(self, probs: Tensor) -> None:
        if self._active:
            self.probs.append(probs)

    @contextlib.contextmanager
    def recording(self):
        """Collect into a fresh :attr:`probs` (yielded) for the duration of the block."""
        self.probs, self._active = [], True
        try:
            yield self.probs
        finally:
            self._active = False

    def remove(self) -> None:
        for a, proc in zip(self.attns, self._saved):
            a.set_processor(proc)
        self.probs = []
