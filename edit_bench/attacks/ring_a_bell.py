"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?", ICLR 2024):
a model-agnostic red-teaming search that needs only the text encoder.

1. The concept vector: ``c = mean_i [E(with_i) - E(without_i)]`` over prompt pairs that differ by the concept, ``E`` the
   text encoder's 77-token output states [``Get_Concept_Vector.ipynb``].
2. The target of each attacked prompt ``P``: ``E(P) + eta * c``.
3. A genetic search for ``length`` discrete tokens (BOS, the tokens, EOS, padding) whose states are nearest the target
   (fitness: the summed squared difference over all 77 states): each generation keeps the better half of the
   population; every kept prompt stays and, with probability ``crossover``, is crossed with a random other kept one at
   a random point of its tokens (both children join); every member is then mutated with probability ``mutation`` (one
   random token position gets a random id in ``[1, BOS)``) [``InversePrompt.ipynb``].

The found tokens alone are the attack prompt (as Ring-A-Bell's ``invPrompt``). Defaults from the authors' notebook
[chiayi-hsu/Ring-A-Bell@e4585ad]: population 200, 3000 generations, mutation 0.25, crossover 0.5, ``length`` 16
(their K = 16; 75 for K = 77), ``eta`` 3 (``cof``). Differences: every random draw comes from one seeded generator
(the notebook mixes numpy's and Python's global ones); the images are drawn from the found token ids, not from their
decoded text re-tokenised (the text is kept for reading).

Prompt pairs (``pairs``): ``None`` takes each case's own: every efficacy and generality prompt and its ``new`` label
(the toy world: "a square by Pell" / "a square"); on a concept table, each erased prompt and the same prompt without
its concept's name ("a big star" / "a big"; I2P's rows without the request's word), the with/without pairs Ring-A-Bell writes by hand. A CSV with columns ``with,without``, or Ring-A-Bell's ``prompt,prompt1``
(``Violence_30.csv``), or two files ``[Nudity_prompt.csv, NoNudity_prompt.csv]`` paired row by row, the nudity prompt
written as the notebook writes it (``"{nudity} {people}, {location}"``, ``"{nudity}, {location}"`` where ``people``
is None and ``clothes`` is not). The published pairs are shipped in ``datasets/ring_a_bell/`` (MIT); the car and Van
Gogh vectors were published without their pairs. Not reproduced: the notebook encodes each nudity pair five times and
drops 19 of the 250 copies by index before averaging (a near-duplicate mean of the same pairs).
"""

from __future__ import annotations

import contextlib
import csv

import torch

from ..errors import UsageError
from ..types import without_words
from .base import AdversarialPrompts, Attack, layout, readable


def _rows(path: str) -> list[dict]:
    from ..io import resolve_path

    with open(resolve_path(path), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def nudity_prompt(row: dict) -> str:
    """Ring-A-Bell's nudity prompt of a ``Nudity_prompt.csv`` row (``Get_Concept_Vector.ipynb``)."""
    nudity, people, location = row["nudity"], row["people"], row["location"]
    if row["clothes"] != "None" and people == "None":
        return f"{nudity}, {location}"
    return f"{nudity} {people}, {location}"


def read_pairs(pairs: str | list[str]) -> list[tuple[str, str]]:
    """``(with, without)`` prompt pairs from a pairs file (see the module docstring)."""
    if isinstance(pairs, (list, tuple)):
        if len(pairs) != 2:
            raise UsageError(f"pairs: give one CSV, or two files [with, without]; got {len(pairs)}")
        a, b = _rows(pairs[0]), _rows(pairs[1])
        if len(a) != len(b):
            raise UsageError(f"pairs: {pairs[0]} has {len(a)} rows but {pairs[1]} has {len(b)}: they are paired row by row")
        with_ = [nudity_prompt(r) if "nudity" in r else r["prompt"] for r in a]
        return list(zip(with_, [r["prompt"] for r in b]))
    rows = _rows(pairs)
    cols = set(rows[0]) if rows else set()
    if {"with", "without"} <= cols:
        return [(r["with"], r["without"]) for r in rows]
    if {"prompt", "prompt1"} <= cols:
        return [(r["prompt"], r["prompt1"]) for r in rows]
    raise UsageError(f"pairs file {pairs} has columns {sorted(cols)}: expected with,without (or Ring-A-Bell's prompt,prompt1)")


class RingABell(Attack):
    """Ring-A-Bell's concept vector and genetic search (see the module docstring).

    Args:
        pairs: the prompt pairs of the concept vector (``None``: each case's own; a CSV; two files).
        eta: the concept vector's weight in the target (the notebook's ``cof``: 3).
        length: the searched tokens (K = 16).
        population: kept prompts per generation x 2 (200).
        generations: 3000.
        mutation, crossover: the probabilities (0.25, 0.5).
        batch_size: prompts per text-encoder call when scoring a generation.
        name, seed: see :class:`~edit_bench.attacks.base.Attack`.
    """

    default_name = "ring_a_bell"
    version = "1"
    reference = "Ring-A-Bell (Tsai et al., ICLR 2024); defaults from chiayi-hsu/Ring-A-Bell@e4585ad InversePrompt.ipynb"

    def __init__(self, pairs: str | list[str] | None = None, eta: float = 3.0, length: int = 16, population: int = 200,
                 generations: int = 3000, mutation: float = 0.25, crossover: float = 0.5, batch_size: int = 256,
                 name: str | None = None, seed: int = 0):
        super().__init__(name, seed)
        self._positive(length=length, population=population, generations=generations, batch_size=batch_size)
        if length > 75:
            raise UsageError(f"length {length} leaves no room for BOS and EOS in 77 tokens: at most 75 (Ring-A-Bell's K = 77)")
        if population < 2:
            raise UsageError(f"population must be >= 2 (it keeps the better half), got {population}")
        for k, v in (("mutation", mutation), ("crossover", crossover)):
            if not 0 <= v <= 1:
                raise UsageError(f"{k} is a probability: give a value in [0, 1], got {v}")
        self.pairs, self.eta, self.length, self.population = pairs, eta, length, population
        self.generations, self.mutation, self.crossover, self.batch_size = generations, mutation, crossover, batch_size
        self._pairs = read_pairs(pairs) if pairs is not None else None  # a bad file fails at construction

    def _states(self, t2i, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([t2i.condition_ids(ids[i:i + self.batch_size]).context.float()
                          for i in range(0, len(ids), self.batch_size)])

    def concept_vector(self, t2i, case) -> torch.Tensor:
        pairs = self._pairs
        if pairs is None:
            pairs = [(p.prompt, p.new) for g in ("efficacy", "generality") for p in case.groups.get(g, ())
                     if p.expect == "new" and p.new is not None]
        if not pairs:  # a concept table: each erased prompt and the same prompt without its concept's name
            words = [(p.prompt, p.old or (case.request.source if case.request else None))
                     for g in ("erased", "prompts") for p in case.groups.get(g, ())]
            pairs = [(a, without_words(a, [w])) for a, w in words if w]
            pairs = [(a, b) for a, b in pairs if a != b]
        if not pairs:
            raise UsageError(f"{self.name}: case {case.id} has no efficacy or generality prompt with a label, and no "
                             "attacked prompt names its concept, to pair it with: give pairs: FILE")
        with torch.no_grad():
            return (t2i.encode([a for a, _ in pairs]).float() - t2i.encode([b for _, b in pairs]).float()).mean(0)

    derives = {"concept vector": "origin", "search": "origin"}
    uses_denoiser = False

    def attack(self, t2i, case, prompts, images, gen, editor, judge=None):
        """The search is model-agnostic (the paper runs it on the original text encoder, then prompts the erased
        model): it runs on the editor's origin whatever the edit changed."""
        ctx = editor.original_weights() if editor is not None else contextlib.nullcontext()
        with ctx:
            return self._search(t2i, case, prompts, gen)

    def _search(self, t2i, case, prompts, gen):
        tok = t2i.tokenizer
        high = min(tok.bos_token_id, tok.eos_token_id)  # ids [1, BOS): the notebook's range, special tokens excluded
        K, keep = self.length, self.population // 2
        rows, text, losses = [], [], []
        with torch.no_grad():
            c = self.concept_vector(t2i, case)
            for prompt in prompts:
                target = t2i.encode([prompt]).float()[0] + self.eta * c
                pop = torch.stack([layout(t2i, torch.randint(1, high, (K,), generator=gen).tolist())
                                   for _ in range(self.population)])
                pos = torch.arange(pop.shape[1])
                for g in range(self.generations):
                    score = ((self._states(t2i, pop) - target) ** 2).sum((1, 2)).cpu()
                    order = torch.argsort(score, stable=True)
                    pop, best = pop[order][:keep], float(score[order[0]])
                    if g == self.generations - 1:
                        break
                    n = len(pop)
                    cross = torch.rand(n, generator=gen) < self.crossover
                    mates = torch.randint(0, n, (n,), generator=gen)
                    points = torch.randint(1, K + 1, (n,), generator=gen)
                    i = cross.nonzero().flatten()
                    first = pos[None] < points[i, None]
                    kids1 = torch.where(first, pop[i], pop[mates[i]])
                    kids2 = torch.where(first, pop[mates[i]], pop[i])
                    pop = torch.cat([pop, kids1, kids2])
                    m = (torch.rand(len(pop), generator=gen) < self.mutation).nonzero().flatten()
                    at = torch.randint(1, K + 1, (len(m),), generator=gen)
                    pop[m, at] = torch.randint(1, high, (len(m),), generator=gen)
                rows.append(pop[0])
                text.append(readable(t2i, pop[0]))
                losses.append(best)
        return AdversarialPrompts(torch.stack(rows), text, loss=sum(losses) / len(losses))

