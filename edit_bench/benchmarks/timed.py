"""TIMED (Orgad et al., ICCV 2023): implicit-assumption edits scored by efficacy, generality and specificity.

Each row is one case: the request ``old -> new``; efficacy generates ``old`` and expects ``new``;
generality generates ``positiveK`` and expects ``gtK`` over ``positiveK``; specificity generates
``negativeK`` and expects ``negativeK`` over ``gnK`` (ReFACT §3.3). An optional ``preserve`` column
(prompts separated by ``;``) gives the case a preserve set, for editors that take one.
"""

from __future__ import annotations

from pathlib import Path

from ..types import EditCase, PromptPair
from .base import Benchmark, read_csv, row_request, select_rows

K = 5
COLUMNS = (["old", "new"] + [c for k in range(1, K + 1) for c in (f"positive{k}", f"gt{k}")]
           + [c for k in range(1, K + 1) for c in (f"negative{k}", f"gn{k}")])


class TIMED(Benchmark):
    """The TIMED benchmark (and any CSV in its format, e.g. the toy world's).

    Args:
        path: the CSV (paper: ``datasets/timed/TIMED_test_set_filtered_SD14.csv``, 104 rows, as TIME's
            main experiment and, by the image count it reports, ReFACT).
        rows: a subset, ``"0:10"`` or ``"3,5,9"``; ``None`` = all.
        **kwargs: sampler, judge, protocol, batch_size, ... (see :class:`Benchmark`).
    """

    def __init__(self, path: str = "datasets/timed/TIMED_test_set_filtered_SD14.csv", rows: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.path = path
        self.rows = rows
        table = read_csv(path, COLUMNS, optional=("preserve",))
        self._table = [(i, table[i]) for i in select_rows(len(table), rows)]
        self._cases  # parse now: a bad row fails at construction, before any output exists

    def cases(self):
        stem = Path(self.path).stem
        out = []
        for i, r in self._table:
            request = row_request(self.path, i, r["old"], r["new"])
            groups = {
                "efficacy": (PromptPair(r["old"], r["old"], r["new"], "new"),),
                "generality": tuple(PromptPair(r[f"positive{k}"], r[f"positive{k}"], r[f"gt{k}"], "new") for k in range(1, K + 1)),
                "specificity": tuple(PromptPair(r[f"negative{k}"], r[f"negative{k}"], r[f"gn{k}"], "old") for k in range(1, K + 1)),
            }
            preserve = tuple(p.strip() for p in r.get("preserve", "").split(";") if p.strip())
            out.append(EditCase(f"{stem}:{i:04d}", request, groups, preserve))
        return out
