"""The "Oracle" rows of ReFACT Table 1: the unedited model drawing what the edit should produce.

For a sample that expects the new label (efficacy, generality) the model draws the sample's oracle prompt: RoAD's
``Oracle`` / ``Positive_oracleK`` columns, else the new label itself (TIMED: "A blue banana" for "A banana"); a
specificity sample is drawn as it is (its unedited image). The images are judged as every editor's are, so the
row says how well the judge can score a perfect edit on these prompts (ReFACT: TIMED 97.04 / 93.26 / 95.68).
"""

from __future__ import annotations

from torch import Tensor

from ..types import GenerationBatch
from .base import Editor


class Oracle(Editor):
    """Changes nothing; draws each edit-expecting sample's target (see the module docstring).

    Args:
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "none"
    families = ("sd1", "sd2", "sdxl", "sd3", "flux")
    multi_request = True

    def __init__(self, base: str = "toy"):
        super().__init__(base=base)
        self.delta = None

    def edited_parameters(self):
        return {}

    def edit(self, requests=(), preserve=()):
        """Nothing to edit: the oracle is a choice of prompts."""

    @staticmethod
    def prompt(pair) -> str:
        if pair.expect == "new":
            return pair.oracle or pair.new or pair.prompt
        return pair.prompt

    def predict_step(self, batch: GenerationBatch, batch_idx: int = 0) -> Tensor:
        return self.t2i.generate([self.prompt(s.pair) for s in batch.samples], [s.seed for s in batch.samples], batch.sampler)
