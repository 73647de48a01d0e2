"""CCE's concept inversion (the authors' ``esd/concept_inversion.py``, diffusers' textual inversion script with CCE's
additions, run as released with ``accelerate``'s single-process CPU launch) beside edit_bench's ConceptInversion on
tiny:sd1: the same weights (saved as a diffusers folder), the same four concept images, the same budget (steps, batch,
lr 5e-3 scaled by the batch, constant, AdamW 1e-2, initialised from "art"), their style templates. Their random draws
(the shuffled epochs, the templates, horizontal flips, the posterior samples, noise and timesteps) come from Python's,
NumPy's and torch's global streams, ours from one generator, so the learned token is compared by what it does: the
mean diffusion loss of each learned vector on a fixed set (every image's posterior mean, 8 timesteps, fixed noise,
every style template), over seeds, against the initial "art" vector's.

    python tests/authors/cce.py PATH   # PATH: a checkout of NYU-DICE-Lab/circumventing-concept-erasure (bb7034b)

Environment: STEPS optimisation steps (default 60), SEEDS runs of each (default 6)."""
import os, subprocess, sys, tempfile, time
os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np, torch
from torchvision.utils import save_image
from edit_bench.attacks import ConceptInversion
from edit_bench.attacks.base import noisy, schedule
from edit_bench.models import load_t2i
from edit_bench.types import EditCase, EditRequest, PromptPair, SamplerConfig

SCRIPT = os.path.join(sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__), "esd", "concept_inversion.py")
STEPS, SEEDS, BATCH, SIZE = int(os.environ.get("STEPS", 60)), int(os.environ.get("SEEDS", 6)), 2, 32
STYLE = ["a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
         "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
         "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
         "a close-up painting in the style of {}", "a bright painting in the style of {}",
         "a cropped painting in the style of {}", "a good painting in the style of {}",
         "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
         "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}"]

t2i = load_t2i("tiny:sd1", dtype=torch.float32)
work = tempfile.mkdtemp(prefix="cce_")
pipe = t2i.diffusers_pipeline("ddpm")
pipe.save_pretrained(f"{work}/model")
os.makedirs(f"{work}/images")
with torch.no_grad():
    images = t2i.generate(["a painting by Van Gogh"] * 4, [1000, 1001, 1002, 1003],
                          SamplerConfig(scheduler="ddim", steps=10, guidance=7.5, size=SIZE, seeds=[0]))
for i, im in enumerate(images):
    save_image(im, f"{work}/images/{i}.png")
from PIL import Image  # noqa: E402  (the images as both sides read them: 8-bit PNGs)
images = torch.stack([torch.from_numpy(np.asarray(Image.open(f"{work}/images/{i}.png").convert("RGB"))).permute(2, 0, 1)
                      for i in range(4)]).float() / 255
tok = t2i.tokenizer
art = t2i.token_embedding("text_encoder").weight[tok.encode("art", add_special_tokens=False)[0]].detach().clone()


def theirs(seed: int) -> torch.Tensor:
    out = f"{work}/theirs_{seed}"
    # transformers 5 flattened CLIPTextModel (no .text_model): the script runs with the 4.x attribute name restored
    shim = ("import runpy, sys, transformers; transformers.CLIPTextModel.text_model = property(lambda self: self); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [sys.executable, "-c", shim, SCRIPT, "--pretrained_model_name_or_path", f"{work}/model", "--train_data_dir", f"{work}/images",
           "--learnable_property", "style", "--placeholder_token", "<art-style>", "--initializer_token", "art",
           "--resolution", str(SIZE), "--train_batch_size", str(BATCH), "--gradient_accumulation_steps", "1",
           "--max_train_steps", str(STEPS), "--learning_rate", "5.0e-03", "--scale_lr", "--lr_scheduler", "constant",
           "--lr_warmup_steps", "0", "--output_dir", out, "--num_train_images", "4", "--seed", str(seed),
           "--save_steps", "1000000", "--checkpointing_steps", "1000000"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if r.returncode:
        sys.exit(f"their script failed:\n{r.stderr[-3000:]}")
    return torch.load(f"{out}/learned_embeds.bin")["<art-style>"].reshape(-1).float()


case = EditCase("c", EditRequest("Van Gogh", ""), {"efficacy": tuple(PromptPair(t.format("Van Gogh"), "Van Gogh", "", "new")
                                                                    for t in STYLE)})


def ours(seed: int) -> torch.Tensor:
    a = ConceptInversion(steps=STEPS, batch_size=BATCH, lr=5e-3, scale_lr=True, weight_decay=1e-2, init="art", seed=seed)
    found = a.run(t2i, case, [p.prompt for p in case.groups["efficacy"]], images)  # each step draws from all four
    return found.vectors[0][found.where[0]][0].float()


sched = schedule(t2i)
with torch.no_grad():
    mean, _ = t2i.encode_images(images)
g = torch.Generator().manual_seed(123)
ts = torch.linspace(50, 950, 8).long()
noise = torch.randn((len(ts),) + mean.shape[1:], generator=g)


def loss_of(vec: torch.Tensor) -> float:
    """The mean diffusion loss of the token ``vec`` on the fixed set (see the module docstring)."""
    total, n = 0.0, 0
    new_id = t2i.token_embedding("text_encoder").weight.shape[0]
    with torch.no_grad():
        for template in STYLE:
            body = tok(template.format("xx"), add_special_tokens=False).input_ids
            at = body.index(tok.encode("xx", add_special_tokens=False)[0])
            ids = [tok.bos_token_id] + body[:at] + [new_id] + body[at + 1:] + [tok.eos_token_id]
            ids = torch.tensor(ids + [tok.pad_token_id or tok.eos_token_id] * (77 - len(ids)))[None]
            where = ids == new_id
            cond = t2i.condition_ids(ids, where, vec.reshape(1, 1, -1).expand(1, 77, -1))
            for i in range(len(mean)):
                x0 = mean[i:i + 1].expand(len(ts), -1, -1, -1)
                x_t, target = noisy(sched, x0, noise, ts)
                c = type(cond)(cond.context.expand(len(ts), -1, -1))
                pred = t2i.noise_prediction(x_t, ts, c, SIZE)
                total += float(torch.nn.functional.mse_loss(pred, target)) * len(ts)
                n += len(ts)
    return total / n


t0 = time.perf_counter(); A = [loss_of(theirs(s)) for s in range(SEEDS)]; ta = time.perf_counter() - t0
t0 = time.perf_counter(); B = [loss_of(ours(s)) for s in range(SEEDS)]; tb = time.perf_counter() - t0
base = loss_of(art)
print(f"{STEPS} steps of batch {BATCH}, lr 5e-3 x {BATCH}, {SEEDS} seeds each, tiny:sd1 at {SIZE} px")
print(f"the initial 'art' vector: loss {base:.5f}")
print(f"theirs: loss {np.mean(A):.5f} sd {np.std(A, ddof=1):.5f}, {np.mean(base - np.array(A)):.5f} below the start ({ta:.0f} s)")
print(f"ours:   loss {np.mean(B):.5f} sd {np.std(B, ddof=1):.5f}, {np.mean(base - np.array(B)):.5f} below the start ({tb:.0f} s)")
from scipy.stats import mannwhitneyu  # noqa: E402

print(f"Mann-Whitney U (theirs vs ours): p = {mannwhitneyu(A, B).pvalue:.3f}")
