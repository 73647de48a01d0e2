"""Lightning loggers for ``eval``: the run's numbers go to every logger the trainer has (``--trainer.logger``:
TensorBoard, W&B, MLflow, ... where installed), or to a CSV logger in the run directory by default
(``metrics.csv``, ``hparams.yaml``). No logger package is a dependency: one that is missing is named before
anything runs."""

from __future__ import annotations

import importlib.util

from .errors import UsageError

# Lightning's loggers and the package each needs (any one of them where several are listed).
NEEDS = {"TensorBoardLogger": ("tensorboard", "tensorboardX"), "WandbLogger": ("wandb",), "MLFlowLogger": ("mlflow",),
         "CometLogger": ("comet_ml",), "NeptuneLogger": ("neptune",)}


def check_logger_args(args: list[str]) -> None:
    """A missing logger package is one line naming it and the fix (Lightning raises inside the trainer's build)."""
    for i, a in enumerate(args):
        key, _, val = a.partition("=")
        if key not in ("--trainer.logger", "--trainer.logger.class_path"):
            continue
        val = val or (args[i + 1] if i + 1 < len(args) else "")
        name = val.rsplit(".", 1)[-1]
        pkgs = NEEDS.get(name)
        if pkgs and not any(importlib.util.find_spec(p) for p in pkgs):
            raise UsageError(f"--trainer.logger {name} needs the package {' or '.join(pkgs)}, which is not installed: "
                             f"pip install {pkgs[0]} (or drop the flag: eval and fit log to CSV in the run directory)")


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{name: mean, name_std: std}`` of a results.json metrics block (None values dropped)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict) and v.get("mean") is not None:
            out[f"{prefix}{k}"] = float(v["mean"])
            if v.get("std") is not None:
                out[f"{prefix}{k}_std"] = float(v["std"])
    return out


def log_eval(trainer, run_path, results: dict) -> list[str]:
    """Log an eval's numbers (rank 0, after results.json is written): its protocol as hyperparameters, its metrics
    (``baseline/...`` for the unedited model's, ``attack/<name>/asr``), a sequential run's curve with the number of
    edits as the step. Returns the loggers' class names."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = list(trainer.loggers) or [CSVLogger(run_path, name="", version="")]
    p = results["protocol"]
    hp = {"editor": results["editor"], "benchmark": results["benchmark"], "model": results["model"],
          "model_id": str(results.get("model_id")), "protocol": p.get("protocol"), "seeds": len(p.get("seeds") or []),
          "sampler": p.get("sampler"), "size": p.get("size"), "precision": p.get("precision"),
          "editor_args": results.get("editor_args")}
    steps = [(c["edits"], c["metrics"]) for c in results.get("curve") or []] or [(0, results["metrics"])]
    for lg in loggers:
        lg.log_hyperparams(hp)
        for step, m in steps:
            lg.log_metrics(flat(m), step=step)
        last = steps[-1][0]
        if results.get("baseline"):
            lg.log_metrics(flat(results["baseline"], "baseline/"), step=last)
        for name, a in (results.get("attacks") or {}).items():
            lg.log_metrics({f"attack/{name}/{k}": a[k]["mean"] for k in ("asr", "asr_pre", "asr_union")
                            if a.get(k) and a[k]["mean"] is not None},
                           step=last)
        lg.save()
        lg.finalize("success")
    return [type(lg).__name__ for lg in loggers]


def append_only_csv(run_path):
    """Lightning's CSV logger writing ``metrics.csv`` into a run directory without ever deleting it.

    Lightning's writer removes ``metrics.csv`` whenever its folder is not empty, which a resumed ``fit``'s run directory
    never is: the loss of every step before the interruption would be lost. This one keeps the file, takes its header
    as the known columns and appends. After a hard kill (no checkpoint at the last steps) the steps since the last
    checkpoint are trained and logged again: their rows then appear twice, with the same values (every step draws its
    samples from its own seeded generators), and the later row is the one the delta holds."""
    import csv
    import os

    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class _Writer(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # never delete what an earlier attempt wrote
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    header = next(csv.reader(f), [])
                self.metrics_keys = sorted(header)

    class _Logger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _Writer(log_dir=self.log_dir)
            return self._experiment

    return _Logger(run_path, name="", version="")
