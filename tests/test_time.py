import torch

from edit_bench.editors.time import TIME, align_tokens, augment
from edit_bench.types import EditRequest


def test_augment_lowers_leading_capital():
    assert augment("A banana", "A photo of ") == "A photo of a banana"
    assert augment("An apple", "An image of ") == "An image of an apple"


def test_alignment_on_known_prompts():
    ed = TIME(base="tiny:sd1")
    a = ed.alignment(["A banana", "An apple", "A photo of a bear"], ["A blue banana", "A red apple", "A photo of a polar bear"])
    # [BOS, a, banana, EOS, pad...] -> [BOS, a, blue, banana, EOS, ...]: "blue" (2) is skipped
    assert a[0, :6].tolist() == [0, 1, 3, 4, 5, 6]
    assert a[1, :6].tolist() == [0, 1, 3, 4, 5, 6]  # "an" matches "a"
    assert a[2, :8].tolist() == [0, 1, 2, 3, 4, 6, 7, 8]  # "polar" (5) is skipped
    assert a.shape == (3, 77) and a[0, -1] == 76 and a[0, -2] == 76  # clamped to the last position


def test_alignment_falls_back_in_order_when_a_token_is_missing():
    # source token 9 never occurs in the destination: it keeps the next position in line
    assert align_tokens([1, 9, 2, 2], [1, 5, 2, 2], eos_id=2) == [0, 1, 2, 3]


def test_time_matches_brute_force_least_squares():
    """Each edited matrix minimises sum ||W' c_i - W c*_pi(i)||^2 + lam ||W' - W||^2 over the four
    prompt pairs (the request and its three prefixes), solved here independently by lstsq."""
    ed = TIME(base="tiny:sd1", lam=0.1)
    req = EditRequest("A banana", "A blue banana")
    site = ed.t2i.cross_attn()[7]
    W0 = site.to_v.weight.detach().clone().double()
    src = ["A banana", "A photo of a banana", "An image of a banana", "A picture of a banana"]
    dst = ["A blue banana", "A photo of a blue banana", "An image of a blue banana", "A picture of a blue banana"]
    # destination positions of each source position, written out: one inserted token ("blue") per pair
    ins = [2, 5, 5, 5]
    idx = torch.tensor([[i if i < j else min(i + 1, 76) for i in range(77)] for j in ins])
    c = ed.t2i.encode(src).double()
    c_star = torch.stack([ed.t2i.encode(dst)[p].double()[idx[p]] for p in range(4)])
    K, V = c.reshape(-1, c.shape[-1]), c_star.reshape(-1, c.shape[-1]) @ W0.T  # rows = constraints
    lam = 0.1
    A = torch.cat([K, lam**0.5 * torch.eye(K.shape[1], dtype=torch.float64)])
    B = torch.cat([V, lam**0.5 * W0.T])
    expected = torch.linalg.lstsq(A, B).solution.T
    ed.apply_edit([req])
    torch.testing.assert_close(site.to_v.weight.double(), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(site.to_v.weight.double(), W0)


def test_time_edit_changes_the_source_image_only_through_kv():
    """While edited, the text encoder's output is bitwise the same (the edit lives in the K/V projections)
    and the image changes; after restore the image is bitwise the original."""
    from edit_bench.types import SamplerConfig

    ed = TIME(base="tiny:sd1")
    s = SamplerConfig(steps=3, size=32, seeds=[0])
    before = ed.t2i.generate(["A banana"], [0], s)
    context = ed.t2i.encode(["A banana"])
    with ed.edited([EditRequest("A banana", "A blue banana")]):
        assert torch.equal(ed.t2i.encode(["A banana"]), context)
        during = ed.t2i.generate(["A banana"], [0], s)
    after = ed.t2i.generate(["A banana"], [0], s)
    assert (during - before).abs().max() > 1e-4
    assert torch.equal(before, after)
