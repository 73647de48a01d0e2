"""What a model or judge *is*, not what it is called: the identity that run fingerprints and deltas carry.

A retrained toy world, a newer hub snapshot or a replaced weights file gets a new identity, so a run
directory never mixes records of two models and a delta is never added to a model it was not made for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole (every toy file)
SAMPLES, SAMPLE_BYTES = 16, 64 << 10  # larger ones: size, safetensors header and 16 chunks of 64 KiB


def file_digest(path: Path, h=None):
    """Feed ``path`` into hash ``h``: its whole content when small, else its size, its safetensors header and
    evenly spaced chunks (constant time for multi-GB weights; a retrain changes every chunk)."""
    h = h or hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{size}:".encode())
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return h
        head = f.read(8)
        n = int.from_bytes(head, "little") if path.suffix == ".safetensors" else 0
        h.update(head + (f.read(n) if 0 < n < size else b""))
        for i in range(SAMPLES):
            f.seek(size * i // SAMPLES)
            h.update(f.read(SAMPLE_BYTES))
    return h


def folder_identity(path: str | Path) -> str:
    """A content hash (hex, 16 digits) of every file under ``path``, by relative path."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        file_digest(f, h)
    return h.hexdigest()[:16]


def hub_snapshot(path: str | Path) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (``.../snapshots/<commit>/...``), if it is one."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def source_identity(module_file: str | Path) -> str:
    """A hash of a source file: the identity of a model built by code (the random tiny models)."""
    return hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:16]
