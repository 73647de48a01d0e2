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
  hold a curve. The weights after the last edit made are kept in the run (``sequential-state.safetensors``): a
  resumed run starts from them, bit for bit, and never repeats an edit;
- ``as_is``: the model is evaluated as loaded (the identity editor, with or without a saved delta);
- the baseline pass (``Benchmark(baseline=True)``): the unedited model on the same samples, before the edits.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from . import signals
from .baseline_cache import BaselineCache
from .benchmarks import Benchmark
from .editors import Editor
from .errors import UsageError
from .metrics import EditScores
from .metrics.base import MetricSet
from .provenance import Provenance, fast_path_args, init_args, set_numerics
from .rundir import RunDir, versions
from .types import GenerationBatch, Record, Sample

CACHE_HITS = "cache-hits.json"  # how many baseline samples rank 0 took from the cache (a spawned rank 0 is not us)


@dataclass(frozen=True)
class Plan:
    """The protocol of one evaluation: how the evaluated model is made, whether a baseline is scored, and the
    metrics that have nothing to score under it (by name, with the reason)."""

    mode: str  # "per_case" | "fixed" | "sequential" | "as_is"
    baseline: bool
    not_scored: dict = field(default_factory=dict)
    stages: tuple[int, ...] = ()  # sequential: the numbers of edits after which the benchmark is scored

    def variants(self) -> list[str]:
        """The record sets of this run, in the order they are made."""
        edited = [stage_variant(n) for n in self.stages] if self.mode == "sequential" else ["samples"]
        return (["baseline"] if self.baseline else []) + edited


def stage_variant(n: int) -> str:
    """The record set of the sequential protocol's stage after ``n`` edits."""
    return f"after-{n:04d}"


SEQUENTIAL_STATE = "sequential-state.safetensors"


def plan(editor: Editor, bench: Benchmark) -> Plan:
    """Decide the protocol, or say why this editor cannot run this benchmark.

    The unedited model is evaluated as it is; with a delta, its baseline is the model without the delta. A paired
    metric (LPIPS) needs the baseline: an editor without ``baseline: true`` is refused; the unedited model itself
    has no pair, and the metric is listed as not scored."""
    cases = list(bench._cases.values())
    if editor.edits == "none":
        mode, baseline = "as_is", bench.baseline and editor.delta is not None
    else:
        name = type(editor).__name__
        if bench.protocol == "fixed" and not bench.requests():
            raise UsageError(f"{name} edits, but {type(bench).__name__} has no requests: give the edit with "
                             "--data.requests FILE, or evaluate the unedited model (or a saved delta) with "
                             "--model configs/editor/unedited.yaml")
        if bench.protocol == "sequential":
            n = len(bench.requests())
            if n == 0:
                raise UsageError(f"the sequential protocol applies the cases' requests one after another, but "
                                 f"{type(bench).__name__} has none: select cases with requests (e.g. erase: [...])")
            if bench.every > n:
                raise UsageError(f"every={bench.every} exceeds the {n} sequential edit(s) of this benchmark: set "
                                 f"--data.every to at most {n}, or select more rows")
        if bench.protocol == "per_case" and any(c.request is None for c in cases):
            raise UsageError(f"{type(bench).__name__} has cases without a request: the per_case protocol edits each "
                             "case's request; use protocol fixed with --data.requests FILE")
        if bench.protocol == "fixed" and len(bench.requests()) > 1 and not editor.multi_request:
            raise UsageError(
                f"{name} edits one request at a time, but the fixed protocol applies all "
                f"{len(bench.requests())} requests at once: use protocol per_case, or select one row (--data.rows)"
            )
        mode, baseline = bench.protocol, bench.baseline
    not_scored = {}
    for m in bench.metrics.paired:
        if baseline:
            continue
        if editor.edits == "none" and editor.delta is None:
            not_scored[m.name] = "the evaluated model is the unedited model: no edited image to pair with it"
        else:
            raise UsageError(f"metric {m.name!r} compares each image with the unedited model's image of the same "
                             f"sample, which this benchmark does not score: set --data.baseline true, or drop "
                             f"{m.name} from the metrics")
    stages = ()
    if mode == "sequential":
        n = len(bench.requests())
        stages = tuple(sorted({*range(bench.every, n + 1, bench.every), n}))
    return Plan(mode, baseline, not_scored, stages)


