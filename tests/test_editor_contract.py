"""Contract tests generated from the package: every discovered editor on every tiny layout."""

import pytest
import torch

from edit_bench.editors import Editor, discover
from edit_bench.types import EditRequest

from helpers import TINY

EDITORS = discover()
REQ = [EditRequest("A banana", "A blue banana"), EditRequest("A bear", "A polar bear")]
PREFIX = {"none": None, "cross_attn_kv": "unet.", "text_encoder": "text_encoder", "unet": "unet."}


def test_discovery_finds_the_shipped_editors():
    assert {"TIME", "Unedited"} <= set(EDITORS)


@pytest.mark.parametrize("name", sorted(EDITORS))
def test_capabilities_are_declared(name):
    cls = EDITORS[name]
    assert cls.edits in PREFIX
    assert isinstance(cls.supports_batch, bool)
    assert issubclass(cls, Editor)


@pytest.mark.parametrize("spec", TINY)
@pytest.mark.parametrize("name", sorted(EDITORS))
def test_edit_changes_only_declared_parameters_and_restores_bitwise(name, spec, tmp_path):
    ed = EDITORS[name](base=spec)
    declared = ed.edited_parameters()
    for n, p in declared.items():  # declared names resolve to the model's own tensors
        assert ed.t2i.get_parameter(n) is p
        assert PREFIX[ed.edits] is not None and n.startswith(PREFIX[ed.edits])
    before = {n: p.detach().clone() for n, p in ed.t2i.named_parameters()}
    ed.apply_edit(REQ if ed.supports_batch else REQ[:1])
    changed = {n for n, p in ed.t2i.named_parameters() if not torch.equal(p, before[n])}
    declared_ids = {id(p) for p in declared.values()}
    changed_ids = {id(p) for n, p in ed.t2i.named_parameters() if n in changed}
    assert changed_ids <= declared_ids, f"{name} changed undeclared parameters"
    if ed.edits != "none":
        assert changed, f"{name} edited nothing (a silent no-op)"
        delta = ed.delta_state_dict()
        assert set(delta) <= set(declared) and delta
        path = ed.save_delta(tmp_path / "edit.safetensors")
        again = EDITORS[name](base=spec, delta=str(path))
        for n, p in declared.items():
            torch.testing.assert_close(again.t2i.get_parameter(n), p, atol=1e-6, rtol=0)
    ed.restore()
    assert all(torch.equal(p, before[n]) for n, p in ed.t2i.named_parameters())


def test_delta_for_another_base_is_rejected(tmp_path):
    ed = EDITORS["TIME"](base="tiny:sd1")
    ed.apply_edit(REQ[:1])
    path = ed.save_delta(tmp_path / "edit.safetensors")
    with pytest.raises(ValueError, match="tiny:sd1"):
        EDITORS["TIME"](base="tiny:sd2", delta=str(path)).t2i
