"""Causal tracing of a text-to-image model (Diff-QuickFix, Basu et al., ICLR 2024, arXiv 2310.13730).

Three runs per caption and seed:

- **clean**: the caption as it is;
- **corrupted**: Gaussian noise added to the token embeddings of the subject's tokens (every text
  encoder; the noise's standard deviation is ``noise`` times the standard deviation of the encoder's
  token-embedding table, one draw per seed, shared by every corrupted run of that seed);
- **restored**: the corrupted run with one state put back to its clean value:
  - a text-encoder hidden state (the output of layer ``l`` at token ``t``; tokens BOS..EOS, plus one
    column ``[pad]`` that restores every position after EOS at once), or
  - a UNet component's output (:meth:`T2IModel.unet_components`: every ResNet block, and each
    transformer block's ``attn1``, ``attn2`` and ``ff``) at every denoising step, in the conditional half
    of classifier-free guidance only.

Effect: the CLIP-score of each image against ``target`` (``100 * max(cos, 0)`` with the judge, mean over
seeds), normalised per state as ``(restored - corrupted) / (clean - corrupted)``; a state is causal when its
effect reaches ``threshold``.

Batching: one batch element per restoration, and every batch also carries a clean element, whose
activations at the same step are what the restorations copy. The clean element is recomputed in each
batch rather than cached over steps, so memory stays at one batch of activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..models.adapter import Conditioning
from ..errors import UsageError


@dataclass
class Job:
    """One batch element of a trace: the corruption and what it restores.

    Attributes:
        corrupt: add the subject noise (False only for the clean run).
        text: ``(text-layer index, positions)`` pairs whose outputs are restored.
        unet: indices into :meth:`T2IModel.unet_components` whose outputs are restored.
    """

    corrupt: bool = True
    text: list[tuple[int, list[int]]] = field(default_factory=list)
    unet: list[int] = field(default_factory=list)


def subject_noise(t2i, prompt: str, subject: str, seed: int, noise: float) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per text encoder: the subject's positions and the noise added to their embeddings."""
    out = {}
    g = torch.Generator("cpu").manual_seed(int(seed))
    for k, (name, _) in enumerate(t2i.text_encoders()):
        pos = t2i.subject_positions(prompt, subject, k)
        table = t2i.token_embedding(name).weight
        std = float(table.float().std())
        out[name] = (pos, noise * std * torch.randn(len(pos), table.shape[1], generator=g))
    return out


