"""Image quality on a caption set (COCO-30k): what an edit costs the model everywhere else.

Every caption is drawn once, with its own seed (the CSV's ``evaluation_seed``, as ESD's and UCE's scripts),
by the model after one edit of every request (the fixed protocol), and scored by image-quality metrics:
CLIP-score against the caption and FID/KID against a folder of real images. With ``baseline`` the unedited
model is scored on the same samples (ReFACT Table 1's "Baseline" row), and paired distances (LPIPS) compare
each edited image with the unedited one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..types import EditCase, EditRequest, PromptPair, Sample
from .base import Benchmark, read_csv, select_rows
from .requests import EditRequests

GROUP = "captions"


class Captions(Benchmark):
    """A caption set for image quality (``configs/benchmark/coco30k.yaml``; the toy world's
    ``toy_captions.yaml``).

    Args:
        path: a CSV with a ``prompt`` (or ``caption``) column and optionally ``evaluation_seed`` (default: the
            row index) — ``datasets/coco/coco_30k.csv``, 30,000 COCO captions with ESD's seeds.
        n: the first ``n`` captions (1k, 10k or 30k in the papers); ``None`` = all.
        requests: the edit to evaluate: a requests file (YAML ``{requests: [...], preserve: [...]}`` or CSV
            ``source,target[,subject]``), applied once with all its requests. Not needed for the unedited
            model or a saved delta (``configs/editor/unedited.yaml``).
        fid_reference: the folder of real images that ``FID`` metrics without a reference of their own compare
            with (COCO: the val2014 images of these captions).
        **kwargs: sampler, judge, batch_size, baseline, metrics (see :class:`Benchmark`); the protocol is
            ``fixed``.

    Its one case has no request of its own and its samples no labels: the edit (if any) is ``requests``, applied
    once; metrics that judge labels (``EditScores``) are refused.
    """

    groups = (GROUP,)

    def __init__(self, path: str = "datasets/coco/coco_30k.csv", n: int | None = 1000, requests: str | None = None,
                 fid_reference: str | None = None, protocol: str = "fixed", **kwargs):
        if protocol != "fixed":
            raise UsageError(f"Captions measures one edited model: protocol must be 'fixed', got {protocol!r}")
        if kwargs.get("metrics") is None:  # CLIP-score with the judge, and FID when there is a reference
            from ..metrics import FID, ClipScore

            kwargs["metrics"] = [ClipScore()] + ([FID()] if fid_reference else [])
        super().__init__(protocol=protocol, **kwargs)
        self.path, self.n, self.fid_reference = path, n, fid_reference
        if n is not None and n < 1:
            raise UsageError(f"n must be >= 1 (or null for every caption), got {n}")
        import csv

        from .base import resolve_path

        with open(resolve_path(path), newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        column = "prompt" if "prompt" in header else "caption" if "caption" in header else None
        if column is None:
            raise UsageError(f"{path}: needs a 'prompt' or 'caption' column; the file has {header}")
        rows = read_csv(path, [column], optional=("evaluation_seed",))
        rows = [rows[i] for i in select_rows(len(rows), f"0:{n}" if n else None)]
        try:
            self._captions = [(r[column], int(r["evaluation_seed"]) if r.get("evaluation_seed") else i)
                              for i, r in enumerate(rows)]
        except ValueError as e:
            raise UsageError(f"{path}: evaluation_seed must be an integer ({e})") from None
        self._edit = EditRequests(requests) if requests else None
        self.requests_path = requests
        self._cases

    def cases(self):
        # one case: every caption, each a prompt without labels; the edit is the requests file's, applied once
        return [EditCase(Path(self.path).stem, None, {GROUP: tuple(PromptPair(c) for c, _ in self._captions)})]

    def samples(self) -> list[Sample]:
        case = next(iter(self._cases.values()))
        return [Sample(case.id, GROUP, i, seed, case.groups[GROUP][i]) for i, (_, seed) in enumerate(self._captions)]

    def requests(self) -> list[EditRequest]:
        """The edit's requests (none without ``requests``: the unedited model or a saved delta)."""
        return self._edit.requests() if self._edit is not None else []

    def preserve(self) -> list[str]:
        return self._edit.preserve() if self._edit else []

    def prompts(self) -> list[str]:
        out = [c for c, _ in self._captions]
        if self._edit is not None:
            out += [t for r in self._edit.requests() for t in (r.source, r.target)] + self._edit.preserve()
        return list(dict.fromkeys(out))

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        seeds = [s for _, s in self._captions]
        info.update(seeds=seeds, seeding="one seed per caption: the file's evaluation_seed (else its row index)",
                    captions=len(seeds), requests=self.requests_path, fid_reference=self.fid_reference)
        return info
