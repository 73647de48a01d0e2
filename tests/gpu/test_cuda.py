"""Numerics on an accelerator (run with ``python -m pytest -m gpu`` on a machine with CUDA; skipped elsewhere).

These need a GPU, not real weights: they check that an edit's numerics never depend on the run's mixed
precision or protocol, which on a CPU cannot differ.
"""

import pytest
import torch

from edit_bench.editors.time import TIME
from edit_bench.types import EditRequest

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REQ = [EditRequest("A banana", "A blue banana")]


def test_an_edit_under_bf16_autocast_is_the_float32_edit():
    ed = TIME(base="tiny:sd1").cuda()
    ed.apply_edit(REQ)
    plain = {n: p.clone() for n, p in ed.edited_parameters().items()}
    ed.restore()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ed.apply_edit(REQ)
    for n, p in ed.edited_parameters().items():
        assert torch.equal(p, plain[n]), n


class _Where(TIME):
    devices: list = []

    def edit(self, requests, preserve=()):
        _Where.devices.append((self.t2i.device.type, torch.is_autocast_enabled("cuda")))
        super().edit(requests, preserve)


@pytest.mark.parametrize("protocol", ["per_case", "fixed"])
def test_every_protocol_edits_on_the_accelerator_without_autocast(tmp_path, protocol):
    from edit_bench.benchmarks.timed import TIMED
    from edit_bench.cli import EditTrainer
    from edit_bench.evaluate import Evaluation
    from edit_bench.metrics import JudgeConfig
    from edit_bench.types import SamplerConfig

    _Where.devices = []
    bench = TIMED(rows="0:2", sampler=SamplerConfig(steps=2, size=32, seeds=[0]), judge=JudgeConfig(model="tiny:random"),
                  protocol=protocol)
    trainer = EditTrainer(accelerator="gpu", devices=1, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, inference_mode=False)
    res = Evaluation(_Where(base="tiny:sd1"), bench, tmp_path / protocol).run(trainer)
    assert _Where.devices and all(d == ("cuda", False) for d in _Where.devices)
    assert res["metrics"]["efficacy"]["n"] == 2


def test_fid_features_follow_the_metric_set_to_the_gpu():
    """FID's feature network is a registered submodule: moved with the metric set, it scores CUDA images (before,
    it stayed on the CPU and every GPU eval with FID failed)."""
    from cleanfid.resize import build_resizer

    from edit_bench.metrics import FID, ImageFeatures
    from edit_bench.metrics.base import MetricSet

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    fid = FID(reference="renderer")
    fid.extractor = ImageFeatures(net, build_resizer("clean"), "stand-in")
    ms = MetricSet([fid]).to("cuda")
    images = torch.rand(3, 3, 32, 32, device="cuda")
    out = ms.score(images, [], "samples")
    assert out.features["fid"].shape == (3, 4) and next(net.parameters()).is_cuda
