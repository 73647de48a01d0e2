"""Image-quality metrics against direct calls of the libraries they wrap, on the same inputs."""

import json

import numpy as np
import pytest
import torch

from edit_bench.metrics import FID, LPIPS, SSIM, ClipScore, ImageFeatures, JudgeConfig, JudgeDistance
from edit_bench.models import ModelNotAvailable
from edit_bench.types import Record
from helpers import ROOT, run_cli


class _Bench:
    def __init__(self, model="tiny:random"):
        self.judge_cfg = JudgeConfig(model=model)


class _Sample:
    def __init__(self, prompt):
        from edit_bench.types import PromptPair

        self.pair = PromptPair(prompt, prompt, prompt, "new")


def _images(n, seed=0, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _records(values, key, groups=None, seeds=None):
    n = len(values)
    groups = groups or ["efficacy"] * n
    seeds = seeds or list(range(n))
    return [Record(id=f"c/{g}/{i}/{s}", case="c", group=g, k=i, seed=s, prompt="p", old="o", new="n", expect="new",
                   scores={key: float(v)}) for i, (v, g, s) in enumerate(zip(values, groups, seeds))]


# ------------------------------------------------------------------------------------------ CLIP-score
def test_clip_score_is_weight_times_clamped_cosine_of_the_open_clip_model():
    m = ClipScore(preset="judge")
    m.prepare(_Bench())
    images, prompts = _images(4), ["a red circle", "a blue square", "a star", "the king"]
    got = torch.tensor(m.score(images, [_Sample(p) for p in prompts])["clip_score"])
    judge = m.net
    with torch.no_grad():  # by hand: the judge's own preprocessing and towers
        from PIL import Image

        u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        img = judge.model.encode_image(torch.stack([judge.preprocess(Image.fromarray(a)) for a in u8]))
        txt = judge.model.encode_text(judge.tokenizer(prompts))
        cos = torch.nn.functional.cosine_similarity(img, txt)
    torch.testing.assert_close(got, 100 * cos.clamp(min=0), atol=1e-4, rtol=1e-5)
    m2 = ClipScore(preset="judge", weight=2.5, clamp=False)
    m2.prepare(_Bench())
    torch.testing.assert_close(torch.tensor(m2.score(images, [_Sample(p) for p in prompts])["clip_score"]), 2.5 * cos,
                               atol=1e-4, rtol=1e-5)


def test_clip_score_with_a_transformers_clip_folder(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from edit_bench.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        image_size=32, patch_size=8), projection_dim=16)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), clip_tokenizer())
    model.save_pretrained(tmp_path / "clip")
    proc.save_pretrained(tmp_path / "clip")
    m = ClipScore(preset="esd", model=str(tmp_path / "clip"))
    m.prepare(_Bench())
    images, prompts = _images(3, seed=1), ["a red circle", "a blue square on a black background", "a star"]
    got = torch.tensor(m.score(images, [_Sample(p) for p in prompts])["clip_score"])
    from PIL import Image

    u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        out = model(**proc(text=prompts, images=[Image.fromarray(a) for a in u8], return_tensors="pt", padding=True))
    # ESD's script: the model's logits_per_image (logit_scale * cos; logit_scale 1/0.07 untrained, 100 trained)
    want = out.logits_per_image.diagonal() / model.logit_scale.exp() * 100
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert m.describe()["formula"] == "100 * cos(image, prompt)"


def test_a_missing_clip_model_names_the_cache_and_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    m = ClipScore(preset="refact")
    with pytest.raises(ModelNotAvailable, match=r"openai/clip-vit-large-patch14-336.*clip_score model: /path/to/folder"):
        m.prepare(_Bench())


