"""Benchmark presets: the released architectures as `ViTConfig` factories, built with random weights.

Speed and memory do not depend on weight values, so anyone can benchmark a teacher against a hybrid without
downloading a checkpoint. Shapes follow the released models (REFERENCE.md sections 1 and 2):

- DINOv3 (patch 16, 4 registers, RoPE, LayerNorm eps 1e-5, q/v bias without k bias; 7B has no qkv bias at all);
- Depth-Anything-V2 = DINOv2 (patch 14, learned position embedding for 518 px, no registers, eps 1e-6) plus the
  DPT head of that size (`depth_head`), which the benchmark runs only when asked (`--head`);
- DINO v1 ViT-B/16 (CLS only, learned position embedding for 224 px, no LayerScale, q/k/v biases, eps 1e-6);
- YOLOS-Base: ViT-B/16 with 100 detection tokens after the patches, a learned position embedding for an 800x1344 px
  grid plus one per block (mid-layer), and the COCO class and box heads (docs/TEACHERS.md).

`tiny` is a 3-block toy for tests and smoke runs.
"""

from __future__ import annotations

from typing import Any

from jetvit.model import ViTConfig
from jetvit.teachers import released


def _dinov3(name: str) -> dict[str, Any]:
    size = released.DINOV3[name]
    return dict(
        family="dinov3",
        patch_size=16,
        dim=size.dim,
        depth=size.depth,
        num_heads=size.heads,
        mlp=size.mlp,
        mlp_hidden=size.mlp_hidden,
        qkv_bias=name not in released.DINOV3_NO_QKV_BIAS,
        k_bias=False,
        num_registers=4,
        norm_eps=1e-5,
        pos_embed="rope",
    )


def _dav2(name: str) -> dict[str, Any]:
    size = released.DINOV2[name]
    head = released.DAV2_HEADS[size.dim]
    return dict(
        family="depth_anything_v2",
        img_size=518,
        patch_size=14,
        dim=size.dim,
        depth=size.depth,
        num_heads=size.heads,
        mlp=size.mlp,
        mlp_hidden=size.mlp_hidden,
        qkv_bias=True,
        k_bias=True,
        num_registers=0,
        norm_eps=1e-6,
        pos_embed="learned",
        pos_interp="official",
        depth_head=dict(in_dim=size.dim, features=head.features, out_channels=head.out_channels, layers=head.layers),
    )


# The plain ViT encoder of DINO v1 and YOLOS: CLS only, learned position embeddings, biases everywhere.
_PLAIN_VIT = dict(qkv_bias=True, k_bias=True, num_registers=0, layerscale=False, pos_embed="learned")


def _dino(name: str) -> dict[str, Any]:
    size = released.DINO[name]
    return dict(
        family="vit",
        img_size=224,
        patch_size=int(name.removeprefix("vits").removeprefix("vitb")),
        dim=size.dim,
        depth=size.depth,
        num_heads=size.heads,
        mlp=size.mlp,
        mlp_hidden=size.mlp_hidden,
        **_PLAIN_VIT,
        norm_eps=1e-6,
        pos_interp="official",
    )


def _yolos_base() -> dict[str, Any]:
    size, (img_h, img_w), patch = released.YOLOS_BASE, released.YOLOS_BASE_IMAGE, 16
    return dict(
        family="yolos",
        img_size=img_h,
        patch_size=patch,
        dim=size.dim,
        depth=size.depth,
        num_heads=size.heads,
        mlp=size.mlp,
        mlp_hidden=size.mlp_hidden,
        **_PLAIN_VIT,
        norm_eps=1e-12,  # transformers' YolosConfig default, which the conversion keeps
        pos_interp="yolos",
        pos_grid=(img_h // patch, img_w // patch),
        num_detection_tokens=released.YOLOS_DETECTION_TOKENS,
        block_pos_embed=True,
        detection_head=dict(num_labels=released.YOLOS_COCO_LABELS, num_layers=3),
    )


# name -> the ViTConfig fields of that architecture (everything but `arch`)
PRESETS: dict[str, dict[str, Any]] = {
    "dinov3-s": _dinov3("vits16"),
    "dinov3-s+": _dinov3("vits16plus"),
    "dinov3-b": _dinov3("vitb16"),
    "dinov3-l": _dinov3("vitl16"),
    "dinov3-l+": _dinov3("vitl16plus"),
    "dinov3-h+": _dinov3("vith16plus"),
    "dinov3-7b": _dinov3("vit7b16"),
    "dav2-s": _dav2("vits14"),
    "dav2-b": _dav2("vitb14"),
    "dav2-l": _dav2("vitl14"),
    "dav2-g": _dav2("vitg14"),
    "dino-b": _dino("vitb16"),
    "yolos-b": _yolos_base(),
    "tiny": dict(_dinov3("vits16"), dim=64, depth=3, num_heads=2, mlp_hidden=128, window_size=4),
}


# The 2-F hybrids the benchmarks set against their teachers (issue 20), a stand-in for a searched architecture, as
# `benchmarks/gpu_suite.py` builds them: F where the paper puts it (0-based: DINOv3 ViT-L blocks 14 and 22; for the
# 12-block ViT-B the same relative places, 7 and 11; Depth-Anything-V2-L 13 and 17), L and W alternating elsewhere,
# L first (the paper finds the first block always linear). Only the F positions come from the paper.
HYBRID_ARCHS: dict[str, str] = {
    "dinov3-b": "LWLWLWLFLWLF",
    "dinov3-l": "LWLWLWLWLWLWLWFWLWLWLWFW",
    "dav2-l": "LWLWLWLWLWLWLFLWLFLWLWLW",
}


def preset_config(name: str, arch: str = "", **overrides: Any) -> ViTConfig:
    """The `ViTConfig` of preset `name` with block kinds `arch` ("" = the all-`F` teacher)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    fields = {**PRESETS[name], **overrides, "arch": arch}
    return ViTConfig(**fields)
