"""`Evaluation`: the one owner of ``eval``.

It decides the protocol, validates everything before any output exists, keeps the run directory, runs
Lightning's predict loop over the pending samples (split across processes by whole cases), and computes
every metric on rank 0 from the merged stored records: a resumed run, a DDP run and a spawn-launched run
give the numbers and the accounting of one uninterrupted process, by construction.

The protocol (one place, :func:`plan`):

- ``per_case``: the editor restores and edits for every case (TIMED, RoAD); an editor that trains runs its
  training step without a Trainer (``edit()``) for every case;
- ``fixed``: one edit with every request, made on the accelerator before the loop (for an editor that trains:
  ``edit()`` once; or train with ``fit`` and evaluate its delta with the identity editor);
- ``sequential``: the cases' requests one after another on the same weights (each editor's own update on the
  already edited model, ``Editor.apply_edit(on_current=True)``); after every ``every``-th edit the cases edited so
  far (and the cases without a request) are scored, one record set per stage (``after-NNNN/``), so the results
  hold a curve. The weights after every edit are kept in the run (``sequential-state.safetensors``, relative to the
  editor's origin): a resumed run starts from them, bit for bit, and never repeats an edit;
- ``as_is``: the model is evaluated as loaded (the identity editor, with or without a saved delta);
- the baseline pass (``Benchmark(baseline=True)``): the unedited model on the same samples, before the edits.

One job per module, as Lightning's trainer delegates to its connectors and loops: :mod:`.protocol` (the plan, the
stages, the provenance), :mod:`.batches` (batching, sharding, the baseline cache's hits), :mod:`.state` (the sequential
state), :mod:`.prediction` (the Lightning pass that makes, generates, scores and writes), :mod:`.results` (the typed
``results.json``); attacks run through
:mod:`edit_bench.attacks.runner`. This module holds :class:`Evaluation`, which validates, owns the run directory,
runs the passes and computes ``results.json`` from the stored records.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import lightning as L

from .. import signals
from ..attacks.runner import attack_path, attack_results, check_attacks
from ..baseline_cache import BaselineCache
from ..benchmarks import Benchmark
from ..editors import Editor
from ..errors import UsageError
from ..provenance import Provenance, init_args, set_numerics
from ..rundir import RunDir, versions
from ..types import Record, Sample
from .batches import CACHE_HITS, _first_of_each, _write_hits, shard
from .prediction import _Pass
from .protocol import Plan, aggregate, plan, provenance, stage_samples, stage_variant
from .results import CurvePoint, Results, SampleCounts, Timing
from .state import SEQUENTIAL_STATE, load_sequential_state, save_sequential_state

__all__ = ["Evaluation", "Results", "Plan", "plan", "provenance", "aggregate", "stage_variant", "stage_samples", "shard",
           "SEQUENTIAL_STATE", "save_sequential_state", "load_sequential_state", "attack_path"]


def weight_change(edits: list[dict]) -> dict | None:
    """How far the run's edits moved the weights from the origin (every logged edit, this run's and a resumed run's):
    the mean over edits of each total (``Editor.weight_change``) and each edit's own, by case."""
    logged = [e for e in edits if e.get("change")]
    if not logged:
        return None
    keys = [k for k, v in logged[0]["change"].items() if isinstance(v, (int, float))]
    mean = {k: sum(e["change"][k] for e in logged if e["change"].get(k) is not None) / len(logged) for k in keys}
    kinds = list(dict.fromkeys(k for e in logged for k in e["change"].get("by_kind", {})))
    mean["by_kind"] = {k: {m: sum((e["change"]["by_kind"].get(k) or {}).get(m) or 0.0 for e in logged) / len(logged)
                           for m in ("delta_norm", "ratio")} for k in kinds}
    return {"mean": mean, "edits": len(logged),
            "rule": "||W - W0||_F over the edited tensors, its ratio to ||W0||_F, the mean |W - W0| per edited parameter",
            "per_edit": {str(e.get("case")): e["change"] for e in logged}}


