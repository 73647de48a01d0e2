"""The evaluation core in Python: the metric seam (per-sample scores and stored image features), results
computed from the records, sharding by whole cases."""

import json
from pathlib import Path

import pytest
import torch

from edit_bench.benchmarks.timed import TIMED
from edit_bench.cli import EditTrainer
from edit_bench.editors.time import TIME
from edit_bench.evaluate import Evaluation, shard
from edit_bench.metrics import EditScores, JudgeConfig, SampleMetric
from edit_bench.types import EditRequest, PromptPair, Sample, SamplerConfig


class MeanColour(SampleMetric):
    """A metric with image-level state: the mean RGB of each image, stored as a feature, averaged in compute."""

    stores_features = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.add_state("total", torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def score(self, images, samples):
        return {"brightness": images.mean((1, 2, 3)).tolist()}

    def features(self, images, samples):
        return images.mean((2, 3))  # [B, 3]

    def update(self, records, features=None):
        self.total += features.double().sum(0)
        self.n += len(records)

    def compute(self):
        return {"brightness": {"mean": float(self.total.mean() / self.n), "std": 0.0, "n": int(self.n)}}


def _bench(**kw):
    return TIMED(rows="0:2", sampler=SamplerConfig(steps=2, size=32, seeds=[0]), judge=JudgeConfig(model="tiny:random"),
                 batch_size=4, **kw)


def _trainer():
    return EditTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, inference_mode=False)


def test_metrics_score_into_records_and_features_survive_a_resume(tmp_path):
    out = tmp_path / "run"
    bench = _bench(metrics=[EditScores(), MeanColour()])
    first = Evaluation(TIME(base="tiny:sd1"), bench, out).run(_trainer())
    rec = json.loads((out / "samples/rank0.jsonl").read_text().splitlines()[0])
    assert set(rec["scores"]) == {"p_new", "success", "brightness"}
    assert first.metrics["brightness"]["n"] == 22 and first.metrics["efficacy"]["n"] == 2
    # a crash after the first batch: records and feature files of the rest are gone
    lines = (out / "samples/rank0.jsonl").read_text().splitlines()
    (out / "samples/rank0.jsonl").write_text("\n".join(lines[:4]) + "\n")
    feats = sorted((out / "samples/features").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    for f in feats[1:]:
        f.unlink()
    again = Evaluation(TIME(base="tiny:sd1"), _bench(metrics=[EditScores(), MeanColour()]), out).run(_trainer())
    assert again.samples.stored_before == 4 and again.samples.new_this_run == 18
    assert again.metrics == first.metrics


def test_two_metrics_need_two_names_and_a_second_judge_gets_its_own_keys(tmp_path):
    from edit_bench.errors import UsageError

    with pytest.raises(UsageError, match="two metrics are named 'timed'"):
        _bench(metrics=[EditScores(), EditScores()])
    res = Evaluation(TIME(base="tiny:sd1"), _bench(metrics=[EditScores(), EditScores(name="judge2")]), tmp_path / "r").run(_trainer())
    rec = json.loads((tmp_path / "r/samples/rank0.jsonl").read_text().splitlines()[0])
    assert {"p_new", "success", "judge2.p_new", "judge2.success"} <= set(rec["scores"])
    assert res.metrics["judge2.efficacy"] == res.metrics["efficacy"]  # the same judge twice: the same numbers


def _samples(cases):
    pair = PromptPair("p", "o", "n", "new")
    return [Sample(c, "generality", k, 0, pair) for c, n in cases for k in range(n)]


def test_shards_are_whole_cases_and_cover_every_sample_once():
    samples = _samples([("a", 11), ("b", 11), ("c", 3), ("d", 20)])
    for world in (1, 2, 3, 5):
        parts = [shard(samples, "per_case", r, world) for r in range(world)]
        assert sorted(s.id for p in parts for s in p) == sorted(s.id for s in samples)
        owners = {}
        for r, p in enumerate(parts):
            for s in p:
                assert owners.setdefault(s.case_id, r) == r  # a case lives on one rank
    flat = [shard(samples, "fixed", r, 2) for r in range(2)]
    assert [len(p) for p in flat] == [22, 23]


def test_requests_and_edits_run_without_autocast():
    """An edit under a bf16 autocast context (as Lightning's predict step is) is the same edit."""
    ed = TIME(base="tiny:sd1")
    ed.apply_edit([EditRequest("A banana", "A blue banana")])
    plain = {n: p.clone() for n, p in ed.edited_parameters().items()}
    ed.restore()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ed.apply_edit([EditRequest("A banana", "A blue banana")])
    for n, p in ed.edited_parameters().items():
        assert torch.equal(p, plain[n])


def test_baseline_cache_reuses_the_unedited_samples_with_identical_numbers(tmp_path, monkeypatch):
    """A second evaluation finds the unedited samples the first one scored (records, stored features, paired
    references) and gives the numbers of the first, which generated them; a changed sampler is another
    context, and ``baseline_cache=False`` neither reads nor writes."""
    from edit_bench.metrics import SSIM

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))

    def bench(steps=2):
        return TIMED(rows="0:1", sampler=SamplerConfig(steps=steps, size=32, seeds=[0]), judge=JudgeConfig(model="tiny:random"),
                     batch_size=4, baseline=True, metrics=[EditScores(), MeanColour(), SSIM()])

    first = Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "first").run(_trainer())
    assert first.samples.baseline_cache == {"hits": 0, "added": 11, "repeats": 0, "path": first.samples.baseline_cache["path"]}
    again = Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "again").run(_trainer())
    assert again.samples.baseline_cache["hits"] == 11 and again.samples.baseline_cache["added"] == 0
    assert again.baseline == first.baseline and again.baseline["brightness"]["n"] == 11
    assert again.metrics == first.metrics and again.metrics["ssim"]["n"] == 11  # SSIM against cached references
    scores = lambda run: [json.loads(x)["scores"] for x in (tmp_path / run / "baseline/rank0.jsonl").read_text().splitlines()]
    assert sorted(map(json.dumps, scores("again"))) == sorted(map(json.dumps, scores("first")))

    def cache(b, **kw):
        ev = Evaluation(TIME(base="tiny:sd1"), b, tmp_path / "x", **kw)
        ev.validate()
        from edit_bench.evaluate import provenance

        return ev._cache(provenance(ev.editor, b, _trainer(), "highest"))

    assert cache(bench()).path == Path(first.samples.baseline_cache["path"])
    assert cache(bench(steps=3)).path != cache(bench()).path
    assert cache(bench(), baseline_cache=False) is None


