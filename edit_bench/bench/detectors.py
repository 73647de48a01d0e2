"""Images per second of the erasure tables' detectors next to the generator's, on this machine.

    python -m edit_bench.bench.detectors --n 64

Prints one JSON line per component: the model generating images (the toy world's UNet + VAE at its sampler: 20 DDIM
steps at guidance 4, 32 px), NudeNet (its 320-px ONNX detector; every image is letterboxed to 320 px, so the image
size barely matters), zero-shot CLIP accuracy with the toy judge, and the ImageNet classifier (ResNet-50 at 224 px;
its weights are random here when torchvision's file is not cached, which does not change its speed). Every
detector scores the same generated images, batched as ``eval`` batches them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _rate(fn, n: int, repeat: int = 2) -> float:
    fn()  # warm-up (session creation, caches)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m edit_bench.bench.detectors", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="toy", help="the generating model (default: the toy world)")
    p.add_argument("--n", type=int, default=64, help="images per batch")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the toy sampler's 20)")
    a = p.parse_args(argv)

    from dataclasses import replace

    from ..editors.unedited import Unedited
    from ..metrics import ClipAccuracy, ImageClassifier, NudeNet
    from ..metrics.clip_preference import JudgeConfig
    from ..models.toy import SAMPLER
    from ..types import GenerationBatch, PromptPair, Sample

    sampler = replace(SAMPLER, steps=a.steps or SAMPLER.steps, seeds=list(range(a.n)))
    editor = Unedited(base=a.base)
    shapes = ["circle", "square", "triangle", "diamond", "star"]
    samples = tuple(Sample("bench", "kept", i, i, PromptPair(f"a {shapes[i % 5]}", shapes[i % 5])) for i in range(a.n))
    images = {}

    def generate():
        with torch.no_grad():
            images["x"] = editor.predict_step(GenerationBatch(samples, sampler, None)).float()

    threads = torch.get_num_threads()
    print(json.dumps({"component": f"generation ({a.base} UNet + VAE, {sampler.steps} steps)", "images": a.n,
                      "images_per_s": round(_rate(generate, a.n), 1), "size": images["x"].shape[-1], "threads": threads}))
    x = images["x"]
    nude = NudeNet(batch_size=a.n)
    nude.prepare()
    clip = ClipAccuracy(candidates=shapes, template="a {}")
    clip.prepare(type("B", (), {"judge_cfg": JudgeConfig(model="toy")})())
    classifier = ImageClassifier(class_map={s: "tench" for s in shapes}, preprocess="tensor")
    cached = classifier.weights_file().is_file()
    if cached:
        classifier.prepare()
    else:  # the same network with random weights: its speed, not its answers
        import torchvision

        classifier.net = torchvision.models.resnet50().eval().requires_grad_(False)
        classifier._transform = classifier._enum.transforms()
    # a fresh tensor per call: the judge keeps the last batch's features, and a benchmark scores each batch once
    for name, m, note in (("NudeNet 3.4.2 (320n ONNX, " + ",".join(nude.detector.onnx_session.get_providers()) + ")", nude, ""),
                          ("ClipAccuracy (toy judge)", clip, ""),
                          ("ImageClassifier (ResNet-50, 224 px)", classifier, "" if cached else "random weights: speed only")):
        print(json.dumps({"component": name, "images": a.n, "images_per_s": round(_rate(lambda: m.score(x.clone(), list(samples)), a.n), 1),
                          "size": x.shape[-1], "threads": threads, **({"note": note} if note else {})}))


if __name__ == "__main__":
    main()
