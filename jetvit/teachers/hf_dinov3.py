"""Hugging Face DINOv3 ViT (`model_type: dinov3_vit`, `DINOv3ViTModel` / `DINOv3ViTBackbone`) -> jetvit.

Key names: transformers 5.x keeps the blocks under `model.layer.N.`; 4.56/4.57 and the Hub safetensors files use
`layer.N.` (transformers 5 renames them on load and back on save). Both are accepted; one file must use one naming.
HF splits the attention projections (`q_proj`, `k_proj`, `v_proj`, `o_proj`); jetvit fuses q, k, v into `qkv`,
filling the absent k bias (DINOv3 has q and v biases only) with zeros.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from jetvit.model import ViTConfig
from jetvit.teachers.common import KeyTable, ZerosLike, apply_key_table, ensure

MODEL_TYPE = "dinov3_vit"

# transformers' DINOv3ViTConfig defaults: Hub config.json files may leave out fields that equal them.
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "rope_theta": 100.0,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "query_bias": True,
    "key_bias": False,
    "value_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "use_gated_mlp": False,
    "num_register_tokens": 0,
}


# jetvit MLP name -> HF name
MLP_NAMES = {
    "gelu": {"fc1": "up_proj", "fc2": "down_proj"},
    "swiglu": {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"},
}


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        ensure(len(value) == 2 and value[0] == value[1], f"only square {name} is supported, got {value}")
        value = value[0]
    return int(value)


def config_from_hf(hf_config: dict[str, Any]) -> ViTConfig:
    """The jetvit config of an HF DINOv3 ViT config (the parsed `config.json`)."""
    c = {**HF_DEFAULTS, **hf_config}
    ensure(c.get("model_type", MODEL_TYPE) == MODEL_TYPE, f"not a DINOv3 ViT config: model_type={c['model_type']!r}")
    gated = bool(c["use_gated_mlp"])
    act = c["hidden_act"]
    wanted = "silu" if gated else "gelu"
    ensure(
        act == wanted, f"DINOv3 {'SwiGLU' if gated else 'MLP'} with hidden_act={act!r} is not supported ({wanted!r} is)"
    )
    q, k, v = bool(c["query_bias"]), bool(c["key_bias"]), bool(c["value_bias"])
    return ViTConfig(
        family="dinov3",
        img_size=_square(c["image_size"], "image_size"),
        patch_size=_square(c["patch_size"], "patch_size"),
        in_chans=int(c["num_channels"]),
        dim=int(c["hidden_size"]),
        depth=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]),
        mlp="swiglu" if gated else "gelu",
        mlp_hidden=int(c["intermediate_size"]),
        qkv_bias=q or k or v,
        k_bias=k,
        proj_bias=bool(c["proj_bias"]),
        mlp_bias=bool(c["mlp_bias"]),
        num_registers=int(c["num_register_tokens"]),
        layerscale=True,
        norm_eps=float(c["layer_norm_eps"]),
        pos_embed="rope",
        rope_base=float(c["rope_theta"]),
    )


def key_table(hf_config: dict[str, Any], *, naming: str) -> tuple[KeyTable, list[str]]:
    """(table jetvit key -> HF parts, HF keys to ignore) for `naming` '5.x' (`model.layer.N.`) or '4.x' (`layer.N.`)."""
    c = {**HF_DEFAULTS, **hf_config}
    cfg = config_from_hf(hf_config)
    t: KeyTable = {
        "patch_embed.proj.weight": ("embeddings.patch_embeddings.weight",),
        "patch_embed.proj.bias": ("embeddings.patch_embeddings.bias",),
        "cls_token": ("embeddings.cls_token",),
        "norm.weight": ("norm.weight",),
        "norm.bias": ("norm.bias",),
    }
    ignore = ["embeddings.mask_token"]  # masked-image pretraining only
    if cfg.num_registers:
        t["register_tokens"] = ("embeddings.register_tokens",)
    else:
        ignore.append("embeddings.register_tokens")  # HF keeps a (1, 0, D) tensor
    prefix = {"5.x": "model.layer.", "4.x": "layer."}[naming]
    has_bias = {"q": bool(c["query_bias"]), "k": bool(c["key_bias"]), "v": bool(c["value_bias"])}
    for i in range(cfg.depth):
        s, d = f"{prefix}{i}.", f"blocks.{i}."
        a = f"{s}attention."
        t[d + "attn.qkv.weight"] = (f"{a}q_proj.weight", f"{a}k_proj.weight", f"{a}v_proj.weight")
        if cfg.qkv_bias:
            like = next(f"{a}{n}_proj.bias" for n in "qkv" if has_bias[n])
            t[d + "attn.qkv.bias"] = tuple(f"{a}{n}_proj.bias" if has_bias[n] else ZerosLike(like) for n in "qkv")
        t[d + "attn.proj.weight"] = (f"{a}o_proj.weight",)
        if cfg.proj_bias:
            t[d + "attn.proj.bias"] = (f"{a}o_proj.bias",)
        for n in ("norm1", "norm2"):
            t[f"{d}{n}.weight"], t[f"{d}{n}.bias"] = (f"{s}{n}.weight",), (f"{s}{n}.bias",)
        t[d + "ls1.gamma"] = (f"{s}layer_scale1.lambda1",)
        t[d + "ls2.gamma"] = (f"{s}layer_scale2.lambda1",)
        for ours, theirs in MLP_NAMES[cfg.mlp].items():
            t[f"{d}mlp.{ours}.weight"] = (f"{s}mlp.{theirs}.weight",)
            if cfg.mlp_bias:
                t[f"{d}mlp.{ours}.bias"] = (f"{s}mlp.{theirs}.bias",)
    return t, ignore


def detect_naming(sd: dict[str, Tensor]) -> str:
    return "5.x" if any(k.startswith("model.layer.") for k in sd) else "4.x"


def convert_state_dict(
    sd: dict[str, Tensor], hf_config: dict[str, Any], *, source: str = "checkpoint"
) -> dict[str, Tensor]:
    """HF DINOv3 ViT state dict (either naming) -> jetvit `HybridViT` state dict. Strict (ValueError names keys)."""
    naming = detect_naming(sd)
    table, ignore = key_table(hf_config, naming=naming)
    return apply_key_table(sd, table, ignore=ignore, source=f"{source} (HF DINOv3, {naming} names)")
