"""A run directory: resolved config, per-sample records (crash-safe, mergeable across ranks), results.

Layout::

    DIR/run.json              what produced the run: command and config fingerprint
    DIR/config.yaml           the resolved config
    DIR/samples/rank{R}.jsonl one JSON record per sample id, appended batch by batch by rank R
    DIR/baseline/rank{R}.jsonl the same for the unedited model, when the benchmark asks for a baseline
    DIR/results.json          the metrics, protocol, timing and versions (eval)
    DIR/edit.safetensors      the delta (fit)
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("edit_bench", "torch", "lightning", "diffusers", "transformers", "open_clip_torch", "torchmetrics"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _diff(a, b, prefix=""):
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class RunDir:
    def __init__(self, path: str | Path, command: str, fingerprint: dict):
        self.path = Path(path)
        self.command = command
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    def samples_dir(self, variant: str = "samples") -> Path:
        """Where records go: ``samples/`` for the evaluated model, ``baseline/`` for the unedited one."""
        return self.path / variant

    def check(self) -> bool:
        """Whether this directory already holds a run of the same config (resume); raises if it holds
        anything else. Touches nothing."""
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise ValueError(f"--out_dir {self.path} is a file; give a directory")
        run_file = self.path / "run.json"
        if not run_file.is_file():
            if any(self.path.iterdir()):
                raise ValueError(f"--out_dir {self.path} exists and is not an edit_bench run directory; choose a new --out_dir")
            return False
        old = json.loads(run_file.read_text())
        if old.get("command") != self.command:
            raise ValueError(f"--out_dir {self.path} holds a `{old.get('command')}` run, not `{self.command}`; choose a new --out_dir")
        diff = _diff(old.get("fingerprint"), self.fingerprint)
        if diff:
            raise ValueError(
                f"--out_dir {self.path} holds results of a different config (differs in: {', '.join(diff)}). "
                "Choose a new --out_dir, or delete the old one to start over."
            )
        return True

    def create(self, config_yaml: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "run.json").exists():
            write_atomic(self.path / "config.yaml", config_yaml)
            write_atomic(self.path / "run.json", json.dumps({"command": self.command, "fingerprint": self.fingerprint}, indent=1))

    def load_records(self, variant: str = "samples") -> dict[str, dict]:
        """Stored records by sample id, merged over ranks. A torn last line (a crash mid-write) is skipped."""
        out = {}
        if not self.samples_dir(variant).is_dir():
            return out
        for f in sorted(self.samples_dir(variant).glob("rank*.jsonl")):
            for line in f.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out.setdefault(rec["id"], rec)
        return out

    def append_records(self, rank: int, records: list[dict], variant: str = "samples") -> None:
        if not records:
            return
        self.samples_dir(variant).mkdir(parents=True, exist_ok=True)
        path = self.samples_dir(variant) / f"rank{rank}.jsonl"
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(path, "a") as f:
            if torn:  # a crash cut the last line: end it, so it stays the only unreadable line
                f.write("\n")
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def write_json(self, name: str, obj: dict) -> Path:
        p = self.path / name
        write_atomic(p, json.dumps(obj, indent=1, default=str))
        return p
