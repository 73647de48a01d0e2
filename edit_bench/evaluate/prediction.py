"""The prediction pass: Lightning's view of one pass over the pending samples of one record set. It makes the evaluated
model (the baseline, the fixed edit, the sequential stage, each case's edit), generates, scores and writes each batch on
the rank that generated it; the records are written last, so a record means its sample is done."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from torch.utils.data import DataLoader

from .. import signals
from ..attacks.runner import attack_path, find
from ..baseline_cache import BaselineCache
from ..benchmarks import Benchmark
from ..editors import Editor
from ..provenance import fast_path_args
from ..rundir import RunDir
from ..types import GenerationBatch, Record, Sample
from .batches import CACHE_HITS, _Batches, _batches, _first, _write_hits, shard
from .protocol import Plan
from .state import SEQUENTIAL_STATE, load_sequential_state, save_sequential_state


class _Pass(L.LightningModule):
    """Lightning's view of one pass over the pending samples: the editor (moved and cast by Lightning), and the
    scoring and writing of each batch on the rank that generated it. The metric set stays out of the module tree
    (Lightning's precision never casts a scoring network) and is moved to the device with the pass."""

    def __init__(self, editor: Editor, bench: Benchmark, pending: list[Sample], the_plan: Plan, run: RunDir, variant: str,
                 save_images: bool, cache: BaselineCache | None = None, stage: int = 0):
        super().__init__()
        # more processes than cases (or a resumed run whose left samples are one rank's): a rank without batches idles
        self.allow_zero_length_dataloader_with_multiple_devices = True
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
        if isinstance(self.trainer.strategy.launcher, _MultiProcessingLauncher):  # a forked or spawned rank
            self.trainer.strategy.launcher.procs = []  # (a forked one inherits the previous pass's list of ranks)
            signals.take_over_in_rank()
        self.metrics[0].to(self.device)
        self.editor.t2i.fast_path(**fast_path_args(self.trainer))
        if self.variant == "baseline":
            self.editor.restore()  # the unedited model (a delta's baseline is the model without it)
        elif self.mode == "fixed":  # the one edit, on the accelerator, before any image
            self.run.log_edit(self.global_rank, None, self.editor.apply_edit(self.requests, self.preserve), self.variant,
                              self._change())
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
            self.run.log_edit(self.global_rank, f"edit {i + 1}: {request.source} -> {request.target}", dt, self.variant,
                              self._change())
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
                self.run.log_edit(self.global_rank, batch.case.id, edit_s, self.variant, self._change())
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
        scored = self.metrics[0].score(images, samples, self.variant, self._references if self.with_baseline else None,
                                       self.bench[0].absent_twin)
        for name, tensor in scored.features.items():
            self.run.save_features(self.global_rank, name, [s.id for s in samples], tensor, self.variant)
        if self.save_images:
            self._save_images(samples, images)
        share = generate_s / len(samples)
        records = [Record.from_sample(s, {k: float(v[i]) for k, v in scored.scores.items() if v[i] is not None}, share)
                   for i, s in enumerate(samples)]
        self.run.append_records(self.global_rank, records, self.variant)  # last: a record means the sample is done

    def _change(self) -> dict | None:
        """The edit's weight change from the origin, its total (per tensor it is in ``editor_info``' weight_change)."""
        return self.editor.weight_change().get("total")

    def _attacked(self, batch: GenerationBatch):
        """What the batch's attack found on its case's model as it is now (:func:`edit_bench.attacks.runner.find`), kept
        for the case's later batches."""
        s0 = batch.samples[0]
        name = s0.group.removeprefix("attack:")
        if (name, s0.case_id) not in self._found:
            self._found[name, s0.case_id] = find(self.attacks[name], self.editor, self.bench[0], self.bench[0].case(s0.case_id),
                                                 batch.sampler,
                                                 attack_path(self.run, self.variant, name, s0.case_id), self.batch_size)
        return self._found[name, s0.case_id]

    def _save_images(self, samples, images):
        from torchvision.utils import save_image

        img_dir = self.run.path / f"images_{self.variant}"
        img_dir.mkdir(exist_ok=True)
        for s, img in zip(samples, images):
            save_image(img, img_dir / (s.id.replace("/", "_").replace(":", "_") + ".png"))
