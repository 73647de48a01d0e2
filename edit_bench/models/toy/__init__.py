"""The toy world: a trained tiny text-to-image model and CLIP judge of a synthetic shapes world.

``load_t2i("toy")`` loads the shipped pipeline folder through the same code path as a real Stable
Diffusion folder, ``load_t2i("toy-mmdit")`` the same world's FLUX-layout pipeline; a benchmark's ``judge: {model: toy}`` loads the shipped open_clip folder. ``world``
defines the world (renderer, captions, defaults, analyser); ``train`` trains both models;
``quality`` measures them against the renderer's ground truth; ``cases`` writes the toy benchmarks.
"""

from pathlib import Path

from ...types import SamplerConfig

# The toy world's sampler (32x32, DDIM 20 steps, guidance 4, seeds 0-3). configs/sampler/toy.yaml, which every
# toy benchmark and trace config reads, holds the same values (a test checks they agree).
SAMPLER = SamplerConfig(scheduler="ddim", steps=20, guidance=4.0, size=32, seeds=[0, 1, 2, 3])

WEIGHTS = Path(__file__).parent / "weights"
_HOW = "train them with `python -m edit_bench.models.toy.train` (see the README, 'The toy world')"


# the toy MMDiT's sampler: the same but for the flow-matching scheduler (configs/sampler/toy_mmdit.yaml)
MMDIT_SAMPLER = SamplerConfig(scheduler="flow_euler", steps=20, guidance=4.0, size=32, seeds=[0, 1, 2, 3])

# model specs of the shipped worlds -> their folders under WEIGHTS
SPECS = {"toy": "pipeline", "toy-mmdit": "pipeline_mmdit"}


def pipeline_dir(spec: str = "toy") -> Path:
    d = WEIGHTS / SPECS[spec]
    if not (d / "model_index.json").is_file():
        from ...errors import ModelNotAvailable

        stage = " --stages mmdit" if spec == "toy-mmdit" else ""
        raise ModelNotAvailable(f"the toy world's {spec} pipeline is missing from {d}: {_HOW}{stage}")
    return d


def judge_dir() -> Path:
    d = WEIGHTS / "judge"
    if not (d / "open_clip_config.json").is_file():
        from ...errors import ModelNotAvailable

        raise ModelNotAvailable(f"the toy world's judge is missing from {d}: {_HOW}")
    return d
