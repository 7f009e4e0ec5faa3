"""The released architectures, in one table: read by the loaders (sizes from tensor shapes, size names) and by
the benchmark presets (the same shapes with random weights). Facts from the official repositories (see
REFERENCE.md sections 1 and 2)."""

from __future__ import annotations

from typing import NamedTuple


class Size(NamedTuple):
    dim: int
    depth: int
    heads: int
    mlp: str  # "gelu" | "swiglu"
    mlp_hidden: int


class DPTSize(NamedTuple):
    features: int
    out_channels: list[int]
    layers: list[int]  # 0-based backbone blocks the head reads


# DINOv3 ViTs: patch 16, 4 registers, RoPE base 100, LayerNorm eps 1e-5, q/v bias (7B: no qkv bias).
DINOV3: dict[str, Size] = {
    "vits16": Size(384, 12, 6, "gelu", 1536),
    "vits16plus": Size(384, 12, 6, "swiglu", 1536),
    "vitb16": Size(768, 12, 12, "gelu", 3072),
    "vitl16": Size(1024, 24, 16, "gelu", 4096),
    "vitl16plus": Size(1024, 24, 16, "swiglu", 4096),
    "vith16plus": Size(1280, 32, 20, "swiglu", 5120),
    "vit7b16": Size(4096, 40, 32, "swiglu", 8192),
}
DINOV3_NO_QKV_BIAS = ("vit7b16",)

# DINOv2 (and the Depth-Anything-V2 backbones): patch 14, learned pos-embed for 518 px, LayerNorm eps 1e-6.
DINOV2: dict[str, Size] = {
    "vits14": Size(384, 12, 6, "gelu", 1536),
    "vitb14": Size(768, 12, 12, "gelu", 3072),
    "vitl14": Size(1024, 24, 16, "gelu", 4096),
    "vitg14": Size(1536, 40, 24, "swiglu", 4096),
}

# Depth-Anything-V2 DPT heads, by backbone width.
DAV2_HEADS: dict[int, DPTSize] = {
    384: DPTSize(64, [48, 96, 192, 384], [2, 5, 8, 11]),
    768: DPTSize(128, [96, 192, 384, 768], [2, 5, 8, 11]),
    1024: DPTSize(256, [256, 512, 1024, 1024], [4, 11, 17, 23]),
    1536: DPTSize(384, [1536] * 4, [9, 19, 29, 39]),
}

# DINO v1 (official `dino_{deitsmall,vitbase}{16,8}_pretrain.pth`, HF `facebook/dino-vit{s,b}{16,8}`): plain ViTs,
# CLS only, learned pos-embed for 224 px, no LayerScale, q/k/v biases, LayerNorm eps 1e-6.
DINO: dict[str, Size] = {
    "vits16": Size(384, 12, 6, "gelu", 1536),
    "vits8": Size(384, 12, 6, "gelu", 1536),
    "vitb16": Size(768, 12, 12, "gelu", 3072),
    "vitb8": Size(768, 12, 12, "gelu", 3072),
}

# YOLOS-Base (`hustvl/yolos-base`, transformers' conversion script): ViT-B/16, 800x1344 px position grid (50x84),
# 100 detection tokens, mid-layer position embeddings, COCO heads (91 labels + "no object").
YOLOS_BASE = Size(768, 12, 12, "gelu", 3072)
YOLOS_BASE_IMAGE = (800, 1344)
YOLOS_DETECTION_TOKENS = 100
YOLOS_COCO_LABELS = 91
