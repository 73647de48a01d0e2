"""Concept inversion (Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image Generative Models", ICLR
2024; CCE): textual inversion of one new token on the *edited* model from images of the concept, then generation
with that token in place of the concept's words.

The loss is textual inversion's (diffusers' ``textual_inversion.py``, which CCE's ``concept_inversion.py`` extends):
the UNet's training loss ``||target - model(x_t, t, c(prompt with <token>))||²`` with ``t ~ U{0..T-1}``, one
posterior sample of each image's latent per step, AdamW on the new token's vector alone. CCE's defaults
[NYU-DICE-Lab/circumventing-concept-erasure@bb7034b ``esd/train.sh``]: 25 images, batch 4 x 4 accumulated (16), 5000
steps, lr 5e-3 scaled by the batch (``--scale_lr``: 0.08), constant, weight decay 1e-2. CCE initialises the token
from a word of the concept's kind ("art" for a style); here ``init`` names it, ``concept`` (the default) takes the
mean embedding of the concept's own words.

The prompt the token is learned in, and drawn with, is each efficacy prompt with its concept words (the span from the
first to the last word of the request's source that its target lacks) replaced by the token: "a circle by Pell" ->
"a circle by <c>"; CCE uses textual inversion's templates ("a photo of a {}", "a painting in the style of {}"). Images:
the unedited model's images of the efficacy prompts (seeds ``image_seeds``), or ``images: FOLDER`` with
``FOLDER/<request source>/*.png``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import AdversarialPrompts, Attack, concept_span, layout, noisy, readable, schedule, token_ids


class ConceptInversion(Attack):
    """CCE: a token learned on the edited model from the concept's images (see the module docstring).

    Args:
        steps: optimisation steps (CCE: 5000).
        batch_size: images per step (CCE: 4 x 4 accumulated = 16).
        lr: the learning rate before scaling (CCE: 5e-3).
        scale_lr: multiply ``lr`` by ``batch_size`` (CCE's ``--scale_lr``).
        weight_decay: AdamW's (textual inversion's default 1e-2).
        init: the word whose embedding starts the token; ``concept``: the mean of the concept words' embeddings.
        images: ``None``: the unedited model's images; a folder: ``FOLDER/<request source>/*.png``.
        image_seeds: the seeds of the unedited model's images (CCE: 25 images).
        name, seed: see :class:`~edit_bench.attacks.base.Attack`.
    """

    default_name = "concept_inversion"
    version = "1"
    reference = "CCE (Pham et al., ICLR 2024), textual inversion on the edited model; defaults from esd/train.sh@bb7034b"
    uses_images = True
    derives = {"concept images": "origin", "inversion": "current"}

    def __init__(self, steps: int = 5000, batch_size: int = 16, lr: float = 5e-3, scale_lr: bool = True,
                 weight_decay: float = 1e-2, init: str = "concept", images: str | None = None,
                 image_seeds: list[int] | None = None, name: str | None = None, seed: int = 0):
        super().__init__(name, seed)
        self._positive(steps=steps, batch_size=batch_size)
        self.steps, self.batch_size, self.lr, self.scale_lr = steps, batch_size, lr, scale_lr
        self.weight_decay, self.init, self.images = weight_decay, init, images
        self.image_seeds = list(image_seeds) if image_seeds is not None else list(range(1000, 1025))
        if not self.image_seeds:
            raise UsageError("image_seeds is empty: the attack needs at least one image of the concept")

    def _template(self, t2i, case, prompt: str, new_id: int) -> torch.Tensor:
        span = concept_span(case.request, prompt)
        if span is None:
            raise UsageError(f"{self.name}: the prompt {prompt!r} of case {case.id} names none of the concept words of "
                             f"{case.request.source!r} -> {case.request.target!r}: nothing to invert")
        before, after = span
        return layout(t2i, token_ids(t2i, before) + [new_id] + token_ids(t2i, after))

    def _init_vector(self, t2i, case) -> torch.Tensor:
        table = t2i.token_embedding("text_encoder").weight
        if self.init == "concept":
            from ..benchmarks.paraphrase import concept_words

            words = " ".join(concept_words(case.request))
        else:
            words = self.init
        ids = token_ids(t2i, words)
        if not ids:
            raise UsageError(f"{self.name}: init {self.init!r} has no tokens")
        return table[ids].detach().float().mean(0)

    def attack(self, t2i, case, prompts, images, gen, editor, judge=None):
        table = t2i.token_embedding("text_encoder").weight
        new_id = table.shape[0]  # a token outside the vocabulary: looked up nowhere, replaced everywhere
        ids = torch.stack([self._template(t2i, case, p, new_id) for p in prompts])  # [P, 77]
        vec = self._init_vector(t2i, case).to(t2i.device).requires_grad_(True)
        lr = self.lr * (self.batch_size if self.scale_lr else 1)
        opt = torch.optim.AdamW([vec], lr=lr, weight_decay=self.weight_decay)
        sched = schedule(t2i)
        with torch.no_grad():
            mean, std = t2i.encode_images(images.to(t2i.device))
        n, T = len(mean), sched.config.num_train_timesteps
        size = images.shape[-1]
        loss = torch.tensor(float("nan"))
        for _ in range(self.steps):
            pick = torch.randint(0, n, (self.batch_size,), generator=gen)
            row = torch.randint(0, len(ids), (self.batch_size,), generator=gen)
            x0 = mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen).to(mean.device)
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            t = torch.randint(0, T, (self.batch_size,), generator=gen)
            x_t, target = noisy(sched, x0, noise, t)
            b_ids = ids[row]
            where = (b_ids == new_id).to(t2i.device)
            cond = t2i.condition_ids(b_ids, where, vec.expand(*b_ids.shape, -1))
            pred = t2i.noise_prediction(x_t, t.to(t2i.device), cond, size)
            loss = F.mse_loss(pred.float(), target.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        where = ids == new_id
        vectors = vec.detach().float().cpu().expand(*ids.shape, -1).clone()
        text = [readable(t2i, r) for r in ids]
        return AdversarialPrompts(ids, text, where, vectors, float(loss.detach()))

