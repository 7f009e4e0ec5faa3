"""Attention kernels of the hybrid ViT, each beside a plain reference implementation of the same function.

Notation: B batch, H heads, N tokens (P prefix tokens first, then the h*w patch tokens row-major), d head dim.
The fast paths never build an N x N tensor (except full attention, where SDPA's backends avoid it on GPU); the
`*_naive` references do, on purpose, and exist only to be compared against in tests.

Prefix tokens (CLS, registers) are treated the same way by every efficient kind: as queries they attend to all
tokens with exact softmax attention (their cost is P*N, linear in N); as keys and values they are seen by every
patch token.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------------
# Deployment graphs

_exporting = False
_export_conv = "grouped"
EXPORT_CONVS = ("grouped", "shifted")  # the exported forms of `depthwise_conv_per_image`


def exporting() -> bool:
    """Whether the model is being traced into a deployment graph (`export_mode`, which `jetvit.export` enters).

    The ops then take their shape-generic forms, so that batch and resolution stay symbolic in the graph: no writes
    into slices of a fresh buffer (they become `ScatterND`, and a broadcast write bakes the window grid in), no
    Python branch on the grid size (windows always padded and masked, the padding possibly zero), the linear
    attention's state and normaliser always in fp32. Eager and compiled runs keep the faster forms. A flag of our
    own rather than `torch.compiler.is_exporting()`, which torch 2.11 also reports under `torch.compile`."""
    return _exporting


@contextlib.contextmanager
def export_mode(conv: str = "grouped") -> Iterator[None]:
    """Run the ops in their shape-generic forms (`exporting`) inside the block. conv: the per-image convolution's
    form, `grouped` (`block_diagonal_depthwise_conv`, one `Conv`) or `shifted` (`shifted_depthwise_conv`, pointwise
    ops only)."""
    global _exporting, _export_conv
    if conv not in EXPORT_CONVS:
        raise ValueError(f"conv {conv!r} is not one of {', '.join(EXPORT_CONVS)}")
    previous = _exporting, _export_conv
    _exporting, _export_conv = True, conv
    try:
        yield
    finally:
        _exporting, _export_conv = previous


def size_tensor(n: int, device: torch.device | None = None) -> Tensor:
    """A size n >= 1 as an int64 tensor (1,), computed from `arange(n)`: in a traced graph, where n is symbolic, it
    stays a function of the input's shape rather than the number seen while tracing."""
    return torch.arange(n, device=device)[-1:] + 1


def identity_matrix(rows: int, cols: int, device: torch.device | None = None) -> Tensor:
    """The fp32 (rows, cols) matrix with ones where row == column; built by comparison, so that `rows` may be
    symbolic."""
    return (torch.arange(rows, device=device)[:, None] == torch.arange(cols, device=device)).float()


def _round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple: integer arithmetic, so that it stays exact and symbolic in a traced graph."""
    return (n + multiple - 1) // multiple * multiple


# ---------------------------------------------------------------------------------------------------------------
# RoPE


def rotate_half(x: Tensor) -> Tensor:
    """Half-split rotation: dim i pairs with dim i + d/2 (the DINOv3 convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, num_prefix: int) -> Tensor:
    """Rotate the patch tokens of x (B, H, N, d) by cos/sin (h*w, d); prefix tokens are left as they are.

    x cos + rotate_half(x) sin written half by half, straight into the result: x1 cos - x2 sin and x2 cos + x1 sin,
    each one multiply and one `addcmul`, with no rotated or negated copy of x and no concatenation (eager: 7 passes
    over x where the textbook form makes 12; compiled, either is one fused kernel)."""
    P, half = num_prefix, x.shape[-1] // 2
    x1, x2 = x[:, :, P:, :half], x[:, :, P:, half:]  # (B, H, h*w, d/2) views
    if exporting():  # the same arithmetic, joined by concatenation instead of writes into a buffer
        rotated = torch.cat((x1 * cos[:, :half] - x2 * sin[:, :half], x2 * cos[:, half:] + x1 * sin[:, half:]), -1)
        return torch.cat((x[:, :, :P], rotated), dim=2)  # (B, H, N, d)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    out[:, :, :P] = x[:, :, :P]
    out[:, :, P:, :half] = torch.addcmul(x1 * cos[:, :half], x2, sin[:, :half], value=-1)
    out[:, :, P:, half:] = torch.addcmul(x2 * cos[:, half:], x1, sin[:, half:])
    return out


