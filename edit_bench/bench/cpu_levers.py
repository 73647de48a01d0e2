"""``python -m edit_bench.bench.cpu_levers``: how fast a model's denoiser computes on this CPU, and what each
output-preserving lever gives: its FLOPs per row (``torch.utils.flop_counter``), the achieved GFLOP/s against a large
float32 matmul on the same threads (the practical peak), the time split by operator (``torch.profiler``), and the
forward's time at ``--batch`` rows with two intra-op threads (the default), one thread, two Python threads each
running half the batch on one intra-op thread, ``channels_last``, the math / flash SDPA kernels, a doubled batch and
(``--compile``: minutes on a CPU) ``torch.compile`` with the inductor backend; each with its largest output difference
from the default.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch


def _ms(fn, n: int) -> float:
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m edit_bench.bench.cpu_levers", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="toy")
    p.add_argument("--batch", type=int, default=88, help="UNet rows per forward (the main job's 44 images x 2)")
    p.add_argument("--size", type=int, default=None, help="image side (default: the model's native size)")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor): minutes on a CPU")
    a = p.parse_args(argv)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import load_t2i

    t2i = load_t2i(a.base)
    unet = t2i.denoiser
    side = a.size or t2i.native_size
    c, h = t2i.latent_shape(side)
    g = torch.Generator().manual_seed(0)
    B = a.batch
    x = torch.randn(B, c, h, h, generator=g)
    cond = t2i.condition(["a red circle"]).context.expand(B, -1, -1).contiguous()
    t = torch.full((B,), 500)
    fwd = lambda x_=x, t_=t, c_=cond: t2i.noise_prediction(x_, t_, type(t2i.condition([""]))(c_), side)  # noqa: E731
    rows = []
    with torch.no_grad():
        torch.set_num_threads(a.threads)
        with FlopCounterMode(display=False) as fc:
            ref = fwd()
        gflop = fc.get_total_flops() / B / 1e9
        m = torch.randn(2048, 2048, generator=g)
        peak = 2 * 2048**3 / (_ms(lambda: m @ m, a.repeats) / 1000) / 1e9
        base_ms = _ms(fwd, a.repeats)
        print(f"{a.base}: {sum(q.numel() for q in unet.parameters()) / 1e6:.2f} M parameters, {gflop:.4f} GFLOP per row; "
              f"{base_ms / B:.3f} ms per row at batch {B} on {a.threads} threads: {gflop * B / base_ms * 1000:.1f} GFLOP/s "
              f"of a 2048x2048 float32 matmul's {peak:.1f} GFLOP/s ({100 * gflop * B / base_ms * 1000 / peak:.0f} %)")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fwd()
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        print("time by operator: " + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f} %" for e in ops[:6]))
        rows.append(("default", base_ms, 0.0))
        torch.set_num_threads(1)
        rows.append(("one thread", _ms(fwd, a.repeats), 0.0))
        half = B // 2

        def halves():
            outs = [None, None]

            def run(i):
                sl = slice(i * half, B if i else half)
                outs[i] = fwd(x[sl], t[sl], cond[sl])

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            return torch.cat(outs)

        rows.append(("two Python threads, half the batch each on one thread", _ms(halves, a.repeats),
                     float((halves() - ref).abs().max())))
        torch.set_num_threads(a.threads)
        for name, backend in (("SDPA math kernel", SDPBackend.MATH), ("SDPA flash kernel", SDPBackend.FLASH_ATTENTION)):
            with sdpa_kernel(backend):
                rows.append((name, _ms(fwd, a.repeats), float((fwd() - ref).abs().max())))
        x2, t2, c2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond])
        rows.append((f"batch {2 * B} (per {B} rows)", _ms(lambda: fwd(x2, t2, c2), a.repeats) / 2, 0.0))
        unet.to(memory_format=torch.channels_last)
        rows.append(("channels_last", _ms(fwd, a.repeats), float((fwd() - ref).abs().max())))
        unet.to(memory_format=torch.contiguous_format)
        if a.compile:
            t0 = time.perf_counter()
            t2i.fast_path(compile="inductor")
            out = fwd()
            compile_s = time.perf_counter() - t0
            rows.append((f"torch.compile inductor ({compile_s:.0f} s to compile)", _ms(fwd, a.repeats),
                         float((out - ref).abs().max())))
    print(f"\n| lever | ms per forward of {B} rows | vs default | max |diff| |\n|---|---|---|---|")
    for name, ms, diff in rows:
        print(f"| {name} | {ms:.1f} | {100 * (ms / base_ms - 1):+.0f} % | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
