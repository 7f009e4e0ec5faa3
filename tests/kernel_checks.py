"""The Triton kernels of `jetvit.kernels` against their plain references, forward and backward (collected through
`tests/test_kernels.py`: in place on CUDA, in a subprocess under the interpreter on the CPU).

Without CUDA they run under Triton's interpreter (`TRITON_INTERPRET=1`, set before the kernel module is imported;
every load is upcast to fp32 there, triton issue 11584) on small shapes; with CUDA the same tests run the compiled
kernels, and the `gpu` tests compare them in bf16 at a realistic shape with the CPU fp32 reference.
Tolerances: fp32 1e-5 relative to the output's scale; bf16 one ulp of its largest value (2^-7 of the scale).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from jetvit import kernels  # noqa: E402
from jetvit.kernels import linear_attention as fused  # noqa: E402
from jetvit.model import LinearAttnConfig, rope_tables  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not fused.INTERPRET:
    pytest.skip("no CUDA and the kernel module was imported without TRITON_INTERPRET=1", allow_module_level=True)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, device: str = DEVICE) -> torch.Tensor:
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return t.to(device=device, dtype=dtype).requires_grad_()


def assert_close_to_scale(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    assert a.shape == b.shape
    if not b.numel():
        return
    scale = b.abs().max().clamp_min(1e-6)
    assert (a - b).abs().max() <= rel * scale, ((a - b).abs().max(), scale)


# (B, H, P, grid, d): several chunks of the state kernel, a grid that is not square, no prefix
CASES = [(2, 2, 3, (5, 7), 16), (1, 2, 0, (4, 4), 32)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,P,grid,d", CASES)
def test_state_kernel_matches_reference(B, H, P, grid, d, dtype):
    N = P + grid[0] * grid[1]
    k, v = randn(B, H, N, d, seed=0, dtype=dtype), randn(B, H, N, d, seed=1, dtype=dtype)
    state, pooled = fused.linear_state(k, v, num_prefix=P)
    ref_state, ref_pooled = fused.linear_state_reference(k, v, P)
    assert state.dtype == torch.float32 and pooled.dtype == dtype
    assert_close_to_scale(state, ref_state, 1e-5)  # fp32 sums of the same (rounded) inputs
    assert_close_to_scale(pooled, ref_pooled, TOL[dtype])
    if dtype == torch.float32:
        r = (randn(*state.shape, seed=2).detach(), randn(*pooled.shape, seed=3).detach())
        got = torch.autograd.grad((state, pooled), (k, v), r)
        want = torch.autograd.grad((ref_state, ref_pooled), (k, v), r)
        for a, b in zip(got, want):
            assert_close_to_scale(a, b, 1e-5)


@pytest.mark.parametrize("programs", [256, 1])  # several chunks of one tile each; one chunk of several tiles
@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("P", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_kernel_with_prefix_attention_matches_reference(P, rope, dtype, programs, monkeypatch):
    """The state pass with the prefix queries' softmax attention (keys rotated in the kernel) against
    `ops.apply_rope` + `ops.prefix_attention`, forward and backward. The reference runs in fp32 on the kernel's input
    values (bf16 inputs upcast): what the kernel computes, up to its fp32 sums and its one rounding at the store."""
    monkeypatch.setattr(fused, "_PROGRAMS", programs)
    B, H, grid, d = 2, 2, (5, 7), 16
    N = P + grid[0] * grid[1]
    k, v, q = randn(B, H, N, d, seed=0, dtype=dtype), randn(B, H, N, d, seed=1, dtype=dtype), randn(B, H, P, d, seed=2)
    q = q.detach().to(dtype).requires_grad_()
    tables = rope_tables(grid, d, 100.0, torch.device(DEVICE)) if rope else None
    state, pooled, prefix = fused.linear_state_and_prefix(k, v, q, num_prefix=P, rope=tables)
    kf, vf, qf = (t.detach().float().requires_grad_() for t in (k, v, q))
    refs = [*fused.linear_state_reference(kf, vf, P), fused.prefix_attention_reference(qf, kf, vf, P, tables)]
    outs = [state, pooled, prefix]
    assert state.dtype == torch.float32 and pooled.dtype == prefix.dtype == dtype and prefix.shape == (B, H, P, d)
    for out, ref, tol in zip(outs, refs, (1e-5, TOL[dtype], TOL[dtype])):
        assert_close_to_scale(out, ref, tol)
    if not P:  # no prefix output to differentiate
        outs, refs = outs[:2], refs[:2]
    r = [randn(*t.shape, seed=3 + i).detach().to(t.dtype) for i, t in enumerate(outs)]
    got = torch.autograd.grad(outs, (k, v, q), r, allow_unused=True)
    want = torch.autograd.grad(refs, (kf, vf, qf), [t.float() for t in r], allow_unused=True)
    for a, b, t in zip(got, want, (k, v, q)):
        assert a is not None and a.dtype == t.dtype
        assert_close_to_scale(a, torch.zeros_like(a) if b is None else b, TOL[dtype])


def test_state_with_prefix_rejects_tables_of_another_grid():
    k = torch.zeros(1, 2, 3 + 12, 16, device=DEVICE)
    tables = rope_tables((3, 5), 16, 100.0, torch.device(DEVICE))  # 15 patch tokens where k has 12
    with pytest.raises(ValueError, match="rope tables"):
        fused.linear_state_and_prefix(k, k, k[:, :, :3], num_prefix=3, rope=tables)


@pytest.mark.parametrize("conv", ["dynamic", "static", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,P,grid,d", CASES)
def test_apply_kernel_matches_reference(B, H, P, grid, d, dtype, conv):
    N, D, ks = P + grid[0] * grid[1], H * d, 3
    q, v = randn(B, H, N, d, seed=0, dtype=dtype), randn(B, H, N, d, seed=1, dtype=dtype)
    state = fused.linear_state_reference(randn(B, H, N, d, seed=2), v.detach().float(), P)[0].detach().requires_grad_()
    prefix = randn(B, H, P, d, seed=3, dtype=dtype)
    weight = {
        "dynamic": randn(B, D, ks, ks, seed=4, dtype=dtype),
        "static": randn(1, D, ks, ks, seed=4, dtype=dtype),
        "none": None,
    }[conv]
    w = weight.expand(B, -1, -1, -1) if conv == "static" else weight  # a static kernel: stride 0 over the batch
    out = fused.linear_apply(q, state, v, w, prefix, grid=grid, eps=1e-6)
    ref = fused.linear_apply_reference(q, state, v, w if w is not None else q.new_empty(0), prefix, *grid, 1e-6)
    assert out.shape == (B, N, D) and out.dtype == dtype
    assert_close_to_scale(out, ref, TOL[dtype])
    if dtype == torch.float32:
        inputs = [t for t in (q, state, v, weight, prefix) if t is not None]
        r = randn(*out.shape, seed=5).detach()
        got = torch.autograd.grad(out, inputs, r)
        want = torch.autograd.grad(ref, inputs, r, allow_unused=True)  # v is unused without the convolution
        for a, b, t in zip(got, want, inputs):
            assert_close_to_scale(a, torch.zeros_like(t) if b is None else b, 1e-5)


@pytest.mark.parametrize("linear_rope", [False, True])
def test_fused_l_block_equals_the_plain_path(tiny_model, monkeypatch, linear_rope):
    """The `L` block with the kernels (forced on here) against its plain path, forward and backward, with the dynamic
    convolution and prefix tokens; RoPE only on the prefix queries' keys (rotated inside the state kernel), or on q, k
    before the kernels (`linear.rope`)."""
    model = tiny_model("LL", random_weights=True, num_registers=2, linear=LinearAttnConfig(rope=linear_rope))
    model = model.to(DEVICE)
    x = torch.randn(2, 3, 5 * 8, 7 * 8, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    monkeypatch.setattr(kernels, "use_triton", lambda is_cuda, num_tokens: True)
    calls = []
    state_op = fused.linear_state_and_prefix
    monkeypatch.setattr(
        fused, "linear_state_and_prefix", lambda *a, **kw: calls.append(kw["rope"]) or state_op(*a, **kw)
    )
    out = model(x)
    assert len(calls) == 2  # both blocks took the kernels
    assert all((rope is None) == linear_rope for rope in calls)  # rotated in the kernel only without `linear.rope`
    assert_close_to_scale(out, ref, 1e-5)
    for a, b in zip(torch.autograd.grad(out.square().sum(), list(model.parameters())), ref_grads):
        assert_close_to_scale(a, b, 1e-4)


def test_kernels_are_single_ops_in_a_dispatch_trace():
    """What a byte-counting trace sees (run without the interpreter: on the meta device nothing is launched)."""
    probe = """
