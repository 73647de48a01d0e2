"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska & Bau, WACV 2024, arXiv 2308.14761).

Every cross-attention ``to_k``/``to_v`` solves, in one closed form (paper Eq. 7), "erase set E maps to
its guide, preserve set P keeps its outputs":

    W' = (lam W + s_e sum_E v*_e c_e^T + s_p sum_P W c_q c_q^T)(lam I + s_e sum_E c_e c_e^T + s_p sum_P c_q c_q^T)^-1

A request ``source -> target`` is one erase concept and its guide: ``target = ""`` guides to the
unconditional embedding (erasure), any other target is a guide concept (an edit towards it, as on TIMED).

Two published token policies (``tokens``):

- ``"last_to_end"`` (the paper-era code, default): keys are the source's positions from the last subject
  token through EOS and padding; the guide's slice from its own last token is aligned to the same length
  (``src[i_s : 77 - max(0, far - i_s)]``, ``far = max(i_s, i_g)``). Preserve prompts use all 77 positions
  and the empty prompt is always preserved.
- ``"last"`` (the current code): only the last subject token of the source, of the guide and of each
  preserve prompt; the empty prompt is not added.

Values (``technique``): ``"replace"``: ``v* = W c_guide``; ``"tensor"``: ``v* = W c_g - <W c_g, u> u`` with
``u = W c_e / ||W c_e||``, per matrix (the component along the concept's own output is removed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..types import EditRequest, SamplerConfig
from .base import Editor
from .ridge import RidgeSystem, ridge_update_
from ..errors import UsageError

MMDIT = ("sd3", "flux")

# Prompt expansion (``--add_prompts`` / ``--expand_prompts``) of both published scripts.
TEMPLATES = {
    "art": ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}


@dataclass(frozen=True)
class Debias:
    """UCE's iterative debiasing (the paper-era ``train-scripts/train_debias.py``): for each request's concept (its
    subject, e.g. a profession) and each of its prompts (``templates``), measure the attributes' shares among images
    the current model draws; move every prompt still off balance by more than ``tolerance`` towards the attributes it
    lacks, ``v* = W c + sum_j w_j ||W c|| u_j`` with ``u_j`` the normalised output of the prompt with the concept
    replaced by attribute j and ``w_j = step * (desired_j - share_j)`` (the prompts within tolerance keep ``v* = W c``
    and join the preserve set), in one closed form per round on the current weights (lam 0.5, s_e 1, s_p 0.1); stop
    when every prompt is within tolerance or after ``rounds``.

    Args:
        attributes: what replaces the concept in each prompt (UCE: ``male``, ``female``; ``{}`` = the concept, so the
            toy world's ``red {}`` turns "a circle" into "a red circle"). Their prompts are also the classifier's texts.
        templates: each concept's prompts (UCE: "image of {}", "photo of {}", "portrait of {}", "picture of {}", "{}").
        images, seeds: images per seed and seeds per prompt per round (UCE: 10 x 5 random seeds; here seeds
            ``seed + 1000 * round + k``, deterministic, one per image).
        sampler: how the measuring images are drawn (UCE: the pipeline's default scheduler, 20 steps, guidance 7.5).
        rounds, tolerance, step: UCE's 30, 0.05, 0.1.
        preserve_scale: s_p of the preserve set (UCE: 0.1; its preserve set is the other professions of its
            profession list: give them as the editor's ``preserve``).
        classifier: the CLIP that assigns each image its attribute (UCE: ViT-B/32; ``toy`` on the toy world).
        seed: the first seed.
    """

    attributes: list[str] = field(default_factory=lambda: ["male", "female"])
    templates: list[str] = field(default_factory=lambda: ["image of {}", "photo of {}", "portrait of {}", "picture of {}", "{}"])
    images: int = 10
    seeds: int = 5
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(scheduler="pndm", steps=20, guidance=7.5, size=None, seeds=[0]))
    rounds: int = 30
    tolerance: float = 0.05
    step: float = 0.1
    preserve_scale: float = 0.1
    classifier: str = "hf:openai/clip-vit-base-patch32"
    seed: int = 0

    def __post_init__(self):
        if len(self.attributes) < 2:
            raise UsageError(f"debias needs at least two attributes, got {self.attributes}")
        bad = [t for t in self.templates if "{}" not in t]
        if bad or not self.templates:
            raise UsageError(f"debias templates need '{{}}' for the concept: {bad or '(none)'}")
        if min(self.images, self.seeds, self.rounds) < 1:
            raise UsageError("debias images, seeds and rounds must be >= 1")
        if not 0 < self.tolerance < 1:
            raise UsageError(f"debias tolerance must be in (0, 1), got {self.tolerance}")


