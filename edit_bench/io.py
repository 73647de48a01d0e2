"""Files: where data files are found and how they are read (one reader for every data file), atomic writes (every
file edit_bench writes appears whole or not at all) and the cache folder. Imports nothing of the package but its
errors, so every module can use it."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def resolve_path(path: str | Path) -> Path:
    """A data file by path: as given (relative to the working directory), else relative to the checkout
    root, so ``datasets/...`` works from any directory."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    if p.is_absolute():
        raise UsageError(f"data file {path} not found: give an existing file")
    where = dict.fromkeys([str(Path.cwd()), str(REPO_ROOT)])  # one folder when run from the checkout
    raise UsageError(f"data file {path} not found (looked in {' and '.join(where)})")


def read_csv(path: str | Path, required: list[str], optional: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a CSV file, checked: every ``required`` column exists and no required cell is empty."""
    p = resolve_path(path)
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise UsageError(f"{p}: missing columns {missing}; the file has {header}. Expected columns: {required}")
        rows = list(reader)
    for i, row in enumerate(rows):
        empty = [c for c in required if not (row.get(c) or "").strip()]
        if empty:
            raise UsageError(f"{p}: row {i + 2} (line {i + 2} of the file) has empty cells in {empty}; fill them or remove the row")
    if not rows:
        raise UsageError(f"{p} has no data rows")
    return [{k: (v or "").strip() for k, v in r.items() if k in required or k in optional} for r in rows]


# ------------------------------------------------------------------------------------------ image folders
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder`` (any of :data:`IMAGE_SUFFIXES`, any case), sorted by name; none for a
    missing folder. Every component that takes a user's folder of images reads it through this and :func:`read_image`,
    so one folder gives the same images everywhere."""
    folder = Path(folder)
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def read_image(path: str | Path, size: int | None = None, mode: str = "RGB"):
    """One image file as a uint8 tensor ``[C, H, W]`` (``mode`` ``RGB``: 3 channels, ``L``: 1), resized to
    ``size`` × ``size`` with PIL's Lanczos filter when ``size`` is given; an unreadable file is one line naming it."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        im = Image.open(path).convert(mode)
        if size is not None:
            im = im.resize((size, size), resample=Image.LANCZOS)
    except (OSError, ValueError) as e:
        raise UsageError(f"image {path} cannot be read ({e}): remove it or fix the folder") from None
    a = torch.from_numpy(np.asarray(im).copy())
    return a[None] if a.ndim == 2 else a.permute(2, 0, 1)
