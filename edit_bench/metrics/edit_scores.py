"""Efficacy / generality / specificity / F1 with the zero-shot CLIP judge (the TIMED rule of ReFACT §3.3)."""

from __future__ import annotations

import torch

from ..types import Record
from .base import ConceptPresent, SampleMetric, cat_state, empty_state
from .clip_preference import ClipJudge, JudgeConfig, shared_judge
from .functional import timed_scores, timed_success

FORMULA = {
    "mean": "successes / samples over all rows and seeds",
    "std": "population std (ddof=0) across seeds of the per-seed means",
    "f1": "sqrt(generality_mean * specificity_mean); its std is across seeds of per-seed sqrt(gen * spec)",
}


GROUPS = ("efficacy", "generality", "specificity")  # the TIMED groups, reported first
MADE = ("paraphrase:", "attack:")  # groups a benchmark option adds (rule-made paraphrases, attacks): reported after


class EditScores(SampleMetric):
    """The judge's TIMED scores.

    Per sample (into the record): ``p_new`` = P(new label) from the judge and ``success`` (1/0) by
    :func:`timed_success`. From the records: efficacy, generality, specificity (mean over all rows and
    seeds; std across seeds of the per-seed means) and F1 = sqrt(generality × specificity); every group a benchmark
    option adds (``paraphrase:<rule>``, ``attack:<name>``) as the same mean under its own name.

    Args:
        judge: the CLIP judge; ``None`` = the benchmark's ``judge``.
        name: default ``timed``, whose record keys are ``p_new``/``success`` and results efficacy, generality,
            specificity, f1; any other name prefixes them (``NAME.p_new``, ``NAME.efficacy``), so two judges coexist.
    """

    default_name = "timed"
    needs_labels = True

    def __init__(self, judge: JudgeConfig | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.judge_cfg = judge
        self.judge: ClipJudge | None = None  # loaded by prepare(); a registered submodule
        self._group_names = list(GROUPS)
        self.add_state("group", [], dist_reduce_fx="cat")
        self.add_state("seed", [], dist_reduce_fx="cat")
        self.add_state("success", [], dist_reduce_fx="cat")

    # ------------------------------------------------------------------ scoring (predict loop)
    def _key(self, k: str) -> str:
        return k if self.name == self.default_name else f"{self.name}.{k}"

    def keys(self) -> list[str]:
        return [self._key("p_new"), self._key("success")]

    def concept_present(self) -> ConceptPresent:
        return ConceptPresent(self._key("success"), 0.0, "the judge's TIMED rule gives the old label on a prompt "
                              "that should render the new one (success 0)")

    def prepare(self, bench) -> None:
        if self.judge_cfg is None:
            self.judge_cfg = bench.judge_cfg
        if self.judge is None:
            self.judge = shared_judge(self.judge_cfg)

    def identity(self) -> dict:
        return {"judge": self.judge_cfg.identity()}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "name": self.name, "judge": self.judge_cfg.describe(), "formula": FORMULA}

    def score(self, images, samples):
        if self.judge is None:
            raise RuntimeError("EditScores.prepare(bench) loads the judge before scoring")
        judge = self.judge.to(images.device)
        p_new = judge.preference(images, [s.pair.old for s in samples], [s.pair.new for s in samples])
        success = timed_success(p_new, [s.pair.expect for s in samples])
        return {self._key("p_new"): p_new.tolist(), self._key("success"): success.float().tolist()}

    # ------------------------------------------------------------------ aggregation (records)
    def _names(self) -> list[str]:
        """Group names by index: the TIMED groups, then the made ones as records bring them (aggregation runs on one
        process, from the stored records)."""
        return self._group_names

    def update(self, records: list[Record], features=None) -> None:
        records = [r for r in records if r.group in GROUPS or r.group.startswith(MADE)]
        if not records:
            return
        names = self._names()
        for r in records:
            if r.group not in names:
                names.append(r.group)
        self.group.append(torch.tensor([names.index(r.group) for r in records], device=self.device))
        self.seed.append(torch.tensor([r.seed for r in records], device=self.device))
        self.success.append(torch.tensor([bool(r.scores[self._key("success")]) for r in records], device=self.device))

    def compute(self) -> dict:
        if empty_state(self.group):
            return {}
        group, seed, success = cat_state(self.group), cat_state(self.seed), cat_state(self.success)
        names = self._names()
        present = {names[i] for i in group.unique().tolist()}
        order = [g for g in sorted(names, key=lambda g: (g not in GROUPS, g)) if g in present]  # TIMED's first
        out = timed_scores(success, [names[i] for i in group.tolist()], seed, order)
        return {self._key(k): v for k, v in out.items()}
