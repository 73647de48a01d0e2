"""``python -m edit_bench fit | eval`` (LightningCLI).

``eval`` edits, generates and judges every sample of a benchmark in Lightning's predict loop (which never
pads samples across processes, so counts are exact), stores one record per sample id, and writes
``results.json``. ``fit`` applies the requests of a YAML/CSV (closed form) or trains (fine-tuning
editors) and writes the delta ``edit.safetensors``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI

from .benchmarks import Benchmark, EditData
from .benchmarks import discover as discover_benchmarks
from .editors import Editor
from .editors import discover as discover_editors
from .metrics import FORMULA, EditScores
from .rundir import RunDir, versions

# Settings that change neither images nor scores: a run may resume with other values.
_RESUMABLE = ("batch_size",)


def _fingerprint(config: dict | None, model: Editor, data: EditData, precision) -> dict:
    if config is None:  # called from Python, not the CLI
        config = {"model": {"class_path": type(model).__qualname__, "base": model.base, "delta": model.delta_path},
                  "data": {"class_path": type(data).__qualname__}}
    fp = {"model": config.get("model"), "data": json.loads(json.dumps(config.get("data"), default=str)),
          "precision": str(precision)}
    init = (fp["data"] or {}).get("init_args") or {}
    for k in _RESUMABLE:
        init.pop(k, None)
    return fp


class SampleWriter(BasePredictionWriter):
    """Appends each batch's records to ``DIR/samples/rank{R}.jsonl`` and updates the metric."""

    def __init__(self, run: RunDir, variant: str, metric: EditScores, save_images: bool):
        super().__init__(write_interval="batch")
        self.run, self.variant, self.metric, self.save_images = run, variant, metric, save_images
        self.generate_s, self.n = 0.0, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        records = prediction["records"]
        self.run.append_records(trainer.global_rank, records, self.variant)
        self.metric.to(pl_module.device).update_records(records)
        self.generate_s += prediction["generate_s"]
        self.n += len(records)
        if self.save_images:
            from torchvision.utils import save_image

            img_dir = self.run.path / f"images_{self.variant}"
            img_dir.mkdir(exist_ok=True)
            for r, img in zip(records, prediction["images"]):
                save_image(img, img_dir / (r["id"].replace("/", "_").replace(":", "_") + ".png"))


class EditTrainer(L.Trainer):
    """A Trainer with the ``eval`` command, and a ``fit`` that also handles closed-form editors."""

    run_config: dict | None = None  # set by the CLI: {"yaml": resolved config text, "dict": its content}

    def _run_dir(self, out_dir, command, model, data) -> RunDir:
        cfg = self.run_config["dict"] if self.run_config else None
        return RunDir(out_dir, command, _fingerprint(cfg, model, data, self.precision))

    def _config_yaml(self) -> str:
        return self.run_config["yaml"] if self.run_config else ""

    def eval(self, model: Editor, datamodule: EditData | None = None, out_dir: str = "runs/eval",
             save_images: bool = False) -> dict:
        """Edit, generate and judge every sample of a benchmark; write OUT_DIR/results.json.

        Args:
            model: the editor.
            datamodule: the benchmark.
            out_dir: the run directory; rerunning the same command resumes it.
            save_images: also save every image as OUT_DIR/images_samples/<sample id>.png (and images_baseline/).
        """
        bench = datamodule
        if not isinstance(bench, Benchmark):
            raise ValueError(f"eval needs a benchmark (--data configs/benchmark/...yaml); got {type(bench).__name__}")
        # Everything that can fail on bad input fails here, before the run directory exists.
        bench.check_prompts(model.t2i.n_tokens)
        bench.judge
        model.edited_parameters()  # resolves the editor's sites/layers on this model (a bad layer fails here)
        run = self._run_dir(out_dir, "eval", model, bench)
        resumed = run.check()
        if self.is_global_zero:
            run.create(self._config_yaml())
        baseline = bench.baseline and model.edits != "none" and model.delta_path is None
        base = self._score(model, bench, run, "baseline", save_images, edit=False) if baseline else None
        scores, writer, stored, wall = self._score(model, bench, run, "samples", save_images, edit=True)
        results = {
            "editor": type(model).__name__,
            "benchmark": type(bench).__name__,
            "model": model.base,
            "delta": model.delta_path,
            "metrics": scores,
            "baseline": None if base is None else base[0],
            "protocol": {**bench.protocol_info(), "formula": FORMULA, "precision": str(self.precision)},
            "timing": {
                "edit_s": sum(model.edit_times) / len(model.edit_times) if model.edit_times else None,
                "edits": len(model.edit_times),
                "generate_s": writer.generate_s,
                "images_per_s": writer.n / writer.generate_s if writer.generate_s else None,
                "wall_s": wall,
                "note": "this process's new samples of the evaluated model" + (", resumed run" if resumed else ""),
            },
            "samples": {"total": len(bench.samples()), "stored_before": stored, "new_this_process": writer.n,
                        "records": str(run.samples_dir())},
            "editor_info": model.report(),
            "versions": versions(),
            "config": self._config_yaml(),
        }
        if self.is_global_zero:
            path = run.write_json("results.json", results)
            print(format_table(results, path))
        return results

    def _score(self, model: Editor, bench: Benchmark, run: RunDir, variant: str, save_images: bool, edit: bool):
        """Generate and judge every pending sample (resuming from stored records); the metrics are
        computed over all records, synced across processes."""
        ids = {s.id for s in bench.samples()}
        stored = {k: v for k, v in run.load_records(variant).items() if k in ids}
        bench.exclude(set(stored))
        metric = EditScores(bench.sampler.seeds)
        if self.is_global_zero:
            metric.update_records(list(stored.values()))
        writer = SampleWriter(run, variant, metric, save_images)
        self.callbacks.append(writer)
        model.editing = edit
        t0 = time.perf_counter()
        try:
            if edit and model.delta_path is None and bench.protocol == "fixed":
                model.apply_edit(bench.requests(), bench.preserve())
            if bench.pending():
                self.predict(model, datamodule=bench, return_predictions=False)
        finally:
            self.callbacks.remove(writer)
            model.restore()
            model.editing = True
        return metric.to(model.device).compute(), writer, len(stored), time.perf_counter() - t0

    def fit(self, model: Editor, train_dataloaders=None, val_dataloaders=None, datamodule: EditData | None = None,
            ckpt_path: str | None = None, out_dir: str = "runs/edit"):
        """Apply the requests (closed-form editors) or train (fine-tuning editors); write OUT_DIR/edit.safetensors.

        Args:
            model: the editor.
            datamodule: the requests: a benchmark (all its cases at once) or ``EditRequests`` (a YAML/CSV).
            out_dir: where the delta, the resolved config and edit.json go.
        """
        if datamodule is None:
            raise ValueError("fit needs --data: a requests file (edit_bench.benchmarks.requests.EditRequests) or a benchmark")
        requests, preserve = datamodule.requests(), datamodule.preserve()
        datamodule.check_prompts(model.t2i.n_tokens)
        model.edited_parameters()
        run = self._run_dir(out_dir, "fit", model, datamodule)
        if run.check() and (run.path / "edit.safetensors").is_file():
            print(f"edit_bench fit: {run.path}/edit.safetensors already holds this config's edit; nothing to do")
            return None
        closed_form = type(model).training_step is L.LightningModule.training_step
        if self.is_global_zero:
            run.create(self._config_yaml())
        t0 = time.perf_counter()
        if closed_form:
            model.apply_edit(requests, preserve)
        else:
            model.snapshot()
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)
        edit_s = time.perf_counter() - t0
        if self.is_global_zero:
            meta = {"requests": [r.__dict__ for r in requests], "preserve": list(preserve)}
            path = model.save_delta(run.path / "edit.safetensors", metadata=meta)
            changed = {k: list(v.shape) for k, v in model.delta_state_dict().items()}
            run.write_json("edit.json", {"editor": type(model).__name__, "model": model.base, **meta,
                                         "timing": {"edit_s": edit_s}, "changed": changed,
                                         "editor_info": model.report(), "versions": versions()})
            print(f"edit_bench fit: {type(model).__name__} applied {len(requests)} request(s) in {edit_s:.3f} s; "
                  f"delta of {len(changed)} tensors -> {path}")
        return None


