"""Loading text-to-image models: ``load_t2i(spec) -> T2IModel``.

Specs:
    ``toy``: the shipped, trained toy world (an SD-1-layout pipeline folder; see ``edit_bench.models.toy``).
    ``toy-mmdit``: the same world with a FLUX-layout transformer (a ``FluxPipeline`` folder).
    ``tiny:sd1`` | ``tiny:sd2`` | ``tiny:sdxl`` | ``tiny:sd3`` | ``tiny:flux``: random tiny models with the real
    layouts (tests only; SD3 and FLUX are :class:`~edit_bench.models.mmdit.MMDiTModel`).
    ``random:sd1`` | ``random:sd2`` | ``random:sdxl`` | ``random:sd3`` | ``random:flux``: random models with the
    full-size architectures (speed and memory measurements without weights; their images mean nothing).
    a local diffusers folder (``model_index.json`` with ``unet/`` or ``transformer/``, ``vae/``, ``text_encoder/`` ...).
    a Hugging Face hub id (``CompVis/stable-diffusion-v1-4``), taken from the local cache only.

Nothing is ever downloaded: a model missing locally is an immediate error that says how to get it.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from ..errors import ModelNotAvailable
from .adapter import Conditioning, CrossAttnSite, T2IModel, TextLayer

__all__ = ["load_t2i", "T2IModel", "CrossAttnSite", "TextLayer", "Conditioning", "ModelNotAvailable"]




def _load_folder(path: Path) -> dict:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelNotAvailable(
            f"{path} is not a diffusers pipeline folder (no model_index.json). Point --model.base at the "
            "folder written by `pipeline.save_pretrained(...)` (it holds model_index.json, unet/, vae/, text_encoder/)."
        )
    index = json.loads(index_file.read_text())
    comps: dict = {}
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                 "tokenizer_2", "tokenizer_3"):
        entry = index.get(name)
        if not entry or entry[0] is None:
            continue
        if not (path / name).is_dir():
            if name.startswith(("text_encoder", "tokenizer")) and "transformer" in index:
                raise ModelNotAvailable(f"{path} names {name} ({entry[1]}) in model_index.json but has no {name}/ folder: "
                                        f"download it beside transformer/ (e.g. `hf download REPO --include '{name}/*'`)")
            continue
        lib, cls_name = entry
        cls = getattr(importlib.import_module(lib), cls_name)
        comps[name] = cls.from_pretrained(path / name, local_files_only=True)
    sched_file = path / "scheduler" / "scheduler_config.json"
    if not sched_file.is_file():
        raise ModelNotAvailable(f"{path} has no scheduler/scheduler_config.json")
    sched = json.loads(sched_file.read_text())
    comps["scheduler"] = {k: v for k, v in sched.items() if not k.startswith("_")}
    comps["scheduler_class"] = sched.get("_class_name")
    comps["force_zeros_for_empty_prompt"] = index.get("force_zeros_for_empty_prompt", False)
    denoiser = "transformer" if "transformer" in index else "unet"
    missing = [n for n in (denoiser, "vae", "text_encoder", "tokenizer") if n not in comps]
    if missing:
        raise ModelNotAvailable(f"{path} lacks the components {missing}: is it a Stable Diffusion, SD3 or FLUX pipeline folder?")
    return comps


def _hub_cache_dir(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        home = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise ModelNotAvailable(
            f"model {repo_id!r} is not in the local Hugging Face cache ({home}) and edit_bench never "
            f"downloads. Fetch it once where there is internet, e.g. `hf download {repo_id}` "
            "(or `huggingface-cli download ...`), or pass a local diffusers folder: --model.base /path/to/folder"
        ) from e


def load_t2i(spec: str, dtype=None, device=None, delta: str | Path | None = None) -> T2IModel:
    """Load a text-to-image model by spec (see the module docstring).

    Args:
        spec: the model spec.
        dtype, device: where to put it (default float32 on the CPU).
        delta: an ``edit.safetensors`` written by ``fit``, validated whole and then added to the weights.

    The model's ``identity`` (``{"spec", "id"}``) names what the spec resolved to: the snapshot commit of a
    hub id, a content hash of a folder (``toy`` included), a hash of the code of a random tiny model.
    """
    import torch

    from ..identity import folder_identity, hub_snapshot, source_identity

    if not isinstance(spec, str) or not spec:
        raise ModelNotAvailable(f"model spec must be a non-empty string, got {spec!r}")
    from .toy import SPECS as TOY_SPECS

    if spec in TOY_SPECS:
        from .toy import pipeline_dir

        comps, ident = _load_folder(pipeline_dir(spec)), folder_identity(pipeline_dir(spec))
    elif spec.startswith("tiny:"):
        from . import tiny
        from .tiny import FAMILIES, MMDIT_FAMILIES, tiny_components, tiny_mmdit_components

        family = spec.split(":", 1)[1]
        if family not in FAMILIES + MMDIT_FAMILIES:
            raise ModelNotAvailable(f"unknown tiny model {spec!r}: use tiny:sd1, tiny:sd2, tiny:sdxl, tiny:sd3 or tiny:flux")
        comps = tiny_components(family) if family in FAMILIES else tiny_mmdit_components(family)
        ident = f"{spec}@code:{source_identity(tiny.__file__)}"
    elif spec.startswith("random:"):
        from . import tiny
        from .tiny import FAMILIES, MMDIT_FAMILIES, random_components, random_mmdit_components

        family = spec.split(":", 1)[1]
        if family not in FAMILIES + MMDIT_FAMILIES:
            raise ModelNotAvailable(f"unknown random model {spec!r}: use random:sd1, random:sd2, random:sdxl, "
                                    "random:sd3 or random:flux")
        comps = random_components(family) if family in FAMILIES else random_mmdit_components(family)
        ident = f"{spec}@code:{source_identity(tiny.__file__)}"
    elif Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        comps = _load_folder(path)
        commit = hub_snapshot(path.resolve())
        ident = f"hub:{commit}" if commit else folder_identity(path)
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        path = _hub_cache_dir(spec)
        comps, ident = _load_folder(path), f"hub:{hub_snapshot(path) or folder_identity(path)}"
    else:
        raise ModelNotAvailable(
            f"model {spec!r} is not available: it is neither a local folder nor a hub id of the form "
            "'org/name'. Use toy, toy-mmdit, tiny:sd1|sd2|sdxl|sd3|flux, random:sd1|sd2|sdxl|sd3|flux, a local diffusers folder, "
            "or a cached hub id."
        )
    # float32 unless asked otherwise (folders may hold fp16 weights); Lightning's precision casts later
    if "transformer" in comps:  # SD3 / FLUX
        from .mmdit import MMDiTModel

        t2i = MMDiTModel(comps, spec).eval().to(device=device, dtype=dtype or torch.float32)
    else:
        t2i = T2IModel(comps, spec).eval().to(device=device, dtype=dtype or torch.float32)
    t2i.identity = {"spec": spec, "id": ident}
    if delta is not None:
        from .delta import apply_delta

        apply_delta(t2i, delta)
    return t2i