def test_compiled_and_channels_last_unet_follows_edits_made_in_place():
    """The fast path keeps the UNet's own parameters: after an edit (in place) and after a restore, the
    compiled, channels_last UNet draws what the eager one draws (CPU, float32, dynamo's ``aot_eager`` backend:
    the same graph capture as inductor without a C++ toolchain)."""
    sampler = SamplerConfig(steps=2, size=32, seeds=[0])
    req = [EditRequest("a cat", "a dog")]
    prompts, seeds = ["a cat", "a photo of a cat"], [0, 1]
    eager, fast = TIME(base="tiny:sd1"), TIME(base="tiny:sd1")
    info = fast.t2i.fast_path(channels_last=True, compile="aot_eager")
    assert info["compile"] == "aot_eager" and info["attention"] == ["AttnProcessor2_0"]  # diffusers' SDPA processor
    before = fast.t2i.generate(prompts, seeds, sampler)
    assert torch.allclose(before, eager.t2i.generate(prompts, seeds, sampler), atol=1e-5)
    eager.apply_edit(req)
    fast.apply_edit(req)
    edited = fast.t2i.generate(prompts, seeds, sampler)
    assert torch.allclose(edited, eager.t2i.generate(prompts, seeds, sampler), atol=1e-5)
    assert (edited - before).abs().max() > 1e-3  # the compiled forward saw the new weights
    fast.restore()
    assert torch.allclose(fast.t2i.generate(prompts, seeds, sampler), before, atol=1e-5)
    assert fast.t2i.fast_path(compile="aot_eager")["compile"] == "aot_eager"  # compiled once: left as it is


def test_results_read_refuses_a_file_that_is_not_an_eval_result_in_one_line(tmp_path):
    from edit_bench.errors import UsageError
    from edit_bench.evaluate import Results

    (tmp_path / "a").mkdir()
    (tmp_path / "a/results.json").write_text('{"editor": "TIME"}')
    with pytest.raises(UsageError, match="lacks editor_args"):
        Results.read(tmp_path / "a")
    (tmp_path / "a/results.json").write_text('{"editor": ')
    with pytest.raises(UsageError, match="not a readable results.json"):
        Results.read(tmp_path / "a")
    with pytest.raises(UsageError, match="has no results.json"):
        Results.read(tmp_path / "b")