class Evaluation:
    """Edit, generate and score every sample of a benchmark; write ``OUT_DIR/results.json``.

    Args:
        editor: the editor.
        bench: the benchmark.
        out_dir: the run directory; rerunning the same evaluation resumes it.
        config_yaml: the resolved config, kept as ``config.yaml`` (the CLI passes it).
        save_images: also save every image as ``OUT_DIR/images_<variant>/<sample id>.png``; ``"edited"``: only the
            evaluated model's (not the baseline's).
        baseline_cache: reuse (and add to) the unedited model's scored samples kept in
            ``$EDIT_BENCH_CACHE/baseline`` (:mod:`edit_bench.baseline_cache`); when off, or when every image is
            saved (``save_images`` true), the baseline is generated whole.
    """

    def __init__(self, editor: Editor, bench: Benchmark, out_dir: str | Path, config_yaml: str = "", save_images: bool = False,
                 baseline_cache: bool = True):
        if not isinstance(bench, Benchmark):
            raise UsageError(f"eval needs a benchmark (--data configs/benchmark/...yaml); got {type(bench).__name__}")
        self.editor, self.bench, self.out_dir = editor, bench, Path(out_dir)
        self.config_yaml, self.save_images, self.baseline_cache = config_yaml, save_images, baseline_cache

    def validate(self, trainer: L.Trainer | None = None) -> Plan:
        """Everything that can fail on bad input fails here, before the run directory exists."""
        editor, bench = self.editor, self.bench
        editor.check_inputs()  # a missing corpus or anchor folder fails here, not after the baseline was drawn
        t2i = editor.t2i  # loads the model (and a delta, validated whole)
        the_plan = plan(editor, bench)
        bench.check_prompts(t2i, editor.derived_prompts(bench.requests()) if the_plan.mode != "as_is" else [])
        t2i.check_sampler(bench.sampler)
        editor.edited_parameters()  # resolves the editor's sites/layers on this model (a bad layer fails here)
        bench.metrics.check(bench.samples())
        for m in bench.metrics:
            m.prepare(bench)  # loads the judge: a missing one fails here
        check_attacks(self.editor, self.bench, trainer)
        if trainer is not None:
            if editor.needs_grad and the_plan.mode != "as_is" and trainer.predict_loop.inference_mode:
                raise UsageError(f"{type(editor).__name__} edits with gradients, which inference mode forbids: "
                                 "set --trainer.inference_mode false (the CLI's default)")
            if editor.trains and the_plan.mode in ("fixed", "sequential") and trainer.world_size > 1:
                raise UsageError(f"{type(editor).__name__} trains: under {trainer.world_size} processes the {the_plan.mode} protocol "
                                 "would train one copy per process. Train it once with `python -m edit_bench fit`, then "
                                 "evaluate its delta: --model configs/editor/unedited.yaml --model.delta OUT/edit.safetensors")
        return the_plan

    def _stored(self, run: RunDir, variant: str, samples: list[Sample]) -> dict[str, Record]:
        """Stored records of this benchmark's samples; refuses records made from other prompts or labels."""
        by_id = {s.id: s for s in samples}
        stored = {k: r for k, r in run.load_records(variant).items() if k in by_id}
        bad = [(k, why) for k, r in stored.items() if (why := r.mismatch(by_id[k]))]
        if bad:
            k, why = bad[0]
            raise UsageError(
                f"{run.path}/{variant} holds {len(bad)} record(s) of other prompts than this benchmark's (the data "
                f"file changed?), e.g. {k}: {why}. Choose a new --out_dir, or delete {run.path} to start over"
            )
        return stored

    def run(self, trainer: L.Trainer, matmul_precision: str = "highest") -> Results | None:
        """Run the evaluation with ``trainer`` (its precision, devices and strategy); returns the results on
        rank 0 (``None`` elsewhere). SIGTERM/SIGINT stop it after the batch in flight (:mod:`edit_bench.signals`)."""
        the_plan = self.validate(trainer)
        set_numerics(matmul_precision)  # matmuls and convolutions, also when called from Python without the CLI
        prov = provenance(self.editor, self.bench, trainer, matmul_precision)
        run = RunDir(self.out_dir, "eval", prov.run())
        # rank 0 (the launching process) owns the directory for the run's life; the other ranks write under its lock
        with run.owned() if trainer.is_global_zero else contextlib.nullcontext():
            return self._run(trainer, the_plan, prov, run)

    def _run(self, trainer: L.Trainer, the_plan: Plan, prov: Provenance, run: RunDir) -> Results | None:
        editor, bench = self.editor, self.bench
        resumed = run.resumes()
        samples = bench.samples()
        variants = the_plan.variants()
        of = {v: samples for v in variants}  # each record set's samples
        if "baseline" in of:  # the unedited model is not attacked
            of["baseline"] = [s for s in samples if not s.group.startswith("attack:")]
        for n in the_plan.stages:
            of[stage_variant(n)] = stage_samples(bench, n)
        before = {v: self._stored(run, v, of[v]) for v in variants}  # all checked before anything runs
        if the_plan.mode == "sequential" and (run.path / SEQUENTIAL_STATE).exists():
            load_sequential_state(editor, run.path / SEQUENTIAL_STATE, check_only=True)
        edits_before = {v: set(run.load_edits(v)) for v in variants}
        if trainer.is_global_zero:
            run.create(self.config_yaml)
            for v in variants:  # what the editor reported last time: rewritten by every rank of this run
                for f in run.samples_dir(v).glob("editor-rank*.json"):
                    f.unlink()
        cache = self._cache(prov) if the_plan.baseline else None
        wall, cached = {}, {"hits": 0, "added": 0, "repeats": 0}
        with signals.stop_at_safe_points():
            for variant in variants:
                pending = [s for s in of[variant] if s.id not in before[variant]]
                with_cache = cache if variant == "baseline" else None  # looked up inside the pass, by rank 0
                repeats = []
                if with_cache is not None:  # a sample the unedited model draws twice (per-case kept sets) is drawn once
                    pending, repeats = _first_of_each(pending)
                t0 = time.perf_counter()
                if pending:
                    try:
                        stage = int(variant.removeprefix("after-")) if the_plan.mode == "sequential" and variant != "baseline" else 0
                        save = self.save_images is True or (self.save_images == "edited" and variant != "baseline")
                        trainer.predict(_Pass(editor, bench, pending, the_plan, run, variant, save, with_cache, stage),
                                        return_predictions=False)
                    finally:
                        editor.as_loaded()
                    trainer.strategy.barrier()
                    if with_cache is not None and trainer.is_global_zero:
                        cached["hits"] = json.loads((run.samples_dir(variant) / CACHE_HITS).read_text())["hits"]
                        cached["added"] = cache.store(pending, run.load_records(variant), run, variant)
                if repeats and trainer.is_global_zero:  # their records and features, from the cache just written
                    _write_hits(run, cache, repeats, cache.lookup(repeats))
                    cached["repeats"] = len(repeats)
                wall[variant] = time.perf_counter() - t0
        if not trainer.is_global_zero:
            return None
        scored = {v: self._score(run, v, of[v], the_plan) for v in variants}
        results = self._results(the_plan, prov, run, scored, before, edits_before, wall, resumed)
        if cache is not None:
            results.samples.baseline_cache = {**cached, "path": str(cache.path)}
        from ..loggers import log_eval

        results.loggers = log_eval(trainer, run.path, results.to_dict())
        path = run.write_json("results.json", results.to_dict())
        from ..report import format_table

        print(format_table(results.to_dict(), path))
        return results

    def _cache(self, prov: Provenance) -> BaselineCache | None:
        """The baseline cache of this evaluation's unedited samples (``None`` when off)."""
        if not self.baseline_cache or self.save_images is True:  # a hit would come without its image
            return None
        return BaselineCache(prov.baseline(), [m.name for m in self.bench.metrics.stored])

    def _score(self, run: RunDir, variant: str, samples: list[Sample], the_plan: Plan) -> dict:
        """Every metric from the stored records (and features) of this benchmark's samples, in sample order."""
        stored = self._stored(run, variant, samples)
        missing = [s.id for s in samples if s.id not in stored]
        if missing:
            raise RuntimeError(f"{len(missing)} sample(s) have no record after the run (e.g. {missing[0]})")
        records = [stored[s.id] for s in samples]
        scoring = [m for m in self.bench.metrics if m.name not in the_plan.not_scored and not (m.paired and variant == "baseline")]
        feats = {m.name: run.feature_index(m.name, variant).read([r.id for r in records])
                 for m in scoring if m.stores_features}
        return {"metrics": aggregate(scoring, records, feats), "records": records}

    def _editor_info(self, run: RunDir, variant: str) -> dict:  # noqa: D401
        """The editor's report of this run's edits: one rank's as is, several ranks' by rank."""
        files = sorted(run.samples_dir(variant).glob("editor-rank*.json"))
        if not files:  # nothing was left to edit
            return self.editor.report()
        reports = {f.stem.removeprefix("editor-"): json.loads(f.read_text()) for f in files}
        return next(iter(reports.values())) if len(reports) == 1 else reports

    def _results(self, the_plan: Plan, prov: Provenance, run: RunDir, scored: dict, before: dict, edits_before: dict,
                 wall: dict, resumed: bool) -> Results:
        editor, bench = self.editor, self.bench
        edited = [v for v in the_plan.variants() if v != "baseline"]
        final = edited[-1]  # the model after every edit
        new = [r for v in edited for r in scored[v]["records"] if r.id not in before[v]]
        edits = [e for v in edited for k, e in run.load_edits(v).items() if k not in edits_before[v]]
        generate_s = sum(r.generate_s for r in new)
        gen = prov.fields["generation"]
        attacks = bench.attacks
        return Results(
            editor=type(editor).__name__,
            editor_args=init_args(editor),
            benchmark=type(bench).__name__,
            model=editor.t2i.identity["spec"],
            model_id=editor.t2i.identity["id"],
            delta=editor.delta,
            metrics=scored[final]["metrics"],
            baseline=scored["baseline"]["metrics"] if "baseline" in scored else None,
            protocol={**bench.protocol_info(), "protocol": the_plan.mode, "family": editor.t2i.family, "size": gen["size"],
                      "metrics": [m.describe() for m in bench.metrics], "not_scored": the_plan.not_scored,
                      "precision": gen["precision"], "matmul_precision": gen["matmul_precision"], "device": gen["device"],
                      "device_name": gen["device_name"], "numerics": gen["numerics"],
                      "batch_size": bench.batch_size,  # this run's (a resume may take another: provenance.RESUMABLE)
                      "fast_path": {**gen["fast_path"], "attention": editor.t2i.attention_processors()}},
            provenance=prov.run(),
            timing=Timing(edit_s=sum(e["edit_s"] for e in edits) / len(edits) if edits else None, edits=len(edits),
                          generate_s=generate_s, images_per_s=len(new) / generate_s if generate_s else None,
                          wall_s=sum(wall.values()),
                          note="new samples of this run, all processes (generation excludes edits)" + (", resumed run" if resumed else "")),
            samples=SampleCounts(total=sum(len(scored[v]["records"]) for v in edited),
                                 stored_before=sum(len(before[v]) for v in edited),
                                 new_this_run=len(new), records=str(run.samples_dir(final))),
            editor_info=self._editor_info(run, final),
            versions=versions(),
            config=self.config_yaml,
            attacks=attack_results(attacks, run, final, scored[final]["records"], bench) if attacks else None,
            weight_change=weight_change([e for v in edited for e in run.load_edits(v).values()]),
            # sequential: the curve, every stage's metrics against the number of edits
            curve=[CurvePoint(edits=n, samples=len(scored[stage_variant(n)]["records"]), metrics=scored[stage_variant(n)]["metrics"],
                              attacks=attack_results(attacks, run, stage_variant(n), scored[stage_variant(n)]["records"], bench) if attacks else None)
                   for n in the_plan.stages] if the_plan.mode == "sequential" else None,
        )

