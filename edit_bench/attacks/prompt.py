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

UnlearnDiffAtk keeps its classifier in the loop [``hard_prompt_.py`` ``run``]: it first judges the plain prompt's image
(on the prompt's own seed) and stops there when the concept is already back, then judges the projected prompt after
every timestep's iterations and stops at the first success, so its attack success rate is "the plain prompt or any of
up to 50 prompts succeeds on one seed". ``judge_in_loop: true`` does the same with the benchmark's attack judge
(:func:`~edit_bench.attacks.runner.judge_in_loop`: one image per check, on the prompt's first seed; the checks are
counted in ``judge_calls`` and their time is in the attack's seconds); a prompt that succeeds on the plain check keeps
no adversarial token. Without it (the default) the attack runs its whole budget and the final prompt is scored on
every seed of the benchmark (:data:`~.base.SUCCESS`): a lower rate than best-of-budget, by definition, at a known cost. The image is the unedited model's first image of each prompt (UnlearnDiffAtk
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
        judge_in_loop: judge the plain prompt, then the prompt after every timestep, and stop at the first success
            (UnlearnDiffAtk's loop; see the module docstring).
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
                 image_seeds: list[int] | None = None, judge_in_loop: bool = False,
                 method: Literal["hard_prompt", "text_grad"] = "hard_prompt", name: str | None = None, seed: int = 0):
        super().__init__(name, seed)
        self._positive(k=k, timesteps=timesteps, iterations=iterations)
        if objective not in ("images", "teacher"):
            raise UsageError(f"objective must be 'images' (UnlearnDiffAtk) or 'teacher' (P4D), got {objective!r}")
        if method not in ("hard_prompt", "text_grad"):
            raise UsageError(f"method must be 'hard_prompt' or 'text_grad' (UnlearnDiffAtk's two attackers), got {method!r}")
        self.method = method
        self.k, self.timesteps, self.iterations, self.lr, self.weight_decay = k, timesteps, iterations, lr, weight_decay
        self.objective, self.images, self.judge_in_loop = objective, images, bool(judge_in_loop)
        self.image_seeds = list(image_seeds) if image_seeds is not None else [1000]
        if not self.image_seeds:
            raise UsageError("image_seeds is empty: the attack needs an image of the concept")

    def attack(self, t2i, case, prompts, images, gen, editor, judge=None):
        table = t2i.token_embedding("text_encoder").weight.detach().float()
        unit = F.normalize(table, dim=-1)
        sched = schedule(t2i)
        T = sched.config.num_train_timesteps
        start = T // self.timesteps // 2
        steps = list(range(start, T, T // self.timesteps))[:self.timesteps]
        share = max(1, len(images) // len(prompts))  # each prompt's own images come first in its share
        size = images.shape[-1]
        rows, text, losses, calls = [], [], [], 0
        for j, prompt in enumerate(prompts):
            body = token_ids(t2i, prompt)
            if judge is not None:  # UnlearnDiffAtk: the plain prompt first; no attack where it already succeeds
                calls += 1
                if judge(layout(t2i, body), j):
                    rows.append(layout(t2i, body))
                    text.append(readable(t2i, rows[-1]))
                    continue
            with torch.no_grad():
                first = min(j * share, len(images) - 1)
                x0, _ = t2i.encode_images(images[first:first + 1].to(t2i.device))
            text_grad = self.method == "text_grad"
            if text_grad:  # a distribution over the vocabulary per token, uniform, on the simplex
                adv = simplex(torch.full((self.k, len(table)), 1 / len(table))).to(t2i.device).requires_grad_(True)
            else:  # continuous embeddings, from random vocabulary tokens
                adv = table[torch.randint(0, len(table), (self.k,), generator=gen)].clone().to(t2i.device).requires_grad_(True)
            opt = torch.optim.Adam([adv], lr=self.lr, weight_decay=self.weight_decay)
            where = torch.zeros(1, t2i.max_length, dtype=torch.bool)
            where[0, 1:1 + self.k] = True

            def tokens() -> torch.Tensor:  # the attack's current discrete tokens
                with torch.no_grad():
                    if text_grad:
                        return adv.detach().argmax(-1).cpu()
                    return (F.normalize(adv.detach(), dim=-1) @ unit.T.to(adv.device)).argmax(-1).cpu()

            loss = torch.tensor(float("nan"))
            for t_int in steps:
                t = torch.tensor([t_int])
                for _ in range(self.iterations):
                    if text_grad:  # one token per row drawn from the distribution; the gradient passes straight through
                        near = torch.multinomial(adv.detach().cpu(), 1, generator=gen)[:, 0]
                        pick = F.one_hot(near, len(table)).float().to(t2i.device).requires_grad_(True)
                        proj = pick @ table.to(t2i.device)
                    else:  # the nearest vocabulary embeddings; the gradient taken there
                        near = tokens()
                        pick = proj = table[near].to(t2i.device).requires_grad_(True)
                    ids = layout(t2i, near.tolist() + body)[None]
                    vectors = torch.zeros(1, t2i.max_length, table.shape[1], device=t2i.device)
                    vectors[0, 1:1 + self.k] = proj
                    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
                    x_t, target = noisy(sched, x0, noise, t)
                    if self.objective == "teacher":  # first: it swaps the weights, which the graph below must not see
                        target = self._teacher(t2i, editor, x_t, t, prompt, size)
                    pred = t2i.noise_prediction(x_t, t.to(t2i.device), t2i.condition_ids(ids, where, vectors), size)
                    loss = F.mse_loss(pred.float(), target.float())
                    grad = torch.autograd.grad(loss, [pick])[0]
                    adv.grad = F.hardtanh(grad) if text_grad else grad
                    opt.step()
                    if text_grad:
                        with torch.no_grad():
                            adv.copy_(simplex(adv.detach().cpu()).to(adv.device))
                if judge is not None:  # UnlearnDiffAtk: the discrete prompt after every timestep
                    near = tokens()
                    calls += 1
                    if judge(layout(t2i, near.tolist() + body), j):
                        break
            near = tokens()
            rows.append(layout(t2i, near.tolist() + body))
            text.append(readable(t2i, rows[-1]))
            losses.append(float(loss.detach()))
        loss = sum(losses) / len(losses) if losses else float("nan")
        return AdversarialPrompts(torch.stack(rows), text, loss=loss, judge_calls=calls)

    @staticmethod
    def _teacher(t2i, editor, x_t, t, prompt, size):
        """P4D's target: the unedited model's prediction for the plain prompt."""
        ctx = editor.original_weights() if editor is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return t2i.noise_prediction(x_t, t.to(t2i.device), t2i.condition([prompt]), size)


def simplex(rows: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
    """Each row projected onto the probability simplex with entries at most 1: ``clip(a - mu, 0, 1)`` with ``mu``
    found by bisection to ``tol`` (UnlearnDiffAtk's ``text_grad`` projection: a row whose clipped entries already sum to
    1 within ``tol`` is only clipped; otherwise ``mu`` is bisected on ``[min(a) - 1, max(a)]`` until the interval is
    shorter than ``tol``, stopping early where the sum is exactly 1 at its midpoint or either end)."""
    out = []
    for a in rows:
        clipped = a.clamp(0, 1)
        if abs(clipped.sum().item() - 1) <= tol:
            out.append(clipped)
            continue
        lo, hi = (a - 1).min().item(), a.max().item()
        excess = lambda mu: (a - mu).clamp(0, 1).sum() - 1  # noqa: E731  (decreasing in mu)
        mid = (lo + hi) / 2
        while abs(hi - lo) > tol:
            mid = (lo + hi) / 2
            at_mid, at_lo, at_hi = excess(mid), excess(lo) + 1e-8, excess(hi)
            if at_mid == 0:
                break
            if at_lo == 0:
                mid = lo
                break
            if at_hi == 0:
                mid = hi
                break
            if at_mid * at_lo < 0:
                hi = mid
            elif at_mid * at_hi < 0:
                lo = mid
            else:
                raise RuntimeError("simplex projection: the bisection lost its root")
        out.append((a - mid).clamp(0, 1))
    return torch.stack(out)
