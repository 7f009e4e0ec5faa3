"""Official DINOv3 ViT checkpoints (`dinov3_vit*16*_pretrain_*.pth`, facebookresearch/dinov3) -> jetvit.

The official names are jetvit's own for the blocks (`blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2,
mlp.fc1/fc2 | mlp.w1/w2/w3, ls2.gamma}`), so the table is mostly identity. Differences: `storage_tokens` are the
register tokens; `mask_token` (pretraining), `local_cls_norm` (training-only, 7B / SAT) and the buffers
`rope_embed.periods` and `attn.qkv.bias_mask` are not parameters of the model. The fused `qkv.bias` stores a k part
that the official model multiplies by `bias_mask` (zero on the k third): jetvit zeroes it.

The size comes from the tensors: width from `cls_token`, depth from the block count, head dim from the length of
`rope_embed.periods` (head_dim / 4 periods), MLP kind and width from the MLP weights. `RELEASED` names the released
sizes; `size=` picks one explicitly (needed only when the periods buffer is absent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from jetvit.model import ViTConfig
from jetvit.teachers import released
from jetvit.teachers.common import (
    KeyTable,
    agreed_size,
    apply_key_table,
    block_indices,
    ensure,
    resolve_heads,
    zero_k_bias,
)

# name -> (dim, depth, heads, mlp)
RELEASED: dict[str, tuple[int, int, int, str]] = {name: size[:4] for name, size in released.DINOV3.items()}
NORM_EPS = 1e-5
ROPE_BASE = 100.0


def is_official_dinov3(sd: dict[str, Tensor]) -> bool:
    return (
        "cls_token" in sd
        and "blocks.0.attn.qkv.weight" in sd
        and ("storage_tokens" in sd or "rope_embed.periods" in sd)
    )


def size_name(cfg: ViTConfig) -> str | None:
    """The released name of a DINOv3 config's size, or None."""
    for name, (dim, depth, heads, mlp) in RELEASED.items():
        if (cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp) == (dim, depth, heads, mlp):
            return name
    return None


def _rope_base(periods: Tensor, head_dim: int) -> float:
    """The RoPE base whose periods base^(4i/head_dim), i < head_dim/4, are `periods` (ValueError if none is)."""
    p = periods.double()
    n = p.numel()
    exponents = torch.arange(n, dtype=torch.float64) * 4 / head_dim
    # rtol 1e-2 accepts a periods buffer stored in bf16; prefer the released base exactly when it fits.
    if torch.allclose(p, ROPE_BASE**exponents, rtol=1e-2):
        return ROPE_BASE
    base = float(p[-1] ** (1 / exponents[-1])) if n > 1 else ROPE_BASE
    ensure(
        torch.allclose(p, base**exponents, rtol=1e-2),
        f"rope_embed.periods {p.tolist()[:4]}... are not base^(4i/head_dim) for any base (min/max-period RoPE is not "
        f"supported)",
    )
    return round(base, 6)


def config_from_state_dict(
    sd: dict[str, Tensor], *, size: str | None = None, num_heads: int | None = None
) -> ViTConfig:
    """Read the architecture from the tensors' shapes; `size` (a `RELEASED` name) or `num_heads` override the heads."""
    ensure(
        is_official_dinov3(sd), "not an official DINOv3 checkpoint (no cls_token / storage_tokens / blocks.0.attn.qkv)"
    )
    depth = len(block_indices(sd, "blocks."))
    widths = {"cls_token": -1, "patch_embed.proj.weight": 0, "norm.weight": 0}
    widths.update({f"blocks.{i}.{n}.weight": 0 for i in range(depth) for n in ("norm1", "norm2", "attn.proj")})
    dim = agreed_size("width", {k: sd[k].shape[a] for k, a in widths.items() if k in sd})
    patch = sd["patch_embed.proj.weight"]
    if "blocks.0.mlp.w1.weight" in sd:
        mlp, first, mlp_bias = "swiglu", "w1", "blocks.0.mlp.w1.bias" in sd
    elif "blocks.0.mlp.fc1.weight" in sd:
        mlp, first, mlp_bias = "gelu", "fc1", "blocks.0.mlp.fc1.bias" in sd
    else:
        raise ValueError("official DINOv3 checkpoint without blocks.0.mlp.fc1 or blocks.0.mlp.w1 weights")
    hidden_keys = (f"blocks.{i}.mlp.{first}.weight" for i in range(depth))
    hidden = agreed_size("MLP width", {k: sd[k].shape[0] for k in hidden_keys if k in sd})
    periods = sd.get("rope_embed.periods")
    fallback = dim // (4 * periods.numel()) if periods is not None else None  # head_dim / 4 periods
    heads = resolve_heads(
        RELEASED, (dim, depth, mlp), family="DINOv3", size=size, num_heads=num_heads, fallback=fallback
    )
    head_dim = dim // heads
    if periods is not None:
        ensure(
            periods.numel() * 4 == head_dim,
            f"rope_embed.periods has {periods.numel()} entries but head_dim/4 = {head_dim // 4}",
        )
        rope_base = _rope_base(periods, head_dim)
    else:
        rope_base = ROPE_BASE
    qkv_bias = "blocks.0.attn.qkv.bias" in sd
    k_bias = qkv_bias
    if qkv_bias and "blocks.0.attn.qkv.bias_mask" in sd:
        k_bias = bool(sd["blocks.0.attn.qkv.bias_mask"][dim : 2 * dim].any())
    return ViTConfig(
        family="dinov3",
        img_size=224,
        patch_size=patch.shape[-1],
        in_chans=patch.shape[1],
        dim=dim,
        depth=depth,
        num_heads=heads,
        mlp=mlp,
        mlp_hidden=hidden,
        qkv_bias=qkv_bias,
        k_bias=k_bias,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        mlp_bias=mlp_bias,
        num_registers=sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0,
        layerscale="blocks.0.ls1.gamma" in sd,
        norm_eps=NORM_EPS,
        pos_embed="rope",
        rope_base=rope_base,
    )


def key_table(cfg: ViTConfig) -> tuple[KeyTable, list[str]]:
    """(table jetvit key -> official key, official keys to ignore)."""
    t: KeyTable = {"cls_token": ("cls_token",)}
    if cfg.num_registers:
        t["register_tokens"] = ("storage_tokens",)
    ignore = ["mask_token", "rope_embed.periods", "local_cls_norm.weight", "local_cls_norm.bias"]
    names = ["patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
    mlp = ("w1", "w2", "w3") if cfg.mlp == "swiglu" else ("fc1", "fc2")
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        names += [b + n for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight")]
        names += [b + "attn.proj.weight"] + [f"{b}mlp.{m}.weight" for m in mlp]
        if cfg.qkv_bias:
            names.append(b + "attn.qkv.bias")
        if cfg.proj_bias:
            names.append(b + "attn.proj.bias")
        if cfg.mlp_bias:
            names += [f"{b}mlp.{m}.bias" for m in mlp]
        if cfg.layerscale:
            names += [b + "ls1.gamma", b + "ls2.gamma"]
        ignore.append(b + "attn.qkv.bias_mask")
    t.update({n: (n,) for n in names})
    return t, ignore


def convert_state_dict(sd: dict[str, Tensor], cfg: ViTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Official DINOv3 state dict -> jetvit `HybridViT` state dict. Strict (ValueError names every bad key)."""
    table, ignore = key_table(cfg)
    out = apply_key_table(sd, table, ignore=ignore, source=f"{source} (official DINOv3)")
    if cfg.qkv_bias and not cfg.k_bias:
        zero_k_bias(out, cfg.depth, cfg.dim)
    return out
