"""A run directory: resolved config, per-sample records (crash-safe, mergeable across ranks), results.

Layout::

    DIR/.lock                      who owns the run while it runs (host, pid, command): one run at a time
    DIR/run.json                   what produced the run: command, config fingerprint, library versions
    DIR/config.yaml                the resolved config
    DIR/samples/rank{R}.jsonl      one Record per sample id, appended batch by batch by rank R
    DIR/samples/edits-rank{R}.jsonl one line per edit rank R made (case, seconds)
    DIR/samples/editor-rank{R}.json what the editor reported about rank R's edits (its last pass)
    DIR/samples/features/          image-level metric state, one safetensors file per batch, keyed by sample id
    DIR/baseline/...               the same for the unedited model, when the benchmark asks for a baseline
    DIR/results.json               metrics, protocol, timing and versions (eval), computed from the records
    DIR/edit.safetensors           the delta (fit)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

import torch

from .errors import UsageError
from .io import write_atomic
from .provenance import describe_differences, differences, versions
from .types import Record

__all__ = ["RunDir", "versions"]


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines and fsync; a line torn by an earlier crash is ended first, so it stays the only
    unreadable line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        if torn:
            f.write("\n")
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _read_lines(files) -> list[dict]:
    out = []
    for f in sorted(files):
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a crash mid-write
                continue
    return out


def take_lock(lock: Path, command: str, what: str, option: str) -> dict:
    """Create ``lock`` exclusively (``O_EXCL``) naming this process and return what it holds; a live holder is refused
    in one line (``what`` is in use ..., choose another ``option``), a holder that is gone (its process no longer runs
    on this host) is taken over. The caller removes the lock when it ends (if it still holds it)."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
          "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(lock)
            if _alive(holder):
                where = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
                raise UsageError(
                    f"{what} is in use by {where} (`{(holder or {}).get('command', '?')}` since "
                    f"{(holder or {}).get('since', '?')}): wait for it to end, or choose another {option}; if that "
                    f"process is gone from another machine, delete {lock}") from None
            print(f"edit_bench: taking over {lock}: its holder (pid {(holder or {}).get('pid')} on "
                  f"{(holder or {}).get('host')}) is no longer running")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return me
    raise UsageError(f"{what}: could not take {lock} (another run keeps taking it): choose another {option}")


def release_lock(lock: Path, me: dict) -> None:
    """Remove ``lock`` if ``me`` (:func:`take_lock`'s) still holds it."""
    with contextlib.suppress(OSError):
        if _read_holder(lock) == me:
            lock.unlink()