def stage_samples(bench: Benchmark, n: int) -> list[Sample]:
    """The samples scored after ``n`` sequential edits: the cases of the first ``n`` requests and every case without
    a request (kept concepts, captions), in benchmark order."""
    edited = [c.id for c in bench._cases.values() if c.request is not None][:n]
    keep = set(edited) | {c.id for c in bench._cases.values() if c.request is None}
    return [s for s in bench.samples() if s.case_id in keep]


def aggregate(metrics, records: list[Record], features: dict[str, torch.Tensor] | None = None) -> dict:
    """Every metric's numbers from ``records`` (and, for the metrics that store them, their ``features`` by
    metric name, in record order)."""
    return (metrics if isinstance(metrics, MetricSet) else MetricSet(list(metrics))).aggregate(records, features)


def provenance(editor: Editor, bench: Benchmark, trainer: L.Trainer | None, matmul_precision: str) -> Provenance:
    """The provenance of evaluating ``editor`` on ``bench`` under ``trainer`` (see :mod:`edit_bench.provenance`)."""
    return Provenance.build(editor, bench, trainer, matmul_precision, metrics=list(bench.metrics),
                            sampler=bench.sampler, size=bench.sampler.size or editor.t2i.native_size)


def _batches(samples: list[Sample], mode: str, batch_size: int) -> list[list[Sample]]:
    """Batches in order; under ``per_case`` a batch never spans two cases; an attacked group's samples (drawn from
    what its attack found on their case) are batched alone, by case."""
    def key(s: Sample):
        attacked = s.group.startswith("attack:")
        return (s.case_id if mode == "per_case" or attacked else None, s.group if attacked else None)

    out, start = [], 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or key(samples[i]) != key(samples[start]) or i - start == batch_size:
            out.append(samples[start:i])
            start = i
    return out


