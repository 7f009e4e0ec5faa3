"""The hybrid ViT: a plain pre-norm ViT (DINOv3 / DINOv2 / ViT / YOLOS layout) whose blocks each pick their
attention kind.

What differs from a plain ViT:

- `cfg.arch` is a string with one letter per block: `F` full softmax attention (the teacher's), `W` softmax
  attention within non-overlapping windows of the patch grid, `L` ReLU-kernel linear attention plus a squeeze
  dynamic depthwise convolution on V. The letter picks the class from `ATTN_KINDS`; every kind has the same
  inherited projections (`qkv`, `proj`) and the same forward signature, so a teacher's weights load into any arch.
- Global tokens (CLS, registers, YOLOS's detection tokens) are handled alike by `W` and `L`: as queries they attend
  to all tokens with exact softmax attention (cost G*N), as keys/values every patch token sees them. The dynamic
  convolution acts on the patch tokens only (docs/TEACHERS.md).
- RoPE (DINOv3) is computed once per forward on the global patch grid; `W` blocks slice each token's rotation from
  it (never per window), `L` blocks rotate q/k before the kernel when `cfg.linear.rope` is set.
- `block_features` returns normed patch maps (B, D, h, w) and global tokens of chosen blocks, the features
  the official heads read; `flops(H, W)` is the model's own cost model, and each attention kind also says what
  autograd keeps for its backward (`saved_bytes`, the memory plan's per-kind part).
- The official DINOv2/DINOv3 (`get_intermediate_layers`, `forward_features`), Hugging Face (`model(pixel_values=...)`)
  and timm (`forward_head`, `forward_intermediates`) calls are answered by `jetvit.adapters.BackboneAPI`, which the
  model inherits: they read the model, they change nothing it computes.
- Every tensor's initialisation is in one place, `HybridViT.init_weights()` (each module's `reset_parameters()`).

Token layout: `[CLS, registers..., patches row-major (y, x)]`, P = 1 + num_registers prefix tokens. YOLOS appends
S detection tokens after the patches; they are global tokens like the prefix, so the blocks see them moved in front
of the patches (`[CLS, detection tokens, patches]`, `TokenLayout.num_prefix` = G = P + S) and every output is put
back in the teacher's order. A `W` block covering the whole grid therefore equals `F` with detection tokens present.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit import kernels, ops
from jetvit._config import check_choices, from_dict
from jetvit.adapters import BackboneAPI
from jetvit.heads import DetectionHead, DetectionHeadConfig, DPTConfig, DPTHead

Family = Literal["dinov3", "dinov2", "dinov2_reg", "depth_anything_v2", "vit", "yolos", "jetvit"]
FAMILIES: tuple[str, ...] = get_args(Family)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class LinearAttnConfig:
    """Options of the `L` block (the paper's linear-block ablation is these fields)."""

    kernel: Literal["relu", "focus"] = "relu"  # focus: focusing factor (FLatten)
    focus_p: float = 3.0
    conv: Literal["none", "static", "dynamic"] = "dynamic"  # static: depthwise conv on V; dynamic: squeeze dynamic
    conv_size: int = 5  # k of the k x k depthwise kernel
    conv_hidden: int = 64  # width of the kernel generator's hidden layer
    # Rotate q/k by RoPE before the kernel (RoPE families only). Off by default, chosen by measurement (no better
    # within the spread over seeds, and a large share of an L block's elementwise time): docs/DESIGN.md has the
    # numbers. The convolution supplies position.
    rope: bool = False
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_choices(self, "linear.")  # kernel, conv
        if self.conv_size < 1 or self.conv_size % 2 == 0:
            raise ValueError(f"linear.conv_size must be a positive odd number, got {self.conv_size}")
        # eps keeps the normaliser phi(q) . sum phi(K) away from zero: 0 (or NaN) gives NaN outputs.
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"linear.eps must be a finite number > 0 (e.g. 1e-6), got {self.eps}")
        if not (math.isfinite(self.focus_p) and self.focus_p > 0):
            raise ValueError(f"linear.focus_p must be a finite number > 0, got {self.focus_p}")
        if self.conv_hidden < 1:
            raise ValueError(f"linear.conv_hidden must be >= 1, got {self.conv_hidden}")


