"""Second-moment statistics ``C = E[k k^T]`` of a text-encoder layer's MLP input, over a text corpus.

ReFACT (like ROME) needs ``C`` of the edited ``fc2``'s inputs. The paper computed it on WikiText-103;
here the corpus is any local text file, the default the COCO captions in ``datasets/coco``. Every token
position up to and including the first EOS counts (padding does not: with the causal mask it cannot change
those positions, so texts are padded to the longest of their batch). The result is cached on disk, keyed by
the model spec, the layer, a hash of the layer's weights, the corpus and the sample count, and written
atomically.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

import torch

DEFAULT_CORPUS = "datasets/coco/coco_30k.csv"
TEXT_COLUMNS = ("prompt", "caption", "text")


def read_corpus(path: str | Path, limit: int) -> list[str]:
    """Up to ``limit`` non-empty texts of a ``.txt`` (one per line) or ``.csv`` (a prompt/caption/text column)."""
    from ..benchmarks.base import resolve_path

    p = resolve_path(path)
    with open(p, newline="", encoding="utf-8") as f:
        if p.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            col = next((c for c in TEXT_COLUMNS if c in (reader.fieldnames or [])), None)
            if col is None:
                raise ValueError(f"{p}: a corpus CSV needs one of the columns {TEXT_COLUMNS}; it has {reader.fieldnames}")
            texts = [row[col].strip() for row in reader]
        else:
            texts = [line.strip() for line in f]
    texts = [t for t in texts if t][:limit]
    if not texts:
        raise ValueError(f"corpus {p} has no texts")
    return texts


def cache_dir(stats_dir: str | None) -> Path:
    if stats_dir:
        return Path(stats_dir).expanduser()
    root = os.environ.get("EDIT_BENCH_CACHE") or Path.home() / ".cache" / "edit_bench"
    return Path(root) / "stats"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


class _Stop(Exception):
    """Raised by the capture hook: layers after the captured one are not needed."""


def second_moment(t2i, layer, tokenizer_index: int, corpus: str, limit: int, stats_dir: str | None = None,
                  batch_size: int = 64) -> tuple[torch.Tensor, int, Path]:
    """``(C [d, d] float32, number of token positions, cache file)`` for ``layer.module.mlp.fc2``'s input."""
    from safetensors.torch import load_file, save_file

    fc2 = layer.mlp_out
    digest = hashlib.sha1()
    for t in layer.module.state_dict().values():
        digest.update(t.detach().cpu().float().numpy().tobytes())
    texts = read_corpus(corpus, limit)
    digest.update("\n".join(texts).encode())
    name = f"{_slug(t2i.spec)}__{layer.param_name(fc2).removesuffix('.weight')}__{_slug(Path(corpus).stem)}-{len(texts)}__{digest.hexdigest()[:12]}.safetensors"
    path = cache_dir(stats_dir) / name
    if path.is_file():
        saved = load_file(str(path))
        return saved["C"], int(saved["n_tokens"]), path

    tok = t2i.tokenizers[tokenizer_index]
    enc = getattr(t2i, layer.encoder)
    total = torch.zeros(fc2.in_features, fc2.in_features, dtype=torch.float64, device=t2i.device)
    n, store = 0, {}
    def capture(module, inputs, output):
        store["x"] = inputs[0].detach()
        raise _Stop

    hook = fc2.register_forward_hook(capture)
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids = tok(texts[i:i + batch_size], padding="longest", truncation=True, max_length=tok.model_max_length,
                          return_tensors="pt").input_ids
                eos = (ids == tok.eos_token_id).int().argmax(1)  # first EOS (padding may equal it)
                keep = torch.arange(ids.shape[1])[None] <= eos[:, None]
                try:
                    enc(ids.to(t2i.device))
                except _Stop:
                    pass
                k = store["x"][keep.to(t2i.device)].double()
                total += k.T @ k
                n += k.shape[0]
    finally:
        hook.remove()
    C = (total / n).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"C": C, "n_tokens": torch.tensor(n)}, str(tmp), metadata={"corpus": str(corpus), "texts": str(len(texts))})
    tmp.replace(path)
    return C, n, path
