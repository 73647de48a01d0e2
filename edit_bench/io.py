"""Atomic file writes: every file edit_bench writes appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: a unique temporary file in the same folder, fsync, then a rename.

    Concurrent writers (DDP ranks, two runs sharing a cache) never see a torn file and never rename each
    other's temporary file; the last rename wins.

    Args:
        path: the target file (its folder is created).
        data: text, bytes, or a function that writes the temporary file whose path it is given (for
            libraries that write files themselves: safetensors, matplotlib).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            fd = os.open(tmp, os.O_RDWR)
            os.fsync(fd)
            os.close(fd)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cache_root() -> Path:
    """Where edit_bench caches what it computes once (statistics, anchor images, reference features):
    ``$EDIT_BENCH_CACHE``, default ``~/.cache/edit_bench``."""
    return Path(os.environ.get("EDIT_BENCH_CACHE") or Path.home() / ".cache" / "edit_bench")
