"""SAFREE's released pipeline (the authors' ``ModifiedStableDiffusionPipeline`` with ``--safree -svf -lra``, their
latent re-attention registered as their script registers it) beside edit_bench's SAFREE on tiny:sd1: the same weights,
scheduler (DPM-Solver multistep), prompt, seed and concept keywords; the images, the trigger tokens and the filter's
step count are compared, and their pipeline with and without the latent re-attention.

    python tests/authors/safree.py PATH   # PATH: a checkout of jaehong31/SAFREE (b8b2c3f)

Environment: STEPS sampling steps (default 20), SIZE image side (32)."""
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np, torch
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__))
from models.modified_stable_diffusion_pipeline import ModifiedStableDiffusionPipeline  # noqa: E402  (theirs)
from free_lunch_utils import register_free_upblock2d, register_free_crossattn_upblock2d  # noqa: E402  (theirs)
from edit_bench.editors.guidance import SAFREE  # noqa: E402
from edit_bench.models import load_t2i  # noqa: E402
from edit_bench.types import EditRequest, SamplerConfig  # noqa: E402

STEPS, SIZE = int(os.environ.get("STEPS", 20)), int(os.environ.get("SIZE", 32))
SPACE = ["Sexual Acts", "Nudity", "Pornography", "Erotic Art", "Lustful"]
PROMPTS = ["a nude woman on a beach", "a photo of a cat", "an erotic painting of a man, oil on canvas, detailed",
           "sexual acts in a bedroom", "a red car"]


class Log:
    def __init__(self):
        self.lines = []

    def log(self, msg):
        self.lines.append(str(msg))


t2i = load_t2i("tiny:sd1", dtype=torch.float32)


def theirs(prompt, seed, lra):
    pipe = ModifiedStableDiffusionPipeline(t2i.vae, t2i.text_encoder, t2i.tokenizer, t2i.unet, t2i.make_scheduler("dpm"),
                                           None, None, requires_safety_checker=False)
    if lra:  # as generate_safree.py registers them (freeu_hyp 1.0-1.0-0.9-0.2, no `safree=` argument)
        register_free_upblock2d(pipe, b1=1.0, b2=1.0, s1=0.9, s2=0.2)
        register_free_crossattn_upblock2d(pipe, b1=1.0, b2=1.0, s1=0.9, s2=0.2)
    log = Log()
    img = pipe(prompt, num_inference_steps=STEPS, guidance_scale=7.5, negative_prompt=", ".join(SPACE),
               negative_prompt_space=SPACE, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed),
               output_type="np", safree_dict={"re_attn_t": [-1, 1001], "alpha": 0.01, "logger": log, "safree": True,
                                              "svf": True, "lra": lra, "up_t": 10, "category": "nudity"})
    beta = next(float(ln.split("adjusted_beta: ")[1]) for ln in log.lines if "adjusted_beta" in ln)
    removed = next(int(ln.split("we remove ")[1].split(".")[0]) for ln in log.lines if "we remove" in ln)
    return torch.from_numpy(np.asarray(img)).permute(0, 3, 1, 2), int(beta), removed


ed = SAFREE(concept_space=SPACE, base="tiny:sd1")
ed.apply_edit([EditRequest("nudity", "")], [])
worst, worst_lra = 0.0, 0.0
for seed, prompt in enumerate(PROMPTS):
    with torch.no_grad():
        a, steps_a, removed_a = theirs(prompt, seed, lra=True)
        plain, _, _ = theirs(prompt, seed, lra=False)
        b = ed.t2i.generate([prompt], [seed], SamplerConfig(scheduler="dpm", steps=STEPS, size=SIZE, seeds=[seed]))
        _, steps_b, triggers = ed.t2i.sampling.project(ed.t2i, ed.t2i.tokenize([prompt])[0], ed.t2i.encode([prompt])[0])
    d, d_lra = float((a - b.cpu()).abs().max()), float((a - plain).abs().max())
    worst, worst_lra = max(worst, d), max(worst_lra, d_lra)
    print(f"{prompt!r}: filter steps theirs {steps_a} ours {steps_b}; triggers theirs {removed_a} ours {len(triggers)} "
          f"{triggers}; max |image diff| {d:.2e}; theirs with vs without -lra {d_lra:.2e}")
print(f"largest |image diff| ours vs theirs {worst:.2e} (pixels in [0, 1]); their -lra vs none {worst_lra:.2e}")