def test_clip_score_aggregates_by_group_with_std_across_seeds():
    m = ClipScore()
    vals = [10, 20, 30, 40, 50, 60]
    m.update(_records(vals, "clip_score", groups=["efficacy", "efficacy", "generality", "generality", "specificity", "specificity"],
                      seeds=[0, 1, 0, 1, 0, 1]))
    out = m.compute()
    assert out["clip_score"]["mean"] == 35 and out["clip_score"]["n"] == 6
    assert out["clip_score/generality"] == {"mean": 35.0, "std": 5.0, "n": 2}
    assert set(out) == {"clip_score", *(f"clip_score/{g}" for g in ("efficacy", "generality", "specificity"))}


# ------------------------------------------------------------------------------------------ FID / KID
def _tiny_extractor():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()

    def fn(x):  # clean-fid's custom_feat_extractor contract: float NCHW in [0, 255]
        with torch.no_grad():
            return net(x / 255)
    return fn


def _save_pngs(images, folder):
    from torchvision.utils import save_image

    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        save_image(im, folder / f"{i:03d}.png")


def test_fid_equals_clean_fid_on_the_same_images_and_features(tmp_path, monkeypatch):
    from cleanfid import fid as cfid
    from cleanfid.resize import build_resizer

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    a = _images(24, seed=1)
    b = (_images(24, seed=2) * 0.5 + 0.25)
    _save_pngs(a, tmp_path / "a")
    _save_pngs(b, tmp_path / "b")
    fn = _tiny_extractor()
    want = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", custom_feat_extractor=fn,
                            device=torch.device("cpu"), num_workers=0, use_dataparallel=False, verbose=False)
    m = FID(reference=str(tmp_path / "b"))
    m.extractor = ImageFeatures(fn, build_resizer("clean"), "tiny")  # clean-fid's resize, a tiny network
    m.prepare(None)
    m.update([], m.features(a, []))  # in memory, as eval computes them
    out = m.compute()
    assert out["fid"]["mean"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert out["fid"]["n"] == 24 and out["fid"]["reference_n"] == 24
    assert list((tmp_path / "cache" / "fid_ref").glob("*.npz"))  # the reference is cached
    m2 = FID(reference=str(tmp_path / "b"))  # second time: from the cache (same features)
    m2.extractor = ImageFeatures(lambda x: (_ for _ in ()).throw(AssertionError("recomputed")), build_resizer("clean"), "tiny")
    m2.prepare(None)
    np.testing.assert_allclose(m2._ref["mu"], m._ref["mu"])


def test_kid_is_clean_fids_unbiased_mmd_and_fid_of_a_set_against_itself_is_zero():
    from edit_bench.metrics.functional import frechet_distance, kernel_distance

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(0.5, 1.0, size=(40, 6))
    # one subset of all 40 = the unbiased MMD^2 of the whole sets with k(a, b) = (a.b / d + 1)^3
    k = lambda a, b: (a @ b.T / 6 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    want = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (40 * 39) - 2 * kxy.mean()
    assert kernel_distance(x, y, subsets=3, subset_size=1000, seed=0) == pytest.approx(want, rel=1e-9)
    state = np.random.get_state()
    assert kernel_distance(x, y, 5, 20, seed=1) == kernel_distance(x, y, 5, 20, seed=1)  # seeded, and
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global RNG left as it was
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(x, mu, sigma)) < 1e-6
    noisy = [frechet_distance(x + rng.normal(0, s, x.shape), mu, sigma) for s in (0.3, 1.0, 3.0)]
    assert noisy[0] < noisy[1] < noisy[2]


def test_a_missing_inception_names_clean_fids_folder_and_the_setting(tmp_path):
    m = FID(reference=str(tmp_path), inception=str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotAvailable, match=r"inception-2015-12-05.pt.*clean-fid looks only in.*inception: /path"):
        m.prepare(None)


def test_metric_state_synced_over_two_processes_equals_one(tmp_path):
    import torch.multiprocessing as mp

    feats = torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vals = torch.rand(30, generator=torch.Generator().manual_seed(1)).tolist()
    mp.spawn(_sync_worker, args=(2, str(tmp_path), feats, vals), nprocs=2, join=True)
    one = _computed(None, feats, vals)
    two = json.loads((tmp_path / "rank0.json").read_text())
    assert two["clip"] == one["clip"]
    assert two["feats_sum"] == pytest.approx(one["feats_sum"], rel=1e-12) and two["n"] == one["n"] == 30


def _computed(rank, feats, vals, world=1):
    part = slice(None) if rank is None else slice(rank * 15, (rank + 1) * 15)
    clip = ClipScore(sync_on_compute=rank is not None)
    clip.update(_records(vals, "clip_score", seeds=[i % 3 for i in range(30)])[part])
    fid = FID(sync_on_compute=rank is not None)
    fid.update([], feats[part])
    fid._ref = {"x": 1}
    synced = fid.feats
    if rank is not None:
        fid.sync()
        synced = fid.feats
    f = torch.cat(synced) if isinstance(synced, list) else synced
    return {"clip": clip.compute(), "feats_sum": float(f.sum()), "n": len(f)}


def _sync_worker(rank, world, out, feats, vals):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = _computed(rank, feats, vals, world)
        if rank == 0:
            from pathlib import Path

            (Path(out) / "rank0.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ paired
def test_lpips_equals_the_lpips_package_with_the_same_backbone(tmp_path, monkeypatch):
    """A randomly initialised AlexNet saved where torchvision looks (a temporary torch cache): our LPIPS and a
    direct ``lpips.LPIPS`` call agree, at full resolution and at ESD's 64 px."""
    import lpips
    import torchvision
    import torchvision.transforms.functional as TF

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = LPIPS()
    with pytest.raises(ModelNotAvailable, match=r"alexnet-owt-7be5be79.pth.*TORCH_HOME"):
        m.prepare()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "hub/checkpoints/alexnet-owt-7be5be79.pth")
    a, b = _images(3, seed=3, size=48), _images(3, seed=4, size=48)
    direct = lpips.LPIPS(net="alex", verbose=False).eval()
    q = lambda x: (x * 255).round() / 255  # noqa: E731  (8-bit, as saved images)
    for size in (None, 64):
        m = LPIPS(size=size)
        m.prepare()
        got = torch.tensor(m.score_pairs(a, m.reference(b))["lpips"], dtype=torch.float64)
        x, y = q(a), q(b)
        if size:
            x, y = TF.resize(x, size, antialias=True), TF.resize(y, size, antialias=True)
        with torch.no_grad():
            want = direct(x * 2 - 1, y * 2 - 1).flatten()
        torch.testing.assert_close(got, want.double(), atol=1e-6, rtol=1e-5)
    assert torch.tensor(m.score_pairs(a, m.reference(a))["lpips"]).abs().max() < 1e-6


def test_ssim_and_judge_distance_are_zero_for_identical_images_and_grow_with_noise():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a = _images(4, seed=5)
    noisy = [(a + s * torch.randn_like(a)).clamp(0, 1) for s in (0.05, 0.2)]
    s = SSIM()
    assert torch.allclose(torch.tensor(s.score_pairs(a, s.reference(a))["ssim"]), torch.ones(4))
    vals = [torch.tensor(s.score_pairs(x, s.reference(a))["ssim"]) for x in noisy]
    assert (vals[0] > vals[1]).all()
    q = lambda x: (x * 255).round() / 255  # noqa: E731
    torch.testing.assert_close(vals[1].double(), ssim(q(noisy[1]), q(a), data_range=1.0, reduction="none").double())
    d = JudgeDistance()
    d.prepare(_Bench("toy"))
    assert torch.tensor(d.score_pairs(a, d.reference(a))["judge_distance"]).abs().max() < 1e-5
    far = [torch.tensor(d.score_pairs(x, d.reference(a))["judge_distance"]).mean() for x in noisy]
    assert 0 < far[0] < far[1]


# ------------------------------------------------------------------------------------------ in eval
def test_eval_records_clip_score_paired_distances_and_toy_fid(tmp_path):
    out = tmp_path / "run"
    metrics = json.dumps([{"class_path": "edit_bench.metrics.EditScores"}, {"class_path": "edit_bench.metrics.ClipScore"},
                          {"class_path": "edit_bench.metrics.JudgeDistance"}, {"class_path": "edit_bench.metrics.SSIM"},
                          {"class_path": "edit_bench.metrics.FID", "init_args": {"features": "toy_judge", "reference": "renderer"}}])
    code = run_cli(["eval", "--model", ROOT / "configs/editor/time.yaml", "--data", ROOT / "configs/benchmark/toy_timed.yaml",
                    "--data.rows", "0:1", "--data.sampler.seeds", "[0, 1]", "--data.metrics", metrics, "--out_dir", out])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    m, b = res["metrics"], res["baseline"]
    for k in ("clip_score", "clip_score/efficacy", "toy_fid", "toy_kid", "judge_distance", "ssim", "efficacy"):
        assert k in m, k
    assert "judge_distance" not in b and "ssim" not in b and "clip_score" in b and "toy_fid" in b
    assert "fid" not in m  # the toy twin is never reported under the Inception name
    assert m["judge_distance"]["n"] == m["ssim"]["n"] == 22
    assert 0 < m["judge_distance"]["mean"] and m["ssim"]["mean"] < 1  # the edit changed the images
    # the efficacy images change most (the edit's target), the specificity images least
    assert m["judge_distance/efficacy"]["mean"] > m["judge_distance/specificity"]["mean"]
    protocols = {p["class"]: p for p in res["protocol"]["metrics"]}
    assert protocols["FID"]["names"] == ["toy_fid", "toy_kid"] and protocols["ClipScore"]["formula"] == "100 * max(cos, 0)(image, prompt)"


def test_caption_benchmark_draws_each_caption_once_with_its_seed_and_scores_quality(tmp_path):
    """The toy twin of coco30k: 12 captions, each with its file seed; the edited and the unedited model's
    CLIP-score, toy FID/KID and paired distances; without an edit the benchmark asks for one."""
    from edit_bench.benchmarks.captions import Captions

    b = Captions(path="datasets/toy/toy_captions.csv", n=12)
    seeds = [s.seed for s in b.samples()]
    import csv

    with open(ROOT / "datasets/toy/toy_captions.csv") as f:
        rows = list(csv.DictReader(f))[:12]
    assert seeds == [int(r["evaluation_seed"]) for r in rows] and len({s.id for s in b.samples()}) == 12
    assert [type(m).__name__ for m in b.metrics] == ["ClipScore"]  # no FID without a reference
    assert b.requests() == [] and b.case(b.samples()[0].case_id).request is None  # no edit of its own
    from edit_bench.editors.uce import UCE
    from edit_bench.evaluate import plan

    with pytest.raises(Exception, match="--data.requests FILE"):  # an editor needs the edit
        plan(UCE(base="tiny:sd1"), b)
    out = tmp_path / "capt"
    code = run_cli(["eval", "--model", ROOT / "configs/editor/uce.yaml", "--data", ROOT / "configs/benchmark/toy_captions.yaml",
                    "--data.n", "12", "--out_dir", out])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    m, b = res["metrics"], res["baseline"]
    assert m["clip_score"]["n"] == m["toy_fid"]["n"] == m["judge_distance"]["n"] == 12
    assert res["protocol"]["seeds"] == seeds and res["protocol"]["protocol"] == "fixed"
    assert res["timing"]["edits"] == 1
    # FID of the unedited model against this world's data is finite and positive; the edit moves images
    assert 0 < b["toy_fid"]["mean"] < 1e4 and m["ssim"]["mean"] <= 1
    code = run_cli(["eval", "--model", ROOT / "configs/editor/uce.yaml", "--data", ROOT / "configs/benchmark/coco30k.yaml",
                    "--model.base", "tiny:sd1", "--data.requests", ROOT / "configs/requests/toy_blue_circle.yaml",
                    "--out_dir", tmp_path / "coco"])
    assert code == 2 and not (tmp_path / "coco").exists()  # no reference folder, no CLIP weights: a one-line error


def test_toy_fid_grows_as_images_are_degraded():
    """The toy twin of FID moves the right way: rendered scenes against the renderer's other draws of the same
    captions score lowest, blurred or noisy ones higher, more blur or noise higher still."""
    import random

    import torchvision.transforms.functional as TF

    from edit_bench.models.toy import world

    fx = ImageFeatures.toy_judge()
    rng = random.Random(0)
    captions = [c for c in (world.random_caption(rng) for _ in range(400)) if c][:300]
    scenes = [world.parse(c) for c in captions]
    ref = fx(world.render(scenes, seeds=list(range(300)))).double().numpy()
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    imgs = world.render(scenes, seeds=list(range(1000, 1300)))  # the same captions, other positions
    from edit_bench.metrics.functional import frechet_distance

    def fid(x):
        return frechet_distance(fx(x).double().numpy(), mu, sigma)

    clean = fid(imgs)
    blur = [fid(TF.gaussian_blur(imgs, 7, s)) for s in (0.8, 1.6)]
    noise = [fid((imgs + s * torch.randn(imgs.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)) for s in (0.1, 0.3)]
    assert clean < blur[0] < blur[1] and clean < noise[0] < noise[1], (clean, blur, noise)


# ------------------------------------------------------------------------- the concept-absent reference (IGMU)
def test_concept_absent_prompts_remove_whole_words_and_tidy_what_is_left():
    from edit_bench.benchmarks.base import absent_rule, without_words
    from edit_bench.errors import UsageError

    assert without_words("a photo of a nude woman, on a beach", ["nude"]) == "a photo of a woman, on a beach"
    assert without_words("Nude, a woman", ["nude"]) == "a woman"
    assert without_words("nudes and a nude-art piece", ["nude"]) == "nudes and a nude-art piece"  # whole words only
    assert without_words("a church painted by Van Gogh", ["by Van Gogh", "Van Gogh"]) == "a church painted"
    assert absent_rule({"remove": [" nude "]}) == {"rule": "remove", "remove": ["nude"]}
    for bad in ("old", {"remove": []}, {"remove": "nude"}, {"words": ["x"]}):
        with pytest.raises(UsageError, match="absent"):
            absent_rule(bad)


def test_a_metric_against_the_concept_absent_images_needs_a_benchmark_that_declares_them():
    from edit_bench.errors import UsageError

    d = JudgeDistance(against="absent")
    with pytest.raises(UsageError, match="absent: new or absent: {remove"):
        d.prepare(_Bench("toy"))
    with pytest.raises(UsageError, match="against 'other'"):
        SSIM(against="other")


def test_eval_scores_each_concept_image_against_the_unedited_image_of_its_concept_absent_prompt(tmp_path):
    """TIME on one toy_timed row with absent: new: every efficacy and generality image is paired with the unedited
    image of its prompt's new label (same seed); the stored score equals the distance computed by hand from the saved
    images, CSDR equals IGMU's formula on the judge's CLIP-scores, and the unedited model's own distance is the scale."""
    from PIL import Image

    from edit_bench.metrics import ClipScoreDifference

    metrics = json.dumps([{"class_path": "edit_bench.metrics.EditScores"},
                          {"class_path": "edit_bench.metrics.JudgeDistance", "init_args": {"name": "jd_absent", "against": "absent"}},
                          {"class_path": "edit_bench.metrics.ClipScoreDifference"}])
    runs = {}
    for editor in ("time", "unedited"):
        out = tmp_path / editor
        code = run_cli(["eval", "--model", ROOT / f"configs/editor/{editor}.yaml", "--data", ROOT / "configs/benchmark/toy_timed.yaml",
                        "--data.rows", "0:1", "--data.sampler.seeds", "[0]", "--data.absent", "new", "--data.metrics", metrics,
                        "--data.baseline", "true", "--save_images", "true", "--out_dir", out])
        assert code == 0
        runs[editor] = json.loads((out / "results.json").read_text())
    m, proto = runs["time"]["metrics"], runs["time"]["protocol"]
    assert proto["absent"] == {"rule": "new"}
    recs = [json.loads(x) for x in (tmp_path / "time/samples/rank0.jsonl").read_text().splitlines()]
    scored = [r for r in recs if "jd_absent" in r["scores"]]
    assert {r["group"] for r in scored} == {"efficacy", "generality"} and m["jd_absent"]["n"] == len(scored) == 6
    assert all("jd_absent" not in r["scores"] for r in recs if r["group"] not in ("efficacy", "generality"))
    twins = {r["id"]: r for r in recs if r["group"].startswith("absent:")}
    load = lambda p: torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float()[None] / 255  # noqa: E731
    bench = _Bench("toy")
    bench.absent = proto["absent"]
    d, c = JudgeDistance(), ClipScoreDifference()
    d.prepare(bench), c.prepare(bench)
    for r in scored:
        twin = f"{r['case']}/absent:{r['group']}/{r['k']}/{r['seed']}"
        assert twins[twin]["prompt"] == r["new"]  # the concept-absent prompt: the row's new label
        img = load(tmp_path / "time/images_samples" / (r["id"].replace("/", "_").replace(":", "_") + ".png"))
        ref = load(tmp_path / "time/images_baseline" / (twin.replace("/", "_").replace(":", "_") + ".png"))
        assert d.score_pairs(img, d.reference(ref))["judge_distance"][0] == pytest.approx(r["scores"]["jd_absent"], abs=1e-5)
        s = lambda x: c.clip.score(x, [_Sample(r["new"])])[c.clip.key][0]  # noqa: E731
        assert r["scores"]["csdr"] == pytest.approx(abs(s(ref) - s(img)) / s(ref) * 100, rel=1e-4, abs=1e-4)
    # the unedited model is scored too: its own concept images against the concept-absent ones (the scale)
    u = runs["unedited"]["metrics"]
    assert u["jd_absent"]["n"] == 6 and u["csdr"]["n"] == 6 and u["jd_absent"]["mean"] > m["jd_absent"]["mean"] > 0


def test_toy_attributes_read_the_colour_and_background_each_prompt_asks_for():
    """The toy twin of 'did erasing nudity keep the people': the analyser reads rendered scenes; a scene drawn with
    another background, or with no shape at all (an erased one), is not kept; a prompt that names no background is
    refused before any output."""
    from edit_bench.errors import UsageError
    from edit_bench.metrics import ToyAttributes
    from edit_bench.models.toy import world
    from edit_bench.types import PromptPair, Sample

    prompts = ["a red star on a black background", "a blue circle on a gray background", "a yellow square on a white background"]
    samples = [Sample("c", "erased", k, 0, PromptPair(p, "star")) for k, p in enumerate(prompts)]
    drawn = [world.parse(prompts[0]), world.Scene("circle", "blue", background="white"), world.parse(prompts[2])]
    m = ToyAttributes()
    m.check_samples(samples)
    out = m.score(world.render(drawn, seeds=[0, 1, 2]), samples)
    assert out == {"kept/colour": [1.0, 1.0, 1.0], "kept/background": [1.0, 0.0, 1.0], "kept/all": [1.0, 0.0, 1.0]}
    empty = torch.full((1, 3, 32, 32), 0.06)  # a black background and no shape: the colour asked for is gone
    assert m.score(empty, samples[:1]) == {"kept/colour": [0.0], "kept/background": [1.0], "kept/all": [0.0]}
    with pytest.raises(UsageError, match="names no background"):
        m.check_samples([Sample("c", "erased", 0, 0, PromptPair("a red star", "star"))])
    with pytest.raises(UsageError, match="is not one"):
        m.check_samples([Sample("c", "erased", 0, 0, PromptPair("a photo of a cat", "cat"))])
    with pytest.raises(UsageError, match="choose among"):
        ToyAttributes(attributes=["size"])
