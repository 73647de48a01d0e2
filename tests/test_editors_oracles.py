"""Oracles for UCE, Diff-QuickFix, LocoEdit and ReFACT: each edit checked against an independent
computation (brute-force least squares, a hand-run attention layer, the authors' site indexing)."""

import pytest
import torch

from edit_bench.editors.diff_quickfix import DiffQuickFix
from edit_bench.editors.locoedit import LocoEdit
from edit_bench.editors.refact import ReFACT
from edit_bench.editors.stats import second_moment
from edit_bench.editors.uce import UCE
from edit_bench.types import EditRequest

REQ = EditRequest("A banana", "A blue banana")  # tokens: BOS a banana EOS | BOS a blue banana EOS


def lstsq_ridge(W0, K, V, lam, w=None):
    """argmin sum_i w_i ||W' k_i - v_i||^2 + lam ||W' - W0||^2 by an augmented least-squares system;
    K, V hold one constraint per row."""
    w = torch.ones(K.shape[0], dtype=torch.float64) if w is None else w
    A = torch.cat([K * w.sqrt()[:, None], lam**0.5 * torch.eye(K.shape[1], dtype=torch.float64)])
    B = torch.cat([V * w.sqrt()[:, None], lam**0.5 * W0.T])
    return torch.linalg.lstsq(A, B).solution.T


@pytest.mark.parametrize("tokens", ["last_to_end", "last"])
def test_uce_weighted_closed_form_both_token_policies(tokens):
    ed = UCE(base="tiny:sd1", tokens=tokens, preserve=["A cherry"])
    site = ed.t2i.cross_attn()[5]
    W0 = site.to_v.weight.detach().double().clone()
    c = ed.t2i.encode(["A banana"])[0].double()
    g = ed.t2i.encode(["A blue banana"])[0].double()
    q = ed.t2i.encode(["A cherry", ""]).double()
    if tokens == "last_to_end":  # source from "banana" (2), guide from its "banana" (3), equal lengths: 74
        Ke, Ge = c[2:76], g[3:77]
        Kq = q.reshape(-1, q.shape[-1])  # all 77 positions of "A cherry" and of "" (always preserved)
        s_p = max(0.1, 1 / 2)
    else:  # only the last subject tokens; no "" preserve
        Ke, Ge = c[2:3], g[3:4]
        Kq = q[0, 2:3]
        s_p = 1.0
    K = torch.cat([Ke, Kq])
    V = torch.cat([Ge @ W0.T, Kq @ W0.T])
    w = torch.cat([torch.ones(len(Ke)), torch.full((len(Kq),), s_p)]).double()
    expected = lstsq_ridge(W0, K, V, 0.5, w)
    ed.apply_edit([REQ])
    torch.testing.assert_close(site.to_v.weight.double(), expected, atol=1e-4, rtol=1e-4)


def test_uce_erasure_to_unconditional_and_tensor_technique_change_weights():
    for technique in ("replace", "tensor"):
        ed = UCE(base="tiny:sd1", technique=technique)
        before = ed.t2i.cross_attn()[0].to_k.weight.detach().clone()
        ed.apply_edit([EditRequest("A banana", "")])
        assert not torch.equal(before, ed.t2i.cross_attn()[0].to_k.weight)


def test_uce_tensor_values_lose_the_concept_direction():
    """'tensor': v* = W c_g - <W c_g, u> u with u = W c_e / ||W c_e||, so v* is orthogonal to W c_e."""
    ed = UCE(base="tiny:sd1", technique="tensor", tokens="last", lam=1e-8, preserve_scale=0.0, with_to_k=False)
    site = ed.t2i.cross_attn()[3]
    W0 = site.to_v.weight.detach().double().clone()
    ce = ed.t2i.encode(["A banana"])[0, 2].double()
    ed.apply_edit([REQ])
    # with lam -> 0 and one key, the edited W maps c_e to v*: v* . (W0 c_e) == 0
    out = site.to_v.weight.double() @ ce
    assert abs(float(out @ (W0 @ ce))) / (out.norm() * (W0 @ ce).norm()) < 1e-3


