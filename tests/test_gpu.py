"""Every model path in bf16 on CUDA against the CPU fp32 reference, eager, regionally compiled and replayed from a
CUDA graph (skipped without a GPU; `benchmarks/gpu_suite.py` runs them on the device).

The bound. bf16 keeps 8 bits of mantissa: casting the weights and every activation to it costs a relative error of
about 2^-9 per rounding, which a few blocks compound. Measured on the CPU (bf16 weights and input against fp32, three
seeds of these tiny models): 3.8e-3 to 4.6e-3 for the backbone of every kind, 1.5e-3 to 6e-3 for YOLOS's logits and
boxes, 1.5e-2 to 4.1e-2 for the DPT depth (eleven more layers of convolutions after the backbone). The bounds below
are about four times that: relative L2 error at most 2e-2 (backbone, detection), 1e-1 (depth). A path that summed
the linear-attention state in bf16, dropped a mask or mixed up a window misses them by far (errors of order 1).
"""

from __future__ import annotations

import copy

import pytest
import torch

from jetvit import ops
from jetvit.bench.harness import BenchOptions, GraphRunner, forced_sdpa, make_runner, sdpa_context
from jetvit.compile import compile_regions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BACKBONE_BOUND = 2e-2
DEPTH_BOUND = 1e-1
# 40x48 px at patch 8: a 5x6 grid, which the tiny models' 2x2 windows do not divide: the W windows are masked.
SIZE = (40, 48)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


def cuda_bf16(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(device="cuda", dtype=torch.bfloat16)


def _images(batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("arch", "conv"),
    [
        ("FFF", "dynamic"),
        ("WWW", "dynamic"),
        ("LLL", "none"),
        ("LLL", "static"),
        ("LLL", "dynamic"),
        ("LWF", "dynamic"),
    ],
)
def test_backbone_paths_in_bf16_match_the_fp32_reference(tiny_model, arch, conv):
    model = tiny_model(arch, random_weights=True, seed=3, linear={"conv": conv})
    x = _images(2, SIZE, seed=4)
    with torch.inference_mode():
        ref = model(x)
        out = cuda_bf16(model)(x.to("cuda", torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert rel_err(out, ref) < BACKBONE_BOUND


def test_dpt_head_in_bf16_matches_the_fp32_reference(tiny_depth_model):
    model = tiny_depth_model(seed=5, arch="LWFL")
    x = _images(2, SIZE, seed=6)
    with torch.inference_mode():
        ref = model.predict_depth(x)
        out = cuda_bf16(model).predict_depth(x.to("cuda", torch.bfloat16))
    assert out.shape == ref.shape == (2, *SIZE)
    assert rel_err(out, ref) < DEPTH_BOUND


def test_yolos_detection_tokens_in_bf16_match_the_fp32_reference(tiny_yolos):
    model = tiny_yolos(seed=7, arch="LW")
    x = _images(2, (40, 56), seed=8)  # a 5x7 grid: masked windows, and the position grid resized
    with torch.inference_mode():
        ref_logits, ref_boxes = model.predict_detections(x)
        logits, boxes = cuda_bf16(model).predict_detections(x.to("cuda", torch.bfloat16))
    assert rel_err(logits, ref_logits) < BACKBONE_BOUND and rel_err(boxes, ref_boxes) < BACKBONE_BOUND


def test_linear_attention_sums_its_state_in_fp32_for_bf16_inputs():
    # 16k keys: a state summed in bf16 would lose the late keys (an 8-bit mantissa against a sum of thousands).
    g = torch.Generator().manual_seed(9)
    q, k = (torch.rand(1, 2, 16384, 32, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 16384, 32, generator=g) + 0.5
    ref = ops.linear_attention(q.double(), k.double(), v.double())
    out = ops.linear_attention(*(t.to("cuda", torch.bfloat16) for t in (q, k, v)))
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2


def test_regional_compile_matches_eager_and_the_reference(tiny_model):
    model = tiny_model("LWFL", random_weights=True, seed=10)
    x = _images(2, SIZE, seed=11)
    with torch.inference_mode():
        ref = model(x)
        eager = cuda_bf16(model)
        xc = x.to("cuda", torch.bfloat16)
        expected = eager(xc)
        compiled = compile_regions(cuda_bf16(model), backend="inductor", dynamic=False)
        out = compiled(xc)
    assert rel_err(out, expected) < BACKBONE_BOUND
    assert rel_err(out, ref) < BACKBONE_BOUND


def test_cuda_graph_replay_matches_eager_on_fresh_inputs(tiny_model):
    model = tiny_model("LWF", random_weights=True, seed=12)
    opts = BenchOptions(resolutions=[SIZE], dtype="bf16", mode="graphs", device="cuda")
    eager = make_runner(cuda_bf16(model), BenchOptions(resolutions=[SIZE], dtype="bf16", device="cuda"))
    graphs = make_runner(cuda_bf16(model), opts)
    assert isinstance(graphs, GraphRunner)
    for seed in (13, 14):  # the second input replays the graph captured on the first
        x = _images(2, SIZE, seed).to("cuda", torch.bfloat16)
        out = graphs(x).clone()
        assert rel_err(out, eager(x)) < 1e-3
    assert len(graphs.graphs) == 1 and next(iter(graphs.peak_bytes.values())) > 0


def test_masked_windows_fall_through_a_preferred_flash_backend(tiny_model):
    model = cuda_bf16(tiny_model("WWW", random_weights=True, seed=15))
    x = _images(2, SIZE, seed=16).to("cuda", torch.bfloat16)
    with torch.inference_mode():
        expected = model(x)
        with pytest.raises(RuntimeError):  # flash takes no mask: forcing it for every call fails
            with forced_sdpa("flash"):
                model(x)
        with sdpa_context("flash"):  # first in the order, not forced: the masked calls take the next backend
            out = model(x)
    assert rel_err(out, expected) < 1e-2
