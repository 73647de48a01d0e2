"""``python -m edit_bench fit | eval`` (LightningCLI): parsing, and the two commands as Trainer methods.

``eval`` hands over to :class:`~edit_bench.evaluate.Evaluation`. ``fit`` applies the requests of a YAML/CSV
(closed-form editors) or trains (editors with ``trains``) and writes the delta ``edit.safetensors``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from . import signals
from .benchmarks import Benchmark, EditData
from .benchmarks import discover as discover_benchmarks
from .editors import Editor
from .editors import discover as discover_editors
from .errors import UsageError
from .evaluate import Evaluation
from .provenance import Provenance, init_args, set_numerics
from .rundir import RunDir, versions


class EditTrainer(L.Trainer):
    """A Trainer with the ``eval`` command, and a ``fit`` that also applies closed-form editors.

    Args:
        matmul_precision: the float32 precision of matrix products *and* cuDNN convolutions: ``highest`` (true
            float32 everywhere, the default: ``torch.set_float32_matmul_precision("highest")`` and
            ``torch.backends.cudnn.allow_tf32 = False``, since PyTorch leaves convolutions, i.e. every ResNet block and
            the VAE, in TF32 otherwise), ``high`` (TF32 on recent GPUs: faster, ~1e-3 relative error) or ``medium``.
            Recorded in the protocol of every result with the flags actually in force.
        log_every_n_steps: Lightning's; default 1 here (the loss of every training step in ``metrics.csv``).
        checkpoint_every: ``fit`` of a trained editor keeps ``OUT_DIR/checkpoints/last.ckpt`` (the trained
            tensors and the optimizer) every this many steps; rerunning an interrupted ``fit`` resumes from it.
        channels_last: generate with the UNet in ``channels_last`` memory format (faster convolutions on
            recent GPUs; images equal up to float rounding).
        compile_unet: ``torch.compile`` backend for the UNet's forward during ``eval``/``bench`` generation
            (``inductor``; ``None`` = eager). Compiled once per process; edits change weights in place, which the
            compiled forward reads (tested). Both settings are recorded in ``results.json`` (``fast_path``).
        **kwargs: Lightning's Trainer arguments.
    """

    config_yaml: str = ""  # the resolved config, set by the CLI (kept as config.yaml in the run directory)

    def __init__(self, *args, matmul_precision: Literal["highest", "high", "medium"] = "highest",
                 checkpoint_every: int = 50, channels_last: bool = False, compile_unet: str | None = None, **kwargs):
        if kwargs.get("log_every_n_steps") is None:
            kwargs["log_every_n_steps"] = 1  # a fit's metrics.csv holds the loss of every step
        for key in ("max_steps", "max_epochs"):
            v = kwargs.get(key)
            if v is not None and (not isinstance(v, int) or v < -1):
                raise UsageError(f"--trainer.{key} must be -1 (no limit) or >= 0, got {v!r}")
        try:
            super().__init__(*args, **kwargs)
        except (ValueError, TypeError) as e:  # Lightning's own checks of its arguments: one line, not a traceback
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"trainer: {e}") from None
        if checkpoint_every < 1:
            raise UsageError(f"checkpoint_every must be >= 1 training steps, got {checkpoint_every}")
        self.checkpoint_every = checkpoint_every
        if matmul_precision not in ("highest", "high", "medium"):
            raise UsageError(f"matmul_precision must be highest, high or medium, got {matmul_precision!r}")
        self.matmul_precision = matmul_precision
        if compile_unet:
            from torch import _dynamo

            if compile_unet not in _dynamo.list_backends(exclude_tags=()):
                raise UsageError(f"unknown torch.compile backend {compile_unet!r} for --trainer.compile_unet: use inductor "
                                 "(or another of torch._dynamo.list_backends()), or leave it unset for eager")
        self.channels_last, self.compile_unet = bool(channels_last), compile_unet or None

    def _numerics(self) -> None:
        """Set the process-wide float32 precision of matmuls and cuDNN convolutions this trainer's command runs under
        (when it runs, not when a trainer is built)."""
        set_numerics(self.matmul_precision)

    def eval(self, model: Editor, datamodule: EditData | None = None, out_dir: str = "runs/eval",
             save_images: bool | Literal["edited"] = False, baseline_cache: bool = True) -> dict | None:
        """Edit, generate and judge every sample of a benchmark; write OUT_DIR/results.json.

        Args:
            model: the editor.
            datamodule: the benchmark.
            out_dir: the run directory; rerunning the same command resumes it.
            save_images: also save every image as OUT_DIR/images_samples/<sample id>.png (and images_baseline/);
                ``edited``: the evaluated model's only (the unedited samples stay shared through the baseline cache,
                which saving them turns off).
            baseline_cache: reuse the unedited model's scored samples of earlier runs (same model, sampler,
                precision, metrics and sample), kept in $EDIT_BENCH_CACHE/baseline; false regenerates them.
        """
        self._numerics()
        return Evaluation(model, datamodule, out_dir, self.config_yaml, save_images, baseline_cache).run(self, self.matmul_precision)

    def bench(self, model: Editor, datamodule: EditData | None = None, loops: str = "ours,authors",
              reedit_per_seed: bool | None = None, out: str | None = None) -> dict:
        """Time our evaluation loop against the authors'-style loop (one float32 pipeline call and one judge
        call per image) on the same model and samples: images/s, the ratio, the time split and peak memory.

        Args:
            model: the editor.
            datamodule: the benchmark (its rows, seeds and sampler are the samples timed).
            loops: ``ours``, ``authors`` or both (comma-separated).
            reedit_per_seed: the authors' loop edits again for every seed (ReFACT's script); default: the
                editor's reference protocol.
            out: also write the numbers as JSON to this file.
        """
        from .bench.throughput import run_bench

        self._numerics()
        if not isinstance(datamodule, Benchmark):
            raise UsageError(f"bench needs a benchmark (--data configs/benchmark/...yaml); got {type(datamodule).__name__}")
        return run_bench(self, model, datamodule, self.matmul_precision, reedit_per_seed, out, loops)

    def fit_fingerprint(self, model: Editor, data: EditData) -> dict:
        """What decides a fit's delta (the ``fit`` view of the run's :class:`~edit_bench.provenance.Provenance`):
        editor, requests and preserve content, model identity, the editor's files, precision, device, code,
        versions and, for trained editors, the training run (steps, epochs, effective batch, processes, strategy)."""
        prov = Provenance.build(model, data, self, self.matmul_precision)
        if model.trains:
            prov = prov.with_training({"max_steps": self.max_steps, "max_epochs": self.max_epochs,
                                       "accumulate_grad_batches": self.accumulate_grad_batches,
                                       "gradient_clip_val": self.gradient_clip_val,
                                       "gradient_clip_algorithm": self.gradient_clip_algorithm,
                                       "world_size": self.world_size, "strategy": type(self.strategy).__name__})
        return prov.fit()

    def fit(self, model: Editor, train_dataloaders=None, val_dataloaders=None, datamodule: EditData | None = None,
            ckpt_path: str | None = None, out_dir: str = "runs/edit"):
        """Apply the requests (closed-form editors) or train (editors with ``trains``); write OUT_DIR/edit.safetensors.

        Args:
            model: the editor.
            datamodule: the requests: a benchmark (all its cases at once) or ``EditRequests`` (a YAML/CSV).
            out_dir: where the delta, the resolved config and edit.json go.
        """
        if datamodule is None:
            raise UsageError("fit needs --data: a requests file (edit_bench.benchmarks.requests.EditRequests) or a benchmark")
        self._numerics()
        if model.edits == "none":
            raise UsageError(f"{type(model).__name__} changes nothing: fit needs an editor (--model configs/editor/...yaml)")
        if model.edits == "sampling":
            raise UsageError(f"{type(model).__name__} acts at generation time and changes no weight: there is no delta to "
                             "fit or export (a diffusers pipeline cannot hold its guide); evaluate it with `eval`")
        model.check_inputs()
        requests, preserve = datamodule.requests(), datamodule.preserve()
        if model.trains and self.max_steps == 0:
            raise UsageError(f"{type(model).__name__} trains: --trainer.max_steps must be >= 1 (or -1 with --trainer.max_epochs)")
        if len(requests) > 1 and not model.multi_request:
            raise UsageError(f"{type(model).__name__} edits one request at a time; the data holds {len(requests)}: give one")
        datamodule.check_prompts(model.t2i, model.derived_prompts(requests))
        model.edited_parameters()
        if model.trains:
            model.check_fit(requests, self.max_steps)
        run = RunDir(out_dir, "fit", self.fit_fingerprint(model, datamodule))
        with run.owned() if self.is_global_zero else contextlib.nullcontext():  # rank 0 owns the run directory
            return self._fit(model, run, requests, preserve, train_dataloaders, val_dataloaders, datamodule, ckpt_path)

    def _fit(self, model: Editor, run: RunDir, requests, preserve, train_dataloaders, val_dataloaders, datamodule, ckpt_path):
        if run.resumes() and (run.path / "edit.safetensors").is_file():
            print(f"edit_bench fit: {run.path}/edit.safetensors already holds this config's edit; nothing to do")
            return None
        t0 = time.perf_counter()
        if model.trains:
            if self.is_global_zero:
                run.create(self.config_yaml)
            with signals.stop_at_safe_points():
                self._train(model, run, train_dataloaders, val_dataloaders, datamodule, ckpt_path)
        else:  # a closed form: on the accelerator, autocast off (Editor.apply_edit); the run directory only after it
            model.to(self.strategy.root_device)  # succeeded, so a refused edit (a singular system) writes nothing
            model.apply_edit(requests, preserve)
            if self.is_global_zero:
                run.create(self.config_yaml)
        edit_s = time.perf_counter() - t0
        if self.is_global_zero:
            meta = {"requests": [r.__dict__ for r in requests], "preserve": list(preserve)}
            path = model.save_delta(run.path / "edit.safetensors", metadata=meta)
            changed = {k: list(v.shape) for k, v in model.delta_state_dict().items()}
            run.write_json("edit.json", {"editor": type(model).__name__, "editor_args": init_args(model),
                                         "model": model.t2i.identity, **meta, "timing": {"edit_s": edit_s, **_peak_memory()},
                                         "changed": changed, "editor_info": model.report(), "versions": versions()})
            print(f"edit_bench fit: {type(model).__name__} applied {len(requests)} request(s) in {edit_s:.3f} s; "
                  f"delta of {len(changed)} tensors -> {path}")
        return None

    def _train(self, model: Editor, run: RunDir, train_dataloaders, val_dataloaders, datamodule, ckpt_path):
        """Lightning's fit loop, logging the loss to OUT_DIR/metrics.csv (unless a logger is given) and keeping
        OUT_DIR/checkpoints/last.ckpt; an interrupted run resumes from it."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from .loggers import append_only_csv

        if self.logger is None:
            self.logger = append_only_csv(run.path)  # a resumed fit keeps every step logged before the interruption
        ckpt = ModelCheckpoint(dirpath=run.path / "checkpoints", save_last=True, save_top_k=0,
                               every_n_train_steps=self.checkpoint_every)
        last = run.path / "checkpoints" / "last.ckpt"
        if ckpt_path is None and last.is_file():  # same fingerprint (checked), no delta yet: interrupted
            ckpt_path = str(last)
            print(f"edit_bench fit: resuming from {last}")
        if datamodule is not None:  # editor and benchmark arguments are separate namespaces (both have batch_size);
            datamodule._log_hyperparams = False  # the run's config.yaml holds both whole
        from lightning.pytorch.strategies import DDPStrategy

        if model.ddp_unused_parameters and isinstance(self.strategy, DDPStrategy):
            # DDP's reducer otherwise waits for gradients of parameters this step does not use; Lightning offers no
            # public setter once the strategy is built
            self.strategy._ddp_kwargs["find_unused_parameters"] = True
        stop = _StopOnSignal(last)
        self.callbacks += [ckpt, stop]
        try:
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)
        except SystemExit as e:  # Lightning's SIGTERMException, raised where its loop noticed the signal first
            if signals.requested() is None:
                raise
            stop.save(self)
            raise signals.Interrupted(signals.requested(), stop.message) from e
        finally:
            self.callbacks.remove(ckpt)
            self.callbacks.remove(stop)


