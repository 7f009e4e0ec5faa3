"""`jetvit export` through the real CLI: the ONNX model equals the PyTorch one (onnxruntime, CPU, fp32, 1e-4)."""

from __future__ import annotations

import pytest
import torch

from jetvit.cli import main
from jetvit.io import save

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def saved_hybrid(tiny_model, tmp_path, **kw):
    model = tiny_model(random_weights=True, window_size=3, **kw)  # the zero-initialised dynamic conv made random too
    return model, save(model, tmp_path / "model")


@pytest.mark.parametrize(
    "kw,res",
    [
        (dict(family="dinov3", arch="FWL", num_registers=4, pos_embed="rope"), "40x56"),  # RoPE, padded windows
        (dict(family="dinov2", arch="LWF", num_registers=0, pos_embed="learned", img_size=32), "48x40"),  # bicubic
    ],
)
def test_onnx_equals_pytorch(tiny_model, tmp_path, capsys, kw, res):
    import json

    import numpy as np
    import onnx
    import onnxruntime as ort

    model, model_dir = saved_hybrid(tiny_model, tmp_path, **kw)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(model_dir), "--res", res, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] and report["max_abs_error"] <= 1e-4

    # position tables are constants: no trigonometry or interpolation left in the graph
    ops_used = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops_used & {"Sin", "Cos", "Resize"}, ops_used

    # an independent check on other images
    H, W = (int(v) for v in res.split("x"))
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(got - ref).max() <= 1e-4


def test_export_rejects_a_size_that_is_not_a_patch_multiple(tiny_model, tmp_path, capsys):
    _, model_dir = saved_hybrid(tiny_model, tmp_path, arch="FWL")
    assert main(["export", "--model", str(model_dir), "--res", "41x56", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
