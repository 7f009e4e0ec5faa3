"""The tools on a YOLOS model, whose detection tokens are global tokens after the patches: ONNX export (tokens, class
logits and boxes, checked with onnxruntime), `jetvit info`'s token counts, the benchmark's token count and the memory
plan's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import jetvit
from jetvit.cli import main

torch.set_num_threads(1)


@pytest.mark.slow  # an export: 19 s
def test_onnx_export_of_a_yolos_hybrid(tiny_yolos, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx
    import onnxruntime as ort

    # W and L blocks with detection tokens, a non-native size (the position grids are resized), mid-layer embeddings
    model = jetvit.convert(tiny_yolos(depth=3), "FWL", window_size=2).eval()
    with torch.no_grad():  # the L block's zero-initialised convolution made random too
        for p in model.blocks[2].attn.parameters():
            p.add_(0.2 * torch.randn_like(p))
    jetvit.save(model, tmp_path / "model")
    out = tmp_path / "yolos.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--res", "40x56", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "outputs tokens, logits, boxes" in printed[0]
    report = json.loads(printed[-1])
    assert report["ok"] and set(report["outputs"]) == {"tokens", "logits", "boxes"}
    assert report["outputs"]["tokens"]["shape"] == [1, 1 + 5 * 7 + 3, 32]
    assert report["outputs"]["logits"]["shape"] == [1, 3, 5] and report["outputs"]["boxes"]["shape"] == [1, 3, 4]
    assert not {n.op_type for n in onnx.load(str(out)).graph.node} & {"Resize"}  # position grids are constants

    # an independent check on other images
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    tokens, logits, boxes = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = [model(x), *model.predict_detections(x)]
    for got, want in zip((tokens, logits, boxes), ref):
        assert np.abs(got - want.numpy()).max() <= 1e-4


def test_info_counts_every_token(tiny_yolos, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from jetvit.cli.info import describe

    model = tiny_yolos()
    info = describe(model)  # the native size: the 4 x 6 position grid, 32 x 48 px
    assert info["resolution"] == [32, 48]
    assert info["tokens"] == {"cls": 1, "registers": 0, "detection": 3, "patches": 24, "total": 28}
    assert info["tokens"]["total"] == model(torch.zeros(1, 3, 32, 48)).shape[1]
    head = sum(p.numel() for p in model.detection_head.parameters())
    assert info["detection_head"] and info["parameters"]["head"] == head
    jetvit.save(model, tmp_path / "m")
    assert main(["info", str(tmp_path / "m"), "--res", "64x64"]) == 0
    printed = capsys.readouterr().out
    assert "tokens       68 at 64x64 (1 CLS + 0 registers + 3 detection + 64 patches)" in printed
    assert "detection heads" in printed


def test_benchmark_counts_detection_tokens(tiny_yolos, tmp_path: Path) -> None:
    jetvit.save(tiny_yolos(), tmp_path / "teacher")
    argv = ["bench", "--teacher", str(tmp_path / "teacher"), "--arch", "LW", "--res", "32x48", "--repeats", "1",
            "--warmup", "0", "--no-memory", "--threads", "1", "--out", str(tmp_path / "bench")]  # fmt: skip
    assert main(argv) == 0
    (row,) = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert row["tokens"] == 1 + 3 + 24


def test_plan_counts_detection_tokens_as_global_tokens(tiny_yolos) -> None:
    """Every block treats a detection token as it treats a register (both global tokens): a YOLOS plans the activations
    of the same model with its detection tokens turned into registers."""
    from jetvit.bench.plan import activation_bytes, block_activation_bytes

    cfg = tiny_yolos().cfg
    as_registers = dataclasses.replace(
        cfg, family="dinov2_reg", num_registers=3, num_detection_tokens=0, detection_head=None, block_pos_embed=False
    )
    for kind in "FWL":
        ours = block_activation_bytes(cfg, kind, batch=2, grid=(4, 6), autocast=False)
        assert ours == block_activation_bytes(as_registers, kind, batch=2, grid=(4, 6), autocast=False), kind
    options = dict(targets=[1], batch=2, size=(32, 48), autocast=False, checkpointing=False)
    assert activation_bytes(cfg, ["F", "L"], **options) == activation_bytes(as_registers, ["F", "L"], **options)
