"""The `L` block's linear attention in two fused Triton kernels, each beside its plain PyTorch reference.

Notation as in `jetvit.ops`: B batch, H heads, N = P + h*w tokens (P prefix tokens first), d head dim, D = H*d.

- `linear_state(k, v, num_prefix)`: one pass over K and V gives the state [phi(K)^T V, phi(K)^T 1] (B, H, d, d+1)
  accumulated in fp32, and the squeeze of the dynamic convolution, the mean of the patch tokens' V (B, H, d). phi is
  the ReLU, applied as K is loaded: phi(K) is never written.
- `linear_state_and_prefix(k, v, q_prefix, num_prefix, rope)`: the same pass also gives the prefix queries' exact
  softmax attention over all N tokens (B, H, P, d). The keys are rotated by RoPE as they are loaded (the patch
  tokens by the grid's cos/sin, the prefix tokens not), so an `L` block that keeps RoPE out of its linear part never
  writes a rotated copy of K, and SDPA never reads K and V a second time. Online softmax per chunk of tokens (running
  maximum, sum of exponentials, weighted V), the chunks combined in a fixed order afterwards (flash-decoding).
- `linear_apply(q, state, v, weight, prefix, grid, eps)`: out = phi(q) S / (phi(q) . z + eps) for the patch queries,
  plus the per-image depthwise k x k convolution of V on the grid, added in registers and written once into the
  (B, N, D) input of `proj`, with the prefix tokens' outputs (`prefix`, from their softmax attention) in front.

Both are `torch.library.triton_op`s (`jetvit::linear_state`, `jetvit::linear_apply`): one op each in a dispatch
trace (the cost model counts them as such), visible to `torch.compile`, and differentiable: the backward is the
analytic gradient of the plain reference, computed with PyTorch ops in fp32 (no Triton backward kernels yet; the
prefix attention's backward recomputes its P x N attention matrix, small for a handful of prefix queries).

Precision. The state is summed in fp32; the patch queries' product with it runs on bf16 tensor cores with the fp32
state split into a bf16 high and low part (S = S_hi + S_lo, about 16 bits of mantissa), and the normaliser, the
division, the convolution and the add stay in fp32 until the one rounding at the store. The prefix attention is
computed as a flash kernel computes it: the keys rotated in fp32 and rounded to the input dtype (as the reference's
rotated copy is), scores and the weighted sum accumulated in fp32 from bf16 operands. fp32 inputs use IEEE fp32
dots. Under Triton's interpreter (`TRITON_INTERPRET=1`, the CPU tests) every load is upcast to fp32 first: the
interpreter computes bf16 arithmetic wrongly (triton issue 11584).

This module imports Triton; the model imports it only on CUDA with Triton installed (`jetvit.kernels.use_triton`).
"""

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from jetvit import ops

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_PROGRAMS = 256  # state kernel: split the tokens so that about this many programs run (an H100 has 132 SMs)
_MAX_PREFIX = 128  # prefix queries the state kernel attends for in one tile (YOLOS: 100 detection tokens + CLS)


def supported(kernel: str, head_dim: int, dtype: torch.dtype, conv_size: int, *, num_prefix: int = 0) -> bool:
    """Whether the kernels cover this `L` block: the ReLU kernel (focus needs a per-token norm, not fused), a
    power-of-two head dim from 16 to 128 (`tl.dot` tiles), bf16 or fp32 (fp16 would overflow the state's high part),
    a convolution of at most 9 x 9, and at most 128 prefix tokens (one tile of queries in the state kernel)."""
    return (
        kernel == "relu"
        and head_dim in (16, 32, 64, 128)
        and dtype in (torch.bfloat16, torch.float32)
        and conv_size <= 9
        and num_prefix <= _MAX_PREFIX
    )


# ---------------------------------------------------------------------------------------------------------------
# Plain references (also the backward)


