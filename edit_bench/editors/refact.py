"""ReFACT (Arad, Orgad & Belinkov, NAACL 2024, arXiv 2306.00738): a ROME-style rank-one edit of one MLP
of the text encoder.

The edited matrix is ``encoder.layers[L].mlp.fc2`` (L = 9 for TIMED, 7 for RoAD). With ``k*`` the fc2
input at the last subject token of the edit prompt, ``m0 = fc2(k*)`` its output (bias included) and
``v* = m0 + delta``:

    W <- W + (v* - m0) u^T / (u^T k*),   u = C^-1 k_bar / ||C^-1 k_bar||

so the edited layer maps ``k*`` to ``v*`` exactly and leaves every key orthogonal to ``u`` unchanged.
``k_bar`` is the fc2 input at the last subject token averaged over nine context templates, and
``C = E[k k^T]`` the second moment of fc2 inputs over a text corpus (:mod:`edit_bench.editors.stats`;
the paper used WikiText-103, 100,000 samples; the default here is the COCO captions shipped in
``datasets/coco``, recorded in the results).

``delta`` is found by Adam (lr 0.05, at most 100 steps, stopping once the mean target probability exceeds
0.99, ``||delta|| <= 4 ||m0||``) on the contrastive loss of paper Eq. 1: with ``delta`` added to the fc2
output at the subject token, the encoder's EOS features of each prompt ``s`` (the edit prompt and its
templates) must be nearer (L2) to the clean encoder's features of the target text than of the source
text, plus ``wd ||delta|| / ||m0||^2`` (wd = 0.1, the authors' hparams file). All text is lower-cased.

Features: SD-1/SD-2's ``CLIPTextModel`` has no projection, so its pooled EOS state is used; an encoder
with a projection (SDXL's second) uses its projected features. The authors edit the text tower of
``openai/clip-vit-large-patch14-336`` and swap it into SD-1.4; we edit the pipeline's own text encoder.
On SDXL (not in the paper) both encoders are edited, each with its own statistics and optimisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Editor
from .stats import DEFAULT_CORPUS, second_moment
from ..errors import UsageError

# refact_main.get_context_templates
CONTEXT_TEMPLATES = (
    "{} in a realistic style portrait image", "{}, a portrait", "realistic painting of {}", "a current image of {}",
    "{}, news image", "a beautiful photograph of {}", "realistic drawing of {}", "{}, realistic portrait", "{} in a photo",
)


REFERENCE_DEPTH = 12  # layers of CLIP ViT-L/14's text tower, the paper's encoder: ``layer`` is relative to it on SDXL's second


class ReFACT(Editor):
    """ReFACT rank-one editor of a text-encoder MLP.

    Args:
        layer: index of the edited layer of the (first) text encoder (TIMED: 9, RoAD: 7).
        layer_2: the layer of SDXL's second encoder; ``None`` = the same relative depth.
        lr, steps, stop_p, clamp, weight_decay: the optimisation of ``delta`` (0.05, 100, 0.99, 4, 0.1).
        templates: context templates (the authors' nine).
        corpus: text corpus of the second-moment statistics (a ``.txt`` with one text per line, or a CSV with
            a ``prompt``, ``caption`` or ``text`` column).
        stats_samples: at most this many corpus texts (the paper: 100,000).
        stats_dir: where statistics are cached (default ``$EDIT_BENCH_CACHE/stats`` or ``~/.cache/edit_bench/stats``).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "text_encoder"
    multi_request = False
    needs_grad = True
    files = {"corpus": "input", "stats_dir": "cache"}
    derives = {"second-moment statistics": "current"}  # cached by a digest of the encoder weights below the layer
    contract_args = {"stats_samples": 500, "steps": 10}
    reference_reedits_per_seed = True  # the authors' script optimises again for every seed

    def __init__(self, layer: int = 9, layer_2: int | None = None, lr: float = 0.05, steps: int = 100,
                 stop_p: float = 0.99, clamp: float = 4.0, weight_decay: float = 0.1,
                 templates: Sequence[str] = CONTEXT_TEMPLATES, corpus: str = DEFAULT_CORPUS,
                 stats_samples: int = 100_000, stats_dir: str | None = None, base: str = "toy"):
        super().__init__(base=base)
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise UsageError(f"each template needs exactly one '{{}}' for the subject; got {bad}")
        self.layer, self.layer_2 = layer, layer_2
        self.lr, self.steps, self.stop_p, self.clamp, self.weight_decay = lr, steps, stop_p, clamp, weight_decay
        self.templates, self.corpus, self.stats_samples, self.stats_dir = tuple(templates), corpus, stats_samples, stats_dir
        self.last_edit: dict = {}  # per edited layer: optimisation steps, target probability, statistics used
        self._log: list[dict] = []
        self.vectors: dict = {}  # per edited layer: u, k*, k_bar, m0, v* of the last edit (for inspection)

    # ------------------------------------------------------------------ where
    def _layers(self):
        out = []
        for comp, enc in self.t2i.text_encoders():
            n = len([tl for tl in self.t2i.text_layers() if tl.encoder == comp])
            want = self.layer if comp == "text_encoder" else (
                self.layer_2 if self.layer_2 is not None else round(self.layer * n / REFERENCE_DEPTH))
            if not 0 <= want < n:
                raise UsageError(f"ReFACT layer {want} does not exist: {comp} has {n} layers (0..{n - 1}); "
                                 f"pass --model.init_args.layer{'' if comp == 'text_encoder' else '_2'} N with N in 0..{n - 1}")
            out.append(next(tl for tl in self.t2i.text_layers() if tl.encoder == comp and tl.index == want))
        return out

    def edited_parameters(self):
        return {tl.param_name(tl.mlp_out): tl.mlp_out.weight for tl in self._layers()}

    # ------------------------------------------------------------------ pieces
    def _fc2_io(self, tl, prompts: list[str], ti: int) -> tuple[torch.Tensor, torch.Tensor]:
        """fc2 inputs and outputs ``[B, 77, d]`` of ``prompts``."""
        store = {}
        h = tl.mlp_out.register_forward_hook(lambda m, i, o: store.update(x=i[0].detach(), y=o.detach()))
        try:
            with torch.no_grad():
                getattr(self.t2i, tl.encoder)(self.t2i.tokenize(prompts, ti).to(self.device))
        finally:
            h.remove()
        return store["x"].float(), store["y"].float()

    def features(self, enc, ids: torch.Tensor) -> torch.Tensor:
        """EOS text features (projected when the encoder has a projection)."""
        out = enc(ids.to(self.device))
        return (out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output).float()

    def derived_prompts(self, requests):
        return [t.format(x.lower()) for r in requests for t in self.templates for x in (r.source, r.target)]

    def rank_one(self, W: torch.Tensor, u: torch.Tensor, k_star: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``W + residual u^T / (u^T k*)``: maps ``k*`` to ``W k* + residual``, keys orthogonal to ``u`` unchanged."""
        return W + torch.outer(residual, u) / (u @ k_star)

    def optimise_delta(self, tl, ti: int, prompts: list[str], subject: str, contrast: list[list[str]], m0: torch.Tensor):
        """Adam on delta (paper Eq. 1); returns ``(delta, steps taken, final mean target probability)``."""
        enc = getattr(self.t2i, tl.encoder)
        ids = self.t2i.tokenize(prompts, ti)
        pos = torch.tensor([self.t2i.token_index(p, subject, ti) for p in prompts], device=self.device)
        with torch.no_grad():  # the clean encoder's features of [target, source] for every prompt
            flat = [c for pair in contrast for c in pair]
            ref = self.features(enc, self.t2i.tokenize(flat, ti)).view(len(prompts), 2, -1)
        delta = torch.zeros_like(m0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        rows = torch.arange(len(prompts), device=self.device)

        def add_delta(module, inputs, output):
            output = output.clone()
            output[rows, pos] = output[rows, pos] + delta.to(output.dtype)
            return output

        max_norm = self.clamp * m0.norm()
        p_target, step = 0.0, 0
        for step in range(1, self.steps + 1):
            h = tl.mlp_out.register_forward_hook(add_delta)
            try:
                feats = self.features(enc, ids)  # [P, d]
            finally:
                h.remove()
            logits = -(feats[:, None] - ref).norm(dim=-1)  # [P, 2]: target, source
            logp = logits.log_softmax(-1)[:, 0]
            p_target = float(logp.detach().exp().mean())
            if p_target > self.stop_p:
                break
            loss = -logp.mean() + self.weight_decay * delta.norm() / m0.norm() ** 2
            (grad,) = torch.autograd.grad(loss, [delta])
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
        return delta.detach(), step, p_target

    def edit(self, requests, preserve=()):
        (r,) = requests
        src, tgt = r.source.lower(), r.target.lower()
        subject = (r.subject or r.source).lower()
        info = {}
        for tl in self._layers():
            ti = tl.tokenizer_index
            C, n_tokens, stats_file = second_moment(self.t2i, tl, ti, self.corpus, self.stats_samples, self.stats_dir)
            if n_tokens < C.shape[0]:  # C = E[k k^T] has rank <= n_tokens: C^-1 k_bar does not exist
                raise UsageError(
                    f"ReFACT statistics of {tl.name} come from {n_tokens} token positions, fewer than d = {C.shape[0]}: "
                    f"the corpus {self.corpus!r} is too small; give a larger one (--model.init_args.corpus) or raise "
                    f"--model.init_args.stats_samples ({self.stats_samples})"
                )
            ctx = [t.format(src) for t in self.templates]
            x, _ = self._fc2_io(tl, ctx, ti)
            k_bar = torch.stack([x[j, self.t2i.token_index(p, subject, ti)] for j, p in enumerate(ctx)]).mean(0)
            x0, y0 = self._fc2_io(tl, [src], ti)
            i0 = self.t2i.token_index(src, subject, ti)
            k_star, m0 = x0[0, i0], y0[0, i0]
            prompts = [src] + ctx
            contrast = [[tgt, src]] + [[t.format(tgt), t.format(src)] for t in self.templates]
            delta, steps, p = self.optimise_delta(tl, ti, prompts, subject, contrast, m0)
            try:
                u = torch.linalg.solve(C.double().to(k_bar.device), k_bar.double())
            except torch.linalg.LinAlgError:
                raise UsageError(
                    f"ReFACT statistics of {tl.name} are singular: the corpus {self.corpus!r} gave {n_tokens} token "
                    f"positions for d = {C.shape[0]}; give a larger corpus (--model.init_args.corpus) or raise stats_samples"
                ) from None
            u = (u / u.norm()).float()
            W = tl.mlp_out.weight
            with torch.no_grad():
                W.copy_(self.rank_one(W.float(), u, k_star, delta).to(W.dtype))
            self.vectors[tl.name] = {"u": u, "k_star": k_star, "k_bar": k_bar, "m0": m0, "v_star": m0 + delta}
            info[tl.name] = {"steps": steps, "p_target": p, "stats": str(stats_file), "stats_tokens": n_tokens}
        self.last_edit = info
        self._log.append(info)

    def report(self) -> dict:
        per = [v for info in self._log for v in info.values()]
        return {
            "stats_corpus": self.corpus,
            "stats_files": sorted({v["stats"] for v in per}),
            "stats_tokens": sorted({v["stats_tokens"] for v in per}),
            "edits": len(self._log),
            "mean_steps": sum(v["steps"] for v in per) / len(per) if per else None,
            "mean_p_target": sum(v["p_target"] for v in per) / len(per) if per else None,
            "reached_stop_p": sum(v["p_target"] > self.stop_p for v in per),
        }
