"""Data modules: what to edit (``EditData``) and how edits are measured (``Benchmark``)."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader

from ..metrics import ClipJudge, JudgeConfig
from ..types import EditCase, EditRequest, Sample, SamplerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """A data file by path: as given (relative to the working directory), else relative to the checkout
    root, so ``datasets/...`` works from any directory."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    raise FileNotFoundError(f"data file {path} not found (looked in {Path.cwd()} and {REPO_ROOT})")


def read_csv(path: str | Path, required: list[str], optional: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a CSV file, checked: every ``required`` column exists and no required cell is empty."""
    p = resolve_path(path)
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{p}: missing columns {missing}; the file has {header}. Expected columns: {required}")
        rows = list(reader)
    for i, row in enumerate(rows):
        empty = [c for c in required if not (row.get(c) or "").strip()]
        if empty:
            raise ValueError(f"{p}: row {i + 2} (line {i + 2} of the file) has empty cells in {empty}; fill them or remove the row")
    if not rows:
        raise ValueError(f"{p} has no data rows")
    return [{k: (v or "").strip() for k, v in r.items() if k in required or k in optional} for r in rows]


def select_rows(n: int, rows: str | None) -> list[int]:
    """Row indices from a selection: ``None`` = all, ``"0:10"`` = a slice, ``"3,5,9"`` = a list."""
    if rows is None or str(rows).strip() == "":
        return list(range(n))
    s = str(rows).strip()
    try:
        if ":" in s:
            return list(range(n))[slice(*[int(x) if x else None for x in s.split(":")])]
        idx = [int(x) for x in s.split(",")]
    except ValueError:
        raise ValueError(f"rows={rows!r}: use a slice like '0:10' or a list like '3,5,9'") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"rows {bad} out of range: the file has {n} rows (0..{n - 1})")
    return idx


class EditData(L.LightningDataModule):
    """Anything that yields edit requests (for ``fit``)."""

    truncate_long_prompts: bool = False
    truncated: list[str] = []

    def requests(self) -> list[EditRequest]:
        raise NotImplementedError  # abstract

    def preserve(self) -> list[str]:
        return []

    def prompts(self) -> list[str]:
        """Every prompt this data feeds the text encoder."""
        out = [t for r in self.requests() for t in (r.source, r.target)] + list(self.preserve())
        return list(dict.fromkeys(out))

    def check_prompts(self, n_tokens) -> None:
        """Fail (or truncate, with ``truncate_long_prompts``) on prompts over 77 tokens."""
        long = [(p, n) for p in self.prompts() if (n := n_tokens(p)) > 77]
        if not long:
            return
        listing = "; ".join(f"{p!r} ({n} tokens)" for p, n in long[:5]) + (" ..." if len(long) > 5 else "")
        if not self.truncate_long_prompts:
            raise ValueError(
                f"{len(long)} prompt(s) exceed the text encoder's 77 tokens: {listing}. Shorten them, or set "
                "--data.init_args.truncate_long_prompts true to truncate them to 77 tokens as SD pipelines do"
            )
        self.truncated = [p for p, _ in long]
        print(f"edit_bench: truncated {len(long)} prompt(s) to 77 tokens: {listing}")


class Benchmark(EditData):
    """A benchmark: cases, the sampler and judge that measure them, and the protocol.

    Args:
        sampler: generation settings (scheduler, steps, guidance, size, seeds).
        judge: the CLIP judge.
        protocol: ``per_case`` (reset the weights and edit for every case, as TIMED/RoAD) or
            ``fixed`` (one edit with all requests, then evaluate every case on it).
        batch_size: samples per generation batch (may span cases).
        truncate_long_prompts: prompts over 77 tokens are an error unless this is true, when they are
            truncated to 77 tokens (as Stable Diffusion's pipelines do) and listed in the results.
        baseline: also score the unedited model on the same samples, so results and the printed table
            show baseline and edited side by side.
    """

    def __init__(self, sampler: SamplerConfig = SamplerConfig(), judge: JudgeConfig = JudgeConfig(),
                 protocol: Literal["per_case", "fixed"] = "per_case", batch_size: int = 8,
                 truncate_long_prompts: bool = False, baseline: bool = False):
        super().__init__()
        self.baseline = baseline
        if protocol not in ("per_case", "fixed"):
            raise ValueError(f"protocol must be 'per_case' or 'fixed', got {protocol!r}")
        self.sampler = sampler
        self.judge_cfg = judge
        self.protocol = protocol
        self.batch_size = batch_size
        self.truncate_long_prompts = truncate_long_prompts
        self.truncated: list[str] = []
        self._done: set[str] = set()

    # -- cases
    def cases(self) -> list[EditCase]:
        raise NotImplementedError  # abstract

    @functools.cached_property
    def _cases(self) -> dict[str, EditCase]:
        out = {}
        for c in self.cases():
            if c.id in out:
                raise ValueError(f"duplicate case id {c.id!r}")
            out[c.id] = c
        return out

    def case(self, case_id: str) -> EditCase:
        return self._cases[case_id]

    def requests(self) -> list[EditRequest]:
        return [c.request for c in self._cases.values()]

    def preserve(self) -> list[str]:
        return sorted({p for c in self._cases.values() for p in c.preserve})

    def samples(self) -> list[Sample]:
        return [s for c in self._cases.values() for s in c.samples(self.sampler.seeds)]

    def prompts(self) -> list[str]:
        """Every prompt the benchmark will feed the text encoder (requests and samples)."""
        out = []
        for c in self._cases.values():
            out += [c.request.source, c.request.target, *c.preserve]
            out += [p.prompt for pairs in c.groups.values() for p in pairs]
        return list(dict.fromkeys(out))

    # -- the judge (loaded once, on first use)
    @functools.cached_property
    def judge(self) -> ClipJudge:
        return ClipJudge(self.judge_cfg)

    # -- samples for Lightning's predict loop
    def exclude(self, done: set[str]) -> None:
        """Skip samples whose results are already stored (resume)."""
        self._done = set(done)

    def pending(self) -> list[Sample]:
        return [s for s in self.samples() if s.id not in self._done]

    def predict_dataloader(self):
        return DataLoader(self.pending(), batch_size=self.batch_size, shuffle=False, collate_fn=list)

    def protocol_info(self) -> dict:
        s = self.sampler
        return {"sampler": {"scheduler": s.scheduler, "steps": s.steps, "guidance": s.guidance, "size": s.size,
                            "eta": s.eta, "noise": "torch.Generator('cpu').manual_seed(seed) per sample"},
                "seeds": list(s.seeds), "judge": self.judge_cfg.describe(), "protocol": self.protocol,
                "cases": len(self._cases), "truncated_prompts": self.truncated}