def linear_state_reference(k: Tensor, v: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
    """k, v (B, H, N, d) -> state [relu(K)^T V, relu(K)^T 1] (B, H, d, d+1) in fp32 (fp64 for fp64 inputs), and the
    mean of the patch tokens' V (B, H, d) in v's dtype."""
    acc = torch.promote_types(v.dtype, torch.float32)
    phi = torch.relu(k).to(acc)
    state = torch.cat((phi.transpose(-1, -2) @ v.to(acc), phi.sum(dim=2).unsqueeze(-1)), dim=-1)  # (B, H, d, d+1)
    return state, v[:, :, num_prefix:].mean(dim=2)


def prefix_attention_reference(
    q_prefix: Tensor, k: Tensor, v: Tensor, num_prefix: int, rope: tuple[Tensor, Tensor] | None
) -> Tensor:
    """The prefix queries' exact softmax attention over all N tokens as the plain `L` block computes it: the keys
    rotated by `ops.apply_rope` (rope (cos, sin), each (h*w, d), cast to k's dtype; the first `num_prefix` keys are
    not rotated; None: no rotation), then `ops.prefix_attention`. q_prefix (B, H, M, d), k, v (B, H, N, d) ->
    (B, H, M, d)."""
    if rope is not None:
        cos, sin = rope
        k = ops.apply_rope(k, cos.to(k.dtype), sin.to(k.dtype), num_prefix)
    if not q_prefix.shape[2]:
        return q_prefix.new_empty(q_prefix.shape)
    return ops.prefix_attention(q_prefix, k, v, q_prefix.shape[2])


def linear_apply_reference(
    q: Tensor, state: Tensor, v: Tensor, weight: Tensor, prefix: Tensor, h: int, w: int, eps: float
) -> Tensor:
    """The patch queries' linear attention with the state, plus the per-image depthwise convolution of V's patch
    tokens (weight (B, D, k, k); an empty weight: no convolution), the prefix outputs (B, H, P, d) in front.
    q, v (B, H, N, d) -> (B, N, D) in v's dtype, computed in fp32 (fp64 for fp64 inputs)."""
    B, Hn, N, d = q.shape
    P = prefix.shape[2]
    acc = state.dtype
    phi = torch.relu(q[:, :, P:]).to(acc)
    num = phi @ state[..., :d]  # (B, H, h*w, d)
    out = num / (phi @ state[..., d:] + eps)
    if weight.numel():
        x = v[:, :, P:].to(acc).transpose(-1, -2).reshape(B, Hn * d, h, w)  # (B, D, h, w)
        ks = weight.shape[-1]
        conv = torch.nn.functional.conv2d(
            x.reshape(1, B * Hn * d, h, w), weight.to(acc).reshape(-1, 1, ks, ks), padding=ks // 2, groups=B * Hn * d
        )
        out = out + conv.reshape(B, Hn, d, h * w).transpose(-1, -2)
    out = torch.cat((prefix.to(acc), out), dim=2)  # (B, H, N, d)
    return out.transpose(1, 2).reshape(B, N, Hn * d).to(v.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _state_kernel(
    k_ptr, v_ptr, s_ptr, z_ptr, pool_ptr,
    q_ptr, cos_ptr, sin_ptr, m_ptr, l_ptr, o_ptr,
    N, H, P, M, NUM_CHUNKS, qk_scale,
    sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sq_b, sq_h, sq_m, sc_n,
    CHUNK: tl.constexpr, D_HEAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    PREFIX: tl.constexpr, ROPE: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # One program: one (image, head) and one chunk of CHUNK tokens; it writes that chunk's partial sums (and, with
    # PREFIX, the prefix queries' running maximum, sum of exponentials and weighted V over the chunk). CHUNK is a
    # constexpr because the interpreter cannot loop to a runtime bound (with NumPy 2).
    bh, c = tl.program_id(0), tl.program_id(1)
    b, hh = bh // H, bh % H
    offs_d = tl.arange(0, D_HEAD)
    k_base = k_ptr + b * sk_b + hh * sk_h
    v_base = v_ptr + b * sv_b + hh * sv_h
    state = tl.zeros((D_HEAD, D_HEAD), dtype=tl.float32)
    z = tl.zeros((D_HEAD,), dtype=tl.float32)
    pool = tl.zeros((D_HEAD,), dtype=tl.float32)
    if PREFIX:
        offs_m = tl.arange(0, BLOCK_M)
        qp = tl.load(
            q_ptr + b * sq_b + hh * sq_h + offs_m[:, None] * sq_m + offs_d[None, :],
            mask=(offs_m < M)[:, None],
            other=0.0,
        )  # (BLOCK_M, d): rows past M are zero queries, computed and dropped
        if UPCAST:
            qp = qp.to(tl.float32)
        m_run = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running maximum of the scores (log2 units)
        l_run = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of 2^(score - maximum)
        o_run = tl.zeros((BLOCK_M, D_HEAD), dtype=tl.float32)  # running weighted V
        if ROPE:
            # rotate_half as a gather of the partner column: dim i pairs with i + d/2, the first half negated
            partner = (offs_d + D_HEAD // 2) % D_HEAD
            sign = tl.where(offs_d < D_HEAD // 2, -1.0, 1.0)
    start = c * CHUNK
    for n0 in range(0, CHUNK, BLOCK_N):
        offs_n = start + n0 + tl.arange(0, BLOCK_N)
        live = (offs_n < N) & (n0 + tl.arange(0, BLOCK_N) < CHUNK)
        patch = (offs_n >= P) & live
        kt = tl.load(k_base + offs_n[:, None] * sk_n + offs_d[None, :], mask=live[:, None], other=0.0)
        vt = tl.load(v_base + offs_n[:, None] * sv_n + offs_d[None, :], mask=live[:, None], other=0.0)
        if UPCAST:
            kt, vt = kt.to(tl.float32), vt.to(tl.float32)
        phi = tl.maximum(kt, 0.0)  # phi = relu, applied in registers
        if IEEE:
            state = tl.dot(tl.trans(phi), vt, state, input_precision="ieee")
        else:
            state = tl.dot(tl.trans(phi), vt, state)
        z += tl.sum(phi.to(tl.float32), axis=0)
        pool += tl.sum(tl.where(patch[:, None], vt.to(tl.float32), 0.0), axis=0)
        if PREFIX:
            kr = kt
            if ROPE:  # k cos + rotate_half(k) sin for the patch tokens; cos 1, sin 0 leave the prefix keys as they are
                kp = tl.load(k_base + offs_n[:, None] * sk_n + partner[None, :], mask=live[:, None], other=0.0)
                rows = (offs_n - P)[:, None] * sc_n + offs_d[None, :]
                cs = tl.load(cos_ptr + rows, mask=patch[:, None], other=1.0)
                sn = tl.load(sin_ptr + rows, mask=patch[:, None], other=0.0)
                cs, sn = cs.to(tl.float32), sn.to(tl.float32)
                kr = kt.to(tl.float32) * cs + sign[None, :] * kp.to(tl.float32) * sn
                if not UPCAST:
                    kr = kr.to(kt.dtype)  # the reference's rotated keys are in the input dtype too
            if IEEE:
                s = tl.dot(qp, tl.trans(kr), input_precision="ieee")
            else:
                s = tl.dot(qp, tl.trans(kr))
            s = tl.where(live[None, :], s * qk_scale, float("-inf"))  # (BLOCK_M, BLOCK_N)
            m_new = tl.maximum(m_run, tl.max(s, axis=1))  # finite: the first tile of a chunk has a live key
            alpha = tl.exp2(m_run - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_run = l_run * alpha + tl.sum(p, axis=1)
            if IEEE:
                o_run = tl.dot(p, vt, o_run * alpha[:, None], input_precision="ieee")
            else:
                o_run = tl.dot(p.to(vt.dtype), vt, o_run * alpha[:, None])
            m_run = m_new
    part = bh * NUM_CHUNKS + c
    tl.store(s_ptr + part * D_HEAD * D_HEAD + offs_d[:, None] * D_HEAD + offs_d[None, :], state)
    tl.store(z_ptr + part * D_HEAD + offs_d, z)
    tl.store(pool_ptr + part * D_HEAD + offs_d, pool)
    if PREFIX:
        tl.store(m_ptr + part * BLOCK_M + offs_m, m_run)
        tl.store(l_ptr + part * BLOCK_M + offs_m, l_run)
        tl.store(o_ptr + part * BLOCK_M * D_HEAD + offs_m[:, None] * D_HEAD + offs_d[None, :], o_run)


@triton.jit
def _apply_kernel(
    q_ptr, shi_ptr, slo_ptr, z_ptr, v_ptr, w_ptr, o_ptr,
    H, P, GH, GW, eps,
    sq_b, sq_h, sq_n, sv_b, sv_h, sv_n, sw_b, sw_c, sw_u, sw_v, so_b, so_n,
    D_HEAD: tl.constexpr, BLOCK_M: tl.constexpr, KS: tl.constexpr, HAS_CONV: tl.constexpr,
    SPLIT: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_M patch tokens (row-major on the grid) of one (image, head).
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, hh = bh // H, bh % H
    offs_d = tl.arange(0, D_HEAD)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # patch token index
    live = offs_m < GH * GW
    q = tl.load(
        q_ptr + b * sq_b + hh * sq_h + (P + offs_m)[:, None] * sq_n + offs_d[None, :], mask=live[:, None], other=0.0
    )
    s_offs = bh * D_HEAD * D_HEAD + offs_d[:, None] * D_HEAD + offs_d[None, :]
    s_hi = tl.load(shi_ptr + s_offs)
    if UPCAST:
        q, s_hi = q.to(tl.float32), s_hi.to(tl.float32)
    q = tl.maximum(q, 0.0)
    if IEEE:
        num = tl.dot(q, s_hi, input_precision="ieee")
    else:
        num = tl.dot(q, s_hi)
    if SPLIT:  # the low half of the fp32 state: phi(q) S to about 16 bits
        s_lo = tl.load(slo_ptr + s_offs)
        if UPCAST:
            s_lo = s_lo.to(tl.float32)
        if IEEE:
            num = tl.dot(q, s_lo, num, input_precision="ieee")
        else:
            num = tl.dot(q, s_lo, num)
    z = tl.load(z_ptr + bh * D_HEAD + offs_d)
    den = tl.sum(q.to(tl.float32) * z[None, :], axis=1) + eps
    out = num / den[:, None]
    if HAS_CONV:
        y, x = offs_m // GW, offs_m % GW
        v_base = v_ptr + b * sv_b + hh * sv_h
        w_base = w_ptr + b * sw_b + (hh * D_HEAD + offs_d) * sw_c
        for u in tl.static_range(KS):
            for t in tl.static_range(KS):
                yy, xx = y + (u - KS // 2), x + (t - KS // 2)
                inside = live & (yy >= 0) & (yy < GH) & (xx >= 0) & (xx < GW)
                vn = tl.load(
                    v_base + (P + yy * GW + xx)[:, None] * sv_n + offs_d[None, :], mask=inside[:, None], other=0.0
                )
                wt = tl.load(w_base + u * sw_u + t * sw_v)
                out += vn.to(tl.float32) * wt.to(tl.float32)[None, :]
    o = o_ptr + b * so_b + (P + offs_m)[:, None] * so_n + hh * D_HEAD + offs_d[None, :]
    tl.store(o, out.to(o_ptr.dtype.element_ty), mask=live[:, None])


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Ops


@torch.library.triton_op("jetvit::linear_state", mutates_args=())
def _linear_state(
    k: Tensor, v: Tensor, q_prefix: Tensor, cos: Tensor, sin: Tensor, num_prefix: int
) -> tuple[Tensor, Tensor, Tensor]:
    B, Hn, N, d = k.shape
    M = q_prefix.shape[2]
    k, v, q_prefix = _last_dim_contiguous(k), _last_dim_contiguous(v), _last_dim_contiguous(q_prefix)
    tables = (cos.contiguous(), sin.contiguous()) if cos.numel() else None
    block_n = 64 if N >= 64 else 16
    block_m = max(16, triton.next_power_of_2(M))
    chunks = max(1, min(triton.cdiv(_PROGRAMS, B * Hn), triton.cdiv(N, block_n)))
    chunk = triton.cdiv(triton.cdiv(N, chunks), block_n) * block_n
    chunks = triton.cdiv(N, chunk)
    f32 = dict(device=k.device, dtype=torch.float32)
    rows = block_m if M else 0
    parts = (
        torch.empty(B * Hn, chunks, d, d, **f32),  # phi(K)^T V
        torch.empty(B * Hn, chunks, d, **f32),  # phi(K)^T 1
        torch.empty(B * Hn, chunks, d, **f32),  # the patch tokens' V, summed
        torch.empty(B * Hn, chunks, rows, **f32),  # the prefix queries' running maximum of the scores (log2 units)
        torch.empty(B * Hn, chunks, rows, **f32),  # their sum of exponentials
        torch.empty(B * Hn, chunks, rows, d, **f32),  # their weighted V
    )
    if not k.is_meta:  # a shape-only trace (the cost model) launches nothing; the interpreter could not
        _launch_state(k, v, q_prefix, tables, parts, num_prefix, chunk, chunks, block_n, block_m)
    s_part, z_part, pool_part, m_part, l_part, o_part = parts
    # The chunks' partial sums, in a fixed order (deterministic, unlike atomics): (B*H, chunks, ...) -> (B, H, ...)
    state = torch.cat((s_part.sum(dim=1), z_part.sum(dim=1).unsqueeze(-1)), dim=-1).reshape(B, Hn, d, d + 1)
    pooled = (pool_part.sum(dim=1) / (N - num_prefix)).reshape(B, Hn, d).to(v.dtype)
    if not M:
        return state, pooled, v.new_empty(B, Hn, 0, d)
    # The chunks' softmax partials rescaled to their common maximum and added, in a fixed order (flash-decoding)
    top = m_part.amax(dim=1, keepdim=True)  # (B*H, 1, BLOCK_M)
    weight = torch.exp2(m_part - top)  # (B*H, chunks, BLOCK_M)
    num = (o_part * weight.unsqueeze(-1)).sum(dim=1)  # (B*H, BLOCK_M, d)
    den = (l_part * weight).sum(dim=1).unsqueeze(-1)  # (B*H, BLOCK_M, 1)
    prefix = (num / den)[:, :M].reshape(B, Hn, M, d).to(v.dtype)  # rows past M were padding
    return state, pooled, prefix


def _launch_state(k, v, q_prefix, tables, parts, num_prefix, chunk, chunks, block_n, block_m) -> None:
    B, Hn, N, d = k.shape
    M = q_prefix.shape[2]
    # Without prefix queries (or without RoPE) their pointers are never read: any tensor stands in.
    any_ = parts[0]
    q_arg, q_strides = (q_prefix, q_prefix.stride()[:3]) if M else (any_, (0, 0, 0))
    cos, sin, c_stride = (*tables, tables[0].stride(0)) if tables is not None else (any_, any_, 0)
    qk_scale = math.log2(math.e) / math.sqrt(d)  # SDPA's 1/sqrt(d), in log2 units for exp2
    torch.library.wrap_triton(_state_kernel)[(B * Hn, chunks)](
        k, v, *parts[:3],
        q_arg, cos, sin, *(parts[3:] if M else (any_,) * 3),
        N, Hn, num_prefix, M, chunks, qk_scale,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), *q_strides, c_stride,
        CHUNK=chunk, D_HEAD=d, BLOCK_N=block_n, BLOCK_M=block_m, PREFIX=M > 0, ROPE=M > 0 and tables is not None,
        UPCAST=INTERPRET, IEEE=v.dtype == torch.float32,
    )  # fmt: skip


@torch.library.triton_op("jetvit::linear_apply", mutates_args=())
def _linear_apply(
    q: Tensor, state: Tensor, v: Tensor, weight: Tensor, prefix: Tensor, h: int, w: int, eps: float
) -> Tensor:
    B, Hn, N, d = q.shape
    P = prefix.shape[2]
    q, v = _last_dim_contiguous(q), _last_dim_contiguous(v)
    out = torch.empty(B, N, Hn * d, device=q.device, dtype=v.dtype)
    out[:, :P] = prefix.transpose(1, 2).reshape(B, P, Hn * d)
    s = state[..., :d].contiguous()  # (B, H, d, d) fp32
    z = state[..., d].contiguous()  # (B, H, d)
    split = v.dtype != torch.float32
    s_hi = s.to(v.dtype)
    s_lo = (s - s_hi.float()).to(v.dtype) if split else s_hi
    has_conv = weight.numel() > 0
    ks = weight.shape[-1] if has_conv else 1
    wt = weight if has_conv else s_hi  # any tensor: never read without the convolution
    ws = weight.stride() if has_conv else (0, 0, 0, 0)
    block_m = 64
    if q.is_meta:  # a shape-only trace launches nothing
        return out
    torch.library.wrap_triton(_apply_kernel)[(triton.cdiv(h * w, block_m), B * Hn)](
        q, s_hi, s_lo, z, v, wt, out,
        Hn, P, h, w, eps,
        q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2), *ws, out.stride(0), out.stride(1),
        D_HEAD=d, BLOCK_M=block_m, KS=ks, HAS_CONV=has_conv, SPLIT=split, UPCAST=INTERPRET,
        IEEE=v.dtype == torch.float32,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# Autograd: the analytic gradients of the references, in PyTorch (fp32)


def _state_setup(ctx, inputs, output) -> None:
    k, v, q_prefix, cos, sin, num_prefix = inputs
    ctx.save_for_backward(k, v, q_prefix, cos, sin)
    ctx.num_prefix = num_prefix


def _state_backward(ctx, g_state: Tensor | None, g_pool: Tensor | None, g_prefix: Tensor | None):
    k, v, q_prefix, cos, sin = ctx.saved_tensors
    P, d, acc = ctx.num_prefix, k.shape[-1], torch.promote_types(v.dtype, torch.float32)
    dk = torch.zeros(k.shape, device=k.device, dtype=acc)
    dv = torch.zeros(v.shape, device=v.device, dtype=acc)
    dq = torch.zeros_like(q_prefix)
    if g_state is not None:
        gs, gz = g_state[..., :d].to(acc), g_state[..., d].to(acc)  # (B, H, d, d), (B, H, d)
        dphi = v.to(acc) @ gs.transpose(-1, -2) + gz.unsqueeze(2)  # (B, H, N, d)
        dk = dk + dphi * (k > 0)
        dv = dv + torch.relu(k).to(acc) @ gs
    if g_pool is not None:
        dv = torch.cat((dv[:, :, :P], dv[:, :, P:] + g_pool.to(acc).unsqueeze(2) / (k.shape[2] - P)), dim=2)
    if g_prefix is not None and q_prefix.shape[2]:
        dq, dk_prefix, dv_prefix = _prefix_attention_backward(q_prefix, k, v, cos, sin, P, g_prefix)
        dk, dv, dq = dk + dk_prefix, dv + dv_prefix, dq.to(q_prefix.dtype)
    return dk.to(k.dtype), dv.to(v.dtype), dq, None, None, None


def _prefix_attention_backward(
    q_prefix: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, num_prefix: int, g: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of `prefix_attention_reference` for q_prefix (B, H, M, d), k, v (B, H, N, d) with output
    gradient g (B, H, M, d), in fp32: the attention recomputed (M x N, small), softmax's backward, and the rotation's
    transpose for the keys. The cos/sin tables get no gradient (they are constants of the grid)."""
    acc = torch.promote_types(v.dtype, torch.float32)
    q, k, v, g = q_prefix.to(acc), k.to(acc), v.to(acc), g.to(acc)
    rope = cos.numel() > 0
    kr = ops.apply_rope(k, cos.to(acc), sin.to(acc), num_prefix) if rope else k
    scale = k.shape[-1] ** -0.5
    a = torch.softmax((q @ kr.transpose(-1, -2)) * scale, dim=-1)  # (B, H, M, N)
    out = a @ v  # (B, H, M, d)
    ds = a * (g @ v.transpose(-1, -2) - (g * out).sum(dim=-1, keepdim=True))  # through the softmax
    dq = (ds @ kr) * scale
    dkr = (ds.transpose(-1, -2) @ q) * scale  # (B, H, N, d)
    dk = _rope_transpose(dkr, cos.to(acc), sin.to(acc), num_prefix) if rope else dkr
    return dq, dk, a.transpose(-1, -2) @ g


def _rope_transpose(g: Tensor, cos: Tensor, sin: Tensor, num_prefix: int) -> Tensor:
    """The transpose of `ops.apply_rope` (its input's gradient): (B, H, N, d) -> (B, H, N, d). apply_rope maps the
    patch tokens' halves (x1, x2) to (x1 cos - x2 sin, x2 cos + x1 sin), half by half of the tables."""
    P, half = num_prefix, g.shape[-1] // 2
    g1, g2 = g[:, :, P:, :half], g[:, :, P:, half:]  # (B, H, h*w, d/2) views
    out = g.clone()
    out[:, :, P:, :half] = g1 * cos[:, :half] + g2 * sin[:, half:]
    out[:, :, P:, half:] = g2 * cos[:, half:] - g1 * sin[:, :half]
    return out


def _apply_setup(ctx, inputs, output) -> None:
    q, state, v, weight, prefix, h, w, eps = inputs
    ctx.save_for_backward(q, state, v, weight)
    ctx.num_prefix, ctx.grid, ctx.eps = prefix.shape[2], (h, w), eps


def _apply_backward(ctx, g: Tensor):
    q, state, v, weight = ctx.saved_tensors
    P, (h, w), eps = ctx.num_prefix, ctx.grid, ctx.eps
    B, Hn, N, d = q.shape
    acc = state.dtype
    g = g.to(acc).reshape(B, N, Hn, d).transpose(1, 2)  # (B, H, N, d)
    g_prefix, g_patch = g[:, :, :P], g[:, :, P:]
    qp = q[:, :, P:]
    phi = torch.relu(qp).to(acc)
    s, z = state[..., :d], state[..., d:]  # (B, H, d, d), (B, H, d, 1)
    den = phi @ z + eps  # (B, H, h*w, 1)
    lin = (phi @ s) / den
    g_num = g_patch / den
    g_den = -(g_patch * lin).sum(dim=-1, keepdim=True) / den
    dphi = g_num @ s.transpose(-1, -2) + g_den @ z.transpose(-1, -2)  # (B, H, h*w, d)
    dq = torch.cat((torch.zeros_like(q[:, :, :P]), (dphi * (qp > 0)).to(q.dtype)), dim=2)
    d_state = torch.cat((phi.transpose(-1, -2) @ g_num, phi.transpose(-1, -2) @ g_den), dim=-1)
    dv_patch, d_weight = torch.zeros_like(g_patch), None
    if weight.numel():
        # The convolution's backward as autograd computes it for the reference's grouped convolution.
        C, ks = Hn * d, weight.shape[-1]
        x = v[:, :, P:].to(acc).transpose(-1, -2).reshape(1, B * C, h, w)  # (1, B*D, h, w)
        gy = g_patch.transpose(-1, -2).reshape(1, B * C, h, w)
        wf = weight.to(acc).reshape(B * C, 1, ks, ks)
        dx, dw, _ = torch.ops.aten.convolution_backward(
            gy, x, wf, None, [1, 1], [ks // 2] * 2, [1, 1], False, [0, 0], B * C, [True, True, False]
        )
        dv_patch = dx.reshape(B, Hn, d, h * w).transpose(-1, -2)
        d_weight = dw.reshape(weight.shape).to(weight.dtype)
    dv = torch.cat((torch.zeros_like(v[:, :, :P], dtype=acc), dv_patch), dim=2).to(v.dtype)
    return dq, d_state, dv, d_weight, g_prefix.to(q.dtype), None, None, None


_linear_state.register_autograd(_state_backward, setup_context=_state_setup)
_linear_apply.register_autograd(_apply_backward, setup_context=_apply_setup)


# ---------------------------------------------------------------------------------------------------------------
# Public functions


def linear_state(k: Tensor, v: Tensor, *, num_prefix: int) -> tuple[Tensor, Tensor]:
    """k, v (B, H, N, d), the first `num_prefix` tokens prefix -> state [relu(K)^T V, relu(K)^T 1] (B, H, d, d+1)
    fp32, pooled patch V (B, H, d) in v's dtype. One pass over K and V (`linear_state_reference` is the plain form)."""
    state, pooled, _ = linear_state_and_prefix(k, v, k.new_empty(*k.shape[:2], 0, k.shape[-1]), num_prefix=num_prefix)
    return state, pooled


def linear_state_and_prefix(
    k: Tensor, v: Tensor, q_prefix: Tensor, *, num_prefix: int, rope: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """`linear_state` and, from the same pass over K and V, the exact softmax attention of the queries q_prefix
    (B, H, M, d) over all N tokens, with the keys rotated by `rope` (cos, sin), each (N - num_prefix, d), the first
    `num_prefix` keys not rotated (None: no rotation). Returns state (B, H, d, d+1) fp32, pooled patch V (B, H, d)
    and the prefix output (B, H, M, d), both in v's dtype. The plain form is `linear_state_reference` and
    `prefix_attention_reference` (`ops.apply_rope` and `ops.prefix_attention`, as the plain `L` block runs them)."""
    B, Hn, N, d = k.shape
    if v.shape != k.shape or q_prefix.shape[:2] != k.shape[:2] or q_prefix.shape[3] != d:
        raise ValueError(
            f"expected k, v (B, H, N, d) and q_prefix (B, H, M, d) alike, got {tuple(k.shape)}, {tuple(v.shape)} and "
            f"{tuple(q_prefix.shape)}"
        )
    if not 0 <= num_prefix < N:
        raise ValueError(f"num_prefix must be in [0, {N}) for {N} tokens, got {num_prefix}")
    if q_prefix.shape[2] > _MAX_PREFIX:
        raise ValueError(f"at most {_MAX_PREFIX} prefix queries fit the state kernel, got {q_prefix.shape[2]}")
    if rope is None:
        cos = sin = k.new_empty(0)
    else:
        cos, sin = rope
        if cos.shape != (N - num_prefix, d) or sin.shape != cos.shape:
            raise ValueError(
                f"rope tables must be (N - num_prefix, d) = ({N - num_prefix}, {d}) each, got {tuple(cos.shape)} and "
                f"{tuple(sin.shape)}"
            )
    return torch.ops.jetvit.linear_state(k, v, q_prefix, cos, sin, num_prefix)


def linear_apply(
    q: Tensor, state: Tensor, v: Tensor, weight: Tensor | None, prefix: Tensor, *, grid: tuple[int, int], eps: float
) -> Tensor:
    """q, v (B, H, N, d), state from `linear_state`, weight (B, D, k, k) of the per-image convolution (None: none;
    a static kernel expanded over the batch is fine), prefix (B, H, P, d) -> (B, N, D), the input of `proj`.
    `linear_apply_reference` is the plain form."""
    if weight is None:
        weight = q.new_empty(0)
    return torch.ops.jetvit.linear_apply(q, state, v, weight, prefix, grid[0], grid[1], eps)