class RunDir:
    """One run's folder. Rank 0 creates it; every rank appends its own records; nothing is ever rewritten
    in place.

    Args:
        path: the folder.
        command: ``eval`` or ``fit``.
        fingerprint: everything that decides the run's numbers; a rerun with the same fingerprint resumes,
            any other is refused.
    """

    def __init__(self, path: str | Path, command: str, fingerprint: dict):
        self.path = Path(path)
        self.command = command
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    def samples_dir(self, variant: str = "samples") -> Path:
        """Where records go: ``samples/`` for the evaluated model, ``baseline/`` for the unedited one."""
        return self.path / variant

    # ------------------------------------------------------------------ ownership
    LOCK = ".lock"

    @contextlib.contextmanager
    def owned(self):
        """Hold the run directory for the block: ``DIR/.lock`` is created exclusively (``O_EXCL``) naming this process,
        and removed on exit. A live holder is refused in one line; a holder that is gone (its process no longer runs on
        this host: a SIGKILL, a crash, a preempted node's restarted job) is taken over. A folder this call created is
        removed again when nothing else was written into it (a refused run leaves nothing behind)."""
        created = not self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out_dir {self.path} is a file; give a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / self.LOCK
        me = take_lock(lock, self.command, f"--out_dir {self.path}", "--out_dir")
        try:
            yield self
        finally:
            release_lock(lock, me)
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only when empty

    def resumes(self) -> bool:
        """Whether this directory already holds a run of the same fingerprint; raises if it holds anything
        else. Touches nothing."""
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise UsageError(f"--out_dir {self.path} is a file; give a directory")
        run_file = self.path / "run.json"
        if not run_file.is_file():
            if any(f.name != self.LOCK for f in self.path.iterdir()):
                raise UsageError(f"--out_dir {self.path} exists and is not an edit_bench run directory; choose a new --out_dir")
            return False
        try:
            old = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            raise UsageError(f"{run_file} is unreadable (a crash while it was written?): delete {self.path} and rerun") from None
        if old.get("command") != self.command:
            raise UsageError(f"--out_dir {self.path} holds a `{old.get('command')}` run, not `{self.command}`; choose a new --out_dir")
        diff = differences(old.get("fingerprint"), self.fingerprint)
        if diff:
            raise UsageError(
                f"--out_dir {self.path} holds results made under other settings ({describe_differences(diff)}); "
                "its records cannot be mixed with this run's. Choose a new --out_dir, or delete the old one to start over."
            )
        return True

    def create(self, config_yaml: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "run.json").exists():
            write_atomic(self.path / "config.yaml", config_yaml)
            write_atomic(self.path / "run.json", json.dumps(
                {"command": self.command, "fingerprint": self.fingerprint, "versions": versions()}, indent=1))

    # ------------------------------------------------------------------ records
    def load_records(self, variant: str = "samples") -> dict[str, Record]:
        """Stored records by sample id, merged over ranks (the first of any duplicate wins)."""
        out: dict[str, Record] = {}
        for d in _read_lines(self.samples_dir(variant).glob("rank*.jsonl")):
            out.setdefault(d["id"], Record.from_json(d))
        return out

    def append_records(self, rank: int, records: list[Record], variant: str = "samples") -> None:
        if records:
            _append_lines(self.samples_dir(variant) / f"rank{rank}.jsonl", [json.dumps(r.to_json()) for r in records])

    def log_edit(self, rank: int, case: str | None, edit_s: float, variant: str = "samples", change: dict | None = None) -> None:
        """Record one edit a rank made (``case=None``: the fixed protocol's single edit), with how far it moved the
        weights from the origin (``Editor.weight_change()['total']``)."""
        line = json.dumps({"event": uuid.uuid4().hex, "case": case, "edit_s": edit_s,
                           **({"change": change} if change else {})})
        _append_lines(self.samples_dir(variant) / f"edits-rank{rank}.jsonl", [line])

    def load_edits(self, variant: str = "samples") -> dict[str, dict]:
        """Every logged edit by event id."""
        return {d["event"]: d for d in _read_lines(self.samples_dir(variant).glob("edits-rank*.jsonl"))}

    # ------------------------------------------------------------------ image-level metric state
    def save_features(self, rank: int, metric: str, ids: list[str], features: torch.Tensor, variant: str = "samples") -> None:
        """Store ``features`` ``[B, ...]`` of the samples ``ids`` for the metric named ``metric`` (one file per
        batch, in the tensor's own dtype: image references are uint8)."""
        from safetensors.torch import save_file

        path = self.samples_dir(variant) / "features" / f"{metric}-rank{rank}-{uuid.uuid4().hex[:12]}.safetensors"
        tensors, meta = {"features": features.detach().cpu().contiguous()}, {"ids": json.dumps(ids)}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def feature_index(self, metric: str, variant: str = "samples") -> "FeatureIndex":
        """Where each sample's stored features of ``metric`` are (read from the files' headers only)."""
        return FeatureIndex(sorted((self.samples_dir(variant) / "features").glob(f"{metric}-rank*.safetensors")))


    def write_json(self, name: str, obj: dict) -> Path:
        return write_atomic(self.path / name, json.dumps(obj, indent=1, default=str))


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_holder(lock: Path) -> dict | None:
    """The lock's holder; ``{}`` for a lock left unreadable for over 10 s (its writer died mid-write: stale)."""
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        try:
            return {} if time.time() - lock.stat().st_mtime > 10 else None
        except OSError:
            return None


def _alive(holder: dict | None) -> bool:
    """Whether a lock's holder still runs. Another host's process cannot be seen from here: it counts as alive. A lock
    being written right now (unreadable for an instant) counts as alive."""
    if holder is None:
        return True
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # not a lock this package wrote (os.kill(-1, 0) would ask every process)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    start = holder.get("start")
    return start is None or _process_start(pid) in (None, start)


def holder(path: str | Path) -> dict | None:
    """The live holder of a run directory's lock, or ``None`` when no run owns it."""
    lock = Path(path) / RunDir.LOCK
    if not lock.exists():
        return None
    h = _read_holder(lock)
    return h if _alive(h) else None


class FeatureIndex:
    """Stored per-sample tensors across batch files, read lazily by sample id: building the index reads only
    the files' headers; :meth:`read` reads the rows asked for (never a whole run's references at once).

    A sample stored twice (a batch regenerated after a crash between its features and its record) is read from
    the file whose name sorts first, whatever order the files were written in."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.where: dict[str, tuple[Path, int]] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as st:
                    ids = json.loads(st.metadata()["ids"])
            except Exception:  # a torn file cannot exist (atomic writes); anything unreadable is no entry
                continue
            for i, sid in enumerate(ids):
                self.where.setdefault(sid, (f, i))

    def __contains__(self, sid: str) -> bool:
        return sid in self.where

    def __len__(self) -> int:
        return len(self.where)

    def read(self, ids: list[str]) -> torch.Tensor:
        """The rows of ``ids``, stacked in that order (a ``KeyError`` names the first id not stored)."""
        from safetensors import safe_open

        by_file: dict[Path, list[tuple[int, int]]] = {}
        for j, sid in enumerate(ids):
            f, row = self.where[sid]
            by_file.setdefault(f, []).append((j, row))
        out: list = [None] * len(ids)
        for f, rows in by_file.items():
            with safe_open(str(f), framework="pt") as st:
                sl = st.get_slice("features")
                for j, row in rows:
                    out[j] = sl[row:row + 1][0]
        return torch.stack(out)
