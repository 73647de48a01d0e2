import pytest
import torch

from edit_bench.benchmarks.requests import EditRequests
from edit_bench.benchmarks.timed import TIMED
from edit_bench.metrics import EditScores
from edit_bench.types import SamplerConfig


def test_timed_rows_become_cases():
    b = TIMED(path="datasets/timed/TIMED_test_set_filtered_SD14.csv", sampler=SamplerConfig(seeds=[0, 1]))
    cases = b.cases()
    assert len(cases) == 104
    c = cases[0]
    assert (c.request.source, c.request.target) == ("A banana", "A blue banana")
    assert [len(c.groups[g]) for g in ("efficacy", "generality", "specificity")] == [1, 5, 5]
    eff, gen, spec = c.groups["efficacy"][0], c.groups["generality"][0], c.groups["specificity"][0]
    assert (eff.prompt, eff.old, eff.new, eff.expect) == ("A banana", "A banana", "A blue banana", "new")
    assert (gen.prompt, gen.new, gen.expect) == ("A bowl of bananas", "A bowl of blue bananas", "new")
    assert (spec.prompt, spec.old, spec.new, spec.expect) == ("An apple", "An apple", "A blue apple", "old")
    ids = [s.id for s in b.samples()]
    assert len(ids) == 104 * 11 * 2 == len(set(ids))
    assert len(TIMED(path="datasets/timed/TIMED_test_set.csv").cases()) == 147
    assert [c.id for c in TIMED(rows="3,5").cases()][-1].endswith(":0005")


def _write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


def test_bad_timed_files(tmp_path):
    from edit_bench.benchmarks.timed import COLUMNS

    with pytest.raises(ValueError, match=r"missing columns \['gn5'\]"):
        TIMED(path=str(_write(tmp_path / "a.csv", COLUMNS[:-1], [["x"] * 21])))
    row = ["A cat", "A blue cat"] + ["p"] * 20
    row[5] = ""
    with pytest.raises(ValueError, match=r"line 2.*empty cells in \['gt2'\]"):
        TIMED(path=str(_write(tmp_path / "b.csv", COLUMNS, [row])))
    with pytest.raises(ValueError, match="same prompt"):
        TIMED(path=str(_write(tmp_path / "c.csv", COLUMNS, [["A cat", "a cat"] + ["p"] * 20])))
    with pytest.raises(ValueError, match="out of range"):
        TIMED(rows="200")
    with pytest.raises(ValueError, match="nope.csv"):
        TIMED(path="nope.csv")


def test_long_prompts_error_or_truncate(tmp_path):
    from edit_bench.benchmarks.timed import COLUMNS
    from edit_bench.models import load_t2i

    long = " ".join(["red"] * 90)
    path = str(_write(tmp_path / "l.csv", COLUMNS, [["A cat", "A blue cat"] + [long] + ["p"] * 19]))
    t2i = load_t2i("tiny:sd1")
    with pytest.raises(ValueError, match=r"92 tokens.*truncate_long_prompts"):
        TIMED(path=path).check_prompts(t2i)
    b = TIMED(path=path, truncate_long_prompts=True)
    b.check_prompts(t2i)
    assert b.truncated == [long] and b.protocol_info()["truncated_prompts"] == [long]
    # prompts an editor derives from the requests are checked too, and never truncated
    with pytest.raises(ValueError, match="the editor builds from the requests"):
        b.check_prompts(t2i, derived=["A photo of " + long])


def test_a_selection_of_no_rows_and_an_unknown_group_are_errors():
    from edit_bench.types import EditCase, EditRequest, PromptPair

    with pytest.raises(ValueError, match="selects no cases"):
        TIMED(path="datasets/toy/toy_timed.csv", rows="50:60")
    class Misspelt(TIMED):
        def cases(self):
            return [EditCase("c", EditRequest("a", "b"), {"specifity": (PromptPair("a", "a", "b", "old"),)})]

    with pytest.raises(ValueError, match=r"group\(s\) \['specifity'\] that Misspelt does not declare"):
        Misspelt(path="datasets/toy/toy_timed.csv")


