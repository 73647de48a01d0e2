"""Localisation tools: where in a text-to-image model a concept is carried.

- :func:`causal_trace` (Diff-QuickFix's causal mediation analysis): noise the subject's embeddings, restore
  one text-encoder state or UNet component from the clean run, measure how much comes back;
- :func:`locogen` (LocoGen): swap the conditioning of a window of cross-attention sites for an
  attribute-free prompt, see which window removes the attribute.

``python -m edit_bench trace`` runs either and writes ``trace.json`` and ``trace.png``.
"""

from .causal_trace import causal_trace
from .locogen import locogen, override_conditional_context, windows

__all__ = ["causal_trace", "locogen", "override_conditional_context", "windows"]