@dataclass
class ViTConfig:
    """Everything needed to build a `HybridViT`; saved as JSON next to the weights."""

    family: Family = "dinov3"
    img_size: int = 224  # native (pretraining) resolution; sets the learned pos-embed grid
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp: Literal["gelu", "swiglu"] = "gelu"  # gelu: fc1, fc2; swiglu: w1 gate, w2 up, w3 down
    mlp_hidden: int = 1536
    qkv_bias: bool = True
    k_bias: bool = False  # DINOv3 has q and v biases but no k bias
    proj_bias: bool = True
    mlp_bias: bool = True
    num_registers: int = 4
    layerscale: bool = True
    norm_eps: float = 1e-5
    pos_embed: Literal["rope", "learned"] = "rope"  # rope: DINOv3; learned: DINOv2
    rope_base: float = 100.0
    pos_interp: Literal["official", "hf", "hf_antialias", "yolos"] = "official"  # learned pos-embed resize
    # The learned pos-embed grid (h, w) when it is not img_size/patch_size squared (YOLOS: 800x1344 px -> 50x84).
    pos_grid: tuple[int, int] | None = None
    # YOLOS: detection tokens, appended after the patches in the teacher's (and the outputs') token order; global
    # tokens like CLS for every attention kind. `block_pos_embed`: a learned position embedding added to the input of
    # every block but the first (YOLOS's mid-layer position embeddings).
    num_detection_tokens: int = 0
    block_pos_embed: bool = False
    arch: str = ""  # one letter per block; "" means all F (the teacher)
    window_size: int = 8  # W blocks: window side in patches
    linear: LinearAttnConfig = field(default_factory=LinearAttnConfig)
    depth_head: dict[str, Any] | None = None  # DPT head config (jetvit.heads.DPTConfig fields), if any
    detection_head: dict[str, Any] | None = None  # YOLOS class and box heads (jetvit.heads.DetectionHeadConfig), if any
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.linear, dict):
            self.linear = LinearAttnConfig(**self.linear)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        check_choices(self)  # family, mlp, pos_embed, pos_interp
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_grid is not None:
            self.pos_grid = tuple(self.pos_grid)
        if self.num_detection_tokens < 0:
            raise ValueError(f"num_detection_tokens must be >= 0, got {self.num_detection_tokens}")
        if (self.num_detection_tokens or self.block_pos_embed) and self.pos_embed != "learned":
            raise ValueError("detection tokens and block_pos_embed need pos_embed='learned' (YOLOS)")
        if self.detection_head is not None and not self.num_detection_tokens:
            raise ValueError("a detection_head needs num_detection_tokens > 0")
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        self.arch = validate_arch(self.arch or "F" * self.depth, self.depth)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + registers: the tokens before the patches."""
        return 1 + self.num_registers

    @property
    def num_global_tokens(self) -> int:
        """The tokens that are not patches (CLS, registers, detection tokens): every attention kind treats them as
        global tokens (exact softmax attention over all tokens as queries, seen by every patch as keys)."""
        return self.num_prefix_tokens + self.num_detection_tokens

    @property
    def learned_grid(self) -> tuple[int, int]:
        """The patch grid (h, w) of the learned position embedding."""
        return self.pos_grid or (self.img_size // self.patch_size, self.img_size // self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Build from a dict (a saved `config.json`): unknown keys and values of the wrong type are errors."""
        return from_dict(cls, d, "model config")


def validate_arch(arch: str, depth: int | None = None) -> str:
    """Check an architecture string: one letter per block from `ARCH_LETTERS` (case-insensitive), `depth` of them
    when given. Returns it upper-cased."""
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"architecture must be a non-empty string of F/W/L letters, got {arch!r}")
    a = arch.strip().upper()
    bad = sorted({c for c in a if c not in ARCH_LETTERS})
    if bad:
        raise ValueError(f"architecture {arch!r} has unknown letters {bad}; use F (full), W (window), L (linear)")
    if depth is not None and len(a) != depth:
        raise ValueError(f"architecture {arch!r} has {len(a)} letters but the model has {depth} blocks")
    return a


# ---------------------------------------------------------------------------------------------------------------
# Positions


class TokenLayout(NamedTuple):
    """What an attention block needs to know about the token sequence besides the tokens."""

    grid: tuple[int, int]  # patch grid (h, w)
    num_prefix: int  # global tokens in front of the patches: CLS, registers, and YOLOS's detection tokens
    rope: tuple[Tensor, Tensor] | None  # (cos, sin), each (h*w, head_dim), or None without RoPE
    # YOLOS: (L-1, 1, N, D) position embeddings added to the input of blocks 1..L-1 (in the internal token order)
    block_pos: Tensor | None = None