def shard(samples: list[Sample], mode: str, rank: int, world: int) -> list[Sample]:
    """This rank's contiguous share of the pending samples. Under ``per_case`` whole cases are shared out
    (each case goes to the rank where it starts), so each rank edits only its own cases."""
    if world == 1 or not samples:
        return list(samples)
    if mode != "per_case":
        n = len(samples)
        return samples[rank * n // world:(rank + 1) * n // world]
    out = []
    for i, s in enumerate(samples):
        if i == 0 or s.case_id != samples[i - 1].case_id:
            owner = min(world - 1, i * world // len(samples))
        if owner == rank:
            out.append(s)
    return out


def _write_hits(run: RunDir, cache: BaselineCache, pending: list[Sample], hits: dict, chunk: int = 256) -> None:
    """Put the cache's records and stored tensors of ``hits`` (sample id -> cache key) into the run, as the baseline
    pass would have, a chunk at a time (never every reference in memory at once)."""
    found = [s for s in pending if s.id in hits]
    for i in range(0, len(found), chunk):
        part = found[i:i + chunk]
        entries = cache.read([hits[s.id] for s in part])
        for name in cache.feature_names:
            run.save_features(0, name, [s.id for s in part], torch.stack([e[2][name] for e in entries]), "baseline")
        run.append_records(0, [Record.from_sample(s, e[0], e[1]) for s, e in zip(part, entries)], "baseline")


def _first_of_each(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The samples whose content (prompt, labels, seed) first appears, and the later ones that repeat it."""
    from .baseline_cache import sample_key

    seen, first, repeats = set(), [], []
    for s in samples:
        k = sample_key(s)
        (repeats if k in seen else first).append(s)
        seen.add(k)
    return first, repeats


def save_sequential_state(editor: Editor, path: Path, edits: int) -> None:
    """Keep the values of the edited parameters that differ from the editor's origin (the model as loaded), after
    ``edits`` edits, with the model's identity and the editor's class (atomically: a crash leaves the previous state).
    Relative to the origin, never to a resume point: a second resume starts from the origin plus this file."""
    from safetensors.torch import save_file

    from .io import write_atomic
    from .provenance import class_path

    params = editor.edited_parameters()
    origin = editor.origin()
    tensors = {n: p.detach().cpu().contiguous() for n, p in params.items() if not torch.equal(p.detach().cpu(), origin[n].cpu())}
    meta = {"edits": str(edits), "model_id": str(editor.t2i.identity["id"]), "editor": class_path(editor)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


@torch.no_grad()
def load_sequential_state(editor: Editor, path: Path, check_only: bool = False) -> int:
    """Put the stored sequential state into the model (restored to its origin first); returns its number of edits.
    A file of another model or editor is refused whole, before any tensor changes (``check_only``: refuse or return,
    touching nothing: a run checks its state before it draws anything)."""
    from safetensors import SafetensorError, safe_open

    from .provenance import class_path

    params = editor.edited_parameters()
    fix = f"delete {path} (and the run's after-* record sets) to start the sequence over, or choose a new --out_dir"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = f.metadata() or {}, list(f.keys())
            model, mine = meta.get("model_id"), str(editor.t2i.identity["id"])
            if model != mine:
                raise UsageError(f"{path} holds a sequential state of model {model}, not of this run's {mine}: {fix}")
            if meta.get("editor", class_path(editor)) != class_path(editor):
                raise UsageError(f"{path} holds a sequential state made by {meta['editor']}, not {class_path(editor)}: {fix}")
            unknown = [n for n in names if n not in params or tuple(f.get_slice(n).get_shape()) != tuple(params[n].shape)]
            if unknown:
                raise UsageError(f"{path} holds {unknown[0]}, which {type(editor).__name__} does not edit on this model: {fix}")
            edits = int(meta["edits"])
            if check_only:
                return edits
            editor.restore()
            for name in names:
                params[name].copy_(f.get_tensor(name))
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # a file that is not a safetensors state
        raise UsageError(f"{path} is not a readable sequential state ({e}): {fix}") from None
    return edits


def attack_path(run: RunDir, variant: str, attack: str, case_id: str) -> Path:
    """Where what ``attack`` found on ``case_id``'s model of record set ``variant`` is kept."""
    return run.path / "attacks" / variant / attack / (case_id.replace("/", "_").replace(":", "_") + ".safetensors")


class _Batches(IterableDataset):
    """One rank's generation batches (iterable, so Lightning does not re-split them across ranks)."""

    def __init__(self, batches: list[GenerationBatch]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _first(batch):
    return batch


class _Pass(L.LightningModule):
    """Lightning's view of one pass over the pending samples: the editor (moved and cast by Lightning), and the
    scoring and writing of each batch on the rank that generated it. The metric set stays out of the module tree
    (Lightning's precision never casts a scoring network) and is moved to the device with the pass."""

    def __init__(self, editor: Editor, bench: Benchmark, pending: list[Sample], the_plan: Plan, run: RunDir, variant: str,
                 save_images: bool, cache: BaselineCache | None = None, stage: int = 0):
        super().__init__()
        self.editor = editor
        self.metrics = [bench.metrics]  # a list keeps it out of the module tree
        mode = the_plan.mode if variant != "baseline" else "as_is"
        self.requests = bench.requests() if mode == "fixed" else []
        self.preserve = bench.preserve() if mode == "fixed" else []
        self.stage = stage  # sequential: the edits made before this pass's images
        self.sequence = [(c.request, c.preserve) for c in bench._cases.values() if c.request] if mode == "sequential" else []
        self.cases = {s.case_id: bench.case(s.case_id) for s in pending} if mode == "per_case" else {}
        self.pending, self.mode, self.sampler, self.batch_size = pending, mode, bench.sampler, bench.batch_size
        self.run, self.variant, self.save_images, self.cache = run, variant, save_images, cache
        self.with_baseline = the_plan.baseline and variant != "baseline"
        self._refs: dict = {}
        self.attacks = {a.name: a for a in bench.attacks}
        self.bench = [bench]  # a list keeps it out of the module tree
        self._found: dict = {}

    def _references(self, name: str, ids: list[str]) -> torch.Tensor:
        """The baseline pass's stored references of ``ids`` for the paired metric ``name`` (read lazily by id)."""
        if name not in self._refs:
            self._refs[name] = self.run.feature_index(name, "baseline")
        index = self._refs[name]
        missing = [i for i in ids if i not in index]
        if missing:
            raise RuntimeError(f"{name}: the baseline pass stored no reference for {len(missing)} sample(s), e.g. {missing[0]}")
        return index.read(ids)

    def configure_model(self) -> None:
        self.editor.configure_model()

    def _take_cached(self) -> None:
        """Rank 0 takes the samples the baseline cache holds (writing their records and features into the run)
        and tells every rank what is left, so all ranks generate one list even while another run adds to the
        cache (a rank launched later could otherwise find more than rank 0 did)."""
        left = None
        if self.global_rank == 0:
            hits = self.cache.lookup(self.pending)
            _write_hits(self.run, self.cache, self.pending, hits)
            self.run.write_json(f"{self.variant}/{CACHE_HITS}", {"hits": len(hits)})  # for the main process
            left = [s for s in self.pending if s.id not in hits]
        self.pending = self.trainer.strategy.broadcast(left, src=0)

    def predict_dataloader(self):
        if self.cache is not None:
            self._take_cached()  # here every rank is up and the processes can talk
        mine = shard(self.pending, self.mode, self.global_rank, self.trainer.world_size)
        batches = [GenerationBatch(tuple(b), self.sampler, self.cases.get(b[0].case_id))
                   for b in _batches(mine, self.mode, self.batch_size)]
        return DataLoader(_Batches(batches), batch_size=None, collate_fn=_first)

    def on_predict_start(self) -> None:
        self.metrics[0].to(self.device)
        self.editor.t2i.fast_path(**fast_path_args(self.trainer))
        if self.variant == "baseline":
            self.editor.restore()  # the unedited model (a delta's baseline is the model without it)
        elif self.mode == "fixed":  # the one edit, on the accelerator, before any image
            self.run.log_edit(self.global_rank, None, self.editor.apply_edit(self.requests, self.preserve), self.variant)
        elif self.mode == "sequential":
            self._reach_stage()
        elif self.mode == "as_is":
            self.editor.as_loaded()

    def _reach_stage(self) -> None:
        """The model after ``stage`` sequential edits: the editor's origin plus the run's stored state (the weights after
        the last edit made, bit for bit), then the edits still missing, each on the weights the previous one left. The
        state is saved after every edit (relative to the origin), and a stop requested by SIGTERM/SIGINT is honoured
        between edits, so a preemption loses at most the edit in flight."""
        editor, path = self.editor, self.run.path / SEQUENTIAL_STATE
        editor.restore()
        done = load_sequential_state(editor, path) if path.exists() else 0
        if done > self.stage:
            raise RuntimeError(f"{path} holds the model after {done} edits, but stage {self.stage} has samples left")
        self.trainer.strategy.barrier()  # every rank has read the state before rank 0 replaces it
        for i in range(done, self.stage):
            signals.check(f"{self.run.path}: the model after {i} edits is kept in {path.name}; rerun the same command to resume")
            request, preserve = self.sequence[i]
            dt = self.editor.apply_edit([request], preserve, on_current=True)
            self.run.log_edit(self.global_rank, f"edit {i + 1}: {request.source} -> {request.target}", dt, self.variant)
            if self.global_rank == 0:
                save_sequential_state(editor, path, i + 1)

    def on_predict_end(self) -> None:
        # what the editor has to say about the edits this rank made (the main process never sees a spawned rank's)
        self.run.write_json(f"{self.variant}/editor-rank{self.global_rank}.json", self.editor.report())

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # prompts and seeds: nothing to move

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict_step(self, batch: GenerationBatch, batch_idx: int = 0):
        signals.check(f"{self.run.path}: the samples done so far are kept; rerun the same command to resume")
        if batch.case is not None:
            edit_s = self.editor.activate(batch.case)
            if edit_s is not None:
                self.run.log_edit(self.global_rank, batch.case.id, edit_s, self.variant)
        attacked = batch.samples[0].group.startswith("attack:")
        found = self._attacked(batch) if attacked else None  # before the clock: an attack is not generation
        self._sync()
        t0 = time.perf_counter()
        if attacked:
            cond = found.conditioning(self.editor.t2i, [s.prompt_index for s in batch.samples])
            images = self.editor.t2i.generate([s.pair.prompt for s in batch.samples], [s.seed for s in batch.samples],
                                              batch.sampler, conditioning=cond)
        else:
            images = self.editor.predict_step(batch)
        self._sync()
        generate_s = time.perf_counter() - t0
        samples = list(batch.samples)
        scored = self.metrics[0].score(images, samples, self.variant, self._references if self.with_baseline else None)
        for name, tensor in scored.features.items():
            self.run.save_features(self.global_rank, name, [s.id for s in samples], tensor, self.variant)
        if self.save_images:
            self._save_images(samples, images)
        share = generate_s / len(samples)
        records = [Record.from_sample(s, {k: float(v[i]) for k, v in scored.scores.items()}, share)
                   for i, s in enumerate(samples)]
        self.run.append_records(self.global_rank, records, self.variant)  # last: a record means the sample is done

    def _attacked(self, batch: GenerationBatch):
        """What the batch's attack found on its case's model as it is now: from the run when a previous batch or run
        stored it, else attacked now and stored (:mod:`edit_bench.attacks`)."""
        from .attacks import AdversarialPrompts
        from .attacks.base import concept_images

        s0 = batch.samples[0]
        name = s0.group.removeprefix("attack:")
        if (name, s0.case_id) in self._found:
            return self._found[name, s0.case_id]
        path = attack_path(self.run, self.variant, name, s0.case_id)
        if path.exists():
            found = AdversarialPrompts.load(path)
        else:
            attack, case, editor = self.attacks[name], self.bench[0].case(s0.case_id), self.editor
            prompts = [p.prompt for p in case.groups["efficacy"]]
            images = None
            if attack.uses_images:
                images = concept_images(editor.t2i, editor, prompts, batch.sampler, attack.image_seeds, attack.images,
                                        case.request.source, self.batch_size)
            found = attack.run(editor.t2i, case, prompts, images, editor)
            found.save(path)
        self._found[name, s0.case_id] = found
        return found

    def _save_images(self, samples, images):
        from torchvision.utils import save_image

        img_dir = self.run.path / f"images_{self.variant}"
        img_dir.mkdir(exist_ok=True)
        for s, img in zip(samples, images):
            save_image(img, img_dir / (s.id.replace("/", "_").replace(":", "_") + ".png"))


class Evaluation:
    """Edit, generate and score every sample of a benchmark; write ``OUT_DIR/results.json``.

    Args:
        editor: the editor.
        bench: the benchmark.
        out_dir: the run directory; rerunning the same evaluation resumes it.
        config_yaml: the resolved config, kept as ``config.yaml`` (the CLI passes it).
        save_images: also save every image as ``OUT_DIR/images_<variant>/<sample id>.png``.
        baseline_cache: reuse (and add to) the unedited model's scored samples kept in
            ``$EDIT_BENCH_CACHE/baseline`` (:mod:`edit_bench.baseline_cache`); when off, or when images are
            saved, the baseline is generated whole.
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
        self._check_attacks(the_plan, trainer)
        if trainer is not None:
            if editor.needs_grad and the_plan.mode != "as_is" and trainer.predict_loop.inference_mode:
                raise UsageError(f"{type(editor).__name__} edits with gradients, which inference mode forbids: "
                                 "set --trainer.inference_mode false (the CLI's default)")
            if editor.trains and the_plan.mode in ("fixed", "sequential") and trainer.world_size > 1:
                raise UsageError(f"{type(editor).__name__} trains: under {trainer.world_size} processes the {the_plan.mode} protocol "
                                 "would train one copy per process. Train it once with `python -m edit_bench fit`, then "
                                 "evaluate its delta: --model configs/editor/unedited.yaml --model.delta OUT/edit.safetensors")
        return the_plan

    def _check_attacks(self, the_plan: Plan, trainer) -> None:
        """Attacks need an erasure to attack, gradients, the TIMED judge's success, one text encoder and their images."""
        bench, editor = self.bench, self.editor
        if not bench.attacks:
            return
        from .attacks.base import image_files

        names = ", ".join(a.name for a in bench.attacks)
        if editor.edits == "none" and editor.delta is None:
            raise UsageError(f"attacks ({names}) try to bring back an erased concept, but {type(editor).__name__} evaluates "
                             "the unedited model: nothing is erased. Give an editor (--model configs/editor/...yaml) or a "
                             "delta (--model.delta), or drop the attacks")
        if not any(s.group.startswith("attack:") for s in bench.samples()):
            raise UsageError(f"attacks ({names}): {type(bench).__name__} has no case with a request and efficacy prompts: "
                             "nothing is erased to attack. Select cases with requests, or drop the attacks")
        if not any(isinstance(m, EditScores) and m.name == EditScores.default_name for m in bench.metrics):
            raise UsageError("attacks are scored by the TIMED judge's success (EditScores): keep EditScores in the metrics")
        if editor.t2i.family == "sdxl":
            raise UsageError("attacks condition on token ids of one text encoder (SD-1/2); SDXL's two are not supported yet")
        paired = [m.name for m in bench.metrics.paired]
        if paired:
            raise UsageError(f"metric(s) {paired} pair each image with the unedited model's, which is never attacked: drop "
                             "them from a benchmark with attacks")
        if trainer is not None and trainer.predict_loop.inference_mode:
            raise UsageError("attacks optimise with gradients, which inference mode forbids: set --trainer.inference_mode "
                             "false (the CLI's default)")
        for a in bench.attacks:
            a.check(bench)
            if getattr(a, "images", None) is not None:
                for c in bench._cases.values():
                    folder = Path(a.images) / c.request.source if c.request else None
                    if folder is not None and not image_files(folder):
                        raise UsageError(f"attack {a.name}: no images of {c.request.source!r} in {folder}: put the concept's "
                                         "PNG/JPEG files there, or leave images unset to draw them with the unedited model")

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

    def run(self, trainer: L.Trainer, matmul_precision: str = "highest") -> dict | None:
        """Run the evaluation with ``trainer`` (its precision, devices and strategy); returns the results on
        rank 0 (``None`` elsewhere). SIGTERM/SIGINT stop it after the batch in flight (:mod:`edit_bench.signals`)."""
        the_plan = self.validate(trainer)
        set_numerics(matmul_precision)  # matmuls and convolutions, also when called from Python without the CLI
        prov = provenance(self.editor, self.bench, trainer, matmul_precision)
        run = RunDir(self.out_dir, "eval", prov.run())
        # rank 0 (the launching process) owns the directory for the run's life; the other ranks write under its lock
        with run.owned() if trainer.is_global_zero else contextlib.nullcontext():
            return self._run(trainer, the_plan, prov, run)

    def _run(self, trainer: L.Trainer, the_plan: Plan, prov: Provenance, run: RunDir) -> dict | None:
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
                        trainer.predict(_Pass(editor, bench, pending, the_plan, run, variant, self.save_images, with_cache, stage),
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
            results["samples"]["baseline_cache"] = {**cached, "path": str(cache.path)}
        from .loggers import log_eval

        results["loggers"] = log_eval(trainer, run.path, results)
        path = run.write_json("results.json", results)
        from .report import format_table

        print(format_table(results, path))
        return results

    def _cache(self, prov: Provenance) -> BaselineCache | None:
        """The baseline cache of this evaluation's unedited samples (``None`` when off)."""
        if not self.baseline_cache or self.save_images:
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

    def _editor_info(self, run: RunDir, variant: str) -> dict:
        """The editor's report of this run's edits: one rank's as is, several ranks' by rank."""
        files = sorted(run.samples_dir(variant).glob("editor-rank*.json"))
        if not files:  # nothing was left to edit
            return self.editor.report()
        reports = {f.stem.removeprefix("editor-"): json.loads(f.read_text()) for f in files}
        return next(iter(reports.values())) if len(reports) == 1 else reports

    def _results(self, the_plan: Plan, prov: Provenance, run: RunDir, scored: dict, before: dict, edits_before: dict,
                 wall: dict, resumed: bool) -> dict:
        editor, bench = self.editor, self.bench
        edited = [v for v in the_plan.variants() if v != "baseline"]
        final = edited[-1]  # the model after every edit
        new = [r for v in edited for r in scored[v]["records"] if r.id not in before[v]]
        edits = [e for v in edited for k, e in run.load_edits(v).items() if k not in edits_before[v]]
        generate_s = sum(r.generate_s for r in new)
        gen = prov.fields["generation"]
        out = {
            "editor": type(editor).__name__,
            "editor_args": init_args(editor),
            "benchmark": type(bench).__name__,
            "model": editor.t2i.identity["spec"],
            "model_id": editor.t2i.identity["id"],
            "delta": editor.delta,
            "metrics": scored[final]["metrics"],
            "baseline": scored["baseline"]["metrics"] if "baseline" in scored else None,
            "protocol": {**bench.protocol_info(), "protocol": the_plan.mode, "size": gen["size"],
                         "metrics": [m.describe() for m in bench.metrics], "not_scored": the_plan.not_scored,
                         "precision": gen["precision"], "matmul_precision": gen["matmul_precision"], "device": gen["device"],
                         "device_name": gen["device_name"], "numerics": gen["numerics"],
                         "batch_size": bench.batch_size,  # this run's (a resume may take another: provenance.RESUMABLE)
                         "fast_path": {**gen["fast_path"], "attention": editor.t2i.attention_processors()}},
            "provenance": prov.run(),
            "timing": {
                "edit_s": sum(e["edit_s"] for e in edits) / len(edits) if edits else None,
                "edits": len(edits),
                "generate_s": generate_s,
                "images_per_s": len(new) / generate_s if generate_s else None,
                "wall_s": sum(wall.values()),
                "note": "new samples of this run, all processes (generation excludes edits)" + (", resumed run" if resumed else ""),
            },
            "samples": {"total": sum(len(scored[v]["records"]) for v in edited),
                        "stored_before": sum(len(before[v]) for v in edited),
                        "new_this_run": len(new), "records": str(run.samples_dir(final))},
            "editor_info": self._editor_info(run, final),
            "versions": versions(),
            "config": self.config_yaml,
        }
        if bench.attacks:
            out["attacks"] = self._attack_results(run, final, scored[final]["records"])
        if the_plan.mode == "sequential":  # the curve: every stage's metrics against the number of edits
            out["curve"] = [{"edits": n, "samples": len(scored[stage_variant(n)]["records"]),
                             "metrics": scored[stage_variant(n)]["metrics"],
                             **({"attacks": self._attack_results(run, stage_variant(n), scored[stage_variant(n)]["records"])}
                                if bench.attacks else {})} for n in the_plan.stages]
        return out

    def _attack_results(self, run: RunDir, variant: str, records: list[Record]) -> dict:
        """Each attack's success rates from the stored records, its time per attacked case and where what it found is."""
        from .attacks import AdversarialPrompts, attack_rates

        out = {}
        efficacy = [r for r in records if r.group == "efficacy"]
        for a in self.bench.attacks:
            mine = [r for r in records if r.group == f"attack:{a.name}"]
            found = {c: AdversarialPrompts.load(p) for c in dict.fromkeys(r.case for r in mine)
                     if (p := attack_path(run, variant, a.name, c)).exists()}
            out[a.name] = {**attack_rates(a, mine, efficacy),
                           "seconds_per_case": (sum(f.seconds for f in found.values()) / len(found)) if found else None,
                           "prompts": {c: f.text for c, f in found.items()},
                           "found": str(run.path / "attacks" / variant / a.name)}
        return out
