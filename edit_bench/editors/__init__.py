"""Editors. The folder is the registry: every module here is imported by :func:`discover`, and every
concrete :class:`Editor` subclass found (an abstract base is not an editor) gets the contract tests."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from .base import Editor
from .ridge import ridge_update

__all__ = ["Editor", "ridge_update", "discover"]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def discover() -> dict[str, type[Editor]]:
    """Import every module of this package; return ``{class name: class}`` of its editors (a subclass defined in a
    user's module or a test is named by its class path, and checked with :func:`edit_bench.testing.check_editor`)."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return {c.__name__: c for c in _subclasses(Editor)
            if not inspect.isabstract(c) and c.__module__.startswith(f"{__name__}.")}  # never a subclass defined elsewhere