def rope_tables(grid: tuple[int, int], head_dim: int, base: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """DINOv3 RoPE for an (h, w) patch grid: (cos, sin), each (h*w, head_dim), fp32.

    Patch centres are normalised per axis to [-1, 1]; head_dim/4 frequencies base^(-4i/head_dim); y angles first,
    then x, the (h*w, head_dim/2) result tiled twice (half-split rotation).
    """
    h, w = grid
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)  # (h*w, 2)
    inv_freq = base ** -(torch.arange(head_dim // 4, device=device, dtype=torch.float32) * 4 / head_dim)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq  # (h*w, 2, head_dim/4)
    angles = angles.flatten(1).tile(2)  # (h*w, head_dim)
    return angles.cos(), angles.sin()


def resize_pos_embed(
    pos: Tensor,
    grid: tuple[int, int],
    img_hw: tuple[int, int],
    mode: str,
    *,
    stored_grid: tuple[int, int] | None = None,
    num_suffix: int = 0,
) -> Tensor:
    """Resize a learned position embedding (..., 1 + M_h*M_w + S, D) (CLS, the stored patch grid, `num_suffix`
    detection tokens) to an (h, w) grid, as the weights' source code does; CLS and suffix entries are kept.

    `official` (DINOv2 / Depth-Anything-V2 / DINO v1): bicubic with scale factor ((h + 0.1)/M, (w + 0.1)/M);
    `hf` (transformers Dinov2 and ViT): bicubic to size (h, w); `hf_antialias` (Dinov2WithRegisters): the same,
    antialiased. All three skip the resize for a square image whose token count equals the stored one.
    `yolos` (transformers Yolos): bicubic to size (h, w), always applied. `stored_grid` defaults to a square one.
    """
    h, w = grid
    M_h, M_w = stored_grid or (math.isqrt(pos.shape[-2] - 1 - num_suffix),) * 2
    if ops.exporting():
        return _resize_pos_embed_traced(pos, grid, mode, (M_h, M_w), num_suffix)
    if mode != "yolos" and h * w == M_h * M_w and img_hw[0] == img_hw[1]:
        return pos
    lead, dim = pos.shape[:-2], pos.shape[-1]
    pos = pos.reshape(-1, *pos.shape[-2:])  # (B', 1 + M_h*M_w + S, D)
    cls_pos, patch_pos = pos[:, :1], pos[:, 1 : pos.shape[1] - num_suffix]
    suffix_pos = pos[:, pos.shape[1] - num_suffix :]
    patch_pos = patch_pos.reshape(-1, M_h, M_w, dim).permute(0, 3, 1, 2).float()  # (B', D, M_h, M_w)
    if mode == "official":
        patch_pos = F.interpolate(patch_pos, scale_factor=((h + 0.1) / M_h, (w + 0.1) / M_w), mode="bicubic")
    else:
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=mode == "hf_antialias")
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(-1, h * w, dim)  # (B', h*w, D)
    return torch.cat((cls_pos, patch_pos, suffix_pos), dim=1).reshape(*lead, -1, dim)


def _resize_pos_embed_traced(
    pos: Tensor, grid: tuple[int, int], mode: str, stored_grid: tuple[int, int], num_suffix: int
) -> Tensor:
    """`resize_pos_embed` in a deployment graph (`ops.exporting`), where the grid (h, w) is symbolic: the bicubic
    resize as two interpolation matrices (`ops.bicubic_matrix`, equal to `F.interpolate`'s), and the skip at the
    stored size as a select between them and the identity, not a Python branch on the size."""
    h, w = grid
    M_h, M_w = stored_grid
    options = dict(antialias=mode == "hf_antialias", out_offset=0.1 if mode == "official" else 0.0, device=pos.device)
    a_h, a_w = ops.bicubic_matrix(h, M_h, **options), ops.bicubic_matrix(w, M_w, **options)  # (h, M_h), (w, M_w)
    if mode != "yolos":  # a square image of the stored token count keeps the stored embedding
        n_h, n_w = ops.size_tensor(h, pos.device), ops.size_tensor(w, pos.device)
        keep = (n_h * n_w == M_h * M_w) & (n_h == n_w)  # (1,)
        a_h = torch.where(keep, ops.identity_matrix(h, M_h, pos.device), a_h)
        a_w = torch.where(keep, ops.identity_matrix(w, M_w, pos.device), a_w)
    lead, dim = pos.shape[:-2], pos.shape[-1]
    pos = pos.reshape(-1, *pos.shape[-2:])  # (B', 1 + M_h*M_w + S, D)
    cls_pos, suffix_pos = pos[:, :1], pos[:, pos.shape[1] - num_suffix :]
    patch_pos = pos[:, 1 : 1 + M_h * M_w].reshape(-1, M_h, M_w * dim).float()  # (B', M_h, M_w*D)
    patch_pos = (a_h @ patch_pos).unflatten(2, (M_w, dim))  # (B', h, M_w, D)
    patch_pos = (a_w @ patch_pos).to(pos.dtype).reshape(pos.shape[0], h * w, dim)  # (B', h, w, D) -> (B', h*w, D)
    return torch.cat((cls_pos, patch_pos, suffix_pos), dim=1).reshape(*lead, -1, dim)


# ---------------------------------------------------------------------------------------------------------------
# Attention kinds


class Attention(nn.Module):
    """Shared projections of every attention kind: fused `qkv` (the k part of the bias masked off when the teacher
    has no k bias) and the output projection `proj`. Subclasses implement `attend`."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.proj_bias)
        # The teacher has no k bias: the k third of `qkv.bias` is held at zero in the forward (never a buffer, so
        # a model built on the meta device and loaded with `assign=True` has nothing left to materialise).
        self.mask_k_bias = cfg.qkv_bias and not cfg.k_bias

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v, each (B, H, N, d)."""
        bias = self.qkv.bias
        if self.mask_k_bias:
            D = bias.shape[0] // 3
            bias = torch.cat((bias[:D], torch.zeros_like(bias[D : 2 * D]), bias[2 * D :]))
        B, N, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        return q, k, v

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        q, k, v = self.project(x)
        out = self.attend(q, k, v, layout)  # (B, H, N, d)
        B, _, N, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """The projections (`reset_projections`) and the kind's own tensors (`reset_extras`)."""
        self.reset_projections()
        self.reset_extras()

    def reset_projections(self) -> None:
        """`qkv` and `proj`: truncated normal weights (std 0.02), zero biases."""
        for m in (self.qkv, self.proj):
            _init_linear(m)

    def reset_extras(self) -> None:
        """The kind's tensors beyond the shared projections (none but `L`'s)."""

    @classmethod
    def saved_bytes(cls, cfg: ViTConfig, grid: tuple[int, int], *, autocast: bool) -> int:
        """Bytes autograd keeps for the backward of this kind's attention, between the `qkv` output and the `proj`
        input (what every kind shares is counted by the caller), for one image with patch grid `grid` (h, w) under
        bf16 `autocast` (else fp32). Counted tensor by tensor as `attend` saves them; shapes only, no instance."""
        raise NotImplementedError


def _init_linear(m: nn.Linear) -> None:
    nn.init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _rotate(q: Tensor, k: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor]:
    if layout.rope is None:
        return q, k
    cos, sin = layout.rope
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    return ops.apply_rope(q, cos, sin, layout.num_prefix), ops.apply_rope(k, cos, sin, layout.num_prefix)


def _rotate_keys(k: Tensor, layout: TokenLayout) -> Tensor:
    if layout.rope is None:
        return k
    cos, sin = layout.rope
    return ops.apply_rope(k, cos.to(k.dtype), sin.to(k.dtype), layout.num_prefix)


class FullAttention(Attention):
    """`F`: the teacher's softmax attention over all tokens."""

    kind, name = "F", "full"

    def flops(self, grid: tuple[int, int], num_prefix: int) -> int:
        """Attention-specific FLOPs for one image: QK^T and AV over all N tokens."""
        N = grid[0] * grid[1] + num_prefix
        return 4 * N * N * self.num_heads * self.head_dim

    @classmethod
    def saved_bytes(cls, cfg: ViTConfig, grid: tuple[int, int], *, autocast: bool) -> int:
        """The rotated q, k; the output and its fp32 log-sum-exp (flash attention: no N x N matrix)."""
        N, D, nh = grid[0] * grid[1] + cfg.num_global_tokens, cfg.dim, cfg.num_heads
        a, f = (2 if autocast else 4), 4  # bytes of a matmul-side activation, of an fp32 one
        return a * (2 * N * D if cfg.pos_embed == "rope" else 0) + a * N * D + f * nh * N

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        q, k = _rotate(q, k, layout)
        return F.scaled_dot_product_attention(q, k, v)


class WindowAttention(Attention):
    """`W`: softmax attention within non-overlapping `window_size` x `window_size` windows of the patch grid, plus
    the prefix tokens. Grids the window does not divide are padded at the bottom/right and the padding masked."""

    kind, name = "W", "window"

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__(cfg)
        self.window_size = cfg.window_size

    def flops(self, grid: tuple[int, int], num_prefix: int) -> int:
        """QK^T and AV within (padded) windows, each window also seeing the prefix keys, plus the prefix queries'
        attention over all N tokens. Padded windows count: they are computed."""
        h, w = grid
        ws, P, D = self.window_size, num_prefix, self.num_heads * self.head_dim
        padded = math.ceil(h / ws) * ws * math.ceil(w / ws) * ws
        return 4 * padded * (ws * ws + P) * D + 4 * P * (h * w + P) * D

    @classmethod
    def saved_bytes(cls, cfg: ViTConfig, grid: tuple[int, int], *, autocast: bool) -> int:
        """The rotated q, k; the windowed q and output over the padded grid; the keys and values with the global
        tokens in every window, and the windows' log-sum-exp; the global queries' attention over all tokens."""
        h, w = grid
        P, D, nh, ws = cfg.num_global_tokens, cfg.dim, cfg.num_heads, cfg.window_size
        N = h * w + P
        a, f = (2 if autocast else 4), 4  # bytes of a matmul-side activation, of an fp32 one
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        windows = hp * wp // (ws * ws)
        n = a * (2 * N * D if cfg.pos_embed == "rope" else 0)  # rotated q, k
        n += a * 2 * hp * wp * D + a * 2 * windows * (ws * ws + P) * D + f * windows * nh * ws * ws
        if P:  # the global queries' attention over all tokens
            n += a * P * D + f * nh * P
        return n

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        q, k = _rotate(q, k, layout)
        return ops.window_attention(q, k, v, grid=layout.grid, window=self.window_size, num_prefix=layout.num_prefix)


class LinearAttention(Attention):
    """`L`: linear attention with kernel phi (ReLU, or the focusing factor) for the patch queries, plus a depthwise
    k x k convolution on V over the patch grid added before `proj`:

    - `dynamic` (squeeze dynamic conv, the default): the patch tokens' V is averaged over the grid ("squeeze"),
      a small MLP (Linear -> SiLU -> Linear) turns it into one k x k kernel per channel and image, shared by all
      tokens of that image. The last Linear is zero-initialised (weights and bias), so a freshly converted block is
      exactly plain ReLU linear attention and the convolution is learned from there.
    - `static`: one learned k x k kernel per channel, zero-initialised for the same reason.
    - `none`: plain linear attention.
    """

    kind, name = "L", "linear"

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__(cfg)
        lin = cfg.linear
        self.conv_hidden = lin.conv_hidden
        self.kernel, self.focus_p, self.eps = lin.kernel, lin.focus_p, lin.eps
        self.use_rope = lin.rope
        self.conv_kind, self.conv_size = lin.conv, lin.conv_size
        D, ks = cfg.dim, lin.conv_size
        if lin.conv == "dynamic":
            hidden = lin.conv_hidden
            self.conv_gen = nn.Sequential(nn.Linear(D, hidden), nn.SiLU(), nn.Linear(hidden, D * ks * ks))
        elif lin.conv == "static":
            self.conv = nn.Conv2d(D, D, ks, padding=ks // 2, groups=D, bias=False)

    def reset_extras(self) -> None:
        """The convolution starts at zero (the dynamic one: its generator's last Linear; the first keeps PyTorch's
        default), so that a fresh block is plain linear attention."""
        if self.conv_kind == "dynamic":
            self.conv_gen[0].reset_parameters()
            nn.init.zeros_(self.conv_gen[2].weight)
            nn.init.zeros_(self.conv_gen[2].bias)
        elif self.conv_kind == "static":
            nn.init.zeros_(self.conv.weight)

    def flops(self, grid: tuple[int, int], num_prefix: int) -> int:
        """phi(K)^T V over all N keys, the patch queries against that state and its normaliser column, the prefix
        queries' exact attention over all N tokens, and the convolution (plus the kernel generator of the dynamic one).
        The normaliser itself is a sum over the keys, not a matmul: left out like the other reductions. The focusing
        kernel is elementwise but costly, so it gets an estimate, 4 N D (about 2 per element of phi(q) and phi(k))."""
        Np, P, D, d = grid[0] * grid[1], num_prefix, self.num_heads * self.head_dim, self.head_dim
        N, ks = Np + P, self.conv_size
        flops = 2 * N * D * d + 2 * Np * D * (d + 1) + 4 * P * N * D
        if self.kernel == "focus":
            flops += 4 * N * D
        if self.conv_kind != "none":
            flops += 2 * Np * D * ks * ks
        if self.conv_kind == "dynamic":
            flops += 2 * (D * self.conv_hidden + self.conv_hidden * D * ks * ks)
        return flops

    @classmethod
    def saved_bytes(cls, cfg: ViTConfig, grid: tuple[int, int], *, autocast: bool) -> int:
        """The kernel features phi(q) (patch queries), phi(k); the output with its normaliser column; the rotated keys
        and the attention of the global queries; the convolution's input (and the dynamic kernel generator's
        activations)."""
        Np, P, D, nh, lin = grid[0] * grid[1], cfg.num_global_tokens, cfg.dim, cfg.num_heads, cfg.linear
        N = Np + P
        a, f = (2 if autocast else 4), 4  # bytes of a matmul-side activation, of an fp32 one
        rope, n = cfg.pos_embed == "rope", 0
        if rope and lin.rope:  # rotated q, k
            n += a * 2 * N * D
        elif rope and P:  # the global queries see rotated keys
            n += a * N * D
        if P:
            n += a * P * D + f * nh * P
        n += a * (Np + N) * D  # phi(q) (patch queries), phi(k)
        # The output with its normaliser column, and the normaliser, in the compute dtype: `ops.linear_attention`
        # keeps no fp32 copy of phi(K), V or phi(q) (bf16 products accumulate in fp32 inside the GEMM).
        n += a * Np * (D + nh) + a * nh * Np
        if lin.conv != "none":  # the convolution's input, the patch tokens' V on the grid
            n += a * Np * D
        if lin.conv == "dynamic":  # the generated kernels and the generator's small activations
            n += a * D * lin.conv_size**2 + a * (D + 2 * lin.conv_hidden)
        return n

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        P = layout.num_prefix
        if self._fused(q, layout):
            return self._attend_fused(q, k, v, layout)
        # The prefix queries' exact attention first, so that no N-sized q/k copy outlives its last use (peak memory).
        # It always sees the teacher's rotated keys; prefix queries themselves are never rotated.
        if self.use_rope:
            q, k = _rotate(q, k, layout)
            prefix = ops.prefix_attention(q, k, v, P) if P else None  # (B, H, P, d)
        elif P:
            kr = _rotate_keys(k, layout)  # only the keys: prefix queries are never rotated
            prefix = ops.prefix_attention(q, kr, v, P)  # (B, H, P, d)
            del kr
        else:
            prefix = None
        phi_q = ops.feature_map(q[:, :, P:], self.kernel, self.focus_p)
        phi_k = ops.feature_map(k, self.kernel, self.focus_p)
        del q, k
        out = ops.linear_attention(phi_q, phi_k, v, eps=self.eps)  # (B, H, h*w, d)
        del phi_q, phi_k
        if self.conv_kind != "none":
            out = out + self.local_conv(v[:, :, P:], layout.grid)
        if prefix is not None:
            out = ops.join_prefix(prefix, out)  # (B, H, N, d)
        return out

    def _fused(self, q: Tensor, layout: TokenLayout) -> bool:
        """Whether this call runs the Triton kernels (`jetvit.kernels`): on CUDA, with Triton, at enough tokens, for
        the shapes they cover. Otherwise the plain path above, the kernels' reference."""
        if not kernels.use_triton(q.is_cuda, layout.grid[0] * layout.grid[1]):
            return False
        from jetvit.kernels import linear_attention as fused

        return fused.supported(self.kernel, self.head_dim, q.dtype, self.conv_size, num_prefix=layout.num_prefix)

    def _attend_fused(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        """The plain path in two kernels: one pass over K and V for the state, the squeeze and the prefix queries'
        softmax attention (their keys rotated as they are loaded: no rotated copy of K), one over the patch queries
        for the output plus the convolution, written once in the layout `proj` reads."""
        from jetvit.kernels import linear_attention as fused

        B, Hn, N, d = q.shape
        P, rope = layout.num_prefix, None
        if self.use_rope:
            q, k = _rotate(q, k, layout)  # the state and the patch queries see rotated q, k too
        elif P:
            rope = layout.rope  # only the prefix queries' keys are rotated, inside the kernel
        # (B, H, d, d+1) fp32, (B, H, d), (B, H, P, d); prefix queries are never rotated
        state, pooled, prefix = fused.linear_state_and_prefix(k, v, q[:, :, :P], num_prefix=P, rope=rope)
        if self.conv_kind == "dynamic":
            weight = self.conv_gen(pooled.reshape(B, Hn * d)).reshape(B, Hn * d, self.conv_size, self.conv_size)
        elif self.conv_kind == "static":
            weight = self.conv.weight.reshape(1, Hn * d, self.conv_size, self.conv_size).expand(B, -1, -1, -1)
        else:
            weight = None
        out = fused.linear_apply(q, state, v, weight, prefix, grid=layout.grid, eps=self.eps)  # (B, N, D)
        return out.view(B, N, Hn, d).transpose(1, 2)  # (B, H, N, d), `forward`'s reshape for `proj` is free

    def local_conv(self, v: Tensor, grid: tuple[int, int]) -> Tensor:
        """Depthwise convolution of the patch tokens' V on the 2-D grid: (B, H, h*w, d) -> (B, H, h*w, d)."""
        B, Hn, Np, d = v.shape
        h, w = grid
        x = v.permute(0, 1, 3, 2).reshape(B, Hn * d, h, w)  # (B, D, h, w), channel = head * d + i as in proj
        if self.conv_kind == "static":
            y = self.conv(x)
        else:
            kernel = self.conv_gen(x.mean(dim=(2, 3)))  # squeeze: (B, D) -> (B, D*k*k)
            y = ops.depthwise_conv_per_image(x, kernel.reshape(B, Hn * d, self.conv_size, self.conv_size))
        return y.reshape(B, Hn, d, Np).transpose(-1, -2)


# From the most to the least expensive; the search's tie-break order (cheapest first) is this order reversed.
ATTN_KINDS: dict[str, type[Attention]] = {cls.kind: cls for cls in (FullAttention, WindowAttention, LinearAttention)}
ARCH_LETTERS = "".join(ATTN_KINDS)  # the alphabet of architecture strings
KIND_NAMES = {k: cls.name for k, cls in ATTN_KINDS.items()}  # "F" -> "full", ...


# ---------------------------------------------------------------------------------------------------------------
# Block


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.gamma)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """GELU MLP: fc2(gelu(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden, bias=bias), nn.Linear(hidden, dim, bias=bias)

    def reset_parameters(self) -> None:
        """Truncated normal weights (std 0.02), zero biases."""
        for m in (self.fc1, self.fc2):
            _init_linear(m)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU MLP: w3(silu(w1(x)) * w2(x)) (w1 gate, w2 up, w3 down, as in DINOv3's official code)."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, hidden, bias=bias), nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def reset_parameters(self) -> None:
        """Truncated normal weights (std 0.02), zero biases."""
        for m in (self.w1, self.w2, self.w3):
            _init_linear(m)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); `kind` picks the attention class."""

    def __init__(self, cfg: ViTConfig, kind: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = ATTN_KINDS[kind](cfg)
        self.ls1 = LayerScale(cfg.dim) if cfg.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        mlp_cls = SwiGLU if cfg.mlp == "swiglu" else Mlp
        self.mlp = mlp_cls(cfg.dim, cfg.mlp_hidden, cfg.mlp_bias)
        self.ls2 = LayerScale(cfg.dim) if cfg.layerscale else nn.Identity()
        self.reset_parameters()  # a block built on its own (a supernet's candidate) is initialised as in a model

    def reset_parameters(self) -> None:
        """The block's initialisation: norms weight 1 and bias 0, the attention's `reset_parameters`, the MLP's
        (truncated normal, std 0.02, zero biases), LayerScales 1."""
        for m in (self.norm1, self.attn, self.ls1, self.norm2, self.mlp, self.ls2):
            if not isinstance(m, nn.Identity):
                m.reset_parameters()

    @property
    def kind(self) -> str:
        return self.attn.kind

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), layout))
        return x + self.ls2(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------------------------
# Model


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()  # PyTorch's default

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)


