"""Benchmarks (LightningDataModules). Every module here is imported by :func:`discover`."""

from __future__ import annotations

import importlib
import pkgutil

from .base import Benchmark, EditData

__all__ = ["Benchmark", "EditData", "discover"]


def discover() -> dict[str, type[EditData]]:
    """Import every module of this package; return ``{class name: class}`` of all data modules."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    out, todo = {}, [EditData]
    while todo:
        for sub in todo.pop().__subclasses__():
            out[sub.__name__] = sub
            todo.append(sub)
    return out
