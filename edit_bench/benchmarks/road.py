"""RoAD (Roles and Appearances Dataset; Arad et al., ReFACT, NAACL 2024): role and appearance edits scored
by efficacy, generality and specificity with the judge's two labels (ReFACT §3.3).

Each row is one case. The request is ``Prompt -> Oracle`` ("Canada's Prime Minister" -> "Beyonce as Canada's
Prime Minister": the rendering the edit should produce; ReFACT's subject is the whole ``Prompt``).
Efficacy draws ``Prompt`` and expects ``New`` over ``Old``; generality draws ``PositiveK`` and expects
``Positive_newK`` over ``Positive_oldK``; specificity draws ``NegativeK`` and expects ``NegativeK`` over
``Negative_newK``. The validation file has no ``Positive_oracleK`` columns; they are not needed.
"""

from __future__ import annotations

from pathlib import Path

from ..types import EditCase, PromptPair
from .base import Benchmark, read_csv, row_request, select_rows

K = 5
COLUMNS = (["Prompt", "Oracle", "Old", "New"]
           + [c for k in range(1, K + 1) for c in (f"Positive{k}", f"Positive_old{k}", f"Positive_new{k}")]
           + [c for k in range(1, K + 1) for c in (f"Negative{k}", f"Negative_new{k}")])


class RoAD(Benchmark):
    """The RoAD benchmark (``datasets/road/RoAD_test.csv``: 90 rows, 41 roles and 49 appearances).

    Args:
        path: the CSV (``RoAD_test.csv``, or ``RoAD_validation.csv`` for layer search).
        rows: a subset, ``"0:10"`` or ``"3,5,9"``; ``None`` = all.
        **kwargs: sampler, judge, protocol, batch_size, ... (see :class:`Benchmark`).
    """

    def __init__(self, path: str = "datasets/road/RoAD_test.csv", rows: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.path, self.rows = path, rows
        table = read_csv(path, COLUMNS, optional=("Type",) + tuple(f"Positive_oracle{k}" for k in range(1, K + 1)))
        self._table = [(i, table[i]) for i in select_rows(len(table), rows)]
        self._cases

    def cases(self):
        stem = Path(self.path).stem
        out = []
        for i, r in self._table:
            request = row_request(self.path, i, r["Prompt"], r["Oracle"])
            groups = {
                "efficacy": (PromptPair(r["Prompt"], r["Old"], r["New"], "new", r["Oracle"]),),
                "generality": tuple(PromptPair(r[f"Positive{k}"], r[f"Positive_old{k}"], r[f"Positive_new{k}"], "new",
                                               r.get(f"Positive_oracle{k}") or None) for k in range(1, K + 1)),
                "specificity": tuple(PromptPair(r[f"Negative{k}"], r[f"Negative{k}"], r[f"Negative_new{k}"], "old")
                                     for k in range(1, K + 1)),
            }
            out.append(EditCase(f"{stem}:{i:04d}", request, groups))
        return out
