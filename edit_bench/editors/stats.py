"""Second-moment statistics ``C = E[k k^T]`` of a text-encoder layer's MLP input, over a text corpus.

ReFACT (like ROME) needs ``C`` of the edited ``fc2``'s inputs. The paper computed it on WikiText-103;
here the corpus is any local text file, the default the COCO captions in ``datasets/coco``. Every token
position up to and including the first EOS counts (padding does not: with the causal mask it cannot change
those positions, so texts are padded to the longest of their batch). The result is cached on disk, keyed by
the model spec, the layer, a hash of every weight it depends on (the token and position embeddings and
layers 0..L), the corpus and the sample count; it is computed once across processes (the first takes a file
lock, the others wait for its file) and written atomically. Within a process it is also kept in memory.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import torch
from ..errors import UsageError
from ..io import write_atomic

DEFAULT_CORPUS = "datasets/coco/coco_30k.csv"
TEXT_COLUMNS = ("prompt", "caption", "text")


def read_corpus(path: str | Path, limit: int) -> list[str]:
    """Up to ``limit`` non-empty texts of a ``.txt`` (one per line) or ``.csv`` (a prompt/caption/text column)."""
    from ..io import resolve_path

    p = resolve_path(path)
    with open(p, newline="", encoding="utf-8") as f:
        if p.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            col = next((c for c in TEXT_COLUMNS if c in (reader.fieldnames or [])), None)
            if col is None:
                raise UsageError(f"{p}: a corpus CSV needs one of the columns {TEXT_COLUMNS}; it has {reader.fieldnames}")
            texts = [row[col].strip() for row in reader]
        else:
            texts = [line.strip() for line in f]
    texts = [t for t in texts if t][:limit]
    if not texts:
        raise UsageError(f"corpus {p} has no texts")
    return texts


def cache_dir(stats_dir: str | None) -> Path:
    if stats_dir:
        return Path(stats_dir).expanduser()
    from ..io import cache_root

    return cache_root() / "stats"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


class _Stop(Exception):
    """Raised by the capture hook: layers after the captured one are not needed."""


_MEMORY: dict[Path, tuple[torch.Tensor, int]] = {}
_DIGESTS: dict[tuple, str] = {}


def _weights_below(t2i, layer) -> list[torch.Tensor]:
    """Every tensor ``fc2``'s inputs at ``layer`` depend on: the encoder's embeddings, layers ``0..L-1`` and
    layer ``L`` up to ``fc2`` (``fc2`` itself, the edited matrix, does not change its own inputs)."""
    out = list(t2i.text_embeddings(layer.encoder).state_dict(keep_vars=True).values())
    fc2 = {id(t) for t in layer.mlp_out.parameters()}
    for tl in t2i.text_layers():
        if tl.encoder == layer.encoder and tl.index <= layer.index:
            out += [t for t in tl.module.state_dict(keep_vars=True).values() if id(t) not in fc2]
    return out


def _weights_digest(tensors: list[torch.Tensor]) -> str:
    """SHA-1 of the tensors' values, remembered per (tensor, version): an unchanged encoder is hashed once
    per process, and any in-place change (an edit below the layer) bumps a version and rehashes."""
    key = tuple((id(t), t._version) for t in tensors)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        for t in tensors:
            digest.update(t.detach().cpu().float().numpy().tobytes())
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def second_moment(t2i, layer, tokenizer_index: int, corpus: str, limit: int, stats_dir: str | None = None,
                  batch_size: int = 64) -> tuple[torch.Tensor, int, Path]:
    """``(C [d, d] float32, number of token positions, cache file)`` for ``layer.module.mlp.fc2``'s input."""
    fc2 = layer.mlp_out
    texts = read_corpus(corpus, limit)
    digest = hashlib.sha1(_weights_digest(_weights_below(t2i, layer)).encode())
    digest.update("\n".join(texts).encode())
    name = f"{_slug(t2i.spec)}__{layer.param_name(fc2).removesuffix('.weight')}__{_slug(Path(corpus).stem)}-{len(texts)}__{digest.hexdigest()[:12]}.safetensors"
    return _cached(cache_dir(stats_dir) / name, lambda path: _compute(t2i, layer, tokenizer_index, texts, batch_size, path, corpus))