@contextlib.contextmanager
def _hooks(registrations):
    handles = []
    try:
        for module, fn in registrations:
            # first in line: hooks that libraries keep on a module (transformers captures hidden states
            # with its own) must see the restored output
            handles.append(module.register_forward_hook(fn, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _replace_rows(out, fn):
    """Apply ``fn`` to a module output that is a tensor or a tuple whose first item is the tensor."""
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    return fn(out)


def condition_jobs(t2i, prompt: str, jobs: Sequence[Job], noise: dict) -> Conditioning:
    """The conditioning of ``prompt`` for each job: corrupted where asked, with text states restored from
    batch element 0, which must be the clean run."""
    if jobs[0].corrupt or jobs[0].text:
        raise UsageError("job 0 must be the clean run (corrupt=False, nothing restored): restorations copy it")
    layers = t2i.text_layers()
    corrupt = torch.tensor([j.corrupt for j in jobs])
    regs = []
    for name, (pos, delta) in noise.items():
        def add(module, args, out, pos=pos, delta=delta):
            def f(e):
                e = e.clone()
                rows = corrupt.nonzero()[:, 0].to(e.device)
                e[rows[:, None], torch.tensor(pos, device=e.device)] += delta.to(e.device, e.dtype)
                return e
            return _replace_rows(out, f)
        regs.append((t2i.token_embedding(name), add))
    by_layer: dict[int, list[tuple[int, list[int]]]] = {}
    for b, j in enumerate(jobs):
        for li, pos in j.text:
            by_layer.setdefault(li, []).append((b, pos))
    for li, items in by_layer.items():
        def restore(module, args, out, items=items):
            def f(h):
                h = h.clone()
                for b, pos in items:
                    h[b, pos] = h[0, pos].clone()
                return h
            return _replace_rows(out, f)
        regs.append((layers[li].module, restore))
    with _hooks(regs):
        return t2i.condition([prompt] * len(jobs))


def generate_jobs(t2i, prompt: str, seed: int, jobs: Sequence[Job], noise: dict, sampler) -> torch.Tensor:
    """Images ``[len(jobs), 3, H, W]``, all from ``seed``; job 0 must be the clean run."""
    n = len(jobs)
    cond = condition_jobs(t2i, prompt, jobs, noise)
    comps = t2i.unet_components()
    by_comp: dict[int, list[int]] = {}
    for b, j in enumerate(jobs):
        for c in j.unet:
            by_comp.setdefault(c, []).append(b)
    regs = []
    for c, rows in by_comp.items():
        def restore(module, args, out, rows=rows):
            def f(y):
                off = y.shape[0] - n  # CFG batch = [uncond; cond]: restore the conditional half only
                y = y.clone()
                y[[off + b for b in rows]] = y[off].clone()
                return y
            return _replace_rows(out, f)
        regs.append((comps[c].module, restore))
    with _hooks(regs):
        return t2i.generate([prompt] * n, [seed] * n, sampler, conditioning=cond)


def text_states(t2i, prompt: str) -> tuple[list[str], list[tuple[int, list[int]]], list[tuple[int, int]]]:
    """The traced text states: column labels (tokens BOS..EOS of the first tokenizer, then ``[pad]``), and
    for every (layer, column) the restoration ``(layer index, positions)``, with its grid cell."""
    layers = t2i.text_layers()
    cols = {}
    for k in range(len(t2i.tokenizers)):
        eos = t2i.eos_index(prompt, k)
        cols[k] = [[t] for t in range(eos + 1)] + [list(range(eos + 1, t2i.tokenizers[k].model_max_length))]
    tok = t2i.tokenizers[0]
    ids = t2i.tokenize([prompt])[0].tolist()[: t2i.eos_index(prompt) + 1]
    labels = [t.replace("</w>", "") for t in tok.convert_ids_to_tokens(ids)] + ["[pad]"]
    states, cells = [], []
    for li, layer in enumerate(layers):
        for ci, pos in enumerate(cols[layer.tokenizer_index][: len(labels)]):
            if pos:
                states.append((li, pos))
                cells.append((li, ci))
    return labels, states, cells


@torch.no_grad()
def causal_trace(t2i, prompt: str, subject: str, sampler, judge, target: str | None = None,
                 parts: Sequence[str] = ("text", "unet"), noise: float = 3.0, threshold: float = 0.5,
                 batch_size: int = 16, progress: bool = True) -> dict:
    """Trace ``prompt``: which text states and UNet components, restored alone, bring back ``target``.

    Returns a dict with the clean / corrupted CLIP-scores, per text state and per UNet component the
    restored score and normalised effect, the causal ones (effect >= ``threshold``), and images of
    seed ``sampler.seeds[0]`` (uint8 ``[3, H, W]``): clean, corrupted and the best restoration of each part.
    """
    from tqdm.auto import tqdm

    bad = set(parts) - {"text", "unet"}
    if bad:
        raise UsageError(f"unknown trace parts {sorted(bad)}: use 'text' and/or 'unet'")
    target = target or prompt
    layers = t2i.text_layers()
    comps = t2i.unet_components()
    labels, states, cells = text_states(t2i, prompt)
    jobs = [Job(corrupt=True)]  # the corrupted run: restores nothing
    if "text" in parts:
        jobs += [Job(text=[s]) for s in states]
    if "unet" in parts:
        jobs += [Job(unet=[c]) for c in range(len(comps))]
    t_feat = judge.text_features([target])[0]
    seeds = list(sampler.seeds)
    scores = torch.zeros(len(seeds), 1 + len(jobs))  # column 0: clean
    keep = {}  # images of the first seed, 8-bit on the CPU (the best ones are known only at the end)
    per = max(1, batch_size - 1)
    chunks = [jobs[i:i + per] for i in range(0, len(jobs), per)]
    bar = tqdm(total=len(seeds) * len(jobs), desc=f"causal trace {prompt!r}", disable=not progress, unit="run")
    for si, seed in enumerate(seeds):
        nz = subject_noise(t2i, prompt, subject, seed, noise)
        done = 0
        for chunk in chunks:
            imgs = generate_jobs(t2i, prompt, seed, [Job(corrupt=False)] + chunk, nz, sampler)
            s = 100 * (judge.image_features(imgs) @ t_feat).clamp(min=0).cpu()
            if done == 0:
                scores[si, 0] = s[0]
            scores[si, 1 + done: 1 + done + len(chunk)] = s[1:]
            if si == 0:
                u8 = (imgs.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                for k in range(len(chunk)):
                    keep[done + k] = u8[1 + k]
                keep["clean"] = u8[0]
            done += len(chunk)
            bar.update(len(chunk))
    bar.close()
    mean = scores.mean(0)
    clean, corrupted = float(mean[0]), float(mean[1])
    gap = clean - corrupted

    def effect(v):
        return (v - corrupted) / gap if abs(gap) > 1e-6 else float("nan")

    out = {"prompt": prompt, "subject": subject, "target": target, "seeds": seeds,
           "clean_score": clean, "corrupted_score": corrupted,
           "clean_scores_per_seed": scores[:, 0].tolist(), "corrupted_scores_per_seed": scores[:, 1].tolist(),
           "noise": noise, "threshold": threshold,
           "subject_positions": t2i.subject_positions(prompt, subject),
           "images": {"clean": keep["clean"], "corrupted": keep[0]}}  # uint8 [3, H, W]
    if gap <= 1e-6:
        out["warning"] = (f"corrupting {subject!r} did not lower the CLIP-score against {target!r} "
                          f"(clean {clean:.2f}, corrupted {corrupted:.2f}): effects are undefined; raise --noise "
                          "or pick a target the subject carries")
    text_first = 1  # job index of the first text restoration (job 0 is the corrupted run)
    unet_first = text_first + (len(states) if "text" in parts else 0)
    if "text" in parts:
        grid = torch.full((len(layers), len(labels)), float("nan"))
        items = []
        for i, ((li, pos), (r, c)) in enumerate(zip(states, cells)):
            v = float(mean[1 + text_first + i])
            grid[r, c] = effect(v)
            items.append({"layer": layers[li].name, "layer_index": li, "encoder": layers[li].encoder,
                          "token": labels[c], "column": c, "positions": pos, "score": v, "effect": effect(v)})
        best = max(range(len(items)), key=lambda i: items[i]["score"])
        out["text"] = {"tokens": labels, "layers": [lay.name for lay in layers], "effect": grid.tolist(),
                       "states": items, "causal": [[s["layer"], s["token"]] for s in items if s["effect"] >= threshold],
                       "best": items[best]}
        out["images"]["best_text"] = keep[text_first + best]
    if "unet" in parts:
        items = []
        for i, c in enumerate(comps):
            v = float(mean[1 + unet_first + i])
            items.append({"component": c.name, "kind": c.kind, "index": c.index, "score": v, "effect": effect(v)})
        best = max(range(len(items)), key=lambda i: items[i]["score"])
        out["unet"] = {"components": items, "causal": [s["component"] for s in items if s["effect"] >= threshold],
                       "best": items[best]}
        out["images"]["best_unet"] = keep[unet_first + best]
    return out
