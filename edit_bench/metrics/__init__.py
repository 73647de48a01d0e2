"""Metrics of ``eval``: each a :class:`SampleMetric` (torchmetrics) that scores samples into records and
aggregates the stored records: the CLIP judge and its TIMED scores, and image quality (CLIP-score, FID/KID,
LPIPS and the toy world's twins), and the erasure tables' detectors and classifiers (NudeNet, an ImageNet
classifier, zero-shot CLIP accuracy)."""

from .base import SampleMetric
from .clip_preference import PAPER_JUDGE, ClipJudge, JudgeConfig
from .edit_scores import FORMULA, EditScores, timed_success
from .detectors import AttributeShare, ClipAccuracy, ImageClassifier, NudeNet
from .quality import FID, LPIPS, SSIM, ClipScore, ImageFeatures, JudgeDistance, PairedMetric

__all__ = ["SampleMetric", "ClipJudge", "JudgeConfig", "PAPER_JUDGE", "EditScores", "FORMULA", "timed_success",
           "ClipScore", "FID", "LPIPS", "SSIM", "JudgeDistance", "PairedMetric", "ImageFeatures",
           "NudeNet", "ImageClassifier", "ClipAccuracy", "AttributeShare"]
