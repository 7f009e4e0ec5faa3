"""Hugging Face DINOv2 (`model_type: dinov2`) and DINOv2-with-registers (`dinov2_with_registers`) -> jetvit.

Key names: the Hub files (and what transformers 5 writes on save) use the 4.x names
`encoder.layer.N.attention.attention.{query,key,value}`, `attention.output.dense` and, for SwiGLU (giant),
`mlp.weights_in` (gate and up fused along the output dim, gate first) / `mlp.weights_out`; a transformers 5.x
in-memory state dict has `attention.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj`. Both are accepted.

Position-embedding interpolation follows the HF code the weights are used with: `hf` for Dinov2 (bicubic to the
target size), `hf_antialias` for Dinov2WithRegisters (the same, antialiased).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from jetvit.model import ViTConfig
from jetvit.teachers.common import Chunk, KeyTable, apply_key_table, ensure

MODEL_TYPES = ("dinov2", "dinov2_with_registers")

# transformers' Dinov2Config / Dinov2WithRegistersConfig defaults (Hub configs may omit default-valued fields); the
# two differ only in the patch size and the register count.
_DINOV2_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "image_size": 224,
    "patch_size": 14,
    "num_channels": 3,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "num_register_tokens": 0,
}
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "dinov2": _DINOV2_DEFAULTS,
    "dinov2_with_registers": {**_DINOV2_DEFAULTS, "patch_size": 16, "num_register_tokens": 4},
}


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        ensure(len(value) == 2 and value[0] == value[1], f"only square {name} is supported, got {value}")
        value = value[0]
    return int(value)


def config_from_hf(hf_config: dict[str, Any], *, family: str | None = None) -> ViTConfig:
    """The jetvit config of an HF Dinov2 / Dinov2WithRegisters config (the parsed `config.json`).

    family: override the jetvit family (the Depth-Anything converter passes `depth_anything_v2`).
    """
    model_type = hf_config.get("model_type", "dinov2")
    ensure(model_type in MODEL_TYPES, f"not a DINOv2 config: model_type={model_type!r}; expected one of {MODEL_TYPES}")
    c = {**HF_DEFAULTS[model_type], **hf_config}
    ensure(c["hidden_act"] == "gelu" or c["use_swiglu_ffn"], f"DINOv2 hidden_act={c['hidden_act']!r} is not supported")
    dim = int(c["hidden_size"])
    hidden = int(dim * c["mlp_ratio"])
    if c["use_swiglu_ffn"]:
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8  # DINOv2's SwiGLU width rule
    registers = model_type == "dinov2_with_registers"
    return ViTConfig(
        family=family or ("dinov2_reg" if registers else "dinov2"),
        img_size=_square(c["image_size"], "image_size"),
        patch_size=_square(c["patch_size"], "patch_size"),
        in_chans=int(c["num_channels"]),
        dim=dim,
        depth=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]),
        mlp="swiglu" if c["use_swiglu_ffn"] else "gelu",
        mlp_hidden=hidden,
        qkv_bias=bool(c["qkv_bias"]),
        k_bias=bool(c["qkv_bias"]),
        proj_bias=True,
        mlp_bias=True,
        num_registers=int(c["num_register_tokens"]) if registers else 0,
        layerscale=True,
        norm_eps=float(c["layer_norm_eps"]),
        pos_embed="learned",
        pos_interp="hf_antialias" if registers else "hf",
    )


def key_table(cfg: ViTConfig, *, naming: str, prefix: str = "") -> tuple[KeyTable, list[str]]:
    """(table jetvit key -> HF parts, HF keys to ignore) for `naming` '4.x' or '5.x'; `prefix` is prepended to every
    HF key (`backbone.` inside Depth-Anything)."""
    p = prefix
    t: KeyTable = {
        "patch_embed.proj.weight": (f"{p}embeddings.patch_embeddings.projection.weight",),
        "patch_embed.proj.bias": (f"{p}embeddings.patch_embeddings.projection.bias",),
        "cls_token": (f"{p}embeddings.cls_token",),
        "pos_embed": (f"{p}embeddings.position_embeddings",),
        "norm.weight": (f"{p}layernorm.weight",),
        "norm.bias": (f"{p}layernorm.bias",),
    }
    if cfg.num_registers:
        t["register_tokens"] = (f"{p}embeddings.register_tokens",)
    ignore = [f"{p}embeddings.mask_token"]  # masked-image pretraining only
    if naming == "4.x":
        q, k, v = "attention.attention.query", "attention.attention.key", "attention.attention.value"
        o = "attention.output.dense"
    else:
        q, k, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    for i in range(cfg.depth):
        s, d = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        t[d + "attn.qkv.weight"] = (f"{s}{q}.weight", f"{s}{k}.weight", f"{s}{v}.weight")
        if cfg.qkv_bias:
            t[d + "attn.qkv.bias"] = (f"{s}{q}.bias", f"{s}{k}.bias", f"{s}{v}.bias")
        t[d + "attn.proj.weight"], t[d + "attn.proj.bias"] = (f"{s}{o}.weight",), (f"{s}{o}.bias",)
        for n in ("norm1", "norm2"):
            t[f"{d}{n}.weight"], t[f"{d}{n}.bias"] = (f"{s}{n}.weight",), (f"{s}{n}.bias",)
        t[d + "ls1.gamma"] = (f"{s}layer_scale1.lambda1",)
        t[d + "ls2.gamma"] = (f"{s}layer_scale2.lambda1",)
        for w in ("weight", "bias"):
            if cfg.mlp == "gelu":
                t[f"{d}mlp.fc1.{w}"], t[f"{d}mlp.fc2.{w}"] = (f"{s}mlp.fc1.{w}",), (f"{s}mlp.fc2.{w}",)
            elif naming == "4.x":  # fused gate+up, gate first
                t[f"{d}mlp.w1.{w}"] = (Chunk(f"{s}mlp.weights_in.{w}", 0, 2),)
                t[f"{d}mlp.w2.{w}"] = (Chunk(f"{s}mlp.weights_in.{w}", 1, 2),)
                t[f"{d}mlp.w3.{w}"] = (f"{s}mlp.weights_out.{w}",)
            else:
                t[f"{d}mlp.w1.{w}"] = (f"{s}mlp.gate_proj.{w}",)
                t[f"{d}mlp.w2.{w}"] = (f"{s}mlp.up_proj.{w}",)
                t[f"{d}mlp.w3.{w}"] = (f"{s}mlp.down_proj.{w}",)
    return t, ignore


def detect_naming(sd: dict[str, Tensor]) -> str:
    return "5.x" if any(".attention.q_proj." in k or ".attention.o_proj." in k for k in sd) else "4.x"


def convert_state_dict(
    sd: dict[str, Tensor], cfg: ViTConfig, *, prefix: str = "", source: str = "checkpoint"
) -> dict[str, Tensor]:
    """HF Dinov2(+registers) state dict (either naming) -> jetvit backbone state dict. Strict (ValueError names keys).

    With a `prefix`, only keys starting with it are converted (the rest is the caller's: a Depth-Anything head).
    """
    naming = detect_naming(sd)
    table, ignore = key_table(cfg, naming=naming, prefix=prefix)
    mine = {k: v for k, v in sd.items() if k.startswith(prefix)}
    return apply_key_table(mine, table, ignore=ignore, source=f"{source} (HF DINOv2, {naming} names)")
