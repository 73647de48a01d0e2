"""Metrics: the CLIP judge and the edit scores (torchmetrics, synced across processes)."""

from .clip_preference import PAPER_JUDGE, ClipJudge, JudgeConfig
from .edit_scores import FORMULA, EditScores

__all__ = ["ClipJudge", "JudgeConfig", "PAPER_JUDGE", "EditScores", "FORMULA"]
