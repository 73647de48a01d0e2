"""One provenance: everything that decides a run's images and scores, built once, viewed three ways.

A number in ``results.json`` is only comparable with another when both were made under the same settings, and a
resumed run or a cached baseline may only reuse what was made under this run's settings. So there is one
description of those settings, :class:`Provenance`, built from the objects of the run (never from file *paths*:
the content of every file an argument names is digested):

- ``model``: the base model's identity (a hub snapshot, a folder's content hash, a tiny model's code hash) and
  the delta's content digest;
- ``editor``, ``data``: the editor's and the benchmark's classes and constructor arguments;
- ``requests``, ``preserve``: their content, whatever file they came from;
- ``files``: a digest of every path-valued argument that names an existing file or folder (data CSVs,
  requests, corpora, anchor prompts, FID reference folders, weight files), by argument;
- ``generation``: sampler, image size, precision, matmul precision, fast path and device type (what decides
  an image besides the model and the prompt);
- ``metrics``: each metric's name, protocol and the identity of its models (``hf:`` models by snapshot);
- ``attacks``: each attack's class, version and arguments, with a digest of every file they name;
- ``code``: a hash of the package's own source (every ``.py`` file of ``edit_bench``);
- ``versions``: Python and every library that touches pixels or scores.

Its views: :meth:`Provenance.run` (the eval fingerprint: all of it), :meth:`Provenance.fit` (a fit's: what
decides the delta) and :meth:`Provenance.baseline` (the baseline cache's context: what decides an unedited
image and its scores, without the editor, the benchmark's own arguments or the delta). A resume diffs the
stored view against the new one and names every field that changed (:func:`differences`).

Digests are computed once per process, keyed by (path, size, mtime); the source hash once per process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from .identity import file_digest, folder_identity

# Settings that change no thresholded verdict: a run may resume with other values. ``batch_size`` changes an image by
# float32 rounding only (each sample has its own seeded noise), ~1e-6; the judges score the 8-bit image, so a pixel on
# a rounding boundary may flip one level. Measured on the toy TIMED and erasure benchmarks (UCE, 264 + 176 samples,
# batch 1 vs 32, CPU): 0 verdicts flipped, P(new) within 3e-6 / 1.5e-4, CLIP-score within 0.008 (0-100 scale), while
# the closest P(new) sat 0.27 from the 0.5 threshold. Records of a resumed run may mix batch sizes at that level.
RESUMABLE = ("batch_size",)

# Every library that touches pixels or scores (and the ones that run the loops).
LIBRARIES = ("edit_bench", "torch", "torchvision", "lightning", "diffusers", "transformers", "tokenizers",
             "open_clip_torch", "torchmetrics", "numpy", "scipy", "Pillow", "clean-fid", "lpips", "safetensors",
             "accelerate", "peft", "onnxruntime", "opencv-python", "opencv-python-headless")  # the last three: NudeNet's


def versions() -> dict:
    """Versions of Python, the libraries that shape the numbers (``None``: not installed) and, where a GPU is used,
    the CUDA and cuDNN versions torch runs with."""
    import importlib.metadata as md

    import torch

    out = {"python": platform.python_version()}
    for pkg in LIBRARIES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    cuda = torch.cuda.is_available()
    out["cuda"] = torch.version.cuda if cuda else None
    out["cudnn"] = torch.backends.cudnn.version() if cuda else None
    return out


def set_numerics(matmul_precision: str) -> None:
    """``highest``: float32 matmuls and convolutions; ``high``/``medium``: TF32 where the GPU has it (PyTorch's legacy
    flags only: mixing them with the per-backend ``fp32_precision`` API is an error in PyTorch)."""
    import torch

    torch.set_float32_matmul_precision(matmul_precision)
    torch.backends.cudnn.allow_tf32 = matmul_precision != "highest"


def numerics() -> dict:
    """The float32 flags in force now (what ``matmul_precision`` set, read back rather than assumed)."""
    import torch

    out = {"float32_matmul_precision": torch.get_float32_matmul_precision(),
           "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    try:
        out["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    except RuntimeError:  # the per-backend API was mixed with the legacy one: record each flag
        out["cudnn_tf32"] = {"conv": torch.backends.cudnn.conv.fp32_precision, "rnn": torch.backends.cudnn.rnn.fp32_precision}
    out["cudnn_deterministic"] = torch.backends.cudnn.deterministic
    out["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return out


def device_name(device) -> str | None:
    """The accelerator's model (``NVIDIA H100 80GB HBM3``), or ``None`` on the CPU."""
    import torch

    if device is None or getattr(device, "type", device) != "cuda":
        return None
    return torch.cuda.get_device_name(device)


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """A hash of the package's own source: every ``.py`` file under ``edit_bench/``, by relative path (once per
    process)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_DIGESTS: dict[tuple, str] = {}


def path_digest(path: str | Path) -> str:
    """A content digest of a file or of every file under a folder (16 hex digits), cached in this process by
    (path, size, mtime) of each file, so a large file or folder is read once per process."""
    p = Path(path).expanduser().resolve()
    if p.is_file():
        st = p.stat()
        key = ("file", str(p), st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = file_digest(p).hexdigest()[:16]
        return _DIGESTS[key]
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    key = ("dir", str(p), tuple((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _DIGESTS:
        _DIGESTS[key] = folder_identity(p)
    return _DIGESTS[key]


def _resolve(value: str) -> Path | None:
    """The file or folder a string argument names, if it names one (as the data modules resolve paths)."""
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return None
    from .io import resolve_path
    from .errors import UsageError

    try:
        return resolve_path(value.removeprefix("local-dir:"))
    except (UsageError, OSError):
        return None


def file_digests(args, prefix: str = "") -> dict[str, str]:
    """``{argument path: digest}`` of every string in ``args`` (nested dicts/lists) that names an existing file
    or folder."""
    out = {}
    if isinstance(args, dict):
        for k, v in args.items():
            out.update(file_digests(v, f"{prefix}{k}."))
    elif isinstance(args, (list, tuple)):
        for i, v in enumerate(args):
            out.update(file_digests(v, f"{prefix}{i}."))
    elif (p := _resolve(args)) is not None:
        out[prefix.rstrip(".")] = path_digest(p)
    return out


def not_inputs(component) -> tuple[str, ...]:
    """The constructor arguments a component declares as caches or outputs (``files`` role other than ``input``):
    written by the run, they decide no image or score and are left out of the provenance."""
    return tuple(k for k, role in (getattr(type(component), "files", None) or {}).items() if role != "input")


def input_digests(component, args: dict, prefix: str) -> dict[str, str]:
    """Digests of the files a component reads: every path-valued argument (undeclared ones count as inputs) and the
    further inputs it names (``input_files()``: e.g. images an anchor listing names outside its folder)."""
    out = file_digests(args, prefix)
    extra = component.input_files() if hasattr(component, "input_files") else {}
    for k, v in extra.items():
        if f"{prefix}{k}" not in out and (p := _resolve(v)) is not None:
            out[f"{prefix}{k}"] = path_digest(p)
    return out


def jsonable(x):
    """``x`` as plain JSON data (dataclasses and objects by their fields, anything else by ``str``)."""
    return json.loads(json.dumps(x, sort_keys=True,
                                 default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") and not isinstance(o, type)
                                 else o.__dict__ if hasattr(o, "__dict__") else str(o)))


def init_args(module, drop: tuple[str, ...] = ()) -> dict:
    """A module's constructor arguments as saved by ``save_hyperparameters`` (without the keys LightningCLI
    adds, so a run from Python and the same run from the CLI have one provenance)."""
    return jsonable({k: v for k, v in module.hparams.items() if not k.startswith("_") and k not in drop})


def class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def fast_path_args(trainer) -> dict:
    """The trainer's generation fast path (``EditTrainer``'s ``channels_last``, ``compile_unet``)."""
    return {"channels_last": bool(getattr(trainer, "channels_last", False)), "compile": getattr(trainer, "compile_unet", None)}


@dataclass(frozen=True)
class Provenance:
    """Everything that decides a run's images and scores (see the module doc); plain JSON data."""

    fields: dict

    @classmethod
    def build(cls, editor, data, trainer=None, matmul_precision: str = "highest", metrics=None,
              sampler=None, size: int | None = None) -> "Provenance":
        """The provenance of ``editor`` on ``data`` (a benchmark or a requests module) under ``trainer``."""
        t2i = editor.t2i
        editor_args = init_args(editor, drop=not_inputs(editor))
        data_args = init_args(data, drop=(*RESUMABLE, "metrics", *not_inputs(data)))
        delta = getattr(editor, "delta", None)
        requests = data.requests() if data is not None else []
        generation = {
            "precision": str(trainer.precision) if trainer is not None else None,
            "matmul_precision": matmul_precision,
            "fast_path": fast_path_args(trainer) if trainer is not None else None,
            "device": trainer.strategy.root_device.type if trainer is not None else None,
            "device_name": device_name(trainer.strategy.root_device) if trainer is not None else None,
            "numerics": numerics(),
        }
        if sampler is not None:
            generation["sampler"] = jsonable(sampler)
            generation["size"] = size
        metric_fields = [{"name": m.name, "class": class_path(m), "protocol": jsonable(m.describe()),
                          "identity": jsonable(m.identity()), "args": file_digests(jsonable(m.describe()))}
                         for m in (metrics or [])]
        attacks = [{**jsonable(a.describe()), "files": file_digests(jsonable(a.args()))} for a in getattr(data, "attacks", [])]
        return cls(jsonable({
            "model": {"spec": t2i.identity["spec"], "id": t2i.identity["id"],
                      "delta": path_digest(delta) if delta else None},
            "editor": {"class_path": class_path(editor), "init_args": editor_args},
            "data": {"class_path": class_path(data), "init_args": data_args} if data is not None else None,
            "requests": [asdict(r) for r in requests],
            "preserve": list(data.preserve()) if data is not None else [],
            "files": {**input_digests(editor, editor_args, "editor."), **input_digests(data, data_args, "data.")},
            "generation": generation,
            "metrics": metric_fields,
            **({"attacks": attacks} if attacks else {}),
            "code": source_hash(),
            "versions": versions(),
        }))

    def with_training(self, training: dict) -> "Provenance":
        return Provenance({**self.fields, "training": jsonable(training)})

    def run(self) -> dict:
        """The ``eval`` fingerprint: all of it."""
        return self.fields

    def fit(self) -> dict:
        """A ``fit``'s fingerprint: what decides the delta (no benchmark arguments, sampler or metrics)."""
        keep = ("model", "editor", "requests", "preserve", "code", "versions", "training")
        f = {k: self.fields[k] for k in keep if k in self.fields}
        f["files"] = {k: v for k, v in self.fields["files"].items() if k.startswith("editor.")}
        g = self.fields["generation"]
        f["generation"] = {k: g[k] for k in ("precision", "matmul_precision", "device", "device_name", "numerics")}
        return f

    def baseline(self) -> dict:
        """The baseline cache's context: what decides an unedited sample's image and scores besides the sample
        itself (its prompt, labels and seed): the base model (never the delta: a delta's baseline is the model
        without it), generation without the seed list, the metrics, the code and the versions."""
        g = dict(self.fields["generation"])
        if "sampler" in g:
            g["sampler"] = {**g["sampler"], "seeds": None}
        return {"model": {k: self.fields["model"][k] for k in ("spec", "id")}, "generation": g,
                "metrics": self.fields["metrics"], "code": self.fields["code"], "versions": self.fields["versions"]}


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, old value, new value)`` of every leaf that differs between two nested JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += differences(a, b, f"{prefix}{i}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def describe_differences(diff: list[tuple[str, object, object]], limit: int = 4) -> str:
    """``key: old -> new; ...`` of the first ``limit`` differences."""
    parts = [f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in diff[:limit]]
    return "; ".join(parts) + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")