def test_requests_from_yaml_and_csv(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("requests:\n  - {source: A rose, target: A blue rose, subject: rose}\npreserve: [A tulip]\n")
    r = EditRequests(path=str(y))
    assert r.requests()[0].subject == "rose" and r.preserve() == ["A tulip"]
    c = _write(tmp_path / "r.csv", ["source", "target"], [["A rose", "A blue rose"], ["A pear", "A pear"]])
    with pytest.raises(ValueError, match="r.csv: line 3.*same prompt"):
        EditRequests(path=str(c))


def _rec(group, seed, success, k=0):
    from edit_bench.types import Record

    return Record(f"c/{group}/{k}/{seed}", "c", group, k, seed, "p", "o", "n", "new", {"success": float(success)})


def test_edit_scores_by_hand():
    m = EditScores()
    recs = ([_rec("efficacy", 0, True), _rec("efficacy", 1, False)]
            + [_rec("generality", s, ok, k) for k, (s, ok) in enumerate([(0, 1), (0, 1), (1, 1), (1, 0)])]
            + [_rec("specificity", s, ok, k) for k, (s, ok) in enumerate([(0, 1), (0, 0), (1, 1), (1, 1)])])
    m.update(recs)
    out = m.compute()
    assert out["efficacy"] == {"mean": 0.5, "std": 0.5, "n": 2}
    assert out["generality"]["mean"] == 0.75 and out["generality"]["std"] == pytest.approx(0.25)
    assert out["specificity"]["mean"] == 0.75 and out["specificity"]["n"] == 4
    assert out["f1"]["mean"] == pytest.approx(0.75)
    # per-seed F1: sqrt(1 * 0.5), sqrt(0.5 * 1) -> equal, so std 0
    assert out["f1"]["std"] == pytest.approx(0.0)


def test_timed_rule():
    from edit_bench.metrics import timed_success

    p = torch.tensor([0.9, 0.9, 0.2, 0.2, 0.5, 0.5])
    assert timed_success(p, ["new", "old", "new", "old", "new", "old"]).tolist() == [True, False, False, True, False, False]


def test_judge_equals_open_clip_called_directly_on_the_same_8bit_image():
    """The judge's P(new) is open_clip's own softmax over the two captions, on the image quantised to 8 bits
    and preprocessed by open_clip; and the toy judge prefers a rendered scene's caption."""
    import open_clip
    from PIL import Image

    from edit_bench.metrics import ClipJudge, JudgeConfig
    from edit_bench.models.toy import judge_dir, world

    judge = ClipJudge(JudgeConfig(model="toy"))
    scene = world.parse("a blue circle")
    img = world.render([scene])  # [1, 3, 32, 32] in [0, 1]
    p = judge.preference(img, ["a red square"], ["a blue circle"])
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{judge_dir()}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{judge_dir()}")
    model.eval()
    u8 = (img[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with torch.no_grad():
        f_img = torch.nn.functional.normalize(model.encode_image(preprocess(Image.fromarray(u8))[None]), dim=-1)
        f_txt = torch.nn.functional.normalize(model.encode_text(tokenizer(["a red square", "a blue circle"])), dim=-1)
        ref = torch.softmax(100.0 * f_img @ f_txt.T, dim=-1)[0, 1]
    torch.testing.assert_close(p[0], ref, atol=1e-5, rtol=0)
    assert p.item() > 0.9


def test_judge_fast_path_batched_preprocessing_and_half_precision():
    """``preprocess: tensor`` runs open_clip's own transform on the batch: at the judge's size it is the PIL path
    exactly; from twice the size it resizes to within about one 8-bit level of PIL's and the toy judge keeps its
    verdicts. ``dtype: bfloat16`` keeps the verdicts on clear scenes. A bad value is a one-line error."""
    from PIL import Image

    from edit_bench.errors import UsageError
    from edit_bench.metrics import ClipJudge, JudgeConfig
    from edit_bench.models.toy import world

    captions = ["a blue circle", "a red square", "a green triangle", "a yellow star", "a purple circle", "a red circle"]
    img = world.render([world.parse(c) for c in captions], seeds=list(range(len(captions))))  # [6, 3, 32, 32]
    old, new = ["a red square"] * 6, captions
    ref = ClipJudge(JudgeConfig(model="toy"))
    p_ref = ref.preference(img, old, new)
    fast = ClipJudge(JudgeConfig(model="toy", preprocess="tensor"))
    torch.testing.assert_close(fast.preference(img, old, new), p_ref, atol=1e-6, rtol=0)

    big = img.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 64 px: both paths must resize to 32
    u8 = (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    via_pil = torch.stack([ref.preprocess(Image.fromarray(a)) for a in u8])
    via_tensor = fast.preprocess((big.clamp(0, 1) * 255).round() / 255)
    std = 0.26  # the judge's normalisation: one 8-bit level is ~0.015 here
    print("max |tensor - PIL| preprocessed, in 8-bit levels:", float((via_tensor - via_pil).abs().max()) * std * 255)
    assert float((via_tensor - via_pil).abs().max()) * std * 255 < 1.5
    p_pil, p_tensor = ref.preference(big, old, new), fast.preference(big, old, new)
    assert torch.equal(p_pil > 0.5, p_tensor > 0.5) and float((p_pil - p_tensor).abs().max()) < 0.02

    half = ClipJudge(JudgeConfig(model="toy", dtype="bfloat16", preprocess="tensor"))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    p_half = half.preference(img, old, new)
    gap = 1 - (half.image_features(img) * ref.image_features(img)).sum(-1)  # measured 3e-5 to 5e-5
    print("1 - cos(image features bf16, fp32):", gap.tolist())
    assert float(gap.max()) < 1e-3 and float(gap.min()) > 0  # close, and bfloat16 did run
    assert p_half.dtype == torch.float32 and torch.equal(p_half > 0.5, p_ref > 0.5)
    for bad in (dict(dtype="half"), dict(preprocess="gpu")):
        with pytest.raises(UsageError, match="judge (dtype|preprocess)"):
            JudgeConfig(model="toy", **bad)


def test_missing_judge_fails_with_instructions():
    from edit_bench.metrics import ClipJudge, JudgeConfig
    from edit_bench.models import ModelNotAvailable

    with pytest.raises(ModelNotAvailable, match="hf download laion"):
        ClipJudge(JudgeConfig())


def test_road_rows_make_cases_with_the_papers_labels(tmp_path):
    """RoAD (ReFACT §3.3): request Prompt -> Oracle; efficacy draws Prompt and compares Old/New; generality
    PositiveK with Positive_oldK/Positive_newK; specificity NegativeK against Negative_newK. Both files load;
    a missing column names it."""
    from edit_bench.benchmarks.road import RoAD
    from edit_bench.errors import UsageError

    b = RoAD(rows="0:2")
    c = b.cases()[0]
    assert (c.request.source, c.request.target) == ("Canada's Prime Minister", "Beyonce as Canada's Prime Minister")
    e = c.groups["efficacy"][0]
    assert (e.prompt, e.old, e.new, e.expect) == ("Canada's Prime Minister", "Justin Trudeau", "Beyonce", "new")
    g = c.groups["generality"][0]
    assert (g.old, g.new, g.expect) == ("Justin Trudeau celebrating a birthday", "Beyonce celebrating a birthday", "new")
    s = c.groups["specificity"][0]
    assert (s.prompt, s.old, s.new, s.expect) == ("Justin Trudeau", "Justin Trudeau", "Beyonce", "old")
    assert len(b.samples()) == 2 * 11 * len(b.sampler.seeds)
    assert len(RoAD().cases()) == 90 and len(RoAD(path="datasets/road/RoAD_validation.csv").cases()) == 10
    bad = tmp_path / "bad.csv"
    bad.write_text("Prompt,Oracle\na,b\n")
    with pytest.raises(UsageError, match="missing columns"):
        RoAD(path=str(bad))


def test_concept_absent_twins_on_a_concept_table_and_an_unlabelled_prompt_set():
    """Each erased row (and each row of an I2P-style set under its requests) gets its concept-absent twin: the same
    index and seeds, the rule's prompt; the twin of every other sample is None."""
    from edit_bench.benchmarks.concepts import ConceptPrompts
    from edit_bench.metrics import ClipScore

    b = ConceptPrompts(concepts=["circle", "star"], templates=["a big {} on a black background"], erase=["star"],
                       keep=["circle"], sampler=SamplerConfig(steps=2, size=32, seeds=[0, 1]), absent={"remove": ["star"]},
                       metrics=[ClipScore()])
    samples = b.samples()
    erased = [s for s in samples if s.group == "erased"]
    twins = {s.id: s for s in samples if s.group == "absent:erased"}
    assert erased and len(twins) == len(erased)
    for s in erased:
        t = twins[b.absent_twin(s)]
        assert (t.prompt_index, t.seed, t.pair.prompt) == (s.prompt_index, s.seed, "a big on a black background")
    assert all(b.absent_twin(s) is None for s in samples if s.group != "erased")
    assert b.protocol_info()["absent"] == {"rule": "remove", "remove": ["star"]}
    i2p = ConceptPrompts(path="datasets/unlearndiffatk/nudity.csv", requests="configs/requests/nudity.yaml",
                         truncate_long_prompts=True, protocol="fixed", absent={"remove": ["nude", "naked", "shirtless"]},
                         metrics=[ClipScore()])
    rows = {s.prompt_index: s for s in i2p.samples() if s.group == "prompts"}
    made = {s.prompt_index: s for s in i2p.samples() if s.group == "absent:prompts"}
    assert made.keys() == rows.keys() and all(made[k].seed == rows[k].seed for k in rows)  # each row's own seed
    shirtless = next(k for k, s in rows.items() if s.pair.prompt.startswith("Shirtless"))
    assert made[shirtless].pair.prompt == rows[shirtless].pair.prompt[len("Shirtless "):]