def format_table(results: dict, path) -> str:
    m, b = results["metrics"], results.get("baseline")
    lines = [f"edit_bench eval: {results['editor']} on {results['benchmark']} ({results['model']}), "
             f"{results['samples']['total']} samples, {len(results['protocol']['seeds'])} seed(s)"]
    if b:
        lines += ["| metric | baseline (unedited) | edited | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {b[k]['mean']:.3f} ± {b[k]['std']:.3f} | {v['mean']:.3f} ± {v['std']:.3f} | {v['n']} |"
                  for k, v in m.items()]
    else:
        lines += ["| metric | mean | std | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['mean']:.3f} | {v['std']:.3f} | {v['n']} |" for k, v in m.items()]
    t = results["timing"]
    tail = []
    if t["edit_s"] is not None:
        tail.append(f"edit {t['edit_s']:.3f} s x {t['edits']}")
    if t["images_per_s"]:
        tail.append(f"{t['images_per_s']:.1f} images/s")
    tail.append(f"results: {path}")
    return "\n".join(lines + [" · ".join(tail)])


class EditCLI(LightningCLI):
    @staticmethod
    def subcommands():
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}, "eval": {"model", "datamodule"}}

    def _remember_config(self):
        sub = self.subcommand
        cfg = self.config[sub]
        self.trainer.run_config = {"yaml": self._parser(sub).dump(cfg, skip_none=False),
                                   "dict": cfg.clone().as_dict()}

    def before_eval(self):
        self._remember_config()

    def before_fit(self):
        self._remember_config()


TRAINER_DEFAULTS = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "inference_mode": False,  # gradient-based editors (ReFACT, ESD, CA) edit inside the loop
}


def _check_class_args(args: list[str], kinds: dict[str, dict[str, type]]) -> None:
    """A clear error for ``--model NAME`` / ``--data NAME`` naming no known class (before jsonargparse's)."""
    for i, a in enumerate(args):
        key, _, val = a.partition("=")
        if key not in kinds or (not val and i + 1 >= len(args)):
            continue
        val = val or args[i + 1]
        if val.startswith("{") or "\n" in val or Path(val).is_file() or "." in val.split("/")[-1]:
            continue  # a YAML string, a file, or a dotted import path: jsonargparse resolves it
        known = kinds[key]
        if val not in known:
            what = "editor" if key == "--model" else "benchmark/data module"
            raise ValueError(f"unknown {what} {val!r} for {key}: use a YAML file (configs/...), a class path, "
                             f"or one of {', '.join(sorted(known))}")


def main(args: list[str] | None = None):
    import sys
    import warnings

    editors, benchmarks = discover_editors(), discover_benchmarks()
    _check_class_args(sys.argv[1:] if args is None else list(args), {"--model": editors, "--data": benchmarks})
    warnings.filterwarnings("ignore", message=".*transfer_batch_to_device.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    torch.set_float32_matmul_precision("high")
    return EditCLI(
        Editor,
        EditData,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=EditTrainer,
        save_config_callback=None,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        auto_configure_optimizers=False,
        args=args,
    )
