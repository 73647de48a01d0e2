"""The real CLIP BPE tokenizer, built offline from the merges file that open_clip ships.

Stable Diffusion's tokenizer is the OpenAI CLIP BPE (49,408 tokens). open_clip ships its merges
(``bpe_simple_vocab_16e6.txt.gz``); the vocabulary is the 256 byte symbols, the same with ``</w>``, one
token per merge, and the two specials. The ids equal open_clip's and SD's; padding is EOS (49407), as
in SD-1.x.
"""

from __future__ import annotations

import functools
import gzip

N_MERGES = 49152 - 256 - 2  # vocabulary size minus byte symbols (x2 with </w>) minus specials, per open_clip
MAX_LENGTH = 77


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer():
    """A fresh ``transformers.CLIPTokenizer`` with the real vocabulary, ``model_max_length=77``."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_LENGTH)
