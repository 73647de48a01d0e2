"""RECE, SPEED and OCE: their linear-algebra primitives against independent computations, the properties their
papers state, and the editors' own promises on the tiny models."""

import json

import pytest
import torch

from edit_bench.editors.ridge import adversarial_map, nullspace_projector, procrustes_rotation, projected_update
from edit_bench.errors import UsageError
from edit_bench.types import EditRequest


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_adversarial_map_equals_the_stacked_least_squares_solution():
    g = _g()
    Ws = [torch.randn(d, 6, generator=g, dtype=torch.float64) for d in (4, 7)]
    W0s = [W + 0.3 * torch.randn(W.shape, generator=g, dtype=torch.float64) for W in Ws]
    c, gamma = torch.randn(6, generator=g, dtype=torch.float64), 0.1
    A = adversarial_map(Ws, W0s, gamma)
    lhs = torch.cat([*Ws, gamma**0.5 * torch.eye(6, dtype=torch.float64)])
    rhs = torch.cat([*(W0 @ c for W0 in W0s), torch.zeros(6, dtype=torch.float64)])
    torch.testing.assert_close(A @ c, torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0], atol=1e-10, rtol=1e-10)
    with pytest.raises(UsageError, match="gamma must be > 0"):
        adversarial_map(Ws, W0s, 0.0)


def test_nullspace_projector_spans_the_small_eigenvectors():
    g = _g(1)
    Q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64)).Q
    evals = torch.tensor([5.0, 3.0, 1.0, 0.5, 1e-3, 1e-4, 0.0, 0.0], dtype=torch.float64)
    C = Q @ torch.diag(evals) @ Q.T
    P = nullspace_projector(C, 0.1)
    expected = Q[:, 4:] @ Q[:, 4:].T  # an independent construction from the known eigenvectors
    torch.testing.assert_close(P, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(P @ P, P, atol=1e-10, rtol=0)
    with pytest.raises(UsageError, match="no null space.*raise threshold"):
        nullspace_projector(C + torch.eye(8, dtype=torch.float64), 0.1)


def test_projected_update_keeps_the_retain_span_and_the_invariant_keys():
    """Delta r = 0 whenever P r = 0, Delta K2 = 0 at lam = 0 (SPEED's two constraints), and the formula equals a
    direct evaluation with explicit float64 inverses."""
    g = _g(2)
    d = 10
    R = torch.randn(d, 4, generator=g, dtype=torch.float64)  # retain keys
    P = nullspace_projector(R @ R.T / 4, 1e-8)
    W = torch.randn(6, d, generator=g, dtype=torch.float64)
    c, a = torch.randn(d, 2, generator=g, dtype=torch.float64), torch.randn(d, 2, generator=g, dtype=torch.float64)
    C_ee, C_ae = c @ c.T / 2, a @ c.T / 2
    K2 = torch.randn(d, 3, generator=g, dtype=torch.float64)
    delta = projected_update(W, C_ee, C_ae, P, K2, alpha=1.0, lam=0.0)
    assert float((delta @ R).abs().max()) < 1e-9
    assert float((delta @ K2).abs().max()) < 1e-9
    assert float(delta.abs().max()) > 1e-3  # and the edit is not empty
    I = torch.eye(d, dtype=torch.float64)
    M = torch.linalg.inv(C_ee @ P + 0.7 * I)
    inner = I - M @ K2 @ torch.linalg.inv(K2.T @ P @ M @ K2 + 0.5 * torch.eye(3, dtype=torch.float64)) @ K2.T @ P
    torch.testing.assert_close(projected_update(W, C_ee, C_ae, P, K2, 0.7, 0.5), W @ (C_ae - C_ee) @ P @ inner @ M,
                               atol=1e-9, rtol=1e-9)


def test_procrustes_rotation_is_the_best_proper_rotation():
    g = _g(3)
    for _ in range(20):
        M = torch.randn(5, 5, generator=g, dtype=torch.float64)
        R = procrustes_rotation(M)
        torch.testing.assert_close(R.T @ R, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
        assert float(torch.linalg.det(R)) == pytest.approx(1.0)
        s = torch.linalg.svdvals(M)
        sign = float(torch.sign(torch.linalg.det(M)))
        best = float(s[:-1].sum() + sign * s[-1])  # the known optimum of tr(R^T M) over SO(n)
        assert float(torch.trace(R.T @ M)) == pytest.approx(best, abs=1e-9)
        for _ in range(5):  # no random rotation does better
            Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64)).Q
            Q[:, 0] *= torch.sign(torch.linalg.det(Q))
            assert float(torch.trace(Q.T @ M)) <= best + 1e-9
    with pytest.raises(UsageError, match="non-finite"):
        procrustes_rotation(torch.full((3, 3), float("nan")))


