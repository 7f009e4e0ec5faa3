"""Benchmark presets: the released architectures as `ViTConfig` factories, built with random weights.

Speed and memory do not depend on weight values, so anyone can benchmark a teacher against a hybrid without
downloading a checkpoint. Shapes follow the released models (REFERENCE.md sections 1 and 2):

- DINOv3 (patch 16, 4 registers, RoPE, LayerNorm eps 1e-5, q/v bias without k bias; 7B has no qkv bias at all);
- Depth-Anything-V2 = DINOv2 (patch 14, learned position embedding for 518 px, no registers, eps 1e-6) plus the
  DPT head of that size (`depth_head`), which the benchmark runs only when asked (`--head`).

`tiny` is a 3-block toy for tests and smoke runs.
"""

from __future__ import annotations

from typing import Any

from jetvit.model import ViTConfig


def _dinov3(dim: int, depth: int, heads: int, mlp: str, hidden: int, *, qkv_bias: bool = True) -> dict[str, Any]:
    return dict(
        family="dinov3",
        patch_size=16,
        dim=dim,
        depth=depth,
        num_heads=heads,
        mlp=mlp,
        mlp_hidden=hidden,
        qkv_bias=qkv_bias,
        k_bias=False,
        num_registers=4,
        norm_eps=1e-5,
        pos_embed="rope",
    )


def _dav2(dim: int, depth: int, heads: int, mlp: str, hidden: int, features: int, out: list[int], layers: list[int]):
    head = dict(in_dim=dim, features=features, out_channels=out, layers=layers)
    return dict(
        family="depth_anything_v2",
        img_size=518,
        patch_size=14,
        dim=dim,
        depth=depth,
        num_heads=heads,
        mlp=mlp,
        mlp_hidden=hidden,
        qkv_bias=True,
        k_bias=True,
        num_registers=0,
        norm_eps=1e-6,
        pos_embed="learned",
        pos_interp="official",
        depth_head=head,
    )


# name -> the ViTConfig fields of that architecture (everything but `arch`)
PRESETS: dict[str, dict[str, Any]] = {
    "dinov3-s": _dinov3(384, 12, 6, "gelu", 1536),
    "dinov3-s+": _dinov3(384, 12, 6, "swiglu", 1536),
    "dinov3-b": _dinov3(768, 12, 12, "gelu", 3072),
    "dinov3-l": _dinov3(1024, 24, 16, "gelu", 4096),
    "dinov3-l+": _dinov3(1024, 24, 16, "swiglu", 4096),
    "dinov3-h+": _dinov3(1280, 32, 20, "swiglu", 5120),
    "dinov3-7b": _dinov3(4096, 40, 32, "swiglu", 8192, qkv_bias=False),
    "dav2-s": _dav2(384, 12, 6, "gelu", 1536, 64, [48, 96, 192, 384], [2, 5, 8, 11]),
    "dav2-b": _dav2(768, 12, 12, "gelu", 3072, 128, [96, 192, 384, 768], [2, 5, 8, 11]),
    "dav2-l": _dav2(1024, 24, 16, "gelu", 4096, 256, [256, 512, 1024, 1024], [4, 11, 17, 23]),
    "dav2-g": _dav2(1536, 40, 24, "swiglu", 4096, 384, [1536] * 4, [9, 19, 29, 39]),
    "tiny": dict(_dinov3(64, 3, 2, "gelu", 128), window_size=4),
}


def preset_config(name: str, arch: str = "", **overrides: Any) -> ViTConfig:
    """The `ViTConfig` of preset `name` with block kinds `arch` ("" = the all-`F` teacher)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    fields = {**PRESETS[name], **overrides, "arch": arch}
    return ViTConfig(**fields)