import json, torch
from torch.utils._python_dispatch import TorchDispatchMode
from jetvit.kernels import linear_attention as fused
class Ops(TorchDispatchMode):
    seen = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))
t = lambda *s: torch.empty(*s, device="meta", dtype=torch.bfloat16)
q, k, v, weight = t(1, 4, 69, 16), t(1, 4, 69, 16), t(1, 4, 69, 16), t(1, 64, 3, 3)
rope, qp = tuple(torch.empty(64, 16, device="meta") for _ in range(2)), q[:, :, :5]
with Ops() as mode:
    state, pooled, prefix = fused.linear_state_and_prefix(k, v, qp, num_prefix=5, rope=rope)
    out = fused.linear_apply(q, state, v, weight, prefix, grid=(8, 8), eps=1e-6)
print(json.dumps([mode.seen, list(state.shape), list(prefix.shape), list(out.shape)]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen, state_shape, prefix_shape, out_shape = json.loads(proc.stdout.splitlines()[-1])
    assert seen == ["jetvit.linear_state.default", "jetvit.linear_apply.default"]
    assert state_shape == [1, 4, 16, 17] and prefix_shape == [1, 4, 5, 16] and out_shape == [1, 69, 64]


def test_jetvit_runs_without_triton_and_does_not_import_it():
    probe = """
import sys
import jetvit, torch
import jetvit.model
assert "triton" not in sys.modules, "import jetvit.model imported triton"
sys.modules["triton"] = None  # as if Triton were not installed
from jetvit import kernels
kernels._HAS_TRITON = None
import importlib.util
cfg = jetvit.ViTConfig(img_size=32, patch_size=8, dim=32, depth=1, num_heads=2, mlp_hidden=64, arch="L")
print(jetvit.HybridViT(cfg)(torch.zeros(1, 3, 32, 32)).shape[0])
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "1"


# --------------------------------------------------------------------------------------------------------------------
# On a GPU: bf16 at DINOv3-L/16's L-block shape against the CPU fp32 reference


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_in_bf16_on_cuda_match_the_cpu_fp32_reference_at_dinov3_l_shapes():
    B, H, P, grid, d, ks = 1, 16, 5, (64, 128), 64, 5
    N = P + grid[0] * grid[1]
    q, k, v = (randn(B, H, N, d, seed=i, device="cpu").detach() for i in range(3))
    weight = randn(B, H * d, ks, ks, seed=4, device="cpu").detach() * 0.1
    prefix = randn(B, H, P, d, seed=5, device="cpu").detach()
    as_bf16 = lambda t: t.bfloat16().float()  # noqa: E731  the reference sees the same rounded inputs
    tables = rope_tables(grid, d, 100.0, torch.device("cpu"))
    ref_state, ref_pooled = fused.linear_state_reference(as_bf16(k), as_bf16(v), P)
    ref_prefix = fused.prefix_attention_reference(as_bf16(q[:, :, :P]), as_bf16(k), as_bf16(v), P, tables)
    bf16 = [t.cuda().bfloat16() for t in (k, v, q[:, :, :P])]
    state, pooled, out_prefix = fused.linear_state_and_prefix(*bf16, num_prefix=P, rope=tuple(t.cuda() for t in tables))
    assert_close_to_scale(state, ref_state, 1e-5)
    assert_close_to_scale(pooled, ref_pooled, 2**-8)
    # the rotated keys and the softmax weights rounded to bf16 before their products, as a flash kernel does
    assert_close_to_scale(out_prefix, ref_prefix, 2**-7)
    ref = fused.linear_apply_reference(as_bf16(q), ref_state, as_bf16(v), as_bf16(weight), as_bf16(prefix), *grid, 1e-6)
    out = fused.linear_apply(
        q.cuda().bfloat16(),
        state,
        v.cuda().bfloat16(),
        weight.cuda().bfloat16(),
        prefix.cuda().bfloat16(),
        grid=grid,
        eps=1e-6,
    )
    assert_close_to_scale(out, ref, 2**-7)  # one rounding of the output, plus the bf16 split of the state


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_l_block_with_kernels_trains_on_cuda(tiny_model):
    """`torch.compile` sees the triton_ops and their registered backward: gradients equal eager's plain path."""
    model = tiny_model("LL", random_weights=True, num_registers=2, img_size=256).cuda()
    x = torch.randn(2, 3, 256, 256, device="cuda")
    out = torch.compile(model, fullgraph=True)(x)  # a 32 x 32 grid: above `kernels.MIN_TOKENS`
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    kernels.ENABLED, old = False, kernels.ENABLED
    try:
        ref = model(x)
        ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    finally:
        kernels.ENABLED = old
    assert_close_to_scale(out, ref, 1e-4)
    for a, b in zip(grads, ref_grads):
        assert_close_to_scale(a, b, 1e-3)
