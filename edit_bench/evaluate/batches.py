"""How pending samples become generation batches: batching in order (per case under ``per_case``, an attacked group
alone), sharding by whole cases across processes, the baseline cache's hits written into the run, and the dataset
Lightning's predict loop iterates."""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset

from ..baseline_cache import BaselineCache
from ..rundir import RunDir
from ..types import GenerationBatch, Record, Sample

CACHE_HITS = "cache-hits.json"  # how many baseline samples rank 0 took from the cache (a spawned rank 0 is not us)


def _batches(samples: list[Sample], mode: str, batch_size: int) -> list[list[Sample]]:
    """Batches in order; under ``per_case`` a batch never spans two cases; an attacked group's samples (drawn from
    what its attack found on their case) are batched alone, by case."""
    def key(s: Sample):
        attacked = s.group.startswith("attack:")
        return (s.case_id if mode == "per_case" or attacked else None, s.group if attacked else None)

    out, start = [], 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or key(samples[i]) != key(samples[start]) or i - start == batch_size:
            out.append(samples[start:i])
            start = i
    return out


def shard(samples: list[Sample], mode: str, rank: int, world: int) -> list[Sample]:
    """This rank's contiguous share of the pending samples. Under ``per_case`` whole cases are shared out
    (each case goes to the rank where it starts), so each rank edits only its own cases."""
    if world == 1 or not samples:
        return list(samples)
    if mode != "per_case":
        n = len(samples)
        return samples[rank * n // world:(rank + 1) * n // world]
    out = []
    for i, s in enumerate(samples):
        if i == 0 or s.case_id != samples[i - 1].case_id:
            owner = min(world - 1, i * world // len(samples))
        if owner == rank:
            out.append(s)
    return out


def _write_hits(run: RunDir, cache: BaselineCache, pending: list[Sample], hits: dict, chunk: int = 256) -> None:
    """Put the cache's records and stored tensors of ``hits`` (sample id -> cache key) into the run, as the baseline
    pass would have, a chunk at a time (never every reference in memory at once)."""
    found = [s for s in pending if s.id in hits]
    for i in range(0, len(found), chunk):
        part = found[i:i + chunk]
        entries = cache.read([hits[s.id] for s in part])
        for name in cache.feature_names:
            run.save_features(0, name, [s.id for s in part], torch.stack([e[2][name] for e in entries]), "baseline")
        run.append_records(0, [Record.from_sample(s, e[0], e[1]) for s, e in zip(part, entries)], "baseline")


def _first_of_each(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The samples whose content (prompt, labels, seed) first appears, and the later ones that repeat it."""
    from ..baseline_cache import sample_key

    seen, first, repeats = set(), [], []
    for s in samples:
        k = sample_key(s)
        (repeats if k in seen else first).append(s)
        seen.add(k)
    return first, repeats


class _Batches(IterableDataset):
    """One rank's generation batches (iterable, so Lightning does not re-split them across ranks)."""

    def __init__(self, batches: list[GenerationBatch]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _first(batch):
    return batch
