"""The unedited model's scored samples, kept once and reused by every later evaluation that shares them.

Every editor's evaluation with a baseline scores the same unedited images: on TIMED that is half of all
generation. The baseline pass looks each pending sample up here first and generates only the misses; what
it generates is added afterwards. An entry is the sample's per-sample scores and the per-sample features
its metrics keep (FID features, the paired metrics' reference images), so a hit yields exactly the record
and features the pass would have written.

A sample is found only under the same *context* (everything that decides an unedited image and its scores:
the model's and delta's identity, the sampler without its seed list, image size, precision, matmul
precision, device type, the metrics' protocols and their models' identities, the library versions, and the
class that generates) and the same *sample content* (prompt, judged labels, seed). A changed model file, sampler,
judge or library version misses. Images are not kept: a run that saves images (``--save_images``)
regenerates its baseline.

Layout: ``$EDIT_BENCH_CACHE/baseline/<context>/context.json`` (the context, readable) and one
``<uuid>.safetensors`` per stored pass (features as tensors, keys and scores in the metadata), each written
atomically, so concurrent runs never see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import torch

from .io import cache_root, write_atomic
from .types import Sample


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sample_key(sample: Sample) -> str:
    """What of a sample decides its unedited image and its scores (not its id: two benchmarks that ask
    for the same prompt, labels and seed share the entry)."""
    p = sample.pair
    return _digest([p.prompt, p.old, p.new, p.expect, int(sample.seed)])


class BaselineCache:
    """Stored baseline samples of one context.

    Args:
        context: everything besides the sample that decides the baseline's records (see the module doc).
        feature_names: the metrics (by class name) whose per-sample features a record comes with.
        root: the cache folder (default ``$EDIT_BENCH_CACHE/baseline``).
    """

    def __init__(self, context: dict, feature_names: list[str], root: str | Path | None = None):
        self.context = json.loads(json.dumps(context, sort_keys=True, default=str))
        self.feature_names = sorted(feature_names)
        self.path = Path(root or cache_root() / "baseline") / _digest(self.context)
        self._entries: dict[str, tuple[dict, float, dict[str, torch.Tensor]]] | None = None

    def _load(self) -> dict:
        from safetensors import safe_open

        if self._entries is None:
            self._entries = {}
            for f in sorted(self.path.glob("*.safetensors")):
                try:
                    with safe_open(str(f), framework="pt") as st:
                        meta = st.metadata()
                        keys, rows = json.loads(meta["keys"]), json.loads(meta["records"])
                        feats = {n: st.get_tensor(n) for n in self.feature_names}
                except Exception:  # an unreadable file is a miss, never an error
                    continue
                for i, (k, (scores, gen_s)) in enumerate(zip(keys, rows)):
                    self._entries.setdefault(k, (scores, gen_s, {n: t[i] for n, t in feats.items()}))
        return self._entries

    def lookup(self, samples: list[Sample]) -> dict[str, tuple[dict, float, dict[str, torch.Tensor]]]:
        """Stored ``(scores, generate_s, features by metric)`` of the samples found, by sample id."""
        if not self.path.is_dir():
            return {}
        entries = self._load()
        return {s.id: entries[k] for s in samples if (k := sample_key(s)) in entries}

    def store(self, samples: list[Sample], records: dict, features: dict[str, dict[str, torch.Tensor]]) -> int:
        """Add the samples whose record (by id) and every feature (by metric, then id) are given; returns
        how many were added."""
        from safetensors.torch import save_file

        have = self._load() if self.path.is_dir() else {}
        new = [s for s in samples if s.id in records and sample_key(s) not in have
               and all(s.id in features.get(n, {}) for n in self.feature_names)]
        if not new:
            return 0
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "context.json").exists():
            write_atomic(self.path / "context.json", json.dumps(self.context, indent=1))
        tensors = {n: torch.stack([features[n][s.id] for s in new]).float().contiguous() for n in self.feature_names}
        meta = {"keys": json.dumps([sample_key(s) for s in new]),
                "records": json.dumps([[records[s.id].scores, records[s.id].generate_s] for s in new])}
        if not tensors:  # safetensors needs a tensor to write a file
            tensors = {"_count": torch.zeros(len(new))}
        write_atomic(self.path / f"{uuid.uuid4().hex}.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        self._entries = None
        return len(new)
