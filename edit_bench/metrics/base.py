"""`SampleMetric`, the seam every metric of ``eval`` plugs into, and `MetricSet`, which scores a batch with all of
a benchmark's metrics and owns what they store.

A metric does two things, at two places:

1. **score** (in the predict loop, on every rank, with the images): per-sample scalars that go into the
   sample's :class:`~edit_bench.types.Record` (e.g. the judge's ``p_new``); a metric with ``stores_features``
   also returns ``features`` ``[B, F]`` (FID), and a ``paired`` metric stores a ``reference`` of each unedited
   image and scores each edited image against the reference of the same sample (LPIPS);
2. **update/compute** (on rank 0, after every rank has finished): from the merged stored records (and
   features) of the benchmark's sample ids, so a resumed, multi-process or spawn-launched run gives the
   numbers of one uninterrupted process by construction. ``update`` only reduces.

Every metric has a unique ``name`` within a benchmark (two FIDs with different modes, two LPIPS nets), and it
keys everything the metric writes: its record scores, its stored features and references, its results. The
scoring networks are registered submodules, so ``MetricSet.to(device)`` moves them all.

It is a torchmetrics ``Metric``: its state is declared with ``add_state``. ``eval`` computes it in one
process from all records, so it does not sync by default (``sync_on_compute=False``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ..errors import UsageError
from ..types import Record, Sample
from .functional import seed_stats

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ConceptPresent:
    """How a metric decides, from one stored record, that an erased concept is in the image (an attack's success):
    the record's score ``key`` equals ``value``. ``rule`` says it in words (recorded in the protocol)."""

    key: str
    value: float
    rule: str

    def __call__(self, scores: dict) -> bool:
        return float(scores[self.key]) == self.value


class SampleMetric(Metric):
    """Base class of the metrics a benchmark lists (``Benchmark(metrics=[...])``, by ``class_path``).

    Subclasses implement ``update(records, features=None)`` (accumulate stored records and, same order,
    their stored features ``[N, F]``) and ``compute() -> {result name: {"mean", "std", "n", ...}}``; a metric with
    ``stores_features`` also implements ``features(images, samples) -> [B, F]``.

    Class attributes (capabilities, validated before any output):
        default_name: the name when none is given.
        stores_features: ``features()`` returns image-level state to store per sample.
        paired: scores each image against the unedited image of the same sample (``reference``/``distance``).
        needs_baseline: needs the baseline pass (every paired metric does).
        needs_labels: needs the samples' judged labels (``old``/``new``/``expect``).

    Args:
        name: the metric's name in this benchmark (unique); its record keys and results derive from it.
    """

    full_state_update = False
    default_name: ClassVar[str] = ""
    stores_features: ClassVar[bool] = False
    paired: ClassVar[bool] = False
    needs_baseline: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.stores_features and not callable(getattr(cls, "features", None)):
            raise TypeError(f"{cls.__name__} sets stores_features but defines no features(images, samples)")

    def __init__(self, name: str | None = None, **kwargs):
        kwargs.setdefault("sync_on_compute", False)
        super().__init__(**kwargs)
        if name is not None and not NAME.match(str(name)):
            raise UsageError(f"metric name {name!r}: use letters, digits, '_', '.', '-' (it names files and results)")
        self._name = name

    @property
    def name(self) -> str:
        return self._name or self.default_name or type(self).__name__.lower()

    def keys(self) -> list[str]:
        """The per-sample score names this metric writes into records."""
        return []

    def concept_present(self) -> ConceptPresent | None:
        """How this metric judges that a sample's concept is in its image (what an attack's success means when the
        benchmark names this metric as its attack judge); ``None``: it cannot judge that."""
        return None

    def check_samples(self, samples: list[Sample]) -> None:
        """Refuse samples this metric cannot score (called before any output exists; default: any)."""

    def prepare(self, bench) -> None:
        """Load what scoring needs (a judge, a feature network) before any output exists: a missing model
        fails here with its message. ``bench`` gives defaults such as the benchmark's judge."""

    def identity(self) -> dict:
        """What the run fingerprint must include so that stored scores are never reused for another
        scorer (e.g. the judge's weights hash, a hub model's snapshot)."""
        return {}

    def describe(self) -> dict:
        """The protocol of this metric, recorded in ``results.json``."""
        return {"class": type(self).__name__, "name": self.name}

    def score(self, images: Tensor, samples: list[Sample]) -> dict[str, list[float]]:
        """Per-sample scalars ``{name: [B values]}`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return {}


@dataclass
class ScoredBatch:
    """What the metric set made of one batch: per-sample scores by key, and what to store by metric name."""

    scores: dict[str, list[float]] = field(default_factory=dict)
    features: dict[str, Tensor] = field(default_factory=dict)


class MetricSet(nn.Module):
    """A benchmark's metrics: validated together, moved together, scoring a batch together.

    Args:
        metrics: the metrics; names must be unique, and so must the record keys they write.
    """

    def __init__(self, metrics: list[SampleMetric]):
        super().__init__()
        self.metrics = nn.ModuleList(metrics)
        names, keys = {}, {}
        for m in metrics:
            if not isinstance(m, SampleMetric):
                raise UsageError(f"{type(m).__name__} is not a SampleMetric: list edit_bench.metrics classes")
            if m.name in names:
                raise UsageError(f"two metrics are named {m.name!r} ({type(names[m.name]).__name__} and {type(m).__name__}): "
                                 f"give one a name of its own (init_args: {{name: {m.name}_2}})")
            names[m.name] = m
            for k in m.keys():
                if k in keys:
                    raise UsageError(f"metrics {keys[k]!r} and {m.name!r} both write the per-sample score {k!r}: "
                                     "give one a name of its own")
                keys[k] = m.name

    def __iter__(self):
        return iter(self.metrics)

    def __len__(self):
        return len(self.metrics)

    @property
    def stored(self) -> list[SampleMetric]:
        """The metrics that store per-sample tensors (features or references), by name."""
        return [m for m in self.metrics if m.stores_features or m.paired]

    @property
    def paired(self) -> list[SampleMetric]:
        return [m for m in self.metrics if m.paired]

    def check(self, samples: list[Sample]) -> None:
        """Refuse a metric that needs what the samples lack (labels) before any output exists."""
        unlabelled = next((s for s in samples if s.pair.old is None), None)
        for m in self.metrics:
            m.check_samples(samples)
            if m.needs_labels and unlabelled is not None:
                raise UsageError(f"metric {m.name!r} ({type(m).__name__}) judges each image between two labels, but "
                                 f"sample {unlabelled.id} has none (a caption set): drop it from the metrics")

    @torch.no_grad()
    def score(self, images: Tensor, samples: list[Sample], variant: str, references=None, twin=None) -> ScoredBatch:
        """Score ``images`` ``[B, 3, H, W]`` of ``samples``.

        Args:
            variant: ``baseline`` (the unedited model: paired metrics store their references) or ``samples``.
            references: ``read(metric name, sample ids) -> Tensor`` of the baseline's stored references, when the
                baseline is scored (paired metrics score against them); ``None`` otherwise.
            twin: ``sample -> id or None``, each sample's concept-absent twin (``Benchmark.absent_twin``), for the
                paired metrics ``against: absent``; a sample without one gets no score from them (``None``).
        """
        out = ScoredBatch()
        for m in self.metrics:
            if m.paired:
                if variant == "baseline":
                    out.features[m.name] = m.reference_of(images, samples)
                elif references is not None and m.against == "absent":
                    pairs = [(i, t) for i, t in enumerate(map(twin, samples)) if t is not None] if twin else []
                    if pairs:
                        idx = [i for i, _ in pairs]
                        got = m.score_pairs(images[idx], references(m.name, [t for _, t in pairs]))
                        for key, vals in got.items():
                            full = [None] * len(samples)
                            for i, v in zip(idx, vals):
                                full[i] = v
                            out.scores[key] = full
                elif references is not None:
                    out.scores.update(m.score_pairs(images, references(m.name, [s.id for s in samples])))
                continue
            out.scores.update(m.score(images, samples))
            if m.stores_features:
                out.features[m.name] = m.features(images, samples)
        return out

    def aggregate(self, records, features: dict[str, Tensor] | None = None) -> dict:
        """Every metric's numbers from ``records`` (and the features of the metrics that store them, by name, in
        record order)."""
        out = {}
        for m in self.metrics:
            m.reset()
            m.update(records, (features or {}).get(m.name))
            out.update(m.compute())
            m.reset()
        return out


def cat_state(state) -> Tensor:
    """A list state as one CPU tensor (torchmetrics concatenates it already after a sync)."""
    return (torch.cat(state) if isinstance(state, list) else state).cpu()


def empty_state(state) -> bool:
    """No values in a list state (a list before a sync, one tensor after it)."""
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0


def group_ids(groups: list[str]) -> tuple[Tensor, list[str]]:
    """Group names as integer ids ``[N]`` and the names in order of first appearance (a benchmark declares its
    own groups; there is no global list)."""
    order = list(dict.fromkeys(groups))
    return torch.tensor([order.index(g) for g in groups]), order


def _per_group(values: Tensor, groups: list[str], seed: Tensor, name: str) -> dict:
    """``{name: all, name/<group>: ...}`` (the groups when there are several): :func:`seed_stats` of each."""
    gid, order = group_ids(groups)
    out = {name: seed_stats(values, seed)}
    if len(order) > 1:
        for i, g in enumerate(order):
            out[f"{name}/{g}"] = seed_stats(values[gid == i], seed[gid == i])
    return out


class RecordScalar(SampleMetric):
    """A metric whose per-sample scalar goes into the records under its name and is aggregated by group. Every
    record it is given must hold the score: a missing one is an error, never a smaller n."""

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._groups: list[str] = []  # group names of the values, in order (the benchmark's own groups)
        self.add_state("seed", [], dist_reduce_fx="cat")
        self.add_state("value", [], dist_reduce_fx="cat")

    @property
    def key(self) -> str:
        return self.name

    def keys(self) -> list[str]:
        return [self.key]

    def reset(self) -> None:
        super().reset()
        self._groups = []

    def update(self, records: list[Record], features=None) -> None:
        if not records:
            return
        missing = [r.id for r in records if self.key not in r.scores]
        if missing:
            raise RuntimeError(f"metric {self.name!r}: {len(missing)} record(s) have no score {self.key!r} (e.g. {missing[0]})")
        self._groups += [r.group for r in records]
        self.seed.append(torch.tensor([r.seed for r in records], device=self.device))
        self.value.append(torch.tensor([float(r.scores[self.key]) for r in records], dtype=torch.float64, device=self.device))

    def compute(self) -> dict:
        if empty_state(self.value):
            return {}
        return _per_group(cat_state(self.value), self._groups, cat_state(self.seed), self.key)
