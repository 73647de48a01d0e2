"""Peak memory of ESD's frozen model θ: the editor's way (a copy of the trained tensors, evaluated through
``torch.func.functional_call``) against a second denoiser (the authors' way: a deep copy of the whole UNet).

    python -m edit_bench.bench.esd_frozen_memory                      # the toy world on the CPU
    python -m edit_bench.bench.esd_frozen_memory --base toy-mmdit     # the toy MMDiT (ESD-x = the joint attention's text side)
    python -m edit_bench.bench.esd_frozen_memory --base random:sd1 --size 64 --steps 2   # full-size SD-1.5, random
    python -m edit_bench.bench.esd_frozen_memory --base random:flux --device cuda --checkpointing   # FLUX.1-dev, on a GPU

Each way runs in a fresh process (ESD, ``--steps`` steps; ``--checkpointing``: with the denoiser's gradient
checkpointing), which prints its peak resident memory and, on CUDA, its peak allocated GPU memory. The script then
prints, for the full-size denoiser of the base's family (SD-1.x's UNet; SD3-medium's or FLUX.1-dev's transformer)
built on the ``meta`` device (no weights, no memory), the bytes each way keeps besides the trained denoiser for
every ESD parameter set: computed from the parameter counts, not measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def one_run(base: str, params: str, mode: str, steps: int, device: str, size: int | None, checkpointing: bool = False) -> dict:
    import resource
    import time

    import torch

    from edit_bench.editors.esd import ESD
    from edit_bench.types import EditRequest

    class TwoUNets(ESD):
        """ESD whose θ is a deep copy of the original denoiser (the authors' frozen model)."""

        def theta_prediction(self, x, t, cond):
            attr = "transformer" if hasattr(self.t2i, "transformer") else "unet"
            if not hasattr(self, "_copy"):
                self._copy = [copy.deepcopy(self.t2i.denoiser).requires_grad_(False)]  # a list: not a submodule
            own = self.t2i.denoiser
            setattr(self.t2i, attr, self._copy[0])
            try:
                return self.t2i.noise_prediction(x, t, cond, self.size)
            finally:
                setattr(self.t2i, attr, own)

    cls = ESD if mode == "snapshot" else TwoUNets
    recipe = "current" if params.startswith("esd-") else "paper"
    ed = cls(recipe=recipe, params=params, steps=steps, sample_steps=4, lr=1e-4, size=size, base=base,
             gradient_checkpointing=checkpointing)
    ed.t2i.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ed.apply_edit([EditRequest("a star", "")])
    out = {"mode": mode, "base": base, "params": params, "steps": steps, "size": size or ed.t2i.native_size, "s": round(time.perf_counter() - t0, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "trained_mb": round(sum(p.numel() * p.element_size() for p in ed.edited_parameters().values()) / 2**20, 2),
           "checkpointing": checkpointing,
           "denoiser_mb": round(sum(p.numel() * p.element_size() for p in ed.t2i.denoiser.parameters()) / 2**20, 2)}
    if device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def full_size_table(family: str = "sd1") -> list[dict]:
    import torch

    from edit_bench.editors.esd import PARAMS
    from edit_bench.models.parameter_sets import mmdit_parameter_set, unet_parameter_set

    if family in ("sd3", "flux"):
        from edit_bench.models.mmdit import MMDiTModel
        from edit_bench.models.tiny import random_mmdit_components

        with torch.device("meta"):
            t2i = MMDiTModel(random_mmdit_components(family), f"random:{family}")
        denoiser, sets = t2i.transformer, {"current": [(p, mmdit_parameter_set(t2i, p)) for p in PARAMS["current"]]}
    else:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            denoiser = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)  # SD-1.x layout
        sets = {recipe: [(p, unet_parameter_set(denoiser, p)) for p in names] for recipe, names in PARAMS.items()}
    whole = sum(p.numel() for p in denoiser.parameters())
    rows = []
    for recipe, chosen_sets in sets.items():
        for params, chosen in chosen_sets:
            n = sum(p.numel() for p in chosen.values())
            rows.append({"family": family, "recipe": recipe, "params": params, "tensors": len(chosen), "trained_M": round(n / 1e6, 1),
                         "snapshot_gb_fp32": round(4 * n / 2**30, 2), "second_denoiser_gb_fp32": round(4 * whole / 2**30, 2)})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="toy")
    ap.add_argument("--params", default=None, help="ESD's parameter set (default: xattn; esd-x on an MMDiT)")
    ap.add_argument("--checkpointing", action="store_true", help="the denoiser's gradient checkpointing")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=None, help="image side of the training latents (default: native)")
    ap.add_argument("--one", choices=["snapshot", "copy"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    family = "flux" if "flux" in a.base or a.base == "toy-mmdit" else "sd3" if "sd3" in a.base else "sd1"
    params = a.params or ("xattn" if family == "sd1" else "esd-x")
    if a.one:
        print(json.dumps(one_run(a.base, params, a.one, a.steps, a.device, a.size, a.checkpointing)))
        return
    for mode in ("snapshot", "copy"):
        r = subprocess.run([sys.executable, __file__, "--one", mode, "--base", a.base, "--params", params,
                            "--steps", str(a.steps), "--device", a.device]
                           + (["--size", str(a.size)] if a.size else []) + (["--checkpointing"] if a.checkpointing else []),
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"esd_frozen_memory: the {mode} run failed:\n{r.stderr[-2000:]}")
        print(r.stdout.strip().splitlines()[-1])
    name = {"sd1": "SD-1.x UNet", "sd3": "SD3-medium transformer", "flux": "FLUX.1-dev transformer"}[family]
    print(f"full-size {name} (meta device; bytes computed from parameter counts, fp32):")
    for row in full_size_table(family):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
