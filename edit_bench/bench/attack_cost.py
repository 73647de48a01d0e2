"""``python -m edit_bench.bench.attack_cost``: the measured cost of one step of each attack on a model (default
``random:sd1``: SD-1.5's architecture with random weights at 512 px, whose cost is the real one's), and the projected
hours of each published attack table (``edit_bench/published/attacks.yaml``) on this device.

A step: one optimisation step of ``PromptOptimisation`` (``hard_prompt``, and ``text_grad``: a forward and a backward
through the text encoder and the denoiser at one timestep; P4D's teacher adds one forward of the unedited model, timed
as ``teacher``), one step of ``ConceptInversion`` at ``--inversion_batch`` images, one generation of ``RingABell``
(the whole population through the text encoder); and one judge check (an image at the table's sampler: one step's
image plus the per-step cost times the other steps). Each is the difference of two runs with different budgets divided
by the budget's difference, so fixed costs cancel.

A table's projection is an upper bound: every prompt runs its whole budget (a judge in the loop stops at the first
success) and checks after every timestep; the images of the table's own rows are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_costs(base: str, device: str = "cpu", size: int | None = None, inversion_batch: int = 1, population: int = 200,
               check_steps: int = 50, log=print) -> dict:
    """Seconds per step of each attack (see the module docstring) on ``base``."""
    from ..attacks import ConceptInversion, PromptOptimisation, RingABell
    from ..models import load_t2i
    from ..types import EditCase, EditRequest, PromptPair, SamplerConfig

    t2i = load_t2i(base).to(device)
    side = size or t2i.native_size
    case = EditCase("c", EditRequest("Van Gogh", ""), {"efficacy": (PromptPair("a painting by Van Gogh", "Van Gogh", "", "new"),)})
    prompts = ["a painting by Van Gogh"]
    images = torch.rand(1, 3, side, side)
    out = {"base": base, "device": device, "size": side}

    def cost(make, small: int, large: int) -> float:
        make(small).run(t2i, case, prompts, images)  # warm-up
        a = _timed(lambda: make(small).run(t2i, case, prompts, images))
        b = _timed(lambda: make(large).run(t2i, case, prompts, images))
        return max(b - a, 0.0) / (large - small)

    out["hard_prompt_s"] = cost(lambda n: PromptOptimisation(k=5, timesteps=1, iterations=n), 1, 3)
    log(f"PromptOptimisation (hard_prompt, P4D's attacker): {out['hard_prompt_s']:.3f} s per step")
    out["text_grad_s"] = cost(lambda n: PromptOptimisation(k=5, timesteps=1, iterations=n, method="text_grad"), 1, 3)
    log(f"PromptOptimisation (text_grad, UnlearnDiffAtk's attacker): {out['text_grad_s']:.3f} s per step")
    c, h = t2i.latent_shape(side)
    x = torch.randn(1, c, h, h, device=device)
    cond = t2i.condition(prompts)
    with torch.no_grad():
        t2i.noise_prediction(x, 500, cond, side)
        out["teacher_s"] = _timed(lambda: t2i.noise_prediction(x, 500, cond, side))
    log(f"P4D's teacher (one forward of the unedited denoiser): {out['teacher_s']:.3f} s per step")
    out["inversion_batch"] = inversion_batch
    out["inversion_s"] = cost(lambda n: ConceptInversion(steps=n, batch_size=inversion_batch), 1, 3)
    log(f"ConceptInversion: {out['inversion_s']:.3f} s per step of {inversion_batch} image(s)")
    out["population"] = population
    out["ring_a_bell_s"] = cost(lambda n: RingABell(pairs=None, population=population, generations=n), 1, 3)
    log(f"RingABell: {out['ring_a_bell_s']:.3f} s per generation of {population}")
    sampler = SamplerConfig(scheduler="lms" if t2i.family != "flux" else "flow_euler", steps=check_steps, guidance=7.5,
                            size=side, seeds=[0])
    with torch.no_grad():  # one and two steps: the per-step cost, then the check's steps (a full image on a CPU: an hour)
        one = SamplerConfig(scheduler=sampler.scheduler, steps=1, guidance=7.5, size=side, seeds=[0])
        two = SamplerConfig(scheduler=sampler.scheduler, steps=2, guidance=7.5, size=side, seeds=[0])
        t2i.generate(prompts, [0], one)
        t1, t2 = _timed(lambda: t2i.generate(prompts, [0], one)), _timed(lambda: t2i.generate(prompts, [0], two))
        out["check_s"] = t1 + (check_steps - 1) * max(t2 - t1, 0.0)
    out["check_steps"] = check_steps
    log(f"a judge check (one image, {check_steps} steps): {out['check_s']:.3f} s")
    return out


def project(costs: dict, specs: dict | None = None) -> dict:
    """Hours of each published table's attacks at ``costs`` (upper bounds, see the module docstring)."""
    from ..tables import load_specs

    specs = specs if specs is not None else load_specs()
    out = {}
    for name, spec in specs.items():
        want = spec.get("expect") or {}
        if spec.get("layout") != "attacks" or not want.get("rows"):
            continue
        prompts, hours = want["rows"], {}
        for attack, args in (want.get("attacks") or {}).items():
            if "timesteps" in args:  # PromptOptimisation
                steps = args["timesteps"] * args["iterations"]
                per = costs["text_grad_s" if args.get("method") == "text_grad" else "hard_prompt_s"]
                per += costs["teacher_s"] if args.get("objective") == "teacher" else 0.0
                checks = 1 + args["timesteps"] if args.get("judge_in_loop") else 0
                seconds = prompts * (steps * per + checks * costs["check_s"])
            elif "generations" in args:  # RingABell: the population scales linearly
                seconds = prompts * args["generations"] * costs["ring_a_bell_s"] * args.get("population", 200) / costs["population"]
            else:  # ConceptInversion: one learned token per case, not per prompt
                seconds = args.get("steps", 5000) * costs["inversion_s"] * args.get("batch_size", 16) / costs["inversion_batch"]
            hours[attack] = round(seconds / 3600, 1)
        out[name] = {"prompts": prompts, "hours": hours, "total_hours": round(sum(hours.values()), 1)}
    return out


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m edit_bench.bench.attack_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="random:sd1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=None, help="image side (default: the model's native size)")
    p.add_argument("--inversion_batch", type=int, default=1, help="images per ConceptInversion step (the paper's 16)")
    p.add_argument("--population", type=int, default=200)
    p.add_argument("--check_steps", type=int, default=50, help="sampler steps of a judge check (UnlearnDiffAtk: LMS 50)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    costs = step_costs(a.base, a.device, a.size, a.inversion_batch, a.population, a.check_steps)
    tables = project(costs)
    for name, t in tables.items():
        print(f"{name}: {t['prompts']} prompts; " + ", ".join(f"{k} {v} h" for k, v in t["hours"].items())
              + f"; {t['total_hours']} h per row on {a.device} (upper bound)")
    if a.json:
        from ..io import write_atomic

        write_atomic(a.json, json.dumps({"costs": costs, "tables": tables}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
