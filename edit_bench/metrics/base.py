"""`SampleMetric`: the seam every metric of ``eval`` plugs into.

A metric does two things, at two places:

1. **score** (in the predict loop, on every rank, with the images): per-sample scalars that go into the
   sample's :class:`~edit_bench.types.Record` (e.g. the judge's ``p_new``); a metric that needs image-level
   state (features for FID-like metrics) also returns ``features`` ``[B, F]``, stored per rank keyed by
   sample id, so resume and DDP merge them like records;
2. **update/compute** (on rank 0, after every rank has finished): from the merged stored records (and
   features) of the benchmark's sample ids, so a resumed, multi-process or spawn-launched run gives the
   numbers of one uninterrupted process by construction.

It is a torchmetrics ``Metric``: its state is declared with ``add_state``. ``eval`` computes it in one
process from all records, so it does not sync by default (``sync_on_compute=False``); pass
``sync_on_compute=True`` to use it in a loop of your own where each rank holds a part.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from torchmetrics import Metric

from ..types import Sample


class SampleMetric(Metric):
    """Base class of the metrics a benchmark lists (``Benchmark(metrics=[...])``, by ``class_path``).

    Subclasses implement ``update(records, features=None)`` (accumulate stored records and, same order,
    their stored features ``[N, F]``) and ``compute() -> {metric name: {"mean", "std", "n", ...}}``, as every
    torchmetrics ``Metric`` does; a metric with ``stores_features`` also implements
    ``features(images, samples) -> [B, F]``, the image-level state stored per sample.

    Class attributes:
        stores_features: ``features()`` returns image-level state to store per sample.
    """

    full_state_update = False
    stores_features: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.stores_features and not callable(getattr(cls, "features", None)):
            raise TypeError(f"{cls.__name__} sets stores_features but defines no features(images, samples)")

    def __init__(self, **kwargs):
        kwargs.setdefault("sync_on_compute", False)
        super().__init__(**kwargs)

    def prepare(self, bench) -> None:
        """Load what scoring needs (a judge, a feature network) before any output exists: a missing model
        fails here with its message. ``bench`` gives defaults such as the benchmark's judge."""

    def identity(self) -> dict:
        """What the run fingerprint must include so that stored scores are never reused for another
        scorer (e.g. the judge's weights hash)."""
        return {}

    def describe(self) -> dict:
        """The protocol of this metric, recorded in ``results.json``."""
        return {"class": type(self).__name__}

    def score(self, images: Tensor, samples: list[Sample]) -> dict[str, list[float]]:
        """Per-sample scalars ``{name: [B values]}`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return {}
