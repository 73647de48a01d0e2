"""The vocabulary shared by editors, benchmarks and metrics: small frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from .errors import UsageError


@dataclass(frozen=True)
class EditRequest:
    """Make ``source`` render as ``target``.

    Args:
        source: the prompt whose rendering changes, e.g. ``"A banana"``.
        target: what it should render as, e.g. ``"A blue banana"``; ``""`` means the unconditional
            embedding (erasure).
        subject: the span whose last token carries the edit (Diff-QuickFix, UCE, LocoEdit). ``None``
            means the whole source prompt.
    """

    source: str
    target: str
    subject: str | None = None

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise UsageError(f"EditRequest.source must be a non-empty prompt, got {self.source!r}")
        if not isinstance(self.target, str):
            raise UsageError(f"EditRequest.target must be a string, got {self.target!r}")
        if self.source.strip().lower() == self.target.strip().lower():
            raise UsageError(
                f"EditRequest source and target are the same prompt ({self.source!r}): an edit needs a "
                "different target. Fix the row, or drop it."
            )


@dataclass(frozen=True)
class PromptPair:
    """One prompt to generate and the two labels the judge compares.

    ``expect="new"`` for efficacy and generality, ``"old"`` for specificity: success is always
    "the expected label wins", so metric code has no sign flips. A prompt scored without labels (a caption
    set for image quality, a detector benchmark) has ``old = new = expect = None``. ``oracle``: the prompt whose
    unedited rendering is what the edit should produce (RoAD's ``Oracle`` columns), drawn by the ``Oracle``
    editor; ``None``: the ``new`` label itself (TIMED).
    """

    prompt: str
    old: str | None = None
    new: str | None = None
    expect: Literal["old", "new"] | None = None
    oracle: str | None = None


@dataclass(frozen=True)
class EditCase:
    """One benchmark row: a request (``None``: a case scored without an edit of its own, e.g. the captions of an
    image-quality set), the prompts that measure it by group (the groups the benchmark declares), and an optional
    preserve set."""

    id: str
    request: EditRequest | None
    groups: dict[str, tuple[PromptPair, ...]]
    preserve: tuple[str, ...] = ()

    def samples(self, seeds) -> list["Sample"]:
        """All samples of this case, ordered by group (as given), prompt and seed."""
        return [
            Sample(self.id, group, k, seed, pair)
            for group, pairs in self.groups.items()
            for k, pair in enumerate(pairs)
            for seed in seeds
        ]


@dataclass(frozen=True)
class Sample:
    """The unit of evaluation. Its id ``case/group/k/seed`` keys every stored result."""

    case_id: str
    group: str
    prompt_index: int
    seed: int
    pair: PromptPair

    @property
    def id(self) -> str:
        return f"{self.case_id}/{self.group}/{self.prompt_index}/{self.seed}"


@dataclass(frozen=True)
class Record:
    """The stored result of one sample: what was generated and judged, and its per-sample scores.

    One JSON line per sample id in ``DIR/samples/rank{R}.jsonl`` (``DIR/baseline/`` for the unedited model);
    every metric of ``results.json`` is computed from these records.

    Attributes:
        id: the sample id ``case/group/k/seed``.
        case, group, k, seed: its parts.
        prompt, old, new, expect: the sample's prompt pair (checked against the benchmark on resume; the labels
            are ``None`` for a sample scored without labels).
        scores: per-sample scalars by name, from the benchmark's metrics (e.g. ``p_new``, ``success``).
        generate_s: this sample's share of its batch's generation time (edits excluded).
    """

    id: str
    case: str
    group: str
    k: int
    seed: int
    prompt: str
    old: str | None
    new: str | None
    expect: str | None
    scores: dict[str, float]
    generate_s: float = 0.0

    @classmethod
    def from_sample(cls, sample: "Sample", scores: dict[str, float], generate_s: float = 0.0) -> "Record":
        p = sample.pair
        return cls(sample.id, sample.case_id, sample.group, sample.prompt_index, sample.seed,
                   p.prompt, p.old, p.new, p.expect, dict(scores), generate_s)

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def mismatch(self, sample: "Sample") -> str | None:
        """Which of prompt/old/new/expect differ from ``sample``'s (``None``: the record is this sample's)."""
        p = sample.pair
        diff = [f"{k}: stored {getattr(self, k)!r}, now {getattr(p, k)!r}"
                for k in ("prompt", "old", "new", "expect") if getattr(self, k) != getattr(p, k)]
        return "; ".join(diff) or None


@dataclass(frozen=True)
class SamplerConfig:
    """How images are generated: part of a benchmark's protocol.

    Args:
        scheduler: ``pndm`` (the SD pipeline default, TIME/ReFACT), ``ddim``, ``lms`` (ESD/UCE),
            ``euler``, ``euler_a``, ``dpm``, ``ddpm``, or ``flow_euler`` (flow matching: SD3 and FLUX only).
        steps: denoising steps.
        guidance: classifier-free guidance scale, >= 1 (1: no guidance, the conditional prediction alone, as
            diffusers runs every scale <= 1).
        size: image side in pixels; ``None`` = the model's native size.
        seeds: the seeds; each sample gets its own noise tensor from ``torch.Generator("cpu").manual_seed``.
        eta: DDIM eta (Concept Ablation uses 1.0).
    """

    scheduler: str = "pndm"
    steps: int = 50
    guidance: float = 7.5
    size: int | None = 512
    seeds: list[int] = field(default_factory=lambda: list(range(25)))
    eta: float = 0.0

    def __post_init__(self):
        if self.steps < 1:
            raise UsageError(f"sampler.steps must be >= 1, got {self.steps}")
        if not self.seeds:
            raise UsageError("sampler.seeds is empty: give at least one seed, e.g. [0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"sampler.seeds has duplicates: {self.seeds}")
        if not self.guidance >= 1:
            raise UsageError(f"sampler.guidance must be >= 1, got {self.guidance}: diffusers' pipelines run no guidance "
                             "at any scale <= 1 (the conditional prediction alone), so a scale below 1 would not mean "
                             "the same here and there; use 1 for no guidance")


class GenerationBatch:
    """What an editor's ``predict_step`` generates: samples of one case under that case's edit (``case`` set,
    per-case protocol), or samples of any cases from the model as it is (``case=None``).

    Deliberately not a dataclass: Lightning's ``*-true`` precisions convert a batch's tensors by rebuilding every
    dataclass inside it, which frozen ones (a Sample, a case) refuse; a batch holds prompts and seeds, no tensor."""

    __slots__ = ("samples", "sampler", "case")

    def __init__(self, samples: tuple[Sample, ...], sampler: SamplerConfig, case: EditCase | None = None):
        self.samples, self.sampler, self.case = tuple(samples), sampler, case

    def __repr__(self) -> str:
        return f"GenerationBatch({len(self.samples)} samples, case={getattr(self.case, 'id', None)!r})"

    def __len__(self):
        return len(self.samples)


def without_words(prompt: str, words: list[str]) -> str:
    """``prompt`` with every whole-word occurrence of ``words`` removed (case-insensitive, longest first), the spaces
    and commas left behind tidied."""
    import re

    out = prompt
    for w in sorted(words, key=len, reverse=True):
        out = re.sub(rf"(?<![\w-]){re.escape(w)}(?![\w-])", " ", out, flags=re.IGNORECASE)
    out = re.sub(r"\s+", " ", out)
    out = re.sub(r"\s+([,.;:])", r"\1", out)
    out = re.sub(r"([,;:])(\s*[,;:])+", r"\1", out)
    return out.strip(" ,;:")
