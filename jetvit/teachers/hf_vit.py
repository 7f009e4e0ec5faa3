"""Hugging Face plain ViT (`model_type: vit`: DINO v1 `facebook/dino-vit*`, DeiT `facebook/deit-*-patch16-224`,
Google ViT) -> jetvit.

A plain pre-norm ViT: CLS token, a learned position embedding for CLS + a square grid, no registers, no LayerScale,
q/k/v biases, GELU MLP. Position-embedding interpolation as transformers' `ViTEmbeddings.interpolate_pos_encoding`:
bicubic to the target grid size, skipped for a square image with the stored number of patches (`pos_interp="hf"`).

Key names: the Hub files (and what transformers 5 writes on save) use the 4.x names
`encoder.layer.N.{layernorm_before, attention.attention.{query,key,value}, attention.output.dense, intermediate.dense,
output.dense, layernorm_after}`; a transformers 5.x in-memory state dict has `layers.N.{attention.{q,k,v,o}_proj,
mlp.{fc1,fc2}, ...}`. Both are accepted. `ViTForImageClassification` files hold the backbone under `vit.`; their
`classifier` and a `ViTModel`'s `pooler` (Linear + tanh on CLS) are dropped: jetvit distils features, not them.
`ViTMAEModel` (`model_type: vit_mae`, masking and fixed sin-cos positions) and `DeiTModel` (`model_type: deit`,
a distillation token) are other formats, not read here.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from jetvit.model import ViTConfig
from jetvit.teachers.common import KeyTable, apply_key_table, ensure
from jetvit.teachers.hf_dinov2 import _square

MODEL_TYPE = "vit"

# transformers' ViTConfig defaults (Hub configs may omit default-valued fields).
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
}


def config_from_hf(hf_config: dict[str, Any], *, family: str = "vit") -> ViTConfig:
    """The jetvit config of an HF ViT config (the parsed `config.json`)."""
    model_type = hf_config.get("model_type", MODEL_TYPE)
    ensure(model_type == MODEL_TYPE, f"not a ViT config: model_type={model_type!r}; expected {MODEL_TYPE!r}")
    c = {**HF_DEFAULTS, **hf_config}
    ensure(c["hidden_act"] == "gelu", f"ViT hidden_act={c['hidden_act']!r} is not supported (only 'gelu')")
    return ViTConfig(
        family=family,
        img_size=_square(c["image_size"], "image_size"),
        patch_size=_square(c["patch_size"], "patch_size"),
        pos_interp="hf",
        **encoder_fields(c),
    )


def encoder_fields(c: dict) -> dict:
    """The `ViTConfig` fields of the plain ViT encoder that HF ViT and YOLOS configs share (no registers, no
    LayerScale, GELU MLP, learned position embeddings)."""
    return {
        "in_chans": int(c["num_channels"]),
        "dim": int(c["hidden_size"]),
        "depth": int(c["num_hidden_layers"]),
        "num_heads": int(c["num_attention_heads"]),
        "mlp": "gelu",
        "mlp_hidden": int(c["intermediate_size"]),
        "qkv_bias": bool(c["qkv_bias"]),
        "k_bias": bool(c["qkv_bias"]),
        "proj_bias": True,
        "mlp_bias": True,
        "num_registers": 0,
        "layerscale": False,
        "norm_eps": float(c["layer_norm_eps"]),
        "pos_embed": "learned",
    }


def detect_naming(sd: dict[str, Tensor]) -> str:
    return "5.x" if any(".attention.q_proj." in k or ".attention.o_proj." in k for k in sd) else "4.x"


def block_key_table(cfg: ViTConfig, *, naming: str, prefix: str = "") -> KeyTable:
    """jetvit key -> HF parts for the embeddings' patch projection and the blocks (shared by ViT and YOLOS, whose
    layers are named alike); `prefix` is prepended to every HF key."""
    p = prefix
    if naming == "4.x":
        layer = "encoder.layer"
        q, k, v = "attention.attention.query", "attention.attention.key", "attention.attention.value"
        o, fc1, fc2 = "attention.output.dense", "intermediate.dense", "output.dense"
    else:
        layer = "layers"
        q, k, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
        fc1, fc2 = "mlp.fc1", "mlp.fc2"
    t: KeyTable = {
        "patch_embed.proj.weight": (f"{p}embeddings.patch_embeddings.projection.weight",),
        "patch_embed.proj.bias": (f"{p}embeddings.patch_embeddings.projection.bias",),
        "cls_token": (f"{p}embeddings.cls_token",),
        "norm.weight": (f"{p}layernorm.weight",),
        "norm.bias": (f"{p}layernorm.bias",),
    }
    for i in range(cfg.depth):
        s, d = f"{p}{layer}.{i}.", f"blocks.{i}."
        ws = ("weight", "bias") if cfg.qkv_bias else ("weight",)
        for w in ws:
            t[f"{d}attn.qkv.{w}"] = (f"{s}{q}.{w}", f"{s}{k}.{w}", f"{s}{v}.{w}")
        for w in ("weight", "bias"):
            t[f"{d}attn.proj.{w}"] = (f"{s}{o}.{w}",)
            t[f"{d}norm1.{w}"], t[f"{d}norm2.{w}"] = (f"{s}layernorm_before.{w}",), (f"{s}layernorm_after.{w}",)
            t[f"{d}mlp.fc1.{w}"], t[f"{d}mlp.fc2.{w}"] = (f"{s}{fc1}.{w}",), (f"{s}{fc2}.{w}",)
    return t


def convert_state_dict(sd: dict[str, Tensor], cfg: ViTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """HF ViTModel / ViTForImageClassification state dict (either naming) -> jetvit. Strict (ValueError names keys)."""
    naming = detect_naming(sd)
    prefix = "vit." if any(k.startswith("vit.") for k in sd) else ""
    table = block_key_table(cfg, naming=naming, prefix=prefix)
    table["pos_embed"] = (f"{prefix}embeddings.position_embeddings",)
    ignore = [f"{prefix}embeddings.mask_token", f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"]
    ignore += ["classifier.weight", "classifier.bias"]
    return apply_key_table(sd, table, ignore=ignore, source=f"{source} (HF ViT, {naming} names)")
