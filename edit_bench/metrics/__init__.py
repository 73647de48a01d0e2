"""Metrics of ``eval``: each a :class:`SampleMetric` (torchmetrics) that scores samples into records and
aggregates the stored records: the CLIP judge and its TIMED scores, and image quality (CLIP-score, FID/KID,
LPIPS and the toy world's twins), and the erasure tables' detectors and classifiers (NudeNet, an ImageNet
classifier, zero-shot CLIP accuracy). One file per family (:mod:`.edit_scores`, :mod:`.clip_score`, :mod:`.fid`,
:mod:`.paired`, :mod:`.detectors`), each class a shell over the pure formulas of :mod:`.functional`."""

from .base import ConceptPresent, SampleMetric
from .clip_preference import PAPER_JUDGE, ClipJudge, JudgeConfig
from .clip_score import ClipScore, HFClip
from .detectors import AttributeShare, ClipAccuracy, ImageClassifier, NudeNet, ToyAttributes
from .edit_scores import FORMULA, EditScores
from .fid import FID, ImageFeatures
from .functional import timed_success
from .paired import LPIPS, SSIM, ClipScoreDifference, JudgeDistance, PairedMetric

__all__ = ["SampleMetric", "ConceptPresent", "ClipJudge", "JudgeConfig", "PAPER_JUDGE", "EditScores", "FORMULA", "timed_success",
           "ClipScore", "HFClip", "FID", "LPIPS", "SSIM", "JudgeDistance", "ClipScoreDifference", "PairedMetric", "ImageFeatures",
           "NudeNet", "ImageClassifier", "ClipAccuracy", "AttributeShare", "ToyAttributes"]
