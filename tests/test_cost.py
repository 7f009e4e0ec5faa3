"""The roofline cost model (`jetvit.bench.cost`): counted FLOPs against the model's own, bytes and launches of single
ops, the compiled view, and the prediction's shape. Everything runs on fake tensors: fast at any model size."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from jetvit.bench import cost
from jetvit.bench.presets import HYBRID_ARCHS, preset_config
from jetvit.model import HybridViT

BF16 = 2  # bytes


def model_flops(cfg, H: int, W: int, batch: int = 1) -> dict:
    with torch.device("meta"):
        return HybridViT(cfg).flops(H, W, batch=batch)


def traced_flops(tr: cost.Trace, depth: int) -> tuple[list[int], int]:
    per_block = [sum(op.flops for op in tr.ops if op.block == i) for i in range(depth)]
    outside = sum(op.flops for op in tr.ops if op.block is None)
    return per_block, outside


@pytest.mark.parametrize(
    "arch, res, batch, dtype",
    [
        ("FWL", (64, 64), 1, "bf16"),
        ("WLF", (64, 96), 2, "autocast"),  # a grid the window does not divide: masked, padded windows
        ("LLW", (512, 512), 1, "bf16"),  # 1024 patch tokens: the L blocks' fused kernels where Triton is installed
    ],
)
def test_counted_flops_equal_the_models_own(arch, res, batch, dtype):
    """The trace counts the matmuls, convolutions and attention the model's `flops` counts, op by op, and neither
    counts norms or elementwise ops: the two agree exactly (the focusing kernel's estimate would be the model's alone;
    these blocks use the ReLU)."""
    cfg = preset_config("tiny", arch)
    tr = cost.trace(cfg, *res, dtype=dtype, batch=batch)
    per_block, outside = traced_flops(tr, cfg.depth)
    expected = model_flops(cfg, *res, batch=batch)
    assert per_block == expected["blocks"]
    assert outside == expected["embed"] + expected["head"]


def test_fused_kernels_are_one_op_each_with_their_formula():
    pytest.importorskip("triton")
    cfg = preset_config("tiny", "LLL")
    fused = cost.trace(cfg, 512, 512)
    plain = cost.trace(cfg, 512, 512, kernels=False)
    custom = [op for op in fused.ops if op.kind == "custom"]
    if not custom:
        pytest.skip("jetvit.kernels does not run at this shape")
    assert {op.block for op in custom} == {0, 1, 2}
    assert all(op.part == "attn" for op in custom)
    assert not any(op.kind == "custom" for op in plain.ops)
    assert sum(op.flops for op in fused.ops) == sum(op.flops for op in plain.ops)
    for i in range(3):  # the fused path launches fewer kernels and moves fewer bytes in the attention
        f = [op for op in fused.ops if op.block == i and op.part == "attn"]
        p = [op for op in plain.ops if op.block == i and op.part == "attn"]
        assert len(f) < len(p)
        assert sum(op.bytes for op in f) < sum(op.bytes for op in p)


def test_bytes_and_launches_of_single_ops():
    with FakeTensorMode():
        a = torch.empty(64, 32, dtype=torch.bfloat16)
        b = torch.empty(32, 16, dtype=torch.bfloat16)
        bias = torch.empty(1, 32, dtype=torch.bfloat16)
        with cost.record() as ops:
            a @ b  # (64, 32) @ (32, 16)
        (mm,) = ops
        assert mm.kind == "matmul" and mm.low_precision
        assert mm.flops == 2 * 64 * 32 * 16
        assert (mm.read, mm.written) == ((64 * 32 + 32 * 16) * BF16, 64 * 16 * BF16)

        with cost.record() as ops:
            a + bias  # the broadcast bias is read once: 32 elements
        (add,) = ops
        assert (add.kind, add.flops) == ("memory", 0)
        assert (add.read, add.written) == ((64 * 32 + 32) * BF16, 64 * 32 * BF16)

        with cost.record() as ops:
            a.t()
            a.view(32, 64)
            a.reshape(-1)  # contiguous: a view
            a[:, :8]
            a.to(torch.bfloat16)  # already bf16: nothing
            a.new_empty(8)  # allocation, no kernel
        assert ops == []

        with cost.record() as ops:
            a.t().reshape(-1)  # not viewable: one copy
        (copy,) = ops
        assert copy.read == copy.written == 64 * 32 * BF16

        c = torch.empty(64, 32, dtype=torch.bfloat16)
        with cost.record() as ops:
            c[:, :8].copy_(a[:, :8])  # a pure write of the slice
            c.add_(a)  # in place: reads what it overwrites
        copy, add_ = ops
        assert (copy.read, copy.written) == (64 * 8 * BF16, 64 * 8 * BF16)
        assert (add_.read, add_.written) == (2 * 64 * 32 * BF16, 64 * 32 * BF16)


def test_registered_cost_of_a_custom_op():
    @torch.library.custom_op("jetvit_test::scale_rows", mutates_args=())
    def scale_rows(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * s[:, None]

    @scale_rows.register_fake
    def _(x, s):
        return torch.empty_like(x)

    cost.register_cost("jetvit_test::scale_rows", lambda x, s: 3 * x.numel())
    with FakeTensorMode():
        x, s = torch.empty(16, 8), torch.empty(16)
        with cost.record() as ops:
            scale_rows(x, s)
    (op,) = ops
    assert (op.kind, op.name, op.flops) == ("custom", "jetvit_test.scale_rows", 3 * 16 * 8)
    assert (op.read, op.written) == ((16 * 8 + 16) * 4, 16 * 8 * 4)
    with pytest.raises(ValueError, match="namespace::name"):
        cost.register_cost("scale_rows", lambda x, s: 0)


def test_launches_are_the_kernels_and_views_are_free():
    cfg = preset_config("tiny", "FWL")
    tr = cost.trace(cfg, 64, 64)
    report = cost.predict(cfg, 64, 64, mode="eager")
    assert report.launches == len(tr.ops) == sum(r.launches for r in report.rows)
    assert all(op.bytes > 0 for op in tr.ops)  # nothing counted that moves nothing
    assert {r.label for r in report.rows} == {"embed", "0", "1", "2", "head"}
    assert [r.kind for r in report.rows[1:-1]] == list("FWL")
    # every block has its parts: norms, projections, attention, MLP, residual
    for r in report.rows[1:-1]:
        assert set(r.parts) == {"norm", "qkv/proj", "attn", "mlp", "residual"}


@pytest.mark.parametrize("mode", cost.MODES)
def test_prediction_grows_with_resolution(mode):
    """On one code path: the model switches its L blocks to the fused kernels from 1024 patch tokens on, which can
    make a larger input faster where launches dominate (a real effect, not the model's)."""
    tiny = [cost.predict(preset_config("tiny", "FWL"), s, s, mode=mode, kernels=False) for s in (64, 128, 256, 512)]
    cfg = preset_config("dinov3-l", HYBRID_ARCHS["dinov3-l"])
    large = [cost.predict(cfg, H, W, mode=mode) for H, W in ((1024, 1024), (1024, 2048), (2048, 2048))]
    for reports in (tiny, large):
        for small, big in zip(reports, reports[1:]):
            assert small.ms < big.ms
            assert small.bytes < big.bytes
            assert small.flops < big.flops


def test_compiled_view_never_moves_more_than_eager():
    for preset, arch, res in (("tiny", "FWL", (64, 96)), ("dinov3-l", HYBRID_ARCHS["dinov3-l"], (1024, 2048))):
        cfg = preset_config(preset, arch)
        for compiled in (False, True):
            tr = cost.trace(cfg, *res, compiled=compiled)
            fused = cost.fuse(tr)
            assert len(fused) < len(tr.ops)
            for block in {op.block for op in tr.ops}:
                eager_bytes = sum(op.bytes for op in tr.ops if op.block == block)
                assert sum(op.bytes for op in fused if op.block == block) <= eager_bytes
        eager, compiled = cost.predict(cfg, *res, mode="eager"), cost.predict(cfg, *res, mode="compiled")
        assert compiled.bytes < eager.bytes and compiled.launches < eager.launches


def test_a_large_preset_is_counted_on_fake_tensors():
    """DINOv3-L/16 and its hybrid at 1024x2048: counted without memory or arithmetic (a fraction of a second each
    here); FLOPs as the model counts them."""
    for arch in ("", HYBRID_ARCHS["dinov3-l"]):
        cfg = preset_config("dinov3-l", arch)
        tr = cost.trace(cfg, 1024, 2048)
        per_block, _ = traced_flops(tr, cfg.depth)
        assert per_block == model_flops(cfg, 1024, 2048)["blocks"]


def test_roofline_of_one_kernel():
    dev = cost.DEVICES["h100"]
    big = cost.Op("mm", "matmul", int(1e12), {(0, 2**20, 0, (1,), (1,)): 2**20}, {}, 0, "mlp", True)
    assert cost.kernel_seconds(big, dev) == pytest.approx(1e12 / (dev.bf16_flops * cost.MATMUL_EFF))
    fp32 = cost.Op("mm", "matmul", int(1e12), {}, {}, 0, "attn", False)
    assert cost.kernel_seconds(fp32, dev) == pytest.approx(1e12 / (dev.fp32_flops * cost.MATMUL_EFF))
    n = 2**30
    copy = cost.Op("copy", "memory", 0, {(1, n, 0, (n,), (1,)): n}, {(2, n, 0, (n,), (1,)): n}, 0, "attn", True)
    assert cost.kernel_seconds(copy, dev) == pytest.approx(2 * n / (dev.bandwidth * cost.BANDWIDTH_EFF))


def test_graphs_never_slower_than_eager_and_the_host_bound_case():
    """At a small size the eager forward waits for the host (launches dominate); CUDA graphs remove that wait."""
    cfg = preset_config("tiny", "FWL")
    eager, graphs = cost.predict(cfg, 64, 64, mode="eager"), cost.predict(cfg, 64, 64, mode="graphs")
    dev = cost.DEVICES["h100"]
    assert eager.ms >= eager.launches * dev.eager_launch_s * 1e3  # host-bound: at least one launch per kernel
    assert graphs.ms < eager.ms


def test_bad_options_name_the_value():
    cfg = preset_config("tiny", "FWL")
    with pytest.raises(ValueError, match="'a100'"):
        cost.predict(cfg, 64, 64, device="a100")
    with pytest.raises(ValueError, match="'fast'"):
        cost.predict(cfg, 64, 64, mode="fast")
    with pytest.raises(ValueError, match="'fp8'"):
        cost.predict(cfg, 64, 64, dtype="fp8")
    with pytest.raises(ValueError, match="65x64"):
        cost.predict(cfg, 65, 64)


def test_reports_format_and_serialise():
    import json

    report = cost.predict(preset_config("tiny", "FWL"), 64, 64, mode="compiled")
    text = cost.format_cost(report)
    assert "H100" in text and f"{report.launches} kernels" in text
    where = cost.where_the_bytes_go(report)
    assert all(kind in where for kind in "FWL") and "mlp" in where
    d = json.loads(json.dumps(report.to_dict()))
    assert d["total"]["launches"] == report.launches and len(d["rows"]) == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="without a GPU, `--device cuda --predict` only predicts")
def test_cli_bench_predicts_without_a_gpu(capsys, tmp_path):
    from jetvit.cli import main

    argv = ["bench", "--preset", "tiny", "--arch", "FWL", "--res", "64x64", "--res", "64x128", "--device", "cuda"]
    assert main(argv + ["--predict", "h100", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "predicted on NVIDIA H100" in out and "| 64x64 |" in out and "| 64x128 |" in out
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written


def test_cli_info_prints_the_prediction(capsys):
    from jetvit.cli import main

    assert main(["info", "builtin", "--res", "128x128", "--cost-device", "rtx3090", "--cost-mode", "graphs"]) == 0
    out = capsys.readouterr().out
    assert "predicted on NVIDIA GeForce RTX 3090" in out and "at 128x128" in out and "MiB per block" in out
