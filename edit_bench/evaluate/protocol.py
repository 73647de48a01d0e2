"""The protocol of one evaluation (:func:`plan`): how the evaluated model is made, whether a baseline is scored, the
metrics with nothing to score, and the sequential protocol's stages; the evaluation's provenance and the metrics'
aggregation from stored records."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch

from ..benchmarks import Benchmark
from ..editors import Editor
from ..errors import UsageError
from ..metrics.base import MetricSet
from ..provenance import Provenance
from ..types import Record, Sample


@dataclass(frozen=True)
class Plan:
    """The protocol of one evaluation: how the evaluated model is made, whether a baseline is scored, and the
    metrics that have nothing to score under it (by name, with the reason)."""

    mode: str  # "per_case" | "fixed" | "sequential" | "as_is"
    baseline: bool
    not_scored: dict = field(default_factory=dict)
    stages: tuple[int, ...] = ()  # sequential: the numbers of edits after which the benchmark is scored

    def variants(self) -> list[str]:
        """The record sets of this run, in the order they are made."""
        edited = [stage_variant(n) for n in self.stages] if self.mode == "sequential" else ["samples"]
        return (["baseline"] if self.baseline else []) + edited


def stage_variant(n: int) -> str:
    """The record set of the sequential protocol's stage after ``n`` edits."""
    return f"after-{n:04d}"


def plan(editor: Editor, bench: Benchmark) -> Plan:
    """Decide the protocol, or say why this editor cannot run this benchmark.

    The unedited model is evaluated as it is; with a delta, its baseline is the model without the delta. A paired
    metric (LPIPS) needs the baseline: an editor without ``baseline: true`` is refused; the unedited model itself
    has no pair, and the metric is listed as not scored, except against the concept-absent images (``against:
    absent``), where its own distance is the scale of every editor's."""
    cases = list(bench._cases.values())
    absent = any(m.against == "absent" for m in bench.metrics.paired)
    if editor.edits == "none":  # the unedited model's own distance to the concept-absent images is the scale
        mode, baseline = "as_is", bench.baseline and (editor.delta is not None or absent)
    else:
        name = type(editor).__name__
        if bench.protocol == "fixed" and not bench.requests():
            raise UsageError(f"{name} edits, but {type(bench).__name__} has no requests: give the edit with "
                             "--data.requests FILE, or evaluate the unedited model (or a saved delta) with "
                             "--model configs/editor/unedited.yaml")
        if bench.protocol == "sequential" and editor.edits == "sampling":
            raise UsageError(f"{name} acts at generation time: its guide replaces, it does not accumulate, so it has no "
                             "sequential form; use protocol per_case or fixed")
        if editor.edits == "sampling" and bench.sampler.guidance == 1.0:
            raise UsageError(f"{name} acts through classifier-free guidance, which sampler.guidance 1 turns off: give "
                             "--data.sampler.guidance > 1")
        if bench.protocol == "sequential":
            n = len(bench.requests())
            if n == 0:
                raise UsageError(f"the sequential protocol applies the cases' requests one after another, but "
                                 f"{type(bench).__name__} has none: select cases with requests (e.g. erase: [...])")
            if bench.every > n:
                raise UsageError(f"every={bench.every} exceeds the {n} sequential edit(s) of this benchmark: set "
                                 f"--data.every to at most {n}, or select more rows")
        if bench.protocol == "per_case" and any(c.request is None for c in cases):
            raise UsageError(f"{type(bench).__name__} has cases without a request: the per_case protocol edits each "
                             "case's request; use protocol fixed with --data.requests FILE")
        if bench.protocol == "fixed" and len(bench.requests()) > 1 and not editor.multi_request:
            raise UsageError(
                f"{name} edits one request at a time, but the fixed protocol applies all "
                f"{len(bench.requests())} requests at once: use protocol per_case, or select one row (--data.rows)"
            )
        mode, baseline = bench.protocol, bench.baseline
    not_scored = {}
    for m in bench.metrics.paired:
        if editor.edits == "none" and editor.delta is None and m.against == "same":
            not_scored[m.name] = "the evaluated model is the unedited model: no edited image to pair with it"
        elif baseline:
            continue
        else:
            raise UsageError(f"metric {m.name!r} compares each image with the unedited model's image of the same "
                             f"sample, which this benchmark does not score: set --data.baseline true, or drop "
                             f"{m.name} from the metrics")
    stages = ()
    if mode == "sequential":
        n = len(bench.requests())
        stages = tuple(sorted({*range(bench.every, n + 1, bench.every), n}))
    return Plan(mode, baseline, not_scored, stages)


def stage_samples(bench: Benchmark, n: int) -> list[Sample]:
    """The samples scored after ``n`` sequential edits: the cases of the first ``n`` requests and every case without
    a request (kept concepts, captions), in benchmark order."""
    edited = [c.id for c in bench._cases.values() if c.request is not None][:n]
    keep = set(edited) | {c.id for c in bench._cases.values() if c.request is None}
    return [s for s in bench.samples() if s.case_id in keep]


def aggregate(metrics, records: list[Record], features: dict[str, torch.Tensor] | None = None) -> dict:
    """Every metric's numbers from ``records`` (and, for the metrics that store them, their ``features`` by
    metric name, in record order)."""
    return (metrics if isinstance(metrics, MetricSet) else MetricSet(list(metrics))).aggregate(records, features)


def provenance(editor: Editor, bench: Benchmark, trainer: L.Trainer | None, matmul_precision: str) -> Provenance:
    """The provenance of evaluating ``editor`` on ``bench`` under ``trainer`` (see :mod:`edit_bench.provenance`)."""
    return Provenance.build(editor, bench, trainer, matmul_precision, metrics=list(bench.metrics),
                            sampler=bench.sampler, size=bench.sampler.size or editor.t2i.native_size)
