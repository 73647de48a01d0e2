"""Measure the toy world against the renderer's ground truth.

    python -m edit_bench.models.toy.quality [--n 240] [--steps 20] [--guidance 4] [--out quality.json]

Reports, with counts:
- generated images of prompts that name a colour: right colour, right shape (read by ``world.analyse``);
- generated images of implicit prompts ("a circle", "the king"): the default colour (and shape);
- the VAE alone on the explicit prompts' rendered scenes (encode, decode): what the UNet can reach at best;
- the judge on rendered images: zero-shot colour among the 6 colours and shape among the 5 shapes
  (candidate captions name the image's texture, so each has exactly one true caption);
- the judge on generated images: the same, against what the analyser reads from the pixels;
- with ``--editor configs/editor/<e>.yaml``: the edited model's efficacy and generality images of the toy
  TIMED benchmark read from the pixels (target colour; target colour and shape), next to the judge's
  two-label verdict on the same images.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from ...types import SamplerConfig
from . import SAMPLER, world


def _judge_pick(judge, images, texts_per_image):
    """Index of the caption with the highest cosine for each image."""
    img = judge.image_features(images)
    out = []
    for f, texts in zip(img, texts_per_image):
        out.append(int((judge.text_features(texts) @ f).argmax()))
    return out


def judge_accuracy(judge, images, colours, shapes, textures):
    """Zero-shot colour (among the 6, given shape and texture) and shape (among the 5, given colour and
    texture) accuracy of the judge."""
    cs, ss = list(world.COLOURS), list(world.SHAPES)
    tx = [None if t == "plain" else t for t in textures]
    pc = _judge_pick(judge, images, [[world.caption(s, colour=c, texture=t) for c in cs] for s, t in zip(shapes, tx)])
    ps = _judge_pick(judge, images, [[world.caption(s, colour=c, texture=t) for s in ss] for c, t in zip(colours, tx)])
    ok_c = [cs[p] == c for p, c in zip(pc, colours)]
    ok_s = [ss[p] == s for p, s in zip(ps, shapes)]
    return {"colour": sum(ok_c) / len(ok_c), "shape": sum(ok_s) / len(ok_s),
            "both": sum(a and b for a, b in zip(ok_c, ok_s)) / len(ok_c), "n": len(ok_c)}


def style_accuracy(judge, images, scenes, truth):
    """Zero-shot style of the judge among the 6 (``none``, the generic painting, the 4 artists), candidates
    captioning each image's own scene; against ``truth`` (a style per image)."""
    names = list(world.STYLES)
    picks = _judge_pick(judge, images, [[world.caption(s.shape, colour=s.colour, style=st) for st in names] for s in scenes])
    ok = [names[p] == t for p, t in zip(picks, truth)]
    return {"style": sum(ok) / max(1, len(ok)), "n": len(ok)}