def _cached(path: Path, compute) -> tuple[torch.Tensor, int, Path]:
    """``(C, n_tokens, path)`` from memory, else from ``path``, else ``compute(path)`` writes it first (one process
    computes under a file lock, the others wait and read its file)."""
    from filelock import FileLock
    from safetensors.torch import load_file

    if path in _MEMORY:
        return *_MEMORY[path], path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            compute(path)
        saved = load_file(str(path))
    _MEMORY[path] = saved["C"], int(saved["n_tokens"])
    return *_MEMORY[path], path


def _compute(t2i, layer, tokenizer_index, texts, batch_size, path, corpus) -> None:
    from safetensors.torch import save_file

    fc2 = layer.mlp_out

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
    tensors, meta = {"C": C, "n_tokens": torch.tensor(n)}, {"corpus": str(corpus), "texts": str(len(texts))}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _encoder_tensors(t2i) -> list[torch.Tensor]:
    return [t for _, enc in t2i.text_encoders() for t in enc.state_dict(keep_vars=True).values()]


def context_moment(t2i, corpus: str, limit: int, positions: str = "tokens", stats_dir: str | None = None,
                   batch_size: int = 64) -> tuple[torch.Tensor, int, Path]:
    """``(E[h h^T] [D, D] float64, number of positions, cache file)`` of the context every cross-attention sees
    (``t2i.encode``), over a corpus: ``positions="tokens"`` counts BOS through the first EOS of each text (OCE's
    global prior ``K0``), ``"all"`` counts all 77 positions, padding included (MACE's preservation caches, whose
    sums are ``mean * count``). Cached like :func:`second_moment`, keyed by every text-encoder weight."""

    if positions not in ("tokens", "all"):
        raise UsageError(f"positions must be 'tokens' or 'all', got {positions!r}")
    texts = read_corpus(corpus, limit)
    digest = hashlib.sha1(_weights_digest(_encoder_tensors(t2i)).encode())
    digest.update("\n".join(texts).encode())
    name = f"{_slug(t2i.spec)}__context-{positions}__{_slug(Path(corpus).stem)}-{len(texts)}__{digest.hexdigest()[:12]}.safetensors"
    return _cached(cache_dir(stats_dir) / name, lambda path: _compute_context(t2i, texts, positions, batch_size, path, corpus))


def _compute_context(t2i, texts, positions, batch_size, path, corpus) -> None:
    from safetensors.torch import save_file

    tok = t2i.tokenizers[0]
    total, n = None, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            if positions == "tokens" and hasattr(t2i, "context_token_mask"):  # SD3 / FLUX: each tokenizer's mask
                h = t2i.encode(chunk).double()
                h = h[t2i.context_token_mask(chunk).to(h.device)]
            elif positions == "tokens":  # BOS..EOS only: encoded to the batch's longest caption (the same states)
                h = t2i.encode(chunk, longest=True).double()
                ids = t2i.tokenize(chunk, 0, longest=True)
                eos = (ids == tok.eos_token_id).int().argmax(1)
                keep = torch.arange(ids.shape[1])[None] <= eos[:, None]
                h = h[keep.to(h.device)]
            else:
                h = t2i.encode(chunk).double().reshape(-1, t2i.context_dim)  # all positions (77 on SD-1/2/XL)
            total = h.T @ h if total is None else total + h.T @ h
            n += h.shape[0]
    tensors = {"C": (total / n).cpu().contiguous(), "n_tokens": torch.tensor(n)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"corpus": str(corpus), "texts": str(len(texts))}))