@pytest.mark.parametrize("name", ["SPEED", "OCE", "RECE"])
def test_empty_concept_list_is_refused(name):
    from edit_bench.editors import discover

    ed = discover()[name](base="tiny:sd1", **({"corpus_samples": 50} if name == "OCE" else {}))
    with pytest.raises(UsageError, match="at least one concept"):
        ed.edit([])


def test_oce_rotates_outputs_without_rescaling():
    """OCE's invariant: W* = R W with R orthogonal, so every output keeps its norm and every angle between outputs."""
    from edit_bench.editors.oce import OCE

    ed = OCE(base="tiny:sd1", erase_scale=50.0, corpus_samples=50)
    before = {n: p.detach().clone().double() for n, p in ed.edited_parameters().items()}
    ed.apply_edit([EditRequest("A banana", ""), EditRequest("A bear", "")])
    x = torch.randn(before[next(iter(before))].shape[1], 9, generator=_g(4), dtype=torch.float64)
    for n, p in ed.edited_parameters().items():
        W0, W1 = before[n], p.detach().double()
        assert not torch.allclose(W0, W1)
        torch.testing.assert_close((W1 @ x).norm(dim=0), (W0 @ x).norm(dim=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close((W1 @ x).T @ (W1 @ x), (W0 @ x).T @ (W0 @ x), rtol=1e-4, atol=1e-4)


def test_speed_keeps_retained_concepts_and_the_null_text_and_repeats_exactly():
    """With DPA off, SPEED's edit leaves the retained concepts' last-token values and the null text's BOS unchanged
    (up to the null space's threshold), moves the target's, and the same seed gives the same weights."""
    from edit_bench.editors.speed import SPEED

    def run(**kw):
        ed = SPEED(base="tiny:sd1", threshold=1e-6, aug=0, filter=False, retain=["A bear", "A cat", "A dog"], **kw)
        before = {n: p.detach().clone() for n, p in ed.edited_parameters().items()}
        ed.apply_edit([EditRequest("A banana", "")])
        return ed, before

    ed, before = run()
    t2i = ed.t2i
    keys = ed._keys(["A bear", "A cat", "A dog", "A banana"]).float().T
    bos = t2i.encode([""])[0, 0]
    for n, p in ed.edited_parameters().items():
        moved = (p.detach() - before[n]) @ keys
        assert float(moved[:, :3].abs().max()) < 1e-4 * float(moved[:, 3].abs().max())
        assert float(((p.detach() - before[n]) @ bos).abs().max()) < 1e-4
    again, _ = run()
    for n, p in ed.edited_parameters().items():
        assert torch.equal(p, again.edited_parameters()[n])


def test_speed_refuses_a_retain_set_without_null_space():
    """90 retained toy prompts span all 64 dimensions of the toy context (smallest eigenvalue of their second
    moment about 2e-7): at threshold 1e-7 nothing is left to edit in, which is refused, naming the count."""
    from edit_bench.editors.speed import SPEED
    from edit_bench.models.toy import world

    names = [f"a {s} {c} {sh}" for s in world.SIZES for c in world.COLOURS for sh in world.SHAPES]
    ed = SPEED(base="toy", threshold=1e-7, aug=0, filter=False, retain=names)
    with pytest.raises(UsageError, match=r"90 retain keys .* in 64 dimensions.*no null space"):
        ed.apply_edit([EditRequest("a circle", "")])


def test_rece_rounds_move_the_edit_beyond_uce_and_zero_rounds_is_uce():
    from edit_bench.editors.rece import RECE
    from edit_bench.editors.uce import UCE

    req = [EditRequest("A banana", "")]
    uce = UCE(base="tiny:sd1")
    uce.apply_edit(req)
    r0 = RECE(base="tiny:sd1", epochs=0)
    r0.apply_edit(req)
    r2 = RECE(base="tiny:sd1", epochs=2)
    r2.apply_edit(req)
    for n, p in uce.edited_parameters().items():
        assert torch.equal(p, r0.edited_parameters()[n])
        assert not torch.allclose(p, r2.edited_parameters()[n])
    assert len(r2.report()["rece"]["adversarial_map_shift"]) == 2


# ---------------------------------------------------------------------------------------------- MACE
def test_mace_alignment_keeps_prefix_suffix_and_paired_padding():
    from edit_bench.editors.mace import aligned_positions

    oi, ni = aligned_positions([0, 1, 2, 3, 9], [0, 1, 7, 9], 77)  # BOS a <concept concept> EOS / BOS a <new> EOS
    assert oi[:3] == [0, 1, 4] and ni[:3] == [0, 1, 3]
    assert oi[3:] == list(range(5, 77)) and ni[3:] == list(range(4, 76))  # padding paired from each EOS on
    oi, ni = aligned_positions([0, 5, 9], [0, 9], 77)  # erasing to the empty prompt: BOS and EOS + padding
    assert oi[:2] == [0, 2] and ni[:2] == [0, 1] and len(oi) == len(ni) == 76


def test_mace_importance_sampling_favours_middle_timesteps():
    from edit_bench.editors.mace import importance_weights

    w = importance_weights()
    assert 250 < int(w.argmax()) < 350 and float(w[0]) < 1e-3 * float(w.max()) and float(w[999]) < 1e-3 * float(w.max())


def test_mace_refuses_missing_images_and_masks(tmp_path):
    from edit_bench.editors.mace import MACE

    with pytest.raises(UsageError, match="render.*toy world.*folder"):
        MACE(base="tiny:sd1")
    with pytest.raises(UsageError, match="neither"):
        MACE(base="tiny:sd1", data=str(tmp_path / "nowhere"))
    from PIL import Image

    (tmp_path / "A banana").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "A banana" / "0.png")
    ed = MACE(base="tiny:sd1", data=str(tmp_path), images=1, steps=1, corpus_samples=50, lam=0.5)
    with pytest.raises(UsageError, match="has no mask"):
        ed.apply_edit([EditRequest("A banana", "")])
    assert not hasattr(ed.t2i.unet, "peft_config")  # nothing attached, nothing changed
    (tmp_path / "A banana" / "masks").mkdir()
    Image.new("L", (32, 32), 255).save(tmp_path / "A banana" / "masks" / "0.png")
    ed.apply_edit([EditRequest("A banana", "")])  # with its mask, the folder trains
    assert ed.losses and ed.delta_state_dict()


def _mace_toy(**kw):
    from edit_bench.editors.mace import MACE

    return MACE(base="toy", steps=3, images=2, corpus_samples=100, templates=["{}", "a photo of {}"], **kw)


def test_mace_fit_equals_the_per_case_edit_and_resumes_to_the_same_delta(tmp_path):
    """Lightning's fit (2 concepts x 3 steps, one LoRA each, checkpointed LoRAs) and edit() draw the same samples
    and reach the same fused weights; an interrupted fit resumes from its checkpoint to the same delta."""
    from safetensors.torch import load_file

    from edit_bench.benchmarks.requests import EditRequests
    from edit_bench.cli import EditTrainer
    from edit_bench.editors.mace import MACE

    reqs = [{"source": "a star", "target": ""}, {"source": "a diamond", "target": ""}]

    def trainer(steps=6):
        return EditTrainer(max_steps=steps, checkpoint_every=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)

    fitted = _mace_toy()
    trainer().fit(fitted, datamodule=EditRequests(requests=reqs), out_dir=tmp_path / "whole")
    edited = _mace_toy()
    edited.apply_edit([EditRequest(**r) for r in reqs])
    assert fitted.losses == pytest.approx(edited.losses, rel=1e-4)
    whole = load_file(str(tmp_path / "whole/edit.safetensors"))
    assert len(whole) == 32
    for n, d in edited.delta_state_dict().items():
        torch.testing.assert_close(whole[n], d, atol=1e-5, rtol=1e-4)

    class Cut(MACE):
        failed = False

        def training_step(self, batch, batch_idx):
            if self.global_step == 4 and not type(self).failed:
                type(self).failed = True
                raise RuntimeError("interrupted")
            return super().training_step(batch, batch_idx)

    kw = dict(base="toy", steps=3, images=2, corpus_samples=100, templates=["{}", "a photo of {}"])
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer().fit(Cut(**kw), datamodule=EditRequests(requests=reqs), out_dir=tmp_path / "cut")
    trainer().fit(Cut(**kw), datamodule=EditRequests(requests=reqs), out_dir=tmp_path / "cut")
    cut = load_file(str(tmp_path / "cut/edit.safetensors"))
    for n in whole:
        torch.testing.assert_close(cut[n], whole[n], atol=1e-6, rtol=1e-5)
    with pytest.raises(UsageError, match="--trainer.max_steps 6"):
        trainer(5).fit(_mace_toy(), datamodule=EditRequests(requests=reqs), out_dir=tmp_path / "short")
    assert not (tmp_path / "short").exists()  # refused before anything is written


def test_mace_toy_masks_are_the_rendered_object():
    """On the toy world the stand-in for Grounded-SAM is the renderer's own mask: the object's pixels for an object,
    the whole image for a style."""
    ed = _mace_toy()
    obj = ed._concept_data(EditRequest("a red star", ""), 0)
    assert 0.05 < float((obj["masks"] > 0.5).float().mean()) < 0.5
    red = torch.tensor([0.86, 0.16, 0.16])[:, None]
    inside = obj["images"][0].reshape(3, -1)[:, (obj["masks"][0, 0] > 0.99).reshape(-1)]
    torch.testing.assert_close(inside, red.expand_as(inside), atol=0.02, rtol=0)
    style = ed._concept_data(EditRequest("a circle by Pell", "a circle"), 0)
    assert bool((style["masks"] == 1).all())
    # the concept's tokens: what the old prompt does not share with the new one, plus EOS and padding
    toks = ed.t2i.tokenizer.convert_ids_to_tokens(ed.t2i.tokenize(["a circle by Pell"])[0].tolist())
    named = [toks[i] for i in style["positions"][0] if toks[i] != toks[-1]]
    assert [t.strip("</w>") for t in named] == ["by", "pell"]


def test_a_numerically_singular_closed_form_is_refused():
    """MACE's lam = 0 on the random tiny model, whose contexts span fewer directions than their dimension: the
    system's condition is about 1e15, the solution noise; refused, naming the fix, with the weights untouched."""
    from edit_bench.editors.mace import MaceCFR

    ed = MaceCFR(base="tiny:sd1", corpus_samples=200, lam=0.0)
    before = {n: p.detach().clone() for n, p in ed.edited_parameters().items()}
    with pytest.raises(UsageError, match="numerically singular.*use lam > 0"):
        ed.apply_edit([EditRequest("A banana", "")])
    ed.restore()
    assert all(torch.equal(p, before[n]) for n, p in ed.edited_parameters().items())


@pytest.mark.parametrize("spec", ["tiny:sd1", "tiny:sdxl"])
def test_encoding_to_the_longest_prompt_equals_the_77_token_context_up_to_each_eos(spec):
    """Causal text encoders: the positions up to each prompt's EOS are the same whether the batch is padded to 77 or to
    its longest prompt (what SPEED and OCE read, at a fraction of the cost)."""
    from edit_bench.models import load_t2i

    t2i = load_t2i(spec)
    prompts = ["A banana", "A bear on a red bicycle in the rain", ""]
    full, short = t2i.encode(prompts), t2i.encode(prompts, longest=True)
    assert short.shape[1] < full.shape[1] == 77
    for j, p in enumerate(prompts):
        e = t2i.eos_index(p)
        torch.testing.assert_close(short[j, :e + 1], full[j, :e + 1], atol=1e-5, rtol=1e-5)


def test_context_moments_equal_a_direct_computation(tmp_path):
    """OCE's K0 (BOS..EOS of every caption, encoded to each batch's longest caption) and MACE's 77-position moment,
    against the 77-token contexts summed by hand."""
    from edit_bench.editors.stats import context_moment, read_corpus
    from edit_bench.models import load_t2i

    t2i = load_t2i("tiny:sd1")
    texts = read_corpus("datasets/coco/coco_30k.csv", 70)
    h = t2i.encode(texts).double()
    eos = torch.tensor([t2i.eos_index(t) for t in texts])
    keep = torch.arange(77)[None] <= eos[:, None]
    tok = h[keep]
    for positions, rows in (("tokens", tok), ("all", h.reshape(-1, h.shape[-1]))):
        C, n, _ = context_moment(t2i, "datasets/coco/coco_30k.csv", 70, positions, str(tmp_path), batch_size=32)
        assert n == rows.shape[0]
        torch.testing.assert_close(C, rows.T @ rows / n, atol=1e-5, rtol=1e-5)


def test_a_refused_closed_form_fit_is_one_line_and_writes_nothing(tmp_path, capsys):
    from helpers import ROOT, run_cli
    from edit_bench.models.toy import world

    names = [f"a {s} {c} {sh}" for s in world.SIZES for c in world.COLOURS for sh in world.SHAPES]
    code = run_cli(["fit", "--model", ROOT / "configs/editor/speed.yaml", "--model.init_args.threshold", "1e-7",
                    "--model.init_args.aug", "0", "--model.init_args.filter", "false", "--model.init_args.retain",
                    json.dumps(names), "--data", ROOT / "configs/benchmark/toy_erasure.yaml", "--data.rows", "2:3",
                    "--out_dir", tmp_path / "out"])
    err = capsys.readouterr().err
    assert code == 2 and "no null space" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [[], ["A dog"]])
