"""LocoGen (Basu et al., ICML 2024, arXiv 2405.01008): which cross-attention sites control an attribute.

For each window start ``j`` the conditional cross-attention input of sites ``j, j+1, j+2`` is the
embedding of an attribute-free prompt ("a painting"), every other site reads the original prompt ("a
house in the style of van gogh"); the window whose images lose the attribute localises it. As in the
authors' code, a window that would run past the last site swaps site ``j`` alone (their
``if index + 2 < 16`` guard). Sites are in forward order (down -> mid -> up), which on SD-1 is also the
authors' lexicographic order of the attn2 names.

All windows run in one batch: batch element ``b`` is window ``b``; a forward pre-hook on every attn2
replaces, for the conditional half of classifier-free guidance only, the context of the elements whose
window covers that site. The unconditional half is untouched. Hooks are removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from ..errors import UsageError


def windows(n_sites: int, width: int = 3, guard: bool = True) -> list[list[int]]:
    """Site indices of each window start (the authors: width 3; near the end only the start site)."""
    out = []
    for j in range(n_sites):
        if j + width - 1 < n_sites:
            out.append(list(range(j, j + width)))
        else:
            out.append([j] if guard else list(range(j, n_sites)))
    return out


@contextlib.contextmanager
def override_conditional_context(t2i, cover: torch.Tensor, context: torch.Tensor):
    """Within the block, site ``i`` reads ``context[b]`` instead of the prompt's conditioning for every
    batch element ``b`` with ``cover[b, i]`` (conditional half of CFG only).

    Args:
        cover: ``[B, n_sites]`` booleans.
        context: ``[B, 77, D]`` replacement contexts.
    """
    sites = t2i.cross_attn()
    if cover.shape[1] != len(sites):
        raise UsageError(f"cover has {cover.shape[1]} columns, the model has {len(sites)} cross-attention sites")
    handles = []

    def make(i):
        def hook(module, args, kwargs):
            ehs = kwargs.get("encoder_hidden_states")
            n = cover.shape[0]
            if ehs is None or ehs.shape[0] not in (n, 2 * n):
                raise RuntimeError(f"unexpected cross-attention batch {None if ehs is None else ehs.shape[0]} for {n} samples")
            cond = ehs[-n:]
            mask = cover[:, i].to(ehs.device)[:, None, None]
            new = torch.where(mask, context.to(ehs.device, ehs.dtype), cond)
            kwargs["encoder_hidden_states"] = torch.cat([ehs[:-n], new]) if ehs.shape[0] == 2 * n else new
            return args, kwargs
        return hook

    try:
        for i, s in enumerate(sites):
            handles.append(t2i.unet.get_submodule(s.name).register_forward_pre_hook(make(i), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def locogen(t2i, prompt: str, neutral: str, sampler, judge=None, attribute: str | None = None,
            width: int = 3, seeds: Sequence[int] | None = None, batch_size: int = 16) -> dict:
    """Run every LocoGen window for ``prompt`` (attribute-free prompt ``neutral``), batched.

    Windows run ``batch_size`` at a time (one batch element per window).

    Returns ``{"windows": [{"start", "sites", "images"}...], "clean": images, "neutral": images}`` and, with a
    ``judge``, each window's mean probability that its images show ``attribute`` (default: the prompt)
    rather than ``neutral``, and ``chosen``: the window with the lowest probability.
    """
    sites = t2i.cross_attn()
    wins = windows(len(sites), width)
    seeds = list(seeds if seeds is not None else sampler.seeds)
    cover = torch.zeros(len(wins), len(sites), dtype=torch.bool)
    for b, w in enumerate(wins):
        cover[b, w] = True
    neutral_ctx = t2i.encode([neutral])
    out = {"prompt": prompt, "neutral": neutral, "seeds": seeds, "windows": []}
    imgs = []
    for seed in seeds:
        per_seed = []
        for i in range(0, len(wins), batch_size):
            c = cover[i:i + batch_size]
            with override_conditional_context(t2i, c, neutral_ctx.expand(len(c), -1, -1)):
                per_seed.append(t2i.generate([prompt] * len(c), [seed] * len(c), sampler))
        imgs.append(torch.cat(per_seed))
    per_window = torch.stack(imgs, 1)  # [W, S, 3, H, W]
    clean = t2i.generate([prompt] * len(seeds), seeds, sampler)
    plain = t2i.generate([neutral] * len(seeds), seeds, sampler)
    for b, w in enumerate(wins):
        out["windows"].append({"start": b, "sites": [sites[i].name for i in w], "images": per_window[b]})
    out["clean"], out["neutral_images"] = clean, plain
    if judge is not None:
        attr = attribute or prompt

        def p_attr(x):
            return float(judge.preference(x, [neutral] * len(x), [attr] * len(x)).mean())

        out["p_clean"], out["p_neutral"] = p_attr(clean), p_attr(plain)
        for w in out["windows"]:
            w["p_attribute"] = p_attr(w["images"])
        best = min(out["windows"], key=lambda w: w["p_attribute"])
        out["chosen"] = {"start": best["start"], "sites": best["sites"], "p_attribute": best["p_attribute"]}
    return out
