"""Every kernel of `jetvit.ops` against a plain reference: the forward within a stated tolerance, and the gradient.

References: the `*_naive` functions of `ops.py` (explicit N x N matrices and loops) and, for the pieces that have none
there, a formula written here independently: RoPE as a complex rotation, windows by an explicit index loop, the
focusing kernel from FLatten's definition one token vector at a time.

Gradients: `torch.autograd.gradcheck` in float64 on tiny shapes, and the gradients compared with the reference's.
Tolerances (fp32 inputs of unit scale): 1e-5 absolute and relative, the reference computed in fp64 where it can be.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jetvit import ops

F64 = torch.float64


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(B: int, H: int, N: int, d: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [randn(B, H, N, d, seed=seed + i, dtype=dtype).requires_grad_() for i in range(3)]


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 99) -> list[torch.Tensor]:
    """d<out, r>/d inputs for a fixed random r: the whole Jacobian seen through one random direction."""
    r = randn(*out.shape, seed=seed, dtype=out.dtype)
    return list(torch.autograd.grad(out, inputs, r, retain_graph=True))


def assert_same_grads(fast: torch.Tensor, ref: torch.Tensor, inputs: list[torch.Tensor], tol: float = 1e-5) -> None:
    for a, b in zip(grads(fast, inputs), grads(ref.to(fast.dtype), inputs)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------------------------------------
# RoPE and the prefix join


def rope_reference(x: torch.Tensor, theta: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Dim i and dim i + d/2 of each patch token as one complex number, turned by the angle theta (h*w, d/2)."""
    d = x.shape[-1]
    patches = x[:, :, num_prefix:]
    z = torch.complex(patches[..., : d // 2], patches[..., d // 2 :]) * torch.polar(torch.ones_like(theta), theta)
    return torch.cat((x[:, :, :num_prefix], torch.cat((z.real, z.imag), dim=-1)), dim=2)


@pytest.mark.parametrize("prefix", [0, 2])
def test_apply_rope_is_a_complex_rotation_of_each_patch_token(prefix):
    hw, d = 6, 4
    theta = randn(hw, d // 2, seed=1, dtype=F64) * math.pi
    cos, sin = torch.cat((theta.cos(), theta.cos()), -1), torch.cat((theta.sin(), theta.sin()), -1)  # (h*w, d)
    x = randn(2, 2, prefix + hw, d, seed=0, dtype=F64).requires_grad_()
    out = ops.apply_rope(x, cos, sin, prefix)
    torch.testing.assert_close(out, rope_reference(x, theta, prefix), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out[:, :, :prefix], x[:, :, :prefix], atol=0, rtol=0)
    assert torch.autograd.gradcheck(lambda t: ops.apply_rope(t, cos, sin, prefix), (x,))


def test_join_prefix_is_a_concatenation_along_the_tokens():
    prefix, patches = randn(2, 3, 2, 4, seed=0, dtype=F64), randn(2, 3, 5, 4, seed=1, dtype=F64)
    out = ops.join_prefix(prefix, patches)
    torch.testing.assert_close(out, torch.cat((prefix, patches), dim=2), atol=0, rtol=0)
    # the (B, N, H, d) layout that makes the attention's transpose before `proj` free
    assert out.transpose(1, 2).is_contiguous()
    inputs = (prefix.requires_grad_(), patches.requires_grad_())
    assert torch.autograd.gradcheck(ops.join_prefix, inputs)


@pytest.mark.parametrize("prefix", [0, 3])
def test_prefix_attention_is_softmax_attention_of_the_prefix_queries(prefix):
    q, k, v = qkv(2, 2, 3 + 7, 4, dtype=F64)
    out = ops.prefix_attention(q, k, v, prefix)
    scores = q[:, :, :prefix] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, P, N)
    torch.testing.assert_close(out, scores.softmax(-1) @ v, atol=1e-12, rtol=1e-12)
    if prefix:
        assert torch.autograd.gradcheck(lambda a, b, c: ops.prefix_attention(a, b, c, prefix), (q, k, v))


# --------------------------------------------------------------------------------------------------------------------
# Windows

# (grid, window, prefix): exact tiling, padding on one side or both, a window larger than the grid.
WINDOW_CASES = [((6, 6), 3, 5), ((5, 7), 3, 1), ((5, 7), 3, 5), ((4, 9), 4, 0), ((4, 4), 8, 0), ((5, 7), 8, 5)]


def partition_reference(x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """(B, H, h*w, d) -> (B * nW, H, window^2, d) by an explicit loop: window (b, row, col) is number
    (b * rows + row) * cols + col, its tokens row-major, zeros where the window overhangs the grid."""
    B, Hn, _, d = x.shape
    h, w = grid
    rows, cols = math.ceil(h / window), math.ceil(w / window)
    out = x.new_zeros(B * rows * cols, Hn, window * window, d)
    for b in range(B):
        for r in range(rows):
            for c in range(cols):
                for i in range(window):
                    for j in range(window):
                        y, x_ = r * window + i, c * window + j
                        if y < h and x_ < w:
                            out[(b * rows + r) * cols + c, :, i * window + j] = x[b, :, y * w + x_]
    return out


@pytest.mark.parametrize("grid,window,prefix", WINDOW_CASES)
def test_window_partition_and_unpartition_against_an_index_loop(grid, window, prefix):
    x = randn(2, 3, grid[0] * grid[1], 4, seed=0)
    windows, hp, wp = ops.window_partition(x, grid, window)
    torch.testing.assert_close(windows, partition_reference(x, grid, window), atol=0, rtol=0)
    assert (hp, wp) == (math.ceil(grid[0] / window) * window, math.ceil(grid[1] / window) * window)
    torch.testing.assert_close(ops.window_unpartition(windows, 2, grid, (hp, wp), window), x, atol=0, rtol=0)
    # the keys' and values' layout: each window led by the prefix tokens
    xp = randn(2, 3, prefix + grid[0] * grid[1], 4, seed=1)
    ref = partition_reference(xp[:, :, prefix:], grid, window)
    ref = torch.cat((xp[:, None, :, :prefix].expand(-1, ref.shape[0] // 2, -1, -1, -1).flatten(0, 1), ref), dim=2)
    torch.testing.assert_close(ops.window_partition_with_prefix(xp, grid, window, prefix), ref, atol=0, rtol=0)


@pytest.mark.parametrize("grid,window,prefix", WINDOW_CASES)
def test_window_key_mask_marks_the_real_tokens(grid, window, prefix):
    mask = ops.window_key_mask(grid, window, prefix, torch.device("cpu"))
    real = partition_reference(torch.ones(1, 1, grid[0] * grid[1], 1), grid, window)[:, 0, :, 0] > 0  # (nW, ws^2)
    if bool(real.all()):
        assert mask is None
    else:
        expected = torch.cat((torch.ones(real.shape[0], prefix, dtype=torch.bool), real), dim=1)
        assert torch.equal(mask, expected[:, None, None, :])


def test_window_partitions_have_exact_gradients():
    grid, window, prefix = (3, 5), 2, 2  # padded on both sides
    x = randn(2, 2, grid[0] * grid[1], 3, seed=0, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.window_partition(t, grid, window)[0], (x,))
    windows = ops.window_partition(x.detach(), grid, window)[0].requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.window_unpartition(t, 2, grid, (4, 6), window), (windows,))
    xp = randn(2, 2, prefix + grid[0] * grid[1], 3, seed=1, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.window_partition_with_prefix(t, grid, window, prefix), (xp,))


@pytest.mark.parametrize("grid,window,prefix", WINDOW_CASES)
def test_window_attention_matches_reference(grid, window, prefix):
    q, k, v = qkv(2, 2, prefix + grid[0] * grid[1], 8)
    fast = ops.window_attention(q, k, v, grid=grid, window=window, num_prefix=prefix)
    # The naive reference has no padding at all, so equality also shows that padding never reaches real tokens.
    ref = ops.window_attention_naive(q, k, v, grid=grid, window=window, num_prefix=prefix)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert_same_grads(fast, ref, [q, k, v])


def test_window_attention_has_exact_gradients():
    grid, window, prefix = (3, 5), 2, 1  # padded windows: masked keys, dropped queries
    q, k, v = qkv(1, 2, prefix + grid[0] * grid[1], 3, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.window_attention(a, b, c, grid=grid, window=window, num_prefix=prefix), (q, k, v)
    )


# --------------------------------------------------------------------------------------------------------------------
# Linear attention


def focus_reference(x: torch.Tensor, p: float) -> torch.Tensor:
    """FLatten's focusing function, one token vector at a time, in fp64: r = relu(x), phi = |r| / |r^p| * r^p, and
    zero for a token with no positive entry."""
    out = x.new_zeros(x.shape, dtype=F64)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in x.shape[:-1])).reshape(-1, x.dim() - 1):
        r = x[tuple(idx)].double().clamp_min(0)
        powered = r**p
        if bool(powered.any()):
            out[tuple(idx)] = powered * (r.square().sum().sqrt() / powered.square().sum().sqrt())
    return out.to(x.dtype)


def test_focus_feature_map_against_the_formula():
    x = randn(2, 2, 9, 6, seed=0)
    x[0, 0, 3] = -x[0, 0, 3].abs()  # a token with no positive entry: phi is zero
    for p in (2.0, 3.0):
        phi = ops.feature_map(x, "focus", p)
        torch.testing.assert_close(phi, focus_reference(x, p), atol=1e-6, rtol=1e-5)
        # what focusing is for: the length of relu(x) is kept, its direction sharpened towards the largest entries
        r = x.clamp_min(0)
        torch.testing.assert_close(phi.norm(dim=-1), r.norm(dim=-1), atol=1e-5, rtol=1e-5)
        share = lambda t: t.amax(-1) / t.sum(-1).clamp_min(1e-12)  # noqa: E731
        assert bool((share(phi) >= share(r) - 1e-6).all())
    torch.testing.assert_close(ops.feature_map(x, "relu"), r, atol=0, rtol=0)


@pytest.mark.parametrize("kernel", ["relu", "focus"])
def test_feature_maps_have_exact_gradients(kernel):
    x = randn(2, 3, 4, seed=1, dtype=F64)
    x = torch.where(x.abs() < 0.1, x + 0.3, x)  # away from relu's kink, where the derivative jumps
    x[..., 0] = x[..., 0].abs()  # and no all-zero token, where the norm has no derivative
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.feature_map(t, kernel), (x,))
    ref = focus_reference(x, 3.0) if kernel == "focus" else x.clamp_min(0)
    assert_same_grads(ops.feature_map(x, kernel), ref, [x], tol=1e-10)


@pytest.mark.parametrize("kernel", ["relu", "focus"])
@pytest.mark.parametrize("nq", [50, 3])  # as many queries as keys, or fewer (Nq != N)
def test_linear_attention_matches_reference(kernel, nq):
    q, k, v = qkv(2, 3, 50, 8)
    phi_q, phi_k = ops.feature_map(q[:, :, :nq], kernel), ops.feature_map(k, kernel)
    fast = ops.linear_attention(phi_q, phi_k, v)
    ref = ops.linear_attention_naive(phi_q, phi_k, v)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert_same_grads(fast, ref, [q, k, v])


@pytest.mark.parametrize("nq", [5, 2])
def test_linear_attention_has_exact_gradients(nq):
    q, k, v = qkv(1, 2, 5, 3, seed=3, dtype=F64)
    phi_q, phi_k = q[:, :, :nq].detach().abs().requires_grad_(), k.detach().abs().requires_grad_()
    assert torch.autograd.gradcheck(ops.linear_attention, (phi_q, phi_k, v))
    fast, ref = ops.linear_attention(phi_q, phi_k, v), ops.linear_attention_naive(phi_q, phi_k, v)
    assert fast.dtype == F64
    assert_same_grads(fast, ref, [phi_q, phi_k, v], tol=1e-10)


def test_linear_attention_of_a_zero_query_is_zero_with_finite_gradients():
    q, k, v = qkv(1, 2, 6, 4)
    phi_q = F.relu(q) * torch.tensor([0.0, 1, 1, 1, 1, 1])[:, None]  # token 0 has no feature at all
    out = ops.linear_attention(phi_q, F.relu(k), v)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    assert all(bool(g.isfinite().all()) for g in grads(out, [q, k, v]))


# --------------------------------------------------------------------------------------------------------------------
# The per-image depthwise convolution (the dynamic convolution of the `L` blocks)


@pytest.mark.parametrize("batch", [1, 3])
def test_per_image_depthwise_conv_matches_reference_in_every_form(batch):
    x, w = randn(batch, 6, 7, 9, seed=0), randn(batch, 6, 5, 5, seed=1)
    ref = ops.depthwise_conv_per_image_naive(x, w)
    torch.testing.assert_close(ops.depthwise_conv_per_image(x, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ops.shifted_depthwise_conv(x, w), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ops.block_diagonal_depthwise_conv(x, w), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", ["grouped", "shifted"])
def test_export_mode_picks_the_per_image_conv_form(conv, monkeypatch):
    """Inside `export_mode` the per-image convolution takes the asked form (and the eager form outside it); an
    unknown form is refused by name."""
    called = []
    for name in ("block_diagonal_depthwise_conv", "shifted_depthwise_conv", "_grouped_depthwise_conv"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda x, w, _n=name, _f=real: called.append(_n) or _f(x, w))
    x, w = randn(2, 3, 4, 5, seed=0), randn(2, 3, 3, 3, seed=1)
    with ops.export_mode(conv=conv):
        ops.depthwise_conv_per_image(x, w)
    ops.depthwise_conv_per_image(x, w)
    form = "block_diagonal_depthwise_conv" if conv == "grouped" else "shifted_depthwise_conv"
    assert called == [form, "_grouped_depthwise_conv"]
    with pytest.raises(ValueError, match="conv 'im2col' is not one of grouped, shifted"):
        with ops.export_mode(conv="im2col"):
            pass
    assert not ops.exporting()


@pytest.mark.parametrize(
    "conv", [ops.depthwise_conv_per_image, ops.shifted_depthwise_conv, ops.block_diagonal_depthwise_conv]
)
def test_per_image_depthwise_conv_has_exact_gradients(conv):
    x, w = randn(2, 3, 4, 5, seed=0, dtype=F64).requires_grad_(), randn(2, 3, 3, 3, seed=1, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(conv, (x, w))
    assert_same_grads(conv(x, w), ops.depthwise_conv_per_image_naive(x, w), [x, w], tol=1e-10)


def test_per_image_depthwise_conv_compiles_and_backpropagates():
    """Under `torch.compile` the shifted form runs (no opaque op): the backward works and is the reference's."""
    x, w = randn(2, 3, 4, 5, seed=0).requires_grad_(), randn(2, 3, 3, 3, seed=1).requires_grad_()
    compiled = torch.compile(ops.depthwise_conv_per_image, backend="aot_eager", fullgraph=True, dynamic=False)
    assert_same_grads(compiled(x, w), ops.depthwise_conv_per_image_naive(x, w), [x, w], tol=1e-5)
