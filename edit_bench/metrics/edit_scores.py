"""Efficacy / generality / specificity / F1 as a torchmetrics ``Metric`` (counts sync across processes)."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

from ..types import GROUPS

FORMULA = {
    "mean": "successes / samples over all rows and seeds",
    "std": "population std (ddof=0) across seeds of the per-seed means",
    "f1": "sqrt(generality_mean * specificity_mean); its std is across seeds of per-seed sqrt(gen * spec)",
}


class EditScores(Metric):
    """Success counts per (group, seed).

    ``update(group_index, seed_index, success)`` with ``[B]`` long/long/bool tensors; ``compute()``
    returns ``{metric: {"mean", "std", "n"}}`` for efficacy, generality, specificity and F1.
    """

    full_state_update = False

    def __init__(self, seeds: list[int], **kw):
        super().__init__(**kw)
        self.seeds = list(seeds)
        shape = (len(GROUPS), len(self.seeds))
        self.add_state("correct", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update_records(self, records: list[dict]) -> None:
        """Update from per-sample records (``group``, ``seed``, ``success``)."""
        if not records:
            return
        g = torch.tensor([GROUPS.index(r["group"]) for r in records])
        s = torch.tensor([self.seeds.index(r["seed"]) for r in records])
        self.update(g, s, torch.tensor([bool(r["success"]) for r in records]))

    def update(self, group_index, seed_index, success) -> None:
        flat = (group_index * len(self.seeds) + seed_index).to(self.correct.device)
        n = self.correct.numel()
        self.correct += torch.bincount(flat, weights=success.to(flat.device).double(), minlength=n).long().view_as(self.correct)
        self.total += torch.bincount(flat, minlength=n).view_as(self.total)

    def compute(self) -> dict:
        correct, total = self.correct.double().cpu(), self.total.double().cpu()
        out, per_seed = {}, {}
        for i, g in enumerate(GROUPS):
            if total[i].sum() == 0:
                continue
            seen = total[i] > 0
            per_seed[g] = correct[i][seen] / total[i][seen]
            out[g] = {"mean": float(correct[i].sum() / total[i].sum()),
                      "std": float(per_seed[g].std(unbiased=False)) if seen.sum() > 1 else 0.0,
                      "n": int(total[i].sum())}
        if "generality" in out and "specificity" in out:
            f1_seed = (per_seed["generality"] * per_seed["specificity"]).sqrt()
            out["f1"] = {"mean": math.sqrt(out["generality"]["mean"] * out["specificity"]["mean"]),
                         "std": float(f1_seed.std(unbiased=False)) if len(f1_seed) > 1 else 0.0,
                         "n": out["generality"]["n"] + out["specificity"]["n"]}
        return out
