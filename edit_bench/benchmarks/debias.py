"""Debiasing: how an edit balances an attribute a concept implies (TIME §6 and UCE on professions and gender; the toy
world's colour defaults).

Each row is a concept (a profession) with its edit request and the prompts that measure it: TIMED's gender set
(``old,new,validation,ex1..ex5``: "an attendant" -> "a female attendant", "A photo of an attendant", ...). Every
prompt is drawn with each of the sampler's seeds and scored by :class:`~edit_bench.metrics.AttributeShare`: the share
of each attribute among the concept's images and the deviation from balance. ``per_case`` edits each concept on its
own (TIME's debiasing); ``fixed`` edits them all at once (UCE's).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..types import EditCase, EditRequest, PromptPair
from .base import Benchmark, read_csv, row_request, select_rows

ARTICLES = ("a ", "an ", "the ")


def subject_of(prompt: str) -> str:
    """The concept of a request prompt: without its article ("an attendant" -> "attendant")."""
    p = prompt.strip()
    for a in ARTICLES:
        if p.lower().startswith(a):
            return p[len(a):]
    return p


class AttributeBalance(Benchmark):
    """Concepts, their edits, and their prompts, scored by attribute shares (see the module docstring).

    Args:
        path: a CSV in TIMED's gender format: ``old`` (the concept's prompt), ``new`` (TIME's edit target), and the
            prompt columns ``validation``, ``ex1``..``exK`` (``datasets/timed/TIMED_gender_test_set.csv``, 35
            professions; the toy world's ``datasets/toy/toy_debias.csv``).
        rows: a subset, ``"0:10"`` or ``"3,5,9"``; ``None`` = all.
        **kwargs: sampler, judge, protocol (``per_case``: one edit per concept, TIME; ``fixed``: all at once, UCE),
            batch_size, baseline, metrics (default: ``AttributeShare`` of ``male`` / ``female`` by the texts "a man" /
            "a woman" with the benchmark's judge; the configs name UCE's ViT-B/32).

    Each request carries its concept as the subject (the prompt without its article), which UCE's debiasing edits.
    """

    groups = ("prompts",)

    def __init__(self, path: str = "datasets/timed/TIMED_gender_test_set.csv", rows: str | None = None, **kwargs):
        if kwargs.get("metrics") is None:  # TIMED's gender set: "a man" / "a woman" by the benchmark's judge
            from ..metrics import AttributeShare

            kwargs["metrics"] = [AttributeShare(attributes=["male", "female"], texts=["a man", "a woman"])]
        super().__init__(**kwargs)
        self.path, self.rows = path, rows
        table = read_csv(path, ["old", "new", "validation"], optional=tuple(f"ex{k}" for k in range(1, 21)))
        self._prompt_columns = ["validation"] + [c for c in (f"ex{k}" for k in range(1, 21)) if c in table[0]]
        self._table = [(i, table[i]) for i in select_rows(len(table), rows)]
        self._cases  # parse now: a bad row fails before any output exists

    def cases(self):
        stem = Path(self.path).stem
        out = []
        for i, r in self._table:
            concept = subject_of(r["old"])
            req = row_request(self.path, i, r["old"], r["new"])
            if concept.lower() not in r["old"].lower():
                raise UsageError(f"{self.path}: row {i}: cannot read the concept of {r['old']!r}")
            prompts = tuple(PromptPair(r[c], concept) for c in self._prompt_columns if r.get(c))
            out.append(EditCase(f"{stem}:{i:03d}", EditRequest(req.source, req.target, concept), {"prompts": prompts}))
        return out

    def concepts(self) -> list[str]:
        return [subject_of(r["old"]) for _, r in self._table]

    def protocol_info(self) -> dict:
        info = super().protocol_info()
        info.update(rows=len(self._table), prompt_columns=self._prompt_columns,
                    concepts={c.id: c.request.subject for c in self._cases.values()})
        return info
