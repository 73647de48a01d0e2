"""Localisation tools: where in a text-to-image model a concept is carried (LocoGen; causal tracing next)."""

from .locogen import locogen, override_conditional_context, windows

__all__ = ["locogen", "override_conditional_context", "windows"]
