"""Prompt optimisation (UnlearnDiffAtk: Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are
Still Easy To Generate Unsafe Images ... For Now", ECCV 2024; P4D: Chin et al., ICML 2024): ``k`` discrete tokens put
before each efficacy prompt, optimised so that the *edited* model denoises an image of the concept under the new
prompt.

The optimisation is UnlearnDiffAtk's hard-prompt attacker [OPTML-Group/Diffusion-MU-Attack@5a3e5d3
``src/attackers/hard_prompt_.py``, ``configs/*/hard_prompt_*.json``]: continuous token embeddings, at every step
projected onto their nearest vocabulary embedding by cosine similarity; the loss is computed on the projected ones and
its gradient applied to the continuous ones (Adam, lr 0.01, weight decay 0.1); ``k = 3`` tokens as a prefix (BOS, the
tokens, the prompt); ``iterations = 40`` steps at each of ``timesteps = 50`` evenly spaced timesteps
(``T // 50 // 2, ...``), one fresh noise per step. ``objective``: ``images`` is UnlearnDiffAtk's
``||ε - model(x_t, t, c_adv)||²`` on the concept's image; ``teacher`` is P4D's ``||model(x_t, c_adv) -
unedited(x_t, c_prompt)||²``.

UnlearnDiffAtk evaluates the prompt after every timestep with its classifier and stops at the first success, so its
attack success rate is "any of up to 50 prompts succeeds on one seed". Here the attack runs its whole budget without
a judge in the loop and the final prompt is scored on every seed of the benchmark (:data:`~.base.SUCCESS`): a lower
rate than best-of-50, by definition. The image is the unedited model's first image of each prompt (UnlearnDiffAtk
attacks each prompt with its own image), or the first file of ``images: FOLDER/<request source>/``.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import AdversarialPrompts, Attack, layout, noisy, readable, schedule, token_ids


class PromptOptimisation(Attack):
    """UnlearnDiffAtk / P4D hard-prompt attack (see the module docstring).

    Args:
        k: adversarial tokens prepended to each prompt (UnlearnDiffAtk: 3).
        timesteps: evenly spaced timesteps, attacked one after another (UnlearnDiffAtk: 50).
        iterations: steps at each timestep (UnlearnDiffAtk: 40).
        lr, weight_decay: Adam's (UnlearnDiffAtk: 0.01, 0.1).
        objective: ``images`` (UnlearnDiffAtk) or ``teacher`` (P4D).
        images: ``None``: the unedited model's images; a folder: ``FOLDER/<request source>/*.png``.
        image_seeds: the seed of the unedited model's image of each prompt (the first is used).
        name, seed: see :class:`~edit_bench.attacks.base.Attack`.
    """

    default_name = "prompt_optimisation"
    version = "1"
    reference = ("UnlearnDiffAtk (Zhang et al., ECCV 2024) hard-prompt attacker; defaults from "
                 "OPTML-Group/Diffusion-MU-Attack@5a3e5d3 configs/*/hard_prompt_*.json; objective teacher = P4D")
    uses_images = True
    derives = {"concept images": "origin", "teacher": "origin", "optimisation": "current"}

    def __init__(self, k: int = 3, timesteps: int = 50, iterations: int = 40, lr: float = 0.01, weight_decay: float = 0.1,
                 objective: Literal["images", "teacher"] = "images", images: str | None = None,
                 image_seeds: list[int] | None = None, name: str | None = None, seed: int = 0):
        super().__init__(name, seed)
        self._positive(k=k, timesteps=timesteps, iterations=iterations)
        if objective not in ("images", "teacher"):
            raise UsageError(f"objective must be 'images' (UnlearnDiffAtk) or 'teacher' (P4D), got {objective!r}")
        self.k, self.timesteps, self.iterations, self.lr, self.weight_decay = k, timesteps, iterations, lr, weight_decay
        self.objective, self.images = objective, images
        self.image_seeds = list(image_seeds) if image_seeds is not None else [1000]
        if not self.image_seeds:
            raise UsageError("image_seeds is empty: the attack needs an image of the concept")

    def attack(self, t2i, case, prompts, images, gen, editor):
        table = t2i.token_embedding("text_encoder").weight.detach().float()
        unit = F.normalize(table, dim=-1)
        sched = schedule(t2i)
        T = sched.config.num_train_timesteps
        start = T // self.timesteps // 2
        steps = list(range(start, T, T // self.timesteps))[:self.timesteps]
        share = max(1, len(images) // len(prompts))  # each prompt's own images come first in its share
        size = images.shape[-1]
        rows, text, losses = [], [], []
        for j, prompt in enumerate(prompts):
            with torch.no_grad():
                first = min(j * share, len(images) - 1)
                x0, _ = t2i.encode_images(images[first:first + 1].to(t2i.device))
            body = token_ids(t2i, prompt)
            adv = table[torch.randint(0, len(table), (self.k,), generator=gen)].clone().to(t2i.device).requires_grad_(True)
            opt = torch.optim.Adam([adv], lr=self.lr, weight_decay=self.weight_decay)
            where = torch.zeros(1, t2i.max_length, dtype=torch.bool)
            where[0, 1:1 + self.k] = True
            loss = torch.tensor(float("nan"))
            for t_int in steps:
                t = torch.tensor([t_int])
                for _ in range(self.iterations):
                    with torch.no_grad():
                        near = (F.normalize(adv.detach(), dim=-1) @ unit.T.to(adv.device)).argmax(-1).cpu()
                    proj = table[near].to(t2i.device).requires_grad_(True)
                    ids = layout(t2i, near.tolist() + body)[None]
                    vectors = torch.zeros(1, t2i.max_length, table.shape[1], device=t2i.device)
                    vectors[0, 1:1 + self.k] = proj
                    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
                    x_t, target = noisy(sched, x0, noise, t)
                    if self.objective == "teacher":  # first: it swaps the weights, which the graph below must not see
                        target = self._teacher(t2i, editor, x_t, t, prompt, size)
                    pred = t2i.noise_prediction(x_t, t.to(t2i.device), t2i.condition_ids(ids, where, vectors), size)
                    loss = F.mse_loss(pred.float(), target.float())
                    adv.grad = torch.autograd.grad(loss, [proj])[0]
                    opt.step()
            with torch.no_grad():
                near = (F.normalize(adv.detach(), dim=-1) @ unit.T.to(adv.device)).argmax(-1).cpu()
            rows.append(layout(t2i, near.tolist() + body))
            text.append(readable(t2i, rows[-1]))
            losses.append(float(loss.detach()))
        return AdversarialPrompts(torch.stack(rows), text, loss=sum(losses) / len(losses))

    @staticmethod
    def _teacher(t2i, editor, x_t, t, prompt, size):
        """P4D's target: the unedited model's prediction for the plain prompt."""
        ctx = editor.original_weights() if editor is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return t2i.noise_prediction(x_t, t.to(t2i.device), t2i.condition([prompt]), size)
