"""`Results`: what one ``eval`` run measured, as a typed object, written as ``OUT_DIR/results.json``.

:class:`Evaluation` builds it from the stored records; ``report``, ``export``, the tables and the loggers read it
back with :meth:`Results.read`. The JSON layout is the object's fields in order (a metric block is
``{name: {"mean": .., "std": .., "n": .., ...}}`` as :func:`edit_bench.evaluate.protocol.aggregate` returns it;
``protocol`` is the benchmark's own description plus the run's settings, an open mapping).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

Metrics = dict[str, dict]  # metric name (or name/group/concept) -> {"mean", "std", "n", ...}


@dataclass
class Timing:
    """Time of this run's new samples, all processes (generation excludes edits)."""
    edit_s: float | None  # mean seconds per edit made by this run
    edits: int
    generate_s: float
    images_per_s: float | None
    wall_s: float
    note: str


@dataclass
class SampleCounts:
    """How many records the results count and how many this run made (the rest were stored by an earlier run)."""
    total: int
    stored_before: int
    new_this_run: int
    records: str  # the folder of the final model's records
    baseline_cache: dict | None = None  # hits / added / repeats / path, when the unedited pass used the cache


@dataclass
class CurvePoint:
    """A sequential run's metrics after ``edits`` edits."""
    edits: int
    samples: int
    metrics: Metrics
    attacks: dict | None = None


@dataclass
class Results:
    editor: str
    editor_args: dict
    benchmark: str
    model: str
    model_id: str | None
    delta: str | None
    metrics: Metrics  # the model after every edit
    baseline: Metrics | None  # the unedited model on the same samples (None without a baseline pass)
    protocol: dict
    provenance: dict
    timing: Timing
    samples: SampleCounts
    editor_info: Any
    versions: dict
    config: str
    attacks: dict | None = None  # attack name -> success rates, time per case, prompts found
    curve: list[CurvePoint] | None = None  # sequential runs: every stage
    weight_change: dict | None = None  # how far each edit moved the weights from the origin (mean and per edit)
    loggers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The ``results.json`` mapping (optional blocks only when present, as every earlier run wrote them)."""
        out = dataclasses.asdict(self)
        if self.samples.baseline_cache is None:
            del out["samples"]["baseline_cache"]
        for k in ("attacks", "curve", "weight_change"):
            if out[k] is None:
                del out[k]
        for c in out.get("curve") or []:
            if c["attacks"] is None:
                del c["attacks"]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Results:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UsageError(f"results.json lacks {', '.join(missing)}: it was not written by `edit_bench eval`; rerun the eval")
        kw["timing"] = Timing(**d["timing"])
        kw["samples"] = SampleCounts(**d["samples"])
        if d.get("curve") is not None:
            kw["curve"] = [CurvePoint(**c) for c in d["curve"]]
        return cls(**kw)

    @classmethod
    def read(cls, path: str | Path) -> Results:
        """A finished run's results (its folder or its ``results.json``); one line for a file that is not one."""
        p = Path(path)
        f = p / "results.json" if p.is_dir() else p
        if not f.is_file():
            raise UsageError(f"{path} has no results.json: give the out_dir of a finished `edit_bench eval` run")
        try:
            return cls.from_dict(json.loads(f.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise UsageError(f"{f} is not a readable results.json ({type(e).__name__}: {e}): rerun the eval") from None