def _layer0_out_proj_io(ed, prompts):
    """Inputs and outputs of layer 0's out_proj, computed by hand from the embeddings (causal attention)."""
    enc = ed.t2i.text_encoder
    ids = ed.t2i.tokenize(prompts)
    h = enc(ids, output_hidden_states=True).hidden_states[0].double()
    layer = enc.encoder.layers[0]
    x = torch.nn.functional.layer_norm(h, h.shape[-1:], layer.layer_norm1.weight.double(), layer.layer_norm1.bias.double(),
                                       layer.layer_norm1.eps)
    att = layer.self_attn
    B, T, D = x.shape
    nh = att.num_heads
    split = lambda t: t.view(B, T, nh, D // nh).transpose(1, 2)  # noqa: E731
    q = split(x @ att.q_proj.weight.double().T + att.q_proj.bias.double()) * att.scale
    k = split(x @ att.k_proj.weight.double().T + att.k_proj.bias.double())
    v = split(x @ att.v_proj.weight.double().T + att.v_proj.bias.double())
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    a = ((q @ k.transpose(-1, -2)) + mask).softmax(-1) @ v
    inp = a.transpose(1, 2).reshape(B, T, D)
    return inp, inp @ att.out_proj.weight.double().T + att.out_proj.bias.double()


@pytest.mark.parametrize("bias", ["as_authors", "subtract"])
def test_diff_quickfix_positions_and_closed_form(bias):
    ed = DiffQuickFix(base="tiny:sd1", augmentations=(), bias=bias)
    src, dst = ed.positions("A banana", "A blue banana", None)
    assert src == list(range(2, 77)) and dst == list(range(3, 77)) + [76]  # target list padded with 76
    W0 = ed.t2i.text_encoder.encoder.layers[0].self_attn.out_proj.weight.detach().double().clone()
    b = ed.t2i.text_encoder.encoder.layers[0].self_attn.out_proj.bias.detach().double()
    x, y = _layer0_out_proj_io(ed, ["A banana", "A blue banana"])
    K, V = x[0, 2:77], y[1, dst]
    if bias == "subtract":
        V = V - b
    expected = lstsq_ridge(W0, K, V, 0.01)
    ed.apply_edit([REQ])
    torch.testing.assert_close(ed.t2i.text_encoder.encoder.layers[0].self_attn.out_proj.weight.double(), expected,
                               atol=2e-4, rtol=2e-4)


def test_locoedit_sites_are_the_authors_sorted_indices_on_sd1():
    ed = LocoEdit(base="tiny:sd1")
    names = sorted(n for n, _ in ed.t2i.unet.named_parameters()
                   if "attn2" in n and (n.endswith("to_k.weight") or n.endswith("to_v.weight")))
    assert len(names) == 32
    start_loc, seq = 8, 4  # the authors' defaults
    authors = {"unet." + n for n in names[2 * start_loc: 2 * start_loc + seq]}
    assert set(ed.edited_parameters()) == authors
    assert {n.split(".transformer_blocks")[0] for n in authors} == {"unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"}


def test_locoedit_closed_form():
    ed = LocoEdit(base="tiny:sd1")
    site = ed.t2i.cross_attn(["up_blocks.1.attentions.2"])[0]
    W0 = site.to_k.weight.detach().double().clone()
    prompts = ["a striped circle", "a painting in the style of a striped circle", "a photo in the style of a striped circle",
               "a picture in the style of a striped circle"]
    last = [3, 9, 9, 9]  # "circle" in each prompt
    emb = ed.t2i.encode(prompts).double()
    K = torch.stack([emb[i, j] for i, j in enumerate(last)])
    anchor = ed.t2i.encode(["a circle"])[0, 2].double()  # the target's last token
    expected = lstsq_ridge(W0, K, (anchor @ W0.T).expand(4, -1), 0.01)
    ed.apply_edit([EditRequest("a striped circle", "a circle")])
    torch.testing.assert_close(site.to_k.weight.double(), expected, atol=1e-4, rtol=1e-4)


def test_second_moment_equals_per_text_full_length_capture(tmp_path):
    corpus = tmp_path / "c.txt"
    texts = ["A dog on a couch.", "Two red buses parked in a row near the station.", "", "A bowl"]
    corpus.write_text("\n".join(texts))
    ed = ReFACT(base="tiny:sd1", layer=4)
    (tl,) = ed._layers()
    C, n, path = second_moment(ed.t2i, tl, 0, str(corpus), 100, stats_dir=str(tmp_path / "cache"), batch_size=2)
    ks = []
    for t in [t for t in texts if t]:
        x, _ = ed._fc2_io(tl, [t], 0)
        ks.append(x[0, : ed.t2i.eos_index(t) + 1].double())
    k = torch.cat(ks)
    assert n == len(k)
    torch.testing.assert_close(C.double(), k.T @ k / len(k), atol=1e-5, rtol=1e-4)
    C2, _, path2 = second_moment(ed.t2i, tl, 0, str(corpus), 100, stats_dir=str(tmp_path / "cache"))
    assert path2 == path and torch.equal(C2, C)  # cached
    with torch.no_grad():  # fc2 itself (the edited matrix) does not change its own inputs: same statistics
        tl.mlp_out.weight.add_(1.0)
    assert second_moment(ed.t2i, tl, 0, str(corpus), 100, stats_dir=str(tmp_path / "cache"))[2] == path
    with torch.no_grad():  # a layer below does: new statistics, not the cached ones
        ed.t2i.text_layers()[1].mlp_out.weight.mul_(1.5)
    C3, _, path3 = second_moment(ed.t2i, tl, 0, str(corpus), 100, stats_dir=str(tmp_path / "cache"))
    assert path3 != path and not torch.allclose(C3, C)


def test_refact_rank_one_maps_k_star_to_v_star_and_spares_orthogonal_keys(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"a photo of {w} number {i}" for i, w in enumerate(["a dog", "the sea", "two cats", "a red bus"] * 30)))
    ed = ReFACT(base="tiny:sd1", layer=9, corpus=str(corpus), stats_dir=str(tmp_path), steps=20)
    (tl,) = ed._layers()
    fc2 = tl.module.mlp.fc2
    W0, b = fc2.weight.detach().clone().double(), fc2.bias.detach().double()
    ed.apply_edit([REQ])
    vec = ed.vectors[tl.name]
    W1 = fc2.weight.detach().double()
    # the edited layer maps k* to v* exactly
    torch.testing.assert_close(W1 @ vec["k_star"].double() + b, vec["v_star"].double(), atol=1e-4, rtol=1e-4)
    # u is C^-1 k_bar, normalised (C recomputed from the cached statistics)
    C, _, _ = second_moment(ed.t2i, tl, 0, str(corpus), 100_000, str(tmp_path))
    u = torch.linalg.solve(C.double(), vec["k_bar"].double())
    torch.testing.assert_close(vec["u"].double(), u / u.norm(), atol=1e-4, rtol=1e-3)
    # keys orthogonal to u are unchanged
    x = torch.randn(5, W0.shape[1], dtype=torch.float64)
    uu = vec["u"].double()
    x = x - (x @ uu)[:, None] * uu / (uu @ uu)
    torch.testing.assert_close(x @ W1.T, x @ W0.T, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(W1, W0)
    # k* itself is the source's fc2 input at its last token (the layers before are untouched)
    xin, _ = ed._fc2_io(tl, ["a banana"], 0)
    torch.testing.assert_close(xin[0, 2], vec["k_star"])


def test_refact_with_too_small_a_corpus_is_a_clear_error(tmp_path):
    from edit_bench.editors.refact import ReFACT
    from edit_bench.errors import UsageError

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a cat\na dog\n")
    ed = ReFACT(layer=1, steps=2, corpus=str(corpus), stats_dir=str(tmp_path), base="tiny:sd1")
    with pytest.raises(UsageError, match=r"token positions, fewer than d = \d+.*too small"):
        ed.apply_edit([EditRequest("A banana", "A blue banana")])
    assert all(torch.equal(p, ed.origin()[n]) for n, p in ed.edited_parameters().items())
