"""Helpers shared by the tests."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ("tiny:sd1", "tiny:sd2", "tiny:sdxl")


def run_cli(args, cwd=None):
    """Run ``python -m edit_bench ARGS`` in-process; returns the exit code."""
    from edit_bench.__main__ import run

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return run([str(a) for a in args])
    except SystemExit as e:  # --print_config and argparse errors exit
        return e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old)


def fast_kwargs(editor_name: str) -> dict:
    """Constructor overrides that keep contract tests fast without changing what they check (ReFACT's
    statistics over 500 captions instead of 100,000, ESD and Concept Ablation 2 steps, 2 anchor images: the contract is about which weights change)."""
    if editor_name == "ConceptAblation":
        from edit_bench.types import SamplerConfig

        return {"num_anchor_images": 2, "steps": 2, "lr": 1e-3,
                "anchor_sampler": SamplerConfig(scheduler="ddim", steps=2, guidance=6.0, size=None, seeds=[0], eta=1.0)}
    return {"ReFACT": {"stats_samples": 500}, "OCE": {"corpus_samples": 500}, "MaceCFR": {"corpus_samples": 500, "lam": 0.5},
            "MACE": {"corpus_samples": 500, "lam": 0.5, "data": "generate", "images": 1, "steps": 2, "templates": ["{}", "a photo of {}"],
                     "data_sampler": {"scheduler": "dpm", "steps": 2, "guidance": 7.5, "size": None, "seeds": [0]}}, "ESD": {"steps": 2, "sample_steps": 4, "lr": 1e-3}}.get(editor_name, {})
