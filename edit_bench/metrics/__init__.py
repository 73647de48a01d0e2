"""Metrics of ``eval``: each a :class:`SampleMetric` (torchmetrics) that scores samples into records and
aggregates the stored records; the CLIP judge and its TIMED scores."""

from .base import SampleMetric
from .clip_preference import PAPER_JUDGE, ClipJudge, JudgeConfig
from .edit_scores import FORMULA, EditScores, timed_success

__all__ = ["SampleMetric", "ClipJudge", "JudgeConfig", "PAPER_JUDGE", "EditScores", "FORMULA", "timed_success"]