def measure_styles(model, judge, generate, rng: random.Random, n: int) -> dict:
    """The styles of the v4 world: styled prompts draw their style, unstyled ones none, the VAE keeps it,
    the judge reads it (all read from pixels by ``world.analyse``)."""
    styled, unstyled = [], []
    while len(styled) < n or len(unstyled) < n:
        c = world.random_caption(rng, styles=0.5)
        if not c:
            continue
        (styled if world.parse(c).style != "none" else unstyled).append(c)
    styled, unstyled = styled[:n], unstyled[:n]
    st_scenes = [world.parse(c) for c in styled]
    gen = generate(styled)
    read = world.analyse(gen)
    plain_read = world.analyse(generate(unstyled))
    truth = world.render(st_scenes, seeds=list(range(n)))
    vae = model.vae
    z = vae.encode((truth * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    vae_read = world.analyse(((vae.decode(z).sample.float().cpu() + 1) / 2).clamp(0, 1))
    rendered_scenes = [world.random_scene(rng, styles=True) for _ in range(n)]
    rendered = world.render(rendered_scenes, rng=rng)
    readable = [i for i, r in enumerate(read) if r.colour and r.shape and r.style is not None]
    per_style = {st: [r.style == st for r, s in zip(read, st_scenes) if s.style == st] for st in list(world.STYLES)[1:]}
    return {
        "generated_styled": {"style": sum(r.style == s.style for r, s in zip(read, st_scenes)) / n,
                             "by_style": {k: sum(v) / max(1, len(v)) for k, v in per_style.items()}, "n": n},
        "generated_unstyled": {"no_style": sum(r.style == "none" for r in plain_read) / n, "n": n},
        "vae_roundtrip_style": {"style": sum(r.style == s.style for r, s in zip(vae_read, st_scenes)) / n, "n": n},
        "judge_style_rendered": style_accuracy(judge, rendered, rendered_scenes, [s.style for s in rendered_scenes]),
        "judge_style_generated": style_accuracy(judge, gen[readable], [st_scenes[i] for i in readable],
                                                [read[i].style for i in readable]),
        "analyser_style_rendered": {"style": sum(r.style == s.style for r, s in zip(world.analyse(rendered), rendered_scenes)) / n},
    }


@torch.no_grad()
def measure(n: int = 240, steps: int = SAMPLER.steps, guidance: float = SAMPLER.guidance, scheduler: str | None = None,
            seed: int = 1234, model: str = "toy", judge: str = "toy", styles: bool = False) -> dict:
    """The quality table. ``model``/``judge``: ``toy-mmdit``, another toy pipeline folder and ``local-dir:`` judge (a
    retrain before it ships); ``scheduler``: the toy sampler's (DDIM) where ``None``, flow matching for an MMDiT;
    ``styles``: also measure the styles (v4)."""
    from ...metrics import ClipJudge, JudgeConfig
    from .. import load_t2i

    rng = random.Random(seed)
    spec, model = model, load_t2i(model)
    if scheduler is None:
        scheduler = SAMPLER.scheduler if model.family in ("sd1", "sd2", "sdxl") else model.default_scheduler
    judge = ClipJudge(JudgeConfig(model=judge))
    sampler = SamplerConfig(scheduler=scheduler, steps=steps, guidance=guidance, size=SAMPLER.size, seeds=[0])

    def generate(prompts):
        seeds = list(range(len(prompts)))
        return torch.cat([model.generate(prompts[i:i + 64], seeds[i:i + 64], sampler) for i in range(0, len(prompts), 64)])

    explicit = []
    while len(explicit) < n:
        c = world.random_caption(rng)
        if c and any(col in c.split() for col in world.COLOURS):
            explicit.append(c)
    scenes = [world.parse(c) for c in explicit]
    gen = generate(explicit)
    read = world.analyse(gen)
    implicit = [world.caption(s, **kw) for s in world.SHAPES for kw in ({}, {"prefix": "a photo of "}, {"size": "big"},
                                                                         {"background": "black"})]
    implicit += [world.caption("", entity=e, **kw) for e in world.ENTITIES for kw in ({}, {"background": "gray"})]
    implicit = implicit * max(1, n // (2 * len(implicit)))
    imp_scenes = [world.parse(c) for c in implicit]
    imp_read = world.analyse(generate(implicit))
    # the VAE alone (encode the rendered scenes of the explicit prompts, decode): a ceiling for the UNet
    truth = world.render(scenes, seeds=list(range(n)))
    vae = model.vae
    z = vae.encode((truth * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    vae_read = world.analyse(((vae.decode(z).sample.float().cpu() + 1) / 2).clamp(0, 1))
    rendered_scenes = [world.random_scene(rng) for _ in range(n)]
    rendered = world.render(rendered_scenes, rng=rng)
    readable = [i for i, r in enumerate(read) if r.colour and r.shape]
    ana = world.analyse(rendered)
    out = {
        "protocol": {"model": spec, "n": n, "scheduler": scheduler, "steps": steps, "guidance": guidance, "seed": seed},
        "generated_explicit": {"colour": sum(r.colour == s.colour for r, s in zip(read, scenes)) / n,
                               "shape": sum(r.shape == s.shape for r, s in zip(read, scenes)) / n,
                               "background": sum(r.background == s.background for r, s in zip(read, scenes)) / n,
                               "n": n},
        "generated_implicit": {"default_colour": sum(r.colour == s.colour for r, s in zip(imp_read, imp_scenes)) / len(implicit),
                               "shape": sum(r.shape == s.shape for r, s in zip(imp_read, imp_scenes)) / len(implicit),
                               "n": len(implicit)},
        "vae_roundtrip_explicit": {"colour": sum(r.colour == s.colour for r, s in zip(vae_read, scenes)) / n,
                                   "shape": sum(r.shape == s.shape for r, s in zip(vae_read, scenes)) / n, "n": n},
        "judge_rendered": judge_accuracy(judge, rendered, [s.colour for s in rendered_scenes],
                                         [s.shape for s in rendered_scenes], [s.texture for s in rendered_scenes]),
        # on generated images the truth is what the analyser reads (it does not read texture: the prompt's)
        "judge_generated": judge_accuracy(judge, gen[readable], [read[i].colour for i in readable],
                                          [read[i].shape for i in readable], [scenes[i].texture for i in readable]),
        "analyser_rendered": {"colour": sum(r.colour == s.colour for r, s in zip(ana, rendered_scenes)) / n,
                              "shape": sum(r.shape == s.shape for r, s in zip(ana, rendered_scenes)) / n},
    }
    if styles:
        out["styles"] = measure_styles(model, judge, generate, rng, n)
    return out


@torch.no_grad()
def edited_pixels(editor_yaml: str, steps: int = SAMPLER.steps, guidance: float = SAMPLER.guidance,
                  scheduler: str = SAMPLER.scheduler, seeds=tuple(SAMPLER.seeds), path: str = "datasets/toy/toy_timed.csv",
                  model: str = "toy") -> dict:
    """Apply each toy TIMED case with the editor of ``editor_yaml`` and read its efficacy / generality
    images: does the pixel analyser see the target colour (and shape)? Also the judge's verdict."""
    import importlib

    import yaml

    from ...benchmarks.timed import TIMED
    from ...metrics import ClipJudge, JudgeConfig

    cfg = yaml.safe_load(Path(editor_yaml).read_text())
    mod, _, name = cfg["class_path"].rpartition(".")
    editor = getattr(importlib.import_module(mod), name)(**{**(cfg.get("init_args") or {}), "base": model})
    judge = ClipJudge(JudgeConfig(model="toy"))
    sampler = SamplerConfig(scheduler=scheduler, steps=steps, guidance=guidance, size=SAMPLER.size, seeds=list(seeds))
    out = {}
    for case in TIMED(path=path).cases():
        editor.apply_edit([case.request])
        for group in ("efficacy", "generality"):
            pairs = [(p, s) for p in case.groups.get(group, ()) for s in sampler.seeds]
            imgs = editor.t2i.generate([p.prompt for p, _ in pairs], [s for _, s in pairs], sampler)
            p_new = judge.preference(imgs, [p.old for p, _ in pairs], [p.new for p, _ in pairs])
            g = out.setdefault(group, {"colour": 0, "colour_and_shape": 0, "judge": 0, "n": 0})
            for (pair, _), read, p in zip(pairs, world.analyse(imgs), p_new):
                want = world.parse(pair.new)
                g["colour"] += read.colour == want.colour
                g["colour_and_shape"] += read.colour == want.colour and read.shape == want.shape
                g["judge"] += bool(p > 0.5)
                g["n"] += 1
        editor.restore()
    for g in out.values():
        for k in ("colour", "colour_and_shape", "judge"):
            g[k] /= g["n"]
    return {"editor": cfg["class_path"], "protocol": {"steps": steps, "guidance": guidance, "scheduler": scheduler,
                                                      "seeds": list(seeds), "cases": path}, **out}


def main(argv=None):
    p = argparse.ArgumentParser(description="Measure the toy world against the renderer's ground truth")
    p.add_argument("--n", type=int, default=240)
    p.add_argument("--steps", type=int, default=SAMPLER.steps)
    p.add_argument("--guidance", type=float, default=SAMPLER.guidance)
    p.add_argument("--scheduler", default=None, help=f"default: {SAMPLER.scheduler} (flow_euler for toy-mmdit)")
    p.add_argument("--editor", default=None, help="also read an editor's toy TIMED edits from the pixels")
    p.add_argument("--out", default=None)
    p.add_argument("--model", default="toy", help="toy, toy-mmdit, or a toy pipeline folder (a retrain before it ships)")
    p.add_argument("--judge", default="toy", help="its judge, e.g. local-dir:OUT/judge")
    p.add_argument("--styles", action="store_true", help="also measure the styles (toy world v4)")
    a = p.parse_args(argv)
    res = measure(a.n, a.steps, a.guidance, a.scheduler, model=a.model, judge=a.judge, styles=a.styles)
    if a.editor:
        res["edited_pixels"] = edited_pixels(a.editor, a.steps, a.guidance, res["protocol"]["scheduler"], model=a.model)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
