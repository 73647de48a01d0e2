"""The unedited model's scored samples, kept once and reused by every later evaluation that shares them.

Every editor's evaluation with a baseline scores the same unedited images: on TIMED that is half of all
generation. The baseline pass looks each pending sample up here first and generates only the misses; what
it generates is added afterwards. An entry is the sample's per-sample scores and the per-sample features
its metrics keep (FID features, the paired metrics' reference images), so a hit yields exactly the record
and features the pass would have written.

A sample is found only under the same *context* (the baseline view of the run's provenance: the base model's
identity, the sampler without its seed list, image size, precision, matmul precision, fast path, device type, the
metrics' names, protocols and models' identities, the hash of the package's whole source and the versions of
every library that touches pixels or scores) and the same *sample content* (prompt, judged labels, seed). A
delta's baseline is the model without the delta, so it shares the base model's entries. A changed model file, sampler,
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
    """Stored baseline samples of one context, read lazily: the index comes from the files' headers, and the
    tensors of a sample are read only when it is taken.

    Args:
        context: everything besides the sample that decides the baseline's records (the baseline view of the
            run's :class:`~edit_bench.provenance.Provenance`).
        feature_names: the metrics (by name) whose per-sample tensors a record comes with (features, references).
        root: the cache folder (default ``$EDIT_BENCH_CACHE/baseline``).
    """

    def __init__(self, context: dict, feature_names: list[str], root: str | Path | None = None):
        self.context = json.loads(json.dumps(context, sort_keys=True, default=str))
        self.feature_names = sorted(feature_names)
        self.path = Path(root or cache_root() / "baseline") / _digest(self.context)
        self._index: dict[str, tuple[Path, int, dict, float]] | None = None

    def _load(self) -> dict:
        """``{sample key: (file, row, scores, generate_s)}`` from the headers of the stored files."""
        from safetensors import safe_open

        if self._index is None:
            self._index = {}
            for f in sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else []:
                try:
                    with safe_open(str(f), framework="pt") as st:
                        meta = st.metadata()
                        keys, rows = json.loads(meta["keys"]), json.loads(meta["records"])
                        if not set(self.feature_names) <= set(st.keys()):
                            continue
                except Exception:  # an unreadable file is a miss, never an error
                    continue
                for i, (k, (scores, gen_s)) in enumerate(zip(keys, rows)):
                    self._index.setdefault(k, (f, i, scores, gen_s))
        return self._index

    def lookup(self, samples: list[Sample]) -> dict[str, str]:
        """The samples found: sample id -> its key in the cache (read them with :meth:`read`)."""
        index = self._load()
        return {s.id: k for s in samples if (k := sample_key(s)) in index}

    def read(self, keys: list[str]) -> list[tuple[dict, float, dict[str, torch.Tensor]]]:
        """``(scores, generate_s, tensors by metric name)`` of each key."""
        from safetensors import safe_open

        index = self._load()
        out = []
        for k in keys:
            f, row, scores, gen_s = index[k]
            with safe_open(str(f), framework="pt") as st:
                tensors = {n: st.get_slice(n)[row:row + 1][0] for n in self.feature_names}
            out.append((scores, gen_s, tensors))
        return out

    def store(self, samples: list[Sample], records: dict, run, variant: str, chunk: int = 256) -> int:
        """Add the samples whose record (by id) and every stored tensor are in ``run``'s ``variant``, a file per
        ``chunk`` samples (never all references in memory at once); returns how many were added."""
        from safetensors.torch import save_file

        have = self._load()
        indexes = {n: run.feature_index(n, variant) for n in self.feature_names}
        new = [s for s in samples if s.id in records and sample_key(s) not in have
               and all(s.id in indexes[n] for n in self.feature_names)]
        if not new:
            return 0
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "context.json").exists():
            write_atomic(self.path / "context.json", json.dumps(self.context, indent=1))
        for i in range(0, len(new), chunk):
            part = new[i:i + chunk]
            ids = [s.id for s in part]
            tensors = {n: indexes[n].read(ids).contiguous() for n in self.feature_names}
            meta = {"keys": json.dumps([sample_key(s) for s in part]),
                    "records": json.dumps([[records[s.id].scores, records[s.id].generate_s] for s in part])}
            if not tensors:  # safetensors needs a tensor to write a file
                tensors = {"_count": torch.zeros(len(part))}
            write_atomic(self.path / f"{uuid.uuid4().hex}.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        self._index = None
        return len(new)
