"""Official DINOv2 (`dinov2_vit*14*_pretrain.pth`, with or without registers) and Depth-Anything-V2 checkpoints
(`depth_anything_v2_vit{s,b,l,g}.pth`, `depth_anything_v2_metric_{hypersim,vkitti}_vit*.pth`) -> jetvit.

DINOv2 names are jetvit's own for the blocks; the learned `pos_embed` covers CLS + a square grid (37x37 at 518 px)
and `register_tokens` follow CLS. Giant uses SwiGLU with gate and up fused in `mlp.w12` (gate first): split into
`w1`/`w2`. DAv2 files hold the backbone under `pretrained.` and the DPT head under `depth_head.` (already jetvit's
`DPTHead` names). DINOv2 and DAv2 interpolate the position embedding the official way (`pos_interp="official"`,
+0.1 offset in the scale factor); the DINOv2 register models resize to the target size with antialiasing
(`hf_antialias`, what HF Dinov2WithRegisters copies).

The size comes from the tensors: width from `cls_token`, depth from the block count, grid from `pos_embed`, the
DPT widths from the head's weights. The number of heads and the head's backbone blocks come from `RELEASED` by width
(or `size=` / `num_heads=` / `head_layers=`). A file cannot tell a metric head from a relative one (same tensors):
`metric=` / `max_depth=` say it; when not given, a file name with `metric` and `hypersim` (20 m) or `vkitti` (80 m),
as the released files are named, is read as metric.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import Tensor

from jetvit.heads import DPTConfig
from jetvit.model import ViTConfig
from jetvit.teachers import released
from jetvit.teachers.common import (
    Chunk,
    KeyTable,
    agreed_size,
    apply_key_table,
    block_indices,
    ensure,
    resolve_heads,
)

# name -> (dim, depth, heads, mlp); DAv2 names use the same letters (vits, vitb, vitl, vitg).
RELEASED: dict[str, tuple[int, int, int, str]] = {name: size[:4] for name, size in released.DINOV2.items()}
# DAv2 head: backbone width -> the 0-based blocks its DPT head reads.
DAV2_HEAD_LAYERS: dict[int, list[int]] = {dim: head.layers for dim, head in released.DAV2_HEADS.items()}
METRIC_MAX_DEPTH = {"hypersim": 20.0, "vkitti": 80.0}  # released metric DAv2 models: indoor, outdoor
NORM_EPS = 1e-6
DAV2_PREFIX = "pretrained."


def _resolve_size(size: str | None) -> str | None:
    if size is None:
        return None
    name = size if size.endswith("14") else f"{size}14"
    ensure(
        name in RELEASED,
        f"unknown DINOv2/DAv2 size {size!r}; released sizes: {sorted(RELEASED)} (or vits/vitb/vitl/vitg)",
    )
    return name


def is_official_dinov2(sd: dict[str, Tensor]) -> bool:
    return "pos_embed" in sd and "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd


def is_official_dav2(sd: dict[str, Tensor]) -> bool:
    return f"{DAV2_PREFIX}pos_embed" in sd and any(k.startswith("depth_head.") for k in sd)


def size_name(cfg: ViTConfig) -> str | None:
    for name, (dim, depth, heads, mlp) in RELEASED.items():
        if (cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp) == (dim, depth, heads, mlp):
            return name
    return None


def backbone_config_from_state_dict(
    sd: dict[str, Tensor],
    *,
    prefix: str = "",
    family: str | None = None,
    size: str | None = None,
    num_heads: int | None = None,
) -> ViTConfig:
    """The backbone architecture from the tensors' shapes (keys under `prefix`)."""
    p = prefix
    ensure(
        f"{p}cls_token" in sd and f"{p}pos_embed" in sd,
        f"not an official DINOv2 backbone: no {p}cls_token / {p}pos_embed",
    )
    depth = len(block_indices(sd, f"{p}blocks."))
    ensure(depth > 0, f"no {p}blocks.N.* tensors (chunked `blocks.C.N` checkpoints are not supported)")
    widths = {f"{p}cls_token": -1, f"{p}pos_embed": -1, f"{p}patch_embed.proj.weight": 0, f"{p}norm.weight": 0}
    widths.update({f"{p}blocks.{i}.{n}.weight": 0 for i in range(depth) for n in ("norm1", "norm2", "attn.proj")})
    dim = agreed_size("width", {k: sd[k].shape[a] for k, a in widths.items() if k in sd})
    patch = sd[f"{p}patch_embed.proj.weight"]
    grid = round((sd[f"{p}pos_embed"].shape[1] - 1) ** 0.5)
    ensure(grid * grid + 1 == sd[f"{p}pos_embed"].shape[1], f"{p}pos_embed does not cover CLS + a square grid")
    b0 = f"{p}blocks.0.mlp."
    if f"{b0}w12.weight" in sd:
        mlp, first, per, mlp_bias = "swiglu", "w12", 2, f"{b0}w12.bias" in sd  # w12: gate and up, stacked
    elif f"{b0}fc1.weight" in sd:
        mlp, first, per, mlp_bias = "gelu", "fc1", 1, f"{b0}fc1.bias" in sd
    else:
        raise ValueError(f"official DINOv2 checkpoint without {b0}fc1 or {b0}w12 weights")
    hidden_keys = (f"{p}blocks.{i}.mlp.{first}.weight" for i in range(depth))
    hidden = agreed_size("MLP width", {k: sd[k].shape[0] // per for k in hidden_keys if k in sd})
    size = _resolve_size(size)
    heads = resolve_heads(RELEASED, (dim, depth, mlp), family="DINOv2", size=size, num_heads=num_heads)
    registers = sd[f"{p}register_tokens"].shape[1] if f"{p}register_tokens" in sd else 0
    qkv_bias = f"{p}blocks.0.attn.qkv.bias" in sd
    return ViTConfig(
        family=family or ("dinov2_reg" if registers else "dinov2"),
        img_size=grid * patch.shape[-1],
        patch_size=patch.shape[-1],
        in_chans=patch.shape[1],
        dim=dim,
        depth=depth,
        num_heads=heads,
        mlp=mlp,
        mlp_hidden=hidden,
        qkv_bias=qkv_bias,
        k_bias=qkv_bias,
        proj_bias=f"{p}blocks.0.attn.proj.bias" in sd,
        mlp_bias=mlp_bias,
        num_registers=registers,
        layerscale=f"{p}blocks.0.ls1.gamma" in sd,
        norm_eps=NORM_EPS,
        pos_embed="learned",
        # DINOv2 and DAv2 resize with a +0.1 offset in the scale factor; the register models are built with
        # interpolate_offset=0 and antialias=True: an antialiased bicubic resize to the target size.
        pos_interp="hf_antialias" if registers else "official",
    )


def metric_from_filename(path: str | Path) -> tuple[bool, float | None]:
    """(metric, max_depth) as the released file names say: `..._metric_hypersim_...` -> (True, 20)."""
    name = Path(path).name.lower()
    if "metric" not in name:
        return False, None
    for dataset, max_depth in METRIC_MAX_DEPTH.items():
        if dataset in name:
            return True, max_depth
    return True, None


def head_config_from_state_dict(
    sd: dict[str, Tensor], backbone: ViTConfig, *, layers: list[int] | None, metric: bool, max_depth: float | None
) -> DPTConfig:
    """The DAv2 DPT head's shape from its tensors (`depth_head.*`); `layers` default to the released ones by width."""
    h = "depth_head."
    ensure(f"{h}scratch.layer1_rn.weight" in sd, f"no {h}scratch.layer1_rn.weight: not a DAv2 DPT head")
    if layers is None:
        expected_depth = {d: dep for d, dep, _, _ in RELEASED.values()}.get(backbone.dim)
        ensure(
            backbone.dim in DAV2_HEAD_LAYERS and expected_depth == backbone.depth,
            f"cannot tell which blocks the DPT head of a dim-{backbone.dim}, depth-{backbone.depth} backbone reads: "
            f"pass head_layers= (4 block indices)",
        )
        layers = DAV2_HEAD_LAYERS[backbone.dim]
    if metric:
        ensure(
            max_depth is not None,
            "a metric DAv2 head needs max_depth= (20 for the Hypersim/indoor model, 80 for VKITTI/outdoor)",
        )
    return DPTConfig(
        in_dim=backbone.dim,
        features=sd[f"{h}scratch.layer1_rn.weight"].shape[0],
        out_channels=[sd[f"{h}projects.{i}.weight"].shape[0] for i in range(4)],
        layers=list(layers),
        use_clstoken=f"{h}readout_projects.0.0.weight" in sd,
        metric=metric,
        max_depth=float(max_depth) if metric else DPTConfig.max_depth,
        head_hidden=sd[f"{h}scratch.output_conv2.0.weight"].shape[0],
    )


def backbone_key_table(cfg: ViTConfig, *, prefix: str = "") -> tuple[KeyTable, list[str]]:
    """(table jetvit key -> official key, official keys to ignore) for the backbone."""
    p = prefix
    names = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
    if cfg.num_registers:
        names.append("register_tokens")
    t: KeyTable = {}
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        names += [b + n for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight")]
        names.append(b + "attn.proj.weight")
        if cfg.qkv_bias:
            names.append(b + "attn.qkv.bias")
        if cfg.proj_bias:
            names.append(b + "attn.proj.bias")
        if cfg.layerscale:
            names += [b + "ls1.gamma", b + "ls2.gamma"]
        ws = ("weight", "bias") if cfg.mlp_bias else ("weight",)
        for w in ws:
            if cfg.mlp == "swiglu":
                t[f"{b}mlp.w1.{w}"] = (Chunk(f"{p}{b}mlp.w12.{w}", 0, 2),)
                t[f"{b}mlp.w2.{w}"] = (Chunk(f"{p}{b}mlp.w12.{w}", 1, 2),)
                names.append(f"{b}mlp.w3.{w}")
            else:
                names += [f"{b}mlp.fc1.{w}", f"{b}mlp.fc2.{w}"]
    t.update({n: (p + n,) for n in names})
    return t, [f"{p}mask_token"]


def convert_state_dict(sd: dict[str, Tensor], cfg: ViTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Official DINOv2 (keys at the top) or DAv2 (`pretrained.*` + `depth_head.*`) state dict -> jetvit. Strict."""
    if cfg.depth_head is None:
        table, ignore = backbone_key_table(cfg)
        return apply_key_table(sd, table, ignore=ignore, source=f"{source} (official DINOv2)")
    table, ignore = backbone_key_table(cfg, prefix=DAV2_PREFIX)
    from jetvit.heads import DPTHead

    head_names = DPTHead(DPTConfig(**cfg.depth_head)).state_dict().keys()  # the official names, by construction
    table.update({f"depth_head.{n}": (f"depth_head.{n}",) for n in head_names})
    return apply_key_table(sd, table, ignore=ignore, source=f"{source} (official Depth-Anything-V2)")


def config_from_state_dict(
    sd: dict[str, Tensor],
    *,
    path: str | Path = "",
    size: str | None = None,
    num_heads: int | None = None,
    head_layers: list[int] | None = None,
    metric: bool | None = None,
    max_depth: float | None = None,
) -> ViTConfig:
    """The jetvit config of an official DINOv2 or DAv2 state dict (see the module docstring for what is read how)."""
    if not is_official_dav2(sd):
        ensure(is_official_dinov2(sd), "not an official DINOv2 / Depth-Anything-V2 checkpoint")
        ensure(
            metric is None and max_depth is None and head_layers is None,
            "metric=/max_depth=/head_layers= need a DAv2 checkpoint with a depth head",
        )
        return backbone_config_from_state_dict(sd, size=size, num_heads=num_heads)
    cfg = backbone_config_from_state_dict(
        sd, prefix=DAV2_PREFIX, family="depth_anything_v2", size=size, num_heads=num_heads
    )
    name_metric, name_max_depth = metric_from_filename(path)
    if metric is None:
        metric = name_metric if max_depth is None else True
    if max_depth is None and metric:
        max_depth = name_max_depth
    head = head_config_from_state_dict(sd, cfg, layers=head_layers, metric=metric, max_depth=max_depth)
    return dataclasses.replace(cfg, depth_head=head.to_dict())
