"""Contract tests generated from the package: every discovered editor on every tiny layout, through the
public checker (``edit_bench.testing``) that editors outside the package use too."""

import pytest

from edit_bench.editors import discover
from edit_bench.testing import LAYOUTS, check_capabilities, check_edit, check_state, contract_form
from edit_bench.types import EditRequest

from helpers import fast_kwargs

EDITORS = discover()


def test_discovery_finds_the_shipped_editors():
    assert {"TIME", "UCE", "DiffQuickFix", "LocoEdit", "ReFACT", "ESD", "ConceptAblation", "Unedited"} <= set(EDITORS)
    assert "FineTuner" not in EDITORS  # a base (abstract = True), not an editor


@pytest.mark.parametrize("name", sorted(EDITORS))
def test_capabilities_are_declared(name):
    check_capabilities(EDITORS[name])


@pytest.mark.parametrize("spec", LAYOUTS)
@pytest.mark.parametrize("name", sorted(EDITORS))
def test_edit_changes_only_declared_parameters_and_restores_bitwise(name, spec, tmp_path):
    family = spec.split(":")[1]
    if family not in EDITORS[name].families:  # an editor without this family's form refuses it in one line
        from edit_bench.errors import UsageError

        with pytest.raises(UsageError, match=f"has no {family} form"):
            contract_form(EDITORS[name], spec).t2i
        return
    editor = contract_form(EDITORS[name], spec)
    check_edit(editor, workdir=tmp_path)
    check_state(editor, workdir=tmp_path)


MMDIT_EDITORS = sorted(n for n, cls in EDITORS.items() if {"sd3", "flux"} & set(cls.families))


@pytest.mark.parametrize("spec", ["tiny:sd3", "tiny:flux"])
@pytest.mark.parametrize("name", MMDIT_EDITORS)
def test_editors_with_an_mmdit_form_pass_the_contract_on_sd3_and_flux(name, spec, tmp_path):
    editor = contract_form(EDITORS[name], spec)
    check_edit(editor, workdir=tmp_path)
    check_state(editor, workdir=tmp_path)


def test_editors_without_an_mmdit_form_refuse_sd3_and_flux_with_one_line():
    from edit_bench.errors import UsageError

    assert {"UCE", "OCE", "ESD", "Unedited", "Oracle"} <= set(MMDIT_EDITORS)
    without = sorted(set(EDITORS) - set(MMDIT_EDITORS))
    assert {"TIME", "RECE", "ConceptAblation"} <= set(without)
    for name in without:
        with pytest.raises(UsageError, match=f"{EDITORS[name].__name__} has no flux form"):
            EDITORS[name](base="tiny:flux", **fast_kwargs(name)).t2i


def test_the_checker_catches_a_broken_editor():
    """An editor that edits an undeclared weight, or nothing, fails the public check with a message."""
    from edit_bench.editors.time import TIME

    class Sneaky(TIME):
        def edit(self, requests, preserve=()):
            super().edit(requests, preserve)
            self.t2i.vae.decoder.conv_out.bias.add_(1.0)  # not among edited_parameters()

    class Lazy(TIME):
        def edit(self, requests, preserve=()):
            pass

    with pytest.raises(AssertionError, match="changed undeclared parameters"):
        check_edit(Sneaky(base="tiny:sd1"))
    with pytest.raises(AssertionError, match="silent no-op"):
        check_edit(Lazy(base="tiny:sd1"))


def test_delta_for_another_model_is_rejected_and_leaves_it_untouched(tmp_path):
    import torch

    from edit_bench.errors import UsageError
    from edit_bench.models import load_t2i
    from edit_bench.models.delta import apply_delta

    ed = EDITORS["TIME"](base="tiny:sd1")
    ed.apply_edit([EditRequest("A cat", "A blue cat")])
    path = ed.save_delta(tmp_path / "edit.safetensors")
    with pytest.raises(UsageError, match="tiny:sd1"):
        load_t2i("tiny:sd2", delta=path)
    # a delta whose last tensor has a wrong shape: validated whole, so no tensor is added
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    last = sorted(tensors)[-1]
    tensors[last] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    t2i = load_t2i("tiny:sd1")
    before = {n: p.detach().clone() for n, p in t2i.named_parameters()}
    with pytest.raises(UsageError, match=r"does not fit this model.*\(3, 3\)"):
        apply_delta(t2i, bad)
    assert all(torch.equal(p, before[n]) for n, p in t2i.named_parameters())