def test_rece_weights_the_retained_empty_prompt_as_its_scripts_do(keep):
    """One adversarial round against an explicit weighted ridge (normal equations, float64): the retained " " counts
    once per concept without preserved concepts (the scripts list it per concept) and once with them (the scripts that
    take preserved concepts list it once)."""
    from edit_bench.editors.rece import RECE
    from edit_bench.editors.ridge import adversarial_map

    reqs = [EditRequest("A banana", ""), EditRequest("A bear", "")]
    warm = RECE(base="tiny:sd1", epochs=0)
    warm.apply_edit(reqs, keep)
    W1 = {n: p.detach().double().clone() for n, p in warm.edited_parameters().items()}
    ed = RECE(base="tiny:sd1", epochs=1)
    ed.apply_edit(reqs, keep)
    t2i, origin = ed.t2i, ed.origin()
    D = t2i.context_dim
    A = adversarial_map([W1[n].float() for n in W1], [origin[n] for n in W1], ed.gamma)
    K_adv = A @ t2i.encode([r.source for r in reqs]).double().reshape(-1, D).T
    V_g = t2i.encode([" ", " "]).double().reshape(-1, D).T
    C_q = t2i.encode([" ", *keep]).double().reshape(-1, D).T
    L = t2i.max_length
    w_q = torch.full((C_q.shape[1],), ed.adv_preserve_scale, dtype=torch.float64)
    w_q[:L] *= 1 if keep else len(reqs)
    K = torch.cat([K_adv, C_q], 1)
    w = torch.cat([torch.full((K_adv.shape[1],), ed.adv_erase_scale, dtype=torch.float64), w_q])
    eye = torch.eye(D, dtype=torch.float64)
    for n, W in W1.items():
        V = W @ torch.cat([V_g, C_q], 1)
        want = torch.linalg.solve((K * w) @ K.T + ed.adv_lam * eye, ((V * w) @ K.T + ed.adv_lam * W).T).T
        got = ed.edited_parameters()[n].double()
        assert float((got - want).norm() / want.norm()) < 2e-5, n
