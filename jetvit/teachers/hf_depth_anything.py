"""Hugging Face Depth-Anything (`model_type: depth_anything`, `DepthAnythingForDepthEstimation`) -> jetvit.

The model is a Dinov2 backbone (`backbone.*`, converted by `hf_dinov2`) plus a DPT neck and head (`neck.*`,
`head.*`, renamed to the official DAv2 names of `jetvit.heads.DPTHead` by the key table `dpt_hf_to_official_keys`).
HF `out_indices` are 1-based stages (stage k = output of block k-1); jetvit's `DPTConfig.layers` are 0-based blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from jetvit.heads import DPTConfig
from jetvit.model import ViTConfig
from jetvit.teachers import hf_dinov2
from jetvit.teachers.common import ensure

MODEL_TYPE = "depth_anything"

# transformers' DepthAnythingConfig defaults, and the backbone it builds when the config names none.
HF_DEFAULTS: dict[str, Any] = {
    "patch_size": 14,
    "reassemble_hidden_size": 384,
    "reassemble_factors": [4, 2, 1, 0.5],
    "neck_hidden_sizes": [48, 96, 192, 384],
    "fusion_hidden_size": 64,
    "head_in_index": -1,
    "head_hidden_size": 32,
    "depth_estimation_type": "relative",
    "max_depth": 1,
}
BACKBONE_DEFAULTS: dict[str, Any] = {
    "model_type": "dinov2",
    "image_size": 518,
    "hidden_size": 384,
    "num_attention_heads": 6,
    "out_indices": [9, 10, 11, 12],
}


def _backbone_config(c: dict[str, Any]) -> dict[str, Any]:
    ensure(
        not c.get("use_timm_backbone") and not c.get("backbone"),
        "Depth-Anything configs with a named (timm or Hub) backbone are not supported; a backbone_config is needed",
    )
    bb = {**BACKBONE_DEFAULTS, **(c.get("backbone_config") or {})}
    ensure(bb["model_type"] == "dinov2", f"Depth-Anything backbone {bb['model_type']!r} is not supported (dinov2 is)")
    ensure(bb.get("apply_layernorm", True), "Depth-Anything backbones without apply_layernorm are not supported")
    return bb


def _out_indices(bb: dict[str, Any]) -> list[int]:
    if bb.get("out_indices") is not None:
        idx = [int(i) for i in bb["out_indices"]]
    else:
        feats = bb.get("out_features") or []
        ensure(all(str(f).startswith("stage") for f in feats), f"cannot read backbone out_features {feats}")
        idx = [int(str(f)[len("stage") :]) for f in feats]
    depth = int(bb.get("num_hidden_layers", hf_dinov2.HF_DEFAULTS["dinov2"]["num_hidden_layers"]))
    idx = [i + depth + 1 if i < 0 else i for i in idx]  # stage indices count the embedding stage 0
    ensure(len(idx) == 4 and all(1 <= i <= depth for i in idx), f"need 4 backbone out_indices in 1..{depth}, got {idx}")
    return idx


def config_from_hf(hf_config: dict[str, Any]) -> ViTConfig:
    """The jetvit config (backbone + `depth_head`) of an HF Depth-Anything config (the parsed `config.json`)."""
    ensure(
        hf_config.get("model_type", MODEL_TYPE) == MODEL_TYPE,
        f"not a Depth-Anything config: {hf_config.get('model_type')!r}",
    )
    c = {**HF_DEFAULTS, **hf_config}
    bb = _backbone_config(c)
    cfg = hf_dinov2.config_from_hf(bb, family="depth_anything_v2")
    ensure(
        [float(f) for f in c["reassemble_factors"]] == [4.0, 2.0, 1.0, 0.5],
        f"reassemble_factors {c['reassemble_factors']} are not DAv2's [4, 2, 1, 0.5]",
    )
    ensure(int(c["head_in_index"]) == -1, f"head_in_index={c['head_in_index']} is not supported (-1 is)")
    ensure(
        int(c["patch_size"]) == cfg.patch_size,
        f"head patch_size {c['patch_size']} != backbone patch_size {cfg.patch_size}",
    )
    ensure(
        int(c["reassemble_hidden_size"]) == cfg.dim,
        f"reassemble_hidden_size {c['reassemble_hidden_size']} != backbone width {cfg.dim}",
    )
    kind = c["depth_estimation_type"]
    ensure(kind in ("relative", "metric"), f"depth_estimation_type must be 'relative' or 'metric', got {kind!r}")
    max_depth = c["max_depth"]
    if kind == "relative":
        # HF multiplies the relative (ReLU) output by max_depth too; DAv2's relative models have max_depth 1.
        ensure(max_depth in (None, 1), f"a relative Depth-Anything model with max_depth={max_depth} is not supported")
    head = DPTConfig(
        in_dim=cfg.dim,
        features=int(c["fusion_hidden_size"]),
        out_channels=[int(x) for x in c["neck_hidden_sizes"]],
        layers=[i - 1 for i in _out_indices(bb)],
        metric=kind == "metric",
        max_depth=float(max_depth) if kind == "metric" else DPTConfig.max_depth,
        head_hidden=int(c["head_hidden_size"]),
    )
    return dataclasses.replace(cfg, depth_head=head.to_dict())


def dpt_hf_to_official_keys() -> dict[str, str]:
    """The full key table HF `DepthAnythingForDepthEstimation` (`neck.*`, `head.*`) -> `DPTHead` (official DAv2).

    Official names are relative to the head (an official checkpoint prefixes them with `depth_head.`). HF has no
    CLS-readout projections, so the table covers heads with `use_clstoken=False`.
    """
    table: dict[str, str] = {}

    def conv(hf: str, official: str, *, bias: bool = True) -> None:
        table[f"{hf}.weight"] = f"{official}.weight"
        if bias:
            table[f"{hf}.bias"] = f"{official}.bias"

    for i in range(4):
        conv(f"neck.reassemble_stage.layers.{i}.projection", f"projects.{i}")
        if i != 2:  # level 3 keeps the patch grid: an Identity with no parameters
            conv(f"neck.reassemble_stage.layers.{i}.resize", f"resize_layers.{i}")
        conv(f"neck.convs.{i}", f"scratch.layer{i + 1}_rn", bias=False)
    for k in range(1, 5):
        hf, official = f"neck.fusion_stage.layers.{4 - k}", f"scratch.refinenet{k}"  # HF fuses deepest first
        conv(f"{hf}.projection", f"{official}.out_conv")
        for unit in (1, 2):
            for j in (1, 2):
                conv(f"{hf}.residual_layer{unit}.convolution{j}", f"{official}.resConfUnit{unit}.conv{j}")
    conv("head.conv1", "scratch.output_conv1")
    conv("head.conv2", "scratch.output_conv2.0")
    conv("head.conv3", "scratch.output_conv2.2")
    return table


def dpt_state_dict_from_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an HF DepthAnything neck+head state dict (keys `neck.*`, `head.*`) to `DPTHead` names. Strict."""
    table = dpt_hf_to_official_keys()
    unknown = sorted(k for k in sd if k not in table)
    missing = sorted(k for k in table if k not in sd)
    if unknown or missing:
        raise ValueError(f"HF DPT state dict does not match the key table: unknown {unknown}, missing {missing}")
    return {table[k]: v for k, v in sd.items()}


def convert_state_dict(sd: dict[str, Tensor], cfg: ViTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """HF Depth-Anything state dict -> jetvit state dict (backbone keys + `depth_head.*`). Strict."""
    out = hf_dinov2.convert_state_dict(sd, cfg, prefix="backbone.", source=source)
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    try:
        head = dpt_state_dict_from_hf(rest)
    except ValueError as e:
        raise ValueError(f"{source} (HF Depth-Anything): {e}") from e
    out.update({f"depth_head.{k}": v for k, v in head.items()})
    return out