def join_prefix(prefix: Tensor, patches: Tensor) -> Tensor:
    """Concatenate prefix (B, H, P, d) and patch (B, H, h*w, d) outputs along the tokens into a (B, H, N, d) view of
    a (B, N, H, d)-contiguous buffer, so that the attention's `transpose(1, 2).reshape(B, N, H*d)` before `proj` is
    free: one copy instead of a `cat` and a transposing copy."""
    if exporting():
        return torch.cat((prefix, patches), dim=2)  # (B, H, N, d)
    B, Hn, P, d = prefix.shape
    out = prefix.new_empty(B, P + patches.shape[2], Hn, d)  # (B, N, H, d)
    out[:, :P] = prefix.transpose(1, 2)
    out[:, P:] = patches.transpose(1, 2)
    return out.transpose(1, 2)  # (B, H, N, d)


# ---------------------------------------------------------------------------------------------------------------
# Window attention


def window_partition(x: Tensor, grid: tuple[int, int], window: int) -> tuple[Tensor, int, int]:
    """(B, H, h*w, d) patch tokens -> (B * nW, H, window*window, d) windows, zero-padding the grid at the
    bottom/right to a multiple of the window. Returns the windows and the padded grid size (hp, wp)."""
    B, Hn, _, d = x.shape
    h, w = grid
    hp, wp = _round_up(h, window), _round_up(w, window)
    x = x.reshape(B, Hn, h, w, d)
    if exporting() or (hp, wp) != (h, w):  # a traced graph pads always: whether it is needed depends on the size
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # (B, H, hp, wp, d)
    x = x.reshape(B, Hn, hp // window, window, wp // window, window, d)
    x = x.permute(0, 2, 4, 1, 3, 5, 6)  # (B, nWh, nWw, H, window, window, d)
    return x.reshape(-1, Hn, window * window, d), hp, wp


def window_unpartition(x: Tensor, batch: int, grid: tuple[int, int], padded: tuple[int, int], window: int) -> Tensor:
    """Inverse of `window_partition`: (B * nW, H, window*window, d) -> (B, H, h*w, d), padding cropped."""
    h, w = grid
    hp, wp = padded
    Hn, d = x.shape[1], x.shape[-1]
    x = x.reshape(batch, hp // window, wp // window, Hn, window, window, d)
    x = x.permute(0, 3, 1, 4, 2, 5, 6).reshape(batch, Hn, hp, wp, d)  # (B, H, hp, wp, d)
    return x[:, :, :h, :w].reshape(batch, Hn, h * w, d)


def window_key_mask(grid: tuple[int, int], window: int, num_prefix: int, device: torch.device) -> Tensor | None:
    """Boolean key mask (nW, 1, 1, P + window*window), True where a key is real; None when nothing is padded (always
    a mask in a traced graph, `exporting`)."""
    h, w = grid
    hp, wp = _round_up(h, window), _round_up(w, window)
    if not exporting() and (hp, wp) == (h, w):
        return None
    # Built by comparisons, not by writing into a buffer: the size stays symbolic in a traced graph.
    rows = torch.arange(hp, device=device) < h
    cols = torch.arange(wp, device=device) < w
    valid = rows[:, None] & cols[None, :]  # (hp, wp)
    valid = valid.reshape(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    prefix = torch.ones(valid.shape[0], num_prefix, dtype=torch.bool, device=device)
    return torch.cat((prefix, valid), dim=1)[:, None, None, :]  # (nW, 1, 1, P + window^2)


def window_attention(q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int], window: int, num_prefix: int) -> Tensor:
    """Softmax attention of each patch token within its non-overlapping window of the patch grid, plus the prefix
    tokens; prefix tokens attend to everything. q, k, v: (B, H, N, d) -> (B, H, N, d).

    All windows of the batch go through one SDPA call. A window never sees padding as real tokens: padded keys are
    masked, padded queries are dropped.
    """
    B = q.shape[0]
    P = num_prefix
    # The prefix queries first: their exact attention needs the full q/k, which the caller may then release.
    out_prefix = F.scaled_dot_product_attention(q[:, :, :P], k, v) if P else None  # (B, H, P, d)
    qw, hp, wp = window_partition(q[:, :, P:], grid, window)  # (B*nW, H, ws^2, d)
    kw = window_partition_with_prefix(k, grid, window, P)  # (B*nW, H, P + ws^2, d)
    vw = window_partition_with_prefix(v, grid, window, P)
    mask = window_key_mask(grid, window, P, q.device)
    if mask is not None:
        mask = mask.repeat(B, 1, 1, 1)  # (B*nW, 1, 1, P + ws^2), batch-major like the windows
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask)
    out = window_unpartition(out, B, grid, (hp, wp), window)  # (B, H, h*w, d)
    if out_prefix is not None:
        out = join_prefix(out_prefix, out)  # (B, H, N, d)
    return out


def window_partition_with_prefix(x: Tensor, grid: tuple[int, int], window: int, num_prefix: int) -> Tensor:
    """Keys or values for `window_attention`: (B, H, P + h*w, d) -> (B * nW, H, P + window*window, d), every window
    led by the P prefix tokens. Written straight into one buffer: no partitioned copy re-joined with the prefix."""
    B, Hn, _, d = x.shape
    h, w = grid
    P = num_prefix
    hp, wp = _round_up(h, window), _round_up(w, window)
    nh, nw = hp // window, wp // window
    patches = x[:, :, P:].reshape(B, Hn, h, w, d)  # a view
    if exporting() or (hp, wp) != (h, w):
        patches = F.pad(patches, (0, 0, 0, wp - w, 0, hp - h))  # (B, H, hp, wp, d)
    patches = patches.reshape(B, Hn, nh, window, nw, window, d).permute(
        0, 2, 4, 1, 3, 5, 6
    )  # (B, nh, nw, H, ws, ws, d)
    if exporting():  # the prefix expanded to every window and concatenated: no broadcast write baking the grid in
        prefix = x[:, None, None, :, :P].expand(B, nh, nw, Hn, P, d)
        out = torch.cat((prefix, patches.flatten(4, 5)), dim=4)  # (B, nh, nw, H, P + ws^2, d)
        return out.reshape(B * nh * nw, Hn, P + window * window, d)
    out = x.new_empty(B, nh, nw, Hn, P + window * window, d)
    if P:
        out[:, :, :, :, :P] = x[:, None, None, :, :P]  # (B, 1, 1, H, P, d) broadcast to every window
    out[:, :, :, :, P:].unflatten(4, (window, window)).copy_(patches)
    return out.reshape(B * nh * nw, Hn, P + window * window, d)


def window_attention_naive(
    q: Tensor, k: Tensor, v: Tensor, *, grid: tuple[int, int], window: int, num_prefix: int
) -> Tensor:
    """Reference for `window_attention`: full attention with an explicit (N, N) mask."""
    h, w = grid
    P = num_prefix
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    win = ((ys // window) * math.ceil(w / window) + xs // window).flatten()  # window id of each patch token
    allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool)
    allowed[P:, P:] = win[:, None] == win[None, :]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed.to(q.device), float("-inf"))
    return scores.softmax(-1) @ v


# ---------------------------------------------------------------------------------------------------------------
# Linear attention


def feature_map(x: Tensor, kernel: str, focus_p: float = 3.0) -> Tensor:
    """Kernel feature map phi: `relu`, or `focus`, FLatten's focusing factor ||relu(x)|| relu(x)^p / ||relu(x)^p||."""
    x = F.relu(x)
    if kernel == "relu":
        return x
    xp = x**focus_p
    return xp * (x.norm(dim=-1, keepdim=True) / xp.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Non-causal linear attention out_i = phi(q_i) (sum_j phi(k_j)^T v_j) / (phi(q_i) . sum_j phi(k_j) + eps).

    q (B, H, Nq, d) and k (B, H, N, d) are kernel features phi(q), phi(k), non-negative; v (B, H, N, d). Returns
    (B, H, Nq, d) in v's dtype. A zero denominator (phi(q_i) all zero, which the ReLU makes common with inherited
    softmax projections) gives a zero output instead of NaN.

    Precision. fp32 and fp64 inputs compute in their dtype (fp16 in fp32). bf16 inputs (bf16 autocast) stay bf16, no
    fp32 copy of phi(K), V or phi(q): both matmuls accumulate in fp32 inside the GEMM (cuBLAS, oneDNN) and round
    once, and the normaliser's sum accumulates in fp32 too, so the sum over thousands of tokens is not lost; what is
    lost is one bf16 rounding of the state, the numerator and the normaliser before the division. Against fp64 with
    bf16 inputs at 4096 and 16384 tokens: an RMS error about 1.8x, and a largest error about 3x, that of the fp64
    result rounded to bf16 (the fp32-copy form: 1.0x); the bound tested is 2.5x and 4x. The fused kernel
    (`jetvit.kernels.linear_attention`) keeps fp32 up to the one rounding at its store.
    """
    dtype = v.dtype
    # bf16 has fp32's range; fp16 would overflow the state, so it goes through fp32 like fp32 itself. A deployment
    # graph (`exporting`) casts bf16 to fp32 too: its runtime (TensorRT, OpenVINO) may not accumulate bf16 GEMMs in
    # fp32, and the explicit casts keep the state and the normaliser fp32 under a strongly typed build.
    acc = dtype if dtype == torch.bfloat16 and not exporting() else torch.promote_types(dtype, torch.float32)
    # (autocast knows no meta device: a shape-only trace there takes the CPU's switch)
    with torch.autocast(device_type="cpu" if q.is_meta else q.device.type, enabled=False):
        k = k.to(acc)  # no-ops but for mixed inputs
        state = k.transpose(-1, -2) @ v.to(acc)  # (B, H, d, d)
        # The normaliser rides in the same matmul as the output: an extra state column sum_j phi(k_j).
        state = torch.cat((state, k.sum(dim=2).unsqueeze(-1)), dim=-1)  # (B, H, d, d+1)
        out = q.to(acc) @ state  # (B, H, Nq, d+1)
        out = out[..., :-1] / (out[..., -1:] + eps)
    return out.to(dtype)


def prefix_attention(q: Tensor, k: Tensor, v: Tensor, num_prefix: int) -> Tensor:
    """Exact softmax attention of the prefix queries over all tokens: q, k, v (B, H, N, d) -> (B, H, P, d)."""
    return F.scaled_dot_product_attention(q[:, :, :num_prefix], k, v)


def linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Reference for the patch part of `linear_attention`: the explicit (N, N) kernel matrix phi(q) phi(k)^T,
    row-normalised. q, k are kernel features (B, H, Nq, d), (B, H, N, d)."""
    a = q.double() @ k.double().transpose(-1, -2)  # (B, H, Nq, N)
    return ((a @ v.double()) / (a.sum(-1, keepdim=True) + eps)).to(v.dtype)


def _grouped_depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    B, C, h, w = x.shape
    ks = weight.shape[-1]
    # The batch folded into the channels: (1, B*C, h, w) convolved with (B*C, 1, k, k) kernels, groups = B*C.
    out = F.conv2d(x.reshape(1, B * C, h, w), weight.reshape(B * C, 1, ks, ks), padding=ks // 2, groups=B * C)
    return out.reshape(B, C, h, w)


def shifted_depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    """`depthwise_conv_per_image` as k*k shifted multiply-adds over the zero-padded input: pointwise ops with no
    batch-sized `groups`, which Inductor fuses into one kernel (whatever the batch, no recompile) and which export
    with a free batch dimension (ONNX). x (B, C, h, w), weight (B, C, k, k) -> (B, C, h, w)."""
    h, w = x.shape[-2:]
    ks = weight.shape[-1]
    xp = F.pad(x, (ks // 2,) * 4)  # (B, C, h + k - 1, w + k - 1)
    out = None
    for u in range(ks):
        for v in range(ks):
            term = xp[:, :, u : u + h, v : v + w] * weight[:, :, u, v, None, None]
            out = term if out is None else out + term
    return out


def block_diagonal_depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    """`depthwise_conv_per_image` as one convolution whose `groups` is the channel count, whatever the batch: group c
    takes the B images' channel c as its B inputs and gives their B outputs through a block-diagonal kernel (image
    b's kernel from input b to output b, zeros elsewhere). x (B, C, h, w), weight (B, C, k, k) -> (B, C, h, w).

    At batch 1 it is a plain depthwise convolution; at batch B it does B times the multiply-adds (the zeros). What a
    deployment graph holds by default (`export_mode`): the batch stays free, and the runtime runs one `Conv` rather
    than k*k passes over the tensor (onnxruntime, one thread, 2048x2048 DINOv3-S: 40 ms against 325 ms at batch 1,
    164 ms against 506 ms at batch 2)."""
    B, C, h, w = x.shape
    ks = weight.shape[-1]
    eye = identity_matrix(B, B, device=x.device).to(weight.dtype)  # (B, B), symbolic B in a traced graph
    blocks = weight.transpose(0, 1)[:, :, None] * eye[None, :, :, None, None]  # (C, B out, B in, k, k)
    y = F.conv2d(
        x.transpose(0, 1).reshape(1, C * B, h, w),  # channel c * B + b: image b's channel c
        blocks.reshape(C * B, B, ks, ks),
        padding=ks // 2,
        groups=C,
    )
    return y.reshape(C, B, h, w).transpose(0, 1)


def depthwise_conv_per_image(x: Tensor, weight: Tensor) -> Tensor:
    """Depthwise convolution with a different kernel for every image: x (B, C, h, w), weight (B, C, k, k).

    Eager: one grouped convolution over the whole batch, the batch folded into the channels (groups = B*C), the
    fastest form on the CPU. A convolution with groups = B*C would bake the batch size into a graph, so compiled:
    `shifted_depthwise_conv` (Inductor fuses it into one kernel for any batch); exported (`export_mode`):
    `block_diagonal_depthwise_conv` (one `Conv` for any batch), or the shifted form when asked.
    """
    if exporting():
        if _export_conv == "shifted":
            return shifted_depthwise_conv(x, weight)
        return block_diagonal_depthwise_conv(x, weight)
    if torch.compiler.is_compiling():
        return shifted_depthwise_conv(x, weight)
    return _grouped_depthwise_conv(x, weight)


def depthwise_conv_per_image_naive(x: Tensor, weight: Tensor) -> Tensor:
    """Reference for `depthwise_conv_per_image`: a Python loop over images and channels."""
    ks = weight.shape[-1]
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = F.conv2d(x[b, c][None, None], weight[b, c][None, None], padding=ks // 2)[0, 0]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Resizing learned position embeddings


def _cubic(x: Tensor, a: float) -> Tensor:
    """Keys' cubic convolution kernel with parameter `a` at distances x (any shape); zero from |x| = 2 on."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1  # |x| < 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 <= |x| < 2
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_matrix(
    out_size: int, in_size: int, *, antialias: bool = False, out_offset: float = 0.0, device: torch.device | None = None
) -> Tensor:
    """The (out_size, in_size) fp32 matrix A for which A @ v resizes v along one axis as `F.interpolate(...,
    mode="bicubic", align_corners=False, antialias=antialias)` does; a 2-D resize is A_h @ v @ A_w^T.

    `out_size` may be symbolic (a traced graph's size): the matrix is built by arithmetic on `arange(out_size)`, with
    no Python branch on the size and no `Resize` op, so one graph resizes to every size. The scale is
    in_size / (out_size + out_offset): DINOv2's official code passes `scale_factor=(out + 0.1) / in`, which
    `F.interpolate` uses as given (`out_offset=0.1`); a plain `size=` resize is `out_offset=0`.

    Without antialias: four taps of the cubic kernel (a = -0.75) around the source coordinate, indices clamped to the
    border. With antialias (PIL's filter, as PyTorch's): the cubic kernel with a = -0.5, stretched by the scale when
    shrinking, each row renormalised to sum 1. `F.interpolate` is the reference (tests/test_export.py).
    """
    i = torch.arange(out_size, dtype=torch.float32, device=device)  # output pixels
    j = torch.arange(in_size, dtype=torch.float32, device=device)  # input pixels
    scale = in_size / (size_tensor(out_size, device) + out_offset)  # (1,) input pixels per output pixel
    if antialias:
        stretch = scale.clamp_min(1.0)  # the kernel widens with the shrink factor, never narrows
        centre = scale * (i + 0.5)  # (out,)
        weights = _cubic((j[None, :] + 0.5 - centre[:, None]) / stretch, -0.5)  # (out, in)
        return weights / weights.sum(dim=1, keepdim=True)
    source = scale * (i + 0.5) - 0.5  # (out,) source coordinate of each output pixel
    base = source.floor()
    taps = torch.arange(-1, 3, dtype=torch.float32, device=device)  # the 4 neighbours: base - 1 .. base + 2
    weights = _cubic((source - base)[:, None] - taps, -0.75)  # (out, 4)
    index = (base[:, None] + taps).clamp(0, in_size - 1)  # (out, 4): taps beyond the border read the border
    return ((index[:, :, None] == j) * weights[:, :, None]).sum(dim=1)  # (out, in): clamped taps add up