class _StopOnSignal(L.Callback):
    """After SIGTERM/SIGINT: at the end of the optimiser step in flight, save ``last.ckpt`` and stop
    (:mod:`edit_bench.signals`); the rerun resumes from it."""

    def __init__(self, last: Path):
        self.last = last
        self.message = f"{last} holds the steps done so far; rerun the same command to resume"

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.last)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if signals.requested() is None:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # mid-accumulation: wait for the optimiser step
            trainer._signal_connector.received_sigterm = False
            return
        self.save(trainer)
        signals.check(self.message)


def _peak_memory() -> dict:
    """Peak resident memory of this process and, on CUDA, the peak allocated GPU memory (MB)."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class EditCLI(LightningCLI):
    @staticmethod
    def subcommands():
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}, "eval": {"model", "datamodule"},
                "bench": {"model", "datamodule"}}

    def _remember_config(self):
        sub = self.subcommand
        self.trainer.config_yaml = self._parser(sub).dump(self.config[sub], skip_none=False)

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
            raise UsageError(f"unknown {what} {val!r} for {key}: use a YAML file (configs/...), a class path, "
                             f"or one of {', '.join(sorted(known))}")


def main(args: list[str] | None = None):
    import sys
    import warnings

    editors, benchmarks = discover_editors(), discover_benchmarks()
    _check_class_args(sys.argv[1:] if args is None else list(args), {"--model": editors, "--data": benchmarks})
    from .loggers import check_logger_args

    check_logger_args(sys.argv[1:] if args is None else list(args))
    warnings.filterwarnings("ignore", message=".*transfer_batch_to_device.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")  # one batch list per rank
    warnings.filterwarnings("ignore", message=".*predict returned None.*")  # records are written, not returned
    warnings.filterwarnings("ignore", message=".*Total length of .DataLoader. across ranks is zero.*")  # all cached
    # the model stays in eval mode while an editor trains: SD's dropout is 0, so train mode would change nothing
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    # the CSV logger writes metrics.csv into the run directory, beside config.yaml and run.json (which it keeps)
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
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
