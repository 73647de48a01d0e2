"""Peak memory of ESD's frozen model θ: the editor's way (a copy of the trained tensors, evaluated through
``torch.func.functional_call``) against a second UNet (the authors' way: a deep copy of the whole UNet).

    python -m edit_bench.bench.esd_frozen_memory                      # the toy world on the CPU
    python -m edit_bench.bench.esd_frozen_memory --base random:sd1 --size 64 --steps 2   # full-size SD-1.5, random
    python -m edit_bench.bench.esd_frozen_memory --base random:sd1 --device cuda         # on a GPU, at 512 px

Each way runs in a fresh process (ESD, ``--steps`` steps), which prints its peak resident memory and, on
CUDA, its peak allocated GPU memory. The script then prints, for the full-size SD-1.x UNet built on the
``meta`` device (no weights, no memory), the bytes each way keeps besides the trained UNet for every ESD
parameter set: computed from the parameter counts, not measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def one_run(base: str, params: str, mode: str, steps: int, device: str, size: int | None) -> dict:
    import resource
    import time

    import torch

    from edit_bench.editors.esd import ESD
    from edit_bench.types import EditRequest

    class TwoUNets(ESD):
        """ESD whose θ is a deep copy of the original UNet (the authors' frozen model)."""

        def theta_prediction(self, x, t, cond):
            if not hasattr(self, "_copy"):
                self._copy = [copy.deepcopy(self.t2i.unet).requires_grad_(False)]  # a list: not a submodule
            unet = self.t2i.unet
            self.t2i.unet = self._copy[0]
            try:
                return self.t2i.noise_prediction(x, t, cond, self.size)
            finally:
                self.t2i.unet = unet

    cls = ESD if mode == "snapshot" else TwoUNets
    ed = cls(params=params, steps=steps, sample_steps=4, lr=1e-4, size=size, base=base)
    ed.t2i.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ed.apply_edit([EditRequest("a star", "")])
    out = {"mode": mode, "base": base, "params": params, "steps": steps, "size": size or ed.t2i.native_size, "s": round(time.perf_counter() - t0, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "trained_mb": round(sum(p.numel() * p.element_size() for p in ed.edited_parameters().values()) / 2**20, 2),
           "unet_mb": round(sum(p.numel() * p.element_size() for p in ed.t2i.unet.parameters()) / 2**20, 2)}
    if device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def full_size_table() -> list[dict]:
    import torch
    from diffusers import UNet2DConditionModel

    from edit_bench.editors.esd import PARAMS, parameter_set

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)  # SD-1.x layout
    whole = sum(p.numel() for p in unet.parameters())
    rows = []
    for recipe, names in PARAMS.items():
        for params in names:
            chosen = parameter_set(unet, params)
            n = sum(p.numel() for p in chosen.values())
            rows.append({"recipe": recipe, "params": params, "tensors": len(chosen), "trained_M": round(n / 1e6, 1),
                         "snapshot_gb_fp32": round(4 * n / 2**30, 2), "second_unet_gb_fp32": round(4 * whole / 2**30, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="toy")
    ap.add_argument("--params", default="xattn")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=None, help="image side of the training latents (default: native)")
    ap.add_argument("--one", choices=["snapshot", "copy"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_run(a.base, a.params, a.one, a.steps, a.device, a.size)))
        return
    for mode in ("snapshot", "copy"):
        r = subprocess.run([sys.executable, __file__, "--one", mode, "--base", a.base, "--params", a.params,
                            "--steps", str(a.steps), "--device", a.device]
                           + (["--size", str(a.size)] if a.size else []), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"esd_frozen_memory: the {mode} run failed:\n{r.stderr[-2000:]}")
        print(r.stdout.strip().splitlines()[-1])
    print("full-size SD-1.x UNet (meta device; bytes computed from parameter counts, fp32):")
    for row in full_size_table():
        print(json.dumps(row))


if __name__ == "__main__":
    main()
