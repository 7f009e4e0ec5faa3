"""Official DINO v1 checkpoints (`dino_deitsmall16_pretrain.pth`, `dino_deitsmall8_pretrain.pth`,
`dino_vitbase16_pretrain.pth`, `dino_vitbase8_pretrain.pth`: the teacher backbone) -> jetvit.

The layout is DINOv2's without LayerScale, registers or mask token: `cls_token`, `pos_embed` (CLS + a square grid,
14x14 at 224 px for patch 16), `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`,
`norm`; LayerNorm eps 1e-6, q/k/v biases. The names are jetvit's own, so the DINOv2 backbone key table serves.
DINO v1's `interpolate_pos_encoding` is bicubic with scale factor ((h + 0.1)/M, (w + 0.1)/M), skipped for a square
image with the stored number of patches: jetvit's `pos_interp="official"` (DINOv2 copied it).

The size comes from the tensors; the number of heads from `RELEASED` by width (or `size=` / `num_heads=`).
"""

from __future__ import annotations

from torch import Tensor

from jetvit.model import ViTConfig
from jetvit.teachers import official_dinov2, released
from jetvit.teachers.common import apply_key_table, block_indices, ensure, resolve_heads

# name -> (dim, depth, heads, mlp); the file names say `deitsmall` for ViT-S.
RELEASED: dict[str, tuple[int, int, int, str]] = {name: size[:4] for name, size in released.DINO.items()}


def is_official_dino(sd: dict[str, Tensor]) -> bool:
    """An official plain-ViT layout with none of DINOv2's additions (LayerScale, registers, mask token)."""
    return (
        official_dinov2.is_official_dinov2(sd)
        and "blocks.0.ls1.gamma" not in sd
        and "register_tokens" not in sd
        and "mask_token" not in sd
    )


def config_from_state_dict(
    sd: dict[str, Tensor], *, size: str | None = None, num_heads: int | None = None
) -> ViTConfig:
    """The jetvit config of an official DINO v1 state dict, read from the tensors' shapes."""
    ensure(is_official_dino(sd), "not an official DINO v1 checkpoint (cls_token, pos_embed, blocks.N.attn.qkv...)")
    depth = len(block_indices(sd, "blocks."))
    dim, mlp = sd["cls_token"].shape[-1], "gelu"
    heads = resolve_heads(RELEASED, (dim, depth, mlp), family="DINO v1", size=size, num_heads=num_heads)
    cfg = official_dinov2.backbone_config_from_state_dict(sd, family="vit", num_heads=heads)
    ensure(cfg.mlp == "gelu", "official DINO v1 checkpoints have a GELU MLP (fc1, fc2)")
    assert cfg.pos_interp == "official" and not cfg.layerscale and cfg.num_registers == 0
    return cfg


def convert_state_dict(sd: dict[str, Tensor], cfg: ViTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Official DINO v1 state dict -> jetvit. Strict (ValueError names unknown and missing keys)."""
    table, _ = official_dinov2.backbone_key_table(cfg)
    return apply_key_table(sd, table, source=f"{source} (official DINO v1)")