class HybridViT(BackboneAPI, nn.Module):
    """A DINOv3/DINOv2-layout ViT whose block i uses attention kind `cfg.arch[i]`.

    Input: normalised images (B, 3, H, W), H and W multiples of the patch size. See the module docstring.

    The model is built on the meta device, then, unless the default device is meta, materialised there and given its
    initialisation by `init_weights()`: each tensor is drawn once, in one place. Built on the meta device (to take a
    checkpoint's tensors), it draws nothing.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        device = torch.get_default_device()
        with torch.device("meta"):
            self._build(cfg)
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    def _build(self, cfg: ViTConfig) -> None:
        D = cfg.dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, D)) if cfg.num_registers else None
        # YOLOS's detection tokens; with their position embeddings stored after the patches' (the teacher's order).
        S = cfg.num_detection_tokens
        self.det_tokens = nn.Parameter(torch.zeros(1, S, D)) if S else None
        if cfg.pos_embed == "learned":
            gh, gw = cfg.learned_grid
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + gh * gw + cfg.num_detection_tokens, D))
        else:
            self.pos_embed = None
        self.block_pos_embed = (
            nn.Parameter(torch.zeros(cfg.depth - 1, 1, self.pos_embed.shape[1], D)) if cfg.block_pos_embed else None
        )
        self.blocks = nn.ModuleList(Block(cfg, kind) for kind in cfg.arch)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.depth_head = DPTHead(DPTConfig.from_dict(cfg.depth_head)) if cfg.depth_head is not None else None
        self.detection_head = None
        if cfg.detection_head is not None:
            self.detection_head = DetectionHead(D, DetectionHeadConfig.from_dict(cfg.detection_head))
        self.grad_checkpointing = False  # see set_grad_checkpointing

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every tensor's initialisation, in this one place (a teacher's weights replace all of it; it matters for
        models trained from scratch: the built-in teacher, the benchmark presets). Tokens and position embeddings:
        truncated normal (std 0.02); the patch embedding: PyTorch's default; each block: `Block.reset_parameters`;
        the final norm: weight 1, bias 0; the heads: their `reset_parameters` (PyTorch's defaults)."""
        for p in (self.cls_token, self.register_tokens, self.det_tokens, self.pos_embed, self.block_pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.patch_embed.reset_parameters()
        for blk in self.blocks:
            blk.reset_parameters()
        self.norm.reset_parameters()
        for head in (self.depth_head, self.detection_head):
            if head is not None:
                head.reset_parameters()

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def arch(self) -> str:
        return "".join(blk.kind for blk in self.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return self.cfg.num_prefix_tokens

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) of an H x W image; raises ValueError when the size is not a multiple of the patch."""
        p = self.cfg.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"image size {height}x{width} is not a positive multiple of the patch size {p}; "
                f"resize or crop to e.g. {max(p, height // p * p)}x{max(p, width // p * p)}"
            )
        return height // p, width // p

    def block_indices(self, indices: Sequence[int]) -> list[int]:
        """0-based block indices (negatives count from the end); raises ValueError naming those out of range."""
        depth = len(self.blocks)
        idx = [int(i) + depth if i < 0 else int(i) for i in indices]
        bad = [i for i, j in zip(indices, idx) if not 0 <= j < depth]
        if bad:
            raise ValueError(f"block indices {bad} out of range for a {depth}-block model (0..{depth - 1})")
        return idx

    def normalize(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) with values in [0, 1] -> the model's input, normalised with `cfg.mean`/`cfg.std`."""
        mean = images.new_tensor(self.cfg.mean).view(-1, 1, 1)
        std = images.new_tensor(self.cfg.std).view(-1, 1, 1)
        return (images - mean) / std

    # -- forward ----------------------------------------------------------------------------------------------

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing: when gradients are being recorded, each block keeps only its input and
        recomputes its activations in the backward pass (`torch.utils.checkpoint`, non-reentrant). Training memory
        for activations drops from every block's to one block's plus the blocks' inputs, for about one more forward
        of compute. Outputs and gradients are unchanged."""
        self.grad_checkpointing = enable

    def _block(self, i: int, blk: nn.Module, x: Tensor, layout: TokenLayout) -> Tensor:
        if layout.block_pos is not None and i > 0:
            x = x + layout.block_pos[i - 1]  # YOLOS: added after block i-1 (its recorded output excludes it)
        if self.grad_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(blk, x, layout, use_reentrant=False)
        return blk(x, layout)

    def prepare_tokens(self, x: Tensor) -> tuple[Tensor, TokenLayout]:
        """Images (B, C, H, W) -> tokens (B, G + h*w, D) in the internal order (global tokens first: CLS, registers,
        detection tokens; then patches) and the layout the blocks need."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected images of shape (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        grid = self.grid_size(H, W)
        x = self.patch_embed(x)  # (B, h*w, D)
        cls = self.cls_token.expand(B, -1, -1)
        S = self.cfg.num_detection_tokens
        rope, block_pos, det = None, None, []
        if self.pos_embed is not None:
            # DINOv2 / ViT: the position embedding covers CLS and patches; registers are inserted after it.
            # YOLOS: CLS, patches, detection tokens; moved in front of the patches here (`_teacher_order` undoes it).
            resize = dict(stored_grid=self.cfg.learned_grid, num_suffix=S)
            pos = resize_pos_embed(self.pos_embed, grid, (H, W), self.cfg.pos_interp, **resize)
            if S:
                det = [self.det_tokens.expand(B, -1, -1) + pos[:, -S:]]
                pos = pos[:, :-S]
            x = torch.cat((cls, x), dim=1) + pos
            cls, x = x[:, :1], x[:, 1:]
            if self.block_pos_embed is not None:
                block_pos = resize_pos_embed(self.block_pos_embed, grid, (H, W), self.cfg.pos_interp, **resize)
                if S:  # (L-1, 1, 1 + h*w + S, D) -> (L-1, 1, 1 + S + h*w, D), the internal order
                    block_pos = torch.cat((block_pos[..., :1, :], block_pos[..., -S:, :], block_pos[..., 1:-S, :]), -2)
        else:
            rope = rope_tables(grid, self.cfg.head_dim, self.cfg.rope_base, x.device)
        prefix = [cls] if self.register_tokens is None else [cls, self.register_tokens.expand(B, -1, -1)]
        x = torch.cat((*prefix, *det, x), dim=1)
        return x, TokenLayout(grid, self.cfg.num_global_tokens, rope, block_pos)

    def _teacher_order(self, x: Tensor) -> Tensor:
        """Internal token order -> the teacher's: YOLOS's detection tokens go back after the patches."""
        S = self.cfg.num_detection_tokens
        if not S:
            return x
        P = self.cfg.num_prefix_tokens
        return torch.cat((x[:, :P], x[:, P + S :], x[:, P : P + S]), dim=1)

    def forward_hidden_states(self, x: Tensor) -> list[Tensor]:
        """[embeddings, output of block 0, ..., output of block L-1], each (B, G + h*w, D) in the teacher's token
        order, before the final norm (YOLOS: a block's output before the next block's position embedding is added)."""
        x, layout = self.prepare_tokens(x)
        states = [self._teacher_order(x)]
        for i, blk in enumerate(self.blocks):
            x = self._block(i, blk, x, layout)
            states.append(self._teacher_order(x))
        return states

    def residual_states(self, x: Tensor) -> tuple[list[Tensor], TokenLayout]:
        """The residual stream in the internal token order: [tokens entering block 0, output of block 0, ..., output
        of block L-1], each (B, G + h*w, D), and the layout; block i maps entry i to entry i + 1 (`run_block`). What
        block-wise distillation feeds a student's blocks and matches them against."""
        x, layout = self.prepare_tokens(x)
        states = [x]
        for i, blk in enumerate(self.blocks):
            x = self._block(i, blk, x, layout)
            states.append(x)
        return states, layout

    def run_block(self, i: int, block: nn.Module, x: Tensor, layout: TokenLayout) -> Tensor:
        """`block` in the place of block i: entry i of `residual_states` -> entry i + 1 (position terms added as the
        model adds them before that block, activation checkpointing as set)."""
        return self._block(i, block, x, layout)

    def forward(self, x: Tensor | None = None, **hf: Any) -> Tensor | Any:
        """Images (B, C, H, W) -> final normed tokens (B, G + h*w, D) in the teacher's token order: CLS, registers,
        patches row-major, then YOLOS's detection tokens. Called the Hugging Face way (`pixel_values=`,
        `output_hidden_states=`, `return_dict=`), it answers that way (`BackboneAPI.hf_forward`)."""
        if x is None or hf:
            return self.hf_forward(x, **hf)
        x, layout = self.prepare_tokens(x)
        for i, blk in enumerate(self.blocks):
            x = self._block(i, blk, x, layout)
        return self._teacher_order(self.norm(x))

    def block_features(self, x: Tensor, indices: Sequence[int], *, norm: bool = True) -> list[tuple[Tensor, Tensor]]:
        """Features of blocks `indices` (0-based, negatives count from the end) as the official heads read them:
        a list of (patches (B, D, h, w), global tokens (B, G, D)), after the final norm when `norm`. The global tokens
        are the non-patch tokens in the teacher's order (CLS, registers, detection tokens). Stops after the deepest
        requested block."""
        idx = self.block_indices(indices)
        x, layout = self.prepare_tokens(x)
        h, w = layout.grid
        P = layout.num_prefix
        wanted: dict[int, tuple[Tensor, Tensor]] = {}
        for i, blk in enumerate(self.blocks[: max(idx) + 1]):
            x = self._block(i, blk, x, layout)
            if i in idx:
                y = self.norm(x) if norm else x
                patches = y[:, P:].transpose(1, 2).reshape(y.shape[0], -1, h, w)  # (B, D, h, w)
                wanted[i] = (patches, y[:, :P])
        return [wanted[i] for i in idx]

    def token_features(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """The normed tokens of blocks `indices` as (B, N, D) each, prefix tokens first then patches row-major:
        what distillation matches and the feature scorers compare."""
        return token_features(self.block_features(x, indices))

    def predict_depth(self, x: Tensor) -> Tensor:
        """Depth (or disparity, for relative models) map (B, H, W) from the DPT head on the hybrid's features."""
        if self.depth_head is None:
            raise ValueError("this model has no depth head (only Depth-Anything-V2 teachers carry one)")
        feats = self.block_features(x, self.depth_head.cfg.layers)
        return self.depth_head(feats, (x.shape[-2], x.shape[-1]))

    def predict_detections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """YOLOS: (class logits (B, S, num_labels + 1), boxes (B, S, 4) as sigmoid (cx, cy, w, h) in [0, 1]) from the
        S detection tokens' final normed features."""
        if self.detection_head is None:
            raise ValueError("this model has no detection head (only YOLOS object-detection teachers carry one)")
        return self.detection_head(self(x)[:, -self.cfg.num_detection_tokens :])

    # -- cost model -------------------------------------------------------------------------------------------

    def flops(self, height: int, width: int, *, batch: int = 1) -> dict[str, Any]:
        """Forward FLOPs (a multiply-add counts 2) at an H x W input: per block, embedding, head and total.

        Counts the matmuls and convolutions that dominate; norms, activations and softmax are left out. Each
        attention kind counts its own part (`Attention.flops`); the projections and the MLP are the same for all.
        """
        cfg = self.cfg
        h, w = self.grid_size(height, width)
        Np, P, D = h * w, cfg.num_global_tokens, cfg.dim
        N = Np + P
        mlp_mults = 3 if cfg.mlp == "swiglu" else 2
        dense = 2 * N * D * 3 * D + 2 * N * D * D + 2 * N * D * cfg.mlp_hidden * mlp_mults
        per_block = [batch * (dense + blk.attn.flops((h, w), P)) for blk in self.blocks]
        embed = batch * 2 * Np * cfg.in_chans * cfg.patch_size**2 * D
        head = 0
        if self.depth_head is not None and hasattr(self.depth_head, "flops"):
            head = batch * self.depth_head.flops(height, width, (h, w))
        if self.detection_head is not None:
            head += batch * self.detection_head.flops(cfg.num_detection_tokens)
        return {"blocks": per_block, "embed": embed, "head": head, "total": sum(per_block) + embed + head}

    def extra_repr(self) -> str:
        return f"family={self.cfg.family}, arch={self.arch}, window={self.cfg.window_size}"


def token_features(feats: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """`block_features` output -> per block (B, N, D): global tokens then patch tokens, row-major."""
    return [torch.cat((prefix, patches.flatten(2).transpose(1, 2)), dim=1) for patches, prefix in feats]