class UCE(Editor):
    """UCE closed-form editor (erase, edit towards a guide, preserve).

    Args:
        lam: ridge strength λ (both scripts: 0.5).
        erase_scale: s_e (both scripts: 1).
        preserve_scale: s_p; ``None`` = ``max(0.1, 1/|P|)`` (paper-era code); the current code uses 1.
        technique: ``"replace"`` (default of both scripts) or ``"tensor"`` (paper-era option).
        tokens: ``"last_to_end"`` (paper-era) or ``"last"`` (current code); see the module docstring.
        expand: ``None``, ``"art"`` or ``"object"``: add the five template prompts of each concept and guide
            (both scripts, off by default).
        preserve: extra concepts preserved in every edit (besides each case's own preserve set).
        with_to_k: also edit ``to_k`` (both scripts do).
        debias: debias each request's concept instead of editing it towards its target (:class:`Debias`, UCE's
            iterative ratio-targeted closed form); the request's target is not used.
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True
    families = ("sd1", "sd2", "sdxl", "sd3", "flux")

    def __init__(self, lam: float = 0.5, erase_scale: float = 1.0, preserve_scale: float | None = None,
                 technique: Literal["replace", "tensor"] = "replace",
                 tokens: Literal["last_to_end", "last"] = "last_to_end",
                 expand: Literal["art", "object"] | None = None, preserve: Sequence[str] = (),
                 with_to_k: bool = True, debias: Debias | None = None, base: str = "toy"):
        super().__init__(base=base)
        if lam <= 0:
            raise UsageError(f"lam must be > 0 (paper: 0.5), got {lam}")
        if technique not in ("replace", "tensor"):
            raise UsageError(f"technique must be 'replace' or 'tensor', got {technique!r}")
        if tokens not in ("last_to_end", "last"):
            raise UsageError(f"tokens must be 'last_to_end' (paper-era code) or 'last' (current code), got {tokens!r}")
        if expand not in (None, *TEMPLATES):
            raise UsageError(f"expand must be null, 'art' or 'object', got {expand!r}")
        self.lam, self.erase_scale, self.preserve_scale = lam, erase_scale, preserve_scale
        self.technique, self.tokens, self.expand = technique, tokens, expand
        if isinstance(debias, dict):  # from Python or a YAML read by hand
            debias = Debias(**{**debias, **({"sampler": SamplerConfig(**debias["sampler"])}
                                            if isinstance(debias.get("sampler"), dict) else {})})
        self.preserve, self.with_to_k, self.debias = tuple(preserve), with_to_k, debias
        self._debias_log: list[dict] = []

    def edited_parameters(self):
        if self.t2i.family in MMDIT:  # the text side's two input projections (see _edit_mmdit)
            return {f"{n}.weight": m.weight for n, m in self.t2i.text_inputs(("sequence", "pooled")).items()}
        return self.cross_attn_kv(None, self.with_to_k)

    # ------------------------------------------------------------------ keys and values
    def concept_pairs(self, requests: Sequence[EditRequest]) -> list[tuple[str, str, str | None]]:
        """(concept prompt, guide prompt, subject) for every request and its expansions."""
        out = []
        for r in requests:
            out.append((r.source, r.target, r.subject))
            for t in TEMPLATES.get(self.expand, ()):
                out.append((t.format(r.source), t.format(r.target) if r.target else "", r.subject or r.source))
        return out

    def derived_prompts(self, requests):
        if self.debias is not None:
            return [p for old, new in self.debias_prompts(requests) for p in (old, *new)]
        return [p for c, g, _ in self.concept_pairs(requests) for p in (c, g) if p]

    def erase_positions(self, concept: str, guide: str, subject: str | None) -> tuple[list[int], list[int]]:
        """Source and guide positions whose embeddings are paired (keys, values)."""
        i_s = self.t2i.token_index(concept, subject)
        i_g = self.t2i.token_index(guide) if guide else 0  # "": BOS (its only non-EOS token)
        if self.tokens == "last":
            return [i_s], [i_g]
        n = self.t2i.max_length - max(i_s, i_g)
        return list(range(i_s, i_s + n)), list(range(i_g, i_g + n))

    def keys_values(self, requests, preserve) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Erase keys and guide embeddings ``[D, Ne]``, preserve keys ``[D, Np]`` (context space), and the
        number of preserved prompts."""
        pairs = self.concept_pairs(requests)
        emb_c = self.t2i.encode([p[0] for p in pairs]).float()
        emb_g = self.t2i.encode([p[1] for p in pairs]).float()
        C_e, C_g = [], []
        for j, (c, g, s) in enumerate(pairs):
            ps, pg = self.erase_positions(c, g, s)
            C_e.append(emb_c[j, ps])
            C_g.append(emb_g[j, pg])
        keep = list(dict.fromkeys([*self.preserve, *preserve] + ([""] if self.tokens == "last_to_end" else [])))
        keep = [q for q in keep if q.strip().lower() not in {p[0].strip().lower() for p in pairs}]
        if keep:
            emb_q = self.t2i.encode(keep).float()
            if self.tokens == "last":
                C_q = torch.stack([emb_q[j, self.t2i.token_index(q) if q else 0] for j, q in enumerate(keep)])
            else:
                C_q = emb_q.reshape(-1, emb_q.shape[-1])
        else:
            C_q = emb_c.new_zeros(0, emb_c.shape[-1])
        return torch.cat(C_e).T, torch.cat(C_g).T, C_q.T, len(keep)

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        if self.t2i.family in MMDIT:
            return self._edit_mmdit(requests, preserve)
        if self.debias is not None:
            return self._debias(requests, preserve)
        C_e, C_g, C_q, n_keep = self.keys_values(requests, preserve)
        s_p = self.preserve_scale if self.preserve_scale is not None else max(0.1, 1 / max(n_keep, 1))
        K = torch.cat([C_e, C_q], 1)
        w = torch.cat([torch.full((C_e.shape[1],), float(self.erase_scale)), torch.full((C_q.shape[1],), float(s_p))])

        def values(W):  # every matrix shares the keys: one factored system, solved matrix by matrix
            V_e = W @ C_g
            if self.technique == "tensor":  # remove the component along the concept's own output W c_e
                u = torch.nn.functional.normalize(W @ C_e, dim=0)
                V_e = V_e - (V_e * u).sum(0, keepdim=True) * u
            return torch.cat([V_e, W @ C_q], 1)

        self.conditions.append(ridge_update_(list(self.edited_parameters().values()), K, values, self.lam, weights=w.to(K.device)))

    # ------------------------------------------------------------------ SD3 / FLUX
    def _edit_mmdit(self, requests, preserve) -> None:
        """UCE's MMDiT form (the authors' FLUX script, ``trainscripts/uce_flux_edit.py``): the same closed form on
        ``context_embedder`` (keys: the prompt's last-token state in ``context``, :meth:`MMDiTModel.last_token_positions`)
        and on the pooled text projection ``time_text_embed.text_embedder.linear_1`` (keys: the pooled embedding);
        guide values from the unedited weights, every preserve prompt kept (``preserve_scale`` default 1, theirs).
        Values are ``W c`` without the layers' bias; the authors' script puts the bias in (``W c + b``), so its
        edited layer adds the bias twice to what it maps: ``values_with_bias`` is not offered, said here."""
        if self.debias is not None or self.technique != "replace" or self.tokens != "last_to_end" or not self.with_to_k:
            raise UsageError(f"UCE on {self.t2i.family} has one form (the authors' FLUX script): debias, technique, "
                             "tokens and with_to_k are SD-1/2/XL options; leave them at their defaults")
        pairs = self.concept_pairs(requests)
        concepts = {c.strip().lower() for c, _, _ in pairs}
        keep = [q for q in dict.fromkeys([*self.preserve, *preserve]) if q.strip().lower() not in concepts]
        prompts = list(dict.fromkeys([p for c, g, _ in pairs for p in (c, g)] + keep))
        cond = self.t2i.condition(prompts)
        at = {p: i for i, p in enumerate(prompts)}
        pos = {p: self.t2i.last_token_positions(p) for p in prompts}  # SD3: two (CLIP's, T5's); FLUX: one

        def ctx_keys(ps):  # [D, N]: each prompt's last-token states
            rows = [cond.context[at[p], pos[p]] for p in ps]
            return (torch.cat(rows) if rows else cond.context.new_zeros(0, cond.context.shape[-1])).double().T

        def pool_keys(ps):  # [P, N]: each prompt's pooled embedding
            return (torch.stack([cond.pooled[at[p]] for p in ps]) if ps else cond.pooled.new_zeros(0, cond.pooled.shape[-1])).double().T

        erase, guide = [c for c, _, _ in pairs], [g for _, g, _ in pairs]
        if self.t2i.family == "sd3":  # a concept's two positions pair with its guide's two
            assert all(len(pos[c]) == len(pos[g]) for c, g in zip(erase, guide))
        s_p = 1.0 if self.preserve_scale is None else self.preserve_scale
        for p, keys in zip(self.edited_parameters().values(), (ctx_keys, pool_keys)):
            K_e, K_g, K_q = keys(erase), keys(guide), keys(keep)
            W = p.detach().double()
            w = torch.cat([torch.full((K_e.shape[1],), float(self.erase_scale)), torch.full((K_q.shape[1],), float(s_p))])
            system = RidgeSystem(torch.cat([K_e, K_q], 1), self.lam, w.to(W.device, W.dtype))
            p.copy_(system.solve(p.detach(), torch.cat([W @ K_g, W @ K_q], 1)))
            self.conditions.append(system.condition)

    # ------------------------------------------------------------------ debiasing
    def debias_prompts(self, requests) -> list[tuple[str, list[str]]]:
        """``(prompt, [the prompt with its concept replaced by each attribute])`` for every concept and template."""
        out = []
        for r in requests:
            concept = r.subject or r.source
            for t in self.debias.templates:
                old = t.format(concept)
                out.append((old, [old.replace(concept, a.format(concept) if "{}" in a else a) for a in self.debias.attributes]))
        return out

    def report(self) -> dict:
        out = super().report()
        if self._debias_log:
            out["debias"] = list(self._debias_log)
        return out

    def _shares(self, net, prompt: str, texts: list[str], rnd: int) -> torch.Tensor:
        from ..metrics.clip_score import zero_shot

        d = self.debias
        shares = []
        for k in range(d.seeds):
            first = d.seed + 1000 * rnd + k * d.images
            images = self.t2i.generate([prompt] * d.images, list(range(first, first + d.images)), d.sampler)
            shares.append(torch.nn.functional.one_hot(zero_shot(net, images, texts).argmax(-1), len(texts)).double())
        return torch.cat(shares).mean(0)

    def _debias(self, requests, preserve) -> None:
        from ..metrics.clip_score import clip_net

        d = self.debias
        net = clip_net(d.classifier)
        pairs = self.debias_prompts(requests)
        desired = torch.full((len(d.attributes),), 1 / len(d.attributes), dtype=torch.float64)
        retain = list(dict.fromkeys([*self.preserve, *preserve]))
        shares: list[torch.Tensor | None] = [None] * len(pairs)
        gaps = [float("inf")] * len(pairs)
        log = {"prompts": [p for p, _ in pairs], "attributes": list(d.attributes), "rounds": []}
        for rnd in range(d.rounds):
            for i, (old, new) in enumerate(pairs):
                if gaps[i] >= d.tolerance:  # prompts within tolerance keep their last measurement (UCE's bypass)
                    shares[i] = self._shares(net, old, new, rnd)
            gaps = [float((s - desired).abs().max()) for s in shares]
            log["rounds"].append({"shares": [s.tolist() for s in shares], "max_gap": max(gaps)})
            if max(gaps) < d.tolerance:
                break
            weights = [d.step * (desired - s) if g >= d.tolerance else torch.zeros_like(desired) for s, g in zip(shares, gaps)]
            retain = list(dict.fromkeys(retain + [old for (old, _), g in zip(pairs, gaps) if g < d.tolerance]))
            self._debias_solve(pairs, weights, retain)
        log["converged"] = max(gaps) < d.tolerance
        self._debias_log.append(log)

    def _debias_solve(self, pairs, weights, retain) -> None:
        """One closed form on the current weights: every prompt's aligned keys towards its moved values (weight 1),
        the retained prompts' 77 positions kept (weight s_p)."""
        L = self.t2i.max_length
        C, U, spans = [], [], []
        for old, new in pairs:
            emb = self.t2i.encode([old, *new]).float()
            idx = [self.t2i.token_index(t) for t in (old, *new)]
            far = max(idx)
            C.append(emb[0, idx[0]:L - max(0, far - idx[0])])
            U.append([emb[j + 1, idx[j + 1]:L - max(0, far - idx[j + 1])] for j in range(len(new))])
            spans.append(C[-1].shape[0])
        C_q = self.t2i.encode(retain).float().reshape(-1, C[0].shape[-1]) if retain else C[0].new_zeros(0, C[0].shape[-1])
        K = torch.cat([*C, C_q]).T
        w = torch.cat([torch.ones(sum(spans)), torch.full((C_q.shape[0],), float(self.debias.preserve_scale))])

        def values(W):
            V = []
            for c, us, wt in zip(C, U, weights):
                o = W @ c.T  # [d_out, n]
                v = o.clone()
                for j, u in enumerate(us):
                    wu = W @ u.T
                    v = v + float(wt[j]) * o.norm() * wu / wu.norm()  # UCE: Frobenius norms of the whole slice
                V.append(v)
            return torch.cat(V + [W @ C_q.T], 1)

        self.conditions.append(ridge_update_(list(self.edited_parameters().values()), K, values, self.lam, weights=w.to(K.device)))
