"""Loading pretrained teachers into `HybridViT` (architecture all `F`: the teacher exactly).

`load_teacher(src)` dispatches on what `src` is:

| src | converter |
|---|---|
| `builtin` | the packaged built-in teacher (`jetvit/assets/teacher`, see `jetvit.demo.teacher`) |
| a directory written by `jetvit.save` | `jetvit.io.load` (any arch) |
| a Hugging Face directory, `config.json` `model_type` = `dinov3_vit` | `hf_dinov3` |
| ... `dinov2` / `dinov2_with_registers` | `hf_dinov2` |
| ... `depth_anything` (DAv2 relative or metric) | `hf_depth_anything` |
| ... `vit` (DINO v1, DeiT, Google ViT; `ViTModel` or `ViTForImageClassification`) | `hf_vit` |
| ... `yolos` (`YolosModel`, `YolosForObjectDetection` with its class and box heads) | `hf_yolos` |
| a `.pth` / `.pt` / `.safetensors` file, official DINOv3 keys | `official_dinov3` |
| ... official DINO v1 keys (DINOv2's layout without LayerScale, registers or mask token) | `official_dino` |
| ... official DINOv2 or Depth-Anything-V2 keys (`pretrained.*` + `depth_head.*`) | `official_dinov2` |
| anything else of the form `owner/name` | a Hub id: `huggingface_hub.snapshot_download`, then as a directory |

A Hub id resolves from the local cache when offline.

Every converter is a pure state-dict -> state-dict function built from explicit key tables; unknown or missing
tensors raise a ValueError naming them and the model is loaded strictly. Files are read without running code:
safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from jetvit.model import HybridViT, ViTConfig
from jetvit.teachers import common

HF_MODEL_TYPES = ("dinov3_vit", "dinov2", "dinov2_with_registers", "depth_anything", "vit", "yolos")
# The name of the packaged built-in teacher; a folder of that name is `./builtin`.
BUILTIN = "builtin"

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_teacher(
    src: str | os.PathLike,
    *,
    size: str | None = None,
    num_heads: int | None = None,
    head_layers: list[int] | None = None,
    metric: bool | None = None,
    max_depth: float | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    dtype: torch.dtype = torch.float32,
) -> HybridViT:
    """Load a pretrained teacher (or a saved hybrid) as a `HybridViT` in eval mode on the CPU, in `dtype` (fp32 by
    default; `torch.bfloat16` halves the memory of a large teacher). The model is built on the meta device and
    takes the checkpoint's tensors, so a 7B teacher costs one copy of its weights, never a random init as well.

    src: `"builtin"` (the packaged built-in teacher, `builtin_teacher_dir()`), a `jetvit.save` directory, a Hugging
      Face model directory, an official checkpoint file, or a Hub id.
    Options for official checkpoint files only (their size is otherwise read from the tensors' shapes):
      size: a released size name (DINOv3 `vits16`, `vitl16plus`, `vit7b16`...; DINOv2/DAv2 `vits`..`vitg`; DINO v1
        `vits16`, `vits8`, `vitb16`, `vitb8`);
      num_heads: the number of heads of a non-released size;
      head_layers: the 4 blocks a DAv2 head reads, for a non-released size;
      metric, max_depth: a DAv2 metric head (sigmoid * max_depth). The file cannot tell; released file names
        (`..._metric_hypersim_...` 20 m, `..._metric_vkitti_...` 80 m) are read when these are not given.
    Hub options: revision, cache_dir, local_files_only (as in `huggingface_hub.snapshot_download`).
    """
    official_opts = {
        "size": size,
        "num_heads": num_heads,
        "head_layers": head_layers,
        "metric": metric,
        "max_depth": max_depth,
    }
    path = builtin_teacher_dir() if str(src) == BUILTIN else Path(src)
    if path.is_dir():
        _reject_official_options(official_opts, path)
        return _load_dir(path, dtype)
    if path.is_file():
        return _load_file(path, dtype, **official_opts)
    if path.suffix in WEIGHT_SUFFIXES or not _HUB_ID.match(str(src)):
        raise FileNotFoundError(
            f"no such file or directory: {src} (expected a model directory, a checkpoint file {WEIGHT_SUFFIXES}, "
            f"a Hub id like 'facebook/dinov3-vits16-pretrain-lvd1689m', or {BUILTIN!r} for the built-in teacher)"
        )
    _reject_official_options(official_opts, path)
    snapshot = _hub_snapshot(str(src), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    return _load_dir(snapshot, dtype)


def builtin_teacher_dir() -> Path:
    """Where the packaged built-in teacher lives (`load_teacher("builtin")` loads it)."""
    from jetvit.demo.teacher import ASSET_DIR

    return ASSET_DIR


def source_path(src: str | os.PathLike) -> Path | None:
    """The local file or folder a teacher source reads (`builtin` resolved), or None for a Hub id."""
    path = builtin_teacher_dir() if str(src) == BUILTIN else Path(src)
    return path if path.exists() or not _HUB_ID.match(str(src)) else None


def _reject_official_options(opts: dict[str, Any], src: Path) -> None:
    given = sorted(k for k, v in opts.items() if v is not None)
    if given:
        raise ValueError(f"options {given} apply to official checkpoint files only; {src} carries its own config")


def _hub_snapshot(repo_id: str, *, revision: str | None, cache_dir: Any, local_files_only: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # optional dependency
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and resolving it as a Hub id needs huggingface_hub "
            f"(pip install jetvit[hub])"
        ) from e
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=local_files_only
        )
    except Exception as e:  # offline and not cached, no such repo, gated...: say which and what to do
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path and could not be resolved as a Hugging Face Hub id "
            f"({type(e).__name__}: {e}). If offline, download it first where there is a connection "
            f"(huggingface-cli download {repo_id}) or pass a local directory"
        ) from e
    return Path(folder)


def _load_dir(path: Path, dtype: torch.dtype) -> HybridViT:
    from jetvit import io

    if io.is_jetvit_dir(path):
        return io.load(path, dtype=dtype)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ValueError(
            f"{path} is not a model directory: it has no config.json (expected a jetvit.save directory or a Hugging "
            f"Face model directory with config.json and safetensors weights)"
        )
    try:
        hf_config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"{path}: unsupported model_type {model_type!r} in config.json; supported: {HF_MODEL_TYPES}")
    sd = common.read_hf_weights(path)
    cfg, convert = _hf_converter(hf_config, sd)
    return _build(cfg, convert(sd, cfg, source=str(path)), source=str(path), dtype=dtype)


def _hf_converter(hf_config: dict[str, Any], sd: dict[str, torch.Tensor] | None = None):
    """(ViTConfig, convert(sd, cfg, source=...)) for an HF config and its weights `sd` (None: the config alone)."""
    model_type = hf_config["model_type"]
    if model_type == "vit":
        from jetvit.teachers import hf_vit

        return hf_vit.config_from_hf(hf_config), hf_vit.convert_state_dict
    if model_type == "yolos":
        from jetvit.teachers import hf_yolos

        return hf_yolos.config_from_hf(hf_config, sd), hf_yolos.convert_state_dict
    if model_type == "dinov3_vit":
        from jetvit.teachers import hf_dinov3

        return hf_dinov3.config_from_hf(hf_config), lambda sd, cfg, source: hf_dinov3.convert_state_dict(
            sd, hf_config, source=source
        )
    if model_type == "depth_anything":
        from jetvit.teachers import hf_depth_anything

        return hf_depth_anything.config_from_hf(hf_config), hf_depth_anything.convert_state_dict
    from jetvit.teachers import hf_dinov2

    return hf_dinov2.config_from_hf(hf_config), hf_dinov2.convert_state_dict


def _load_file(path: Path, dtype: torch.dtype, **opts: Any) -> HybridViT:
    try:
        return _load_official(path, dtype, **opts)
    except ValueError as e:  # the converters' checks of the file's content: say which file
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: {e}") from None


def _load_official(path: Path, dtype: torch.dtype, **opts: Any) -> HybridViT:
    from jetvit.teachers import official_dino, official_dinov2, official_dinov3

    sd = common.read_weights(path)
    if official_dinov3.is_official_dinov3(sd):
        dinov3_opts = {k: v for k, v in opts.items() if v is not None and k not in ("size", "num_heads")}
        if dinov3_opts:
            raise ValueError(
                f"options {sorted(dinov3_opts)} apply to Depth-Anything-V2 checkpoints, not DINOv3 ({path})"
            )
        cfg = official_dinov3.config_from_state_dict(sd, size=opts["size"], num_heads=opts["num_heads"])
        return _build(cfg, official_dinov3.convert_state_dict(sd, cfg, source=str(path)), source=str(path), dtype=dtype)
    if official_dino.is_official_dino(sd):  # before DINOv2: the same layout less LayerScale, registers, mask token
        dino_opts = {k: v for k, v in opts.items() if v is not None and k not in ("size", "num_heads")}
        if dino_opts:
            raise ValueError(
                f"options {sorted(dino_opts)} apply to Depth-Anything-V2 checkpoints, not DINO v1 ({path})"
            )
        cfg = official_dino.config_from_state_dict(sd, size=opts["size"], num_heads=opts["num_heads"])
        return _build(cfg, official_dino.convert_state_dict(sd, cfg, source=str(path)), source=str(path), dtype=dtype)
    if official_dinov2.is_official_dav2(sd) or official_dinov2.is_official_dinov2(sd):
        cfg = official_dinov2.config_from_state_dict(sd, path=path, **opts)
        return _build(cfg, official_dinov2.convert_state_dict(sd, cfg, source=str(path)), source=str(path), dtype=dtype)
    if any(
        k.startswith(("embeddings.", "backbone.embeddings.", "encoder.layer.", "model.layer.", "layer.")) for k in sd
    ):
        raise ValueError(
            f"{path} holds Hugging Face tensor names: pass the directory that holds it with its config.json instead"
        )
    sample = sorted(sd)[:8]
    raise ValueError(
        f"{path}: unknown checkpoint format (keys {sample}...); expected official DINOv3 (cls_token, storage_tokens, "
        f"blocks.N.attn.qkv...), official DINOv2 / DINO v1 (pos_embed, blocks.N...) or Depth-Anything-V2 "
        f"(pretrained.*, depth_head.*)"
    )


def _build(cfg: ViTConfig, sd: dict, *, source: str, dtype: torch.dtype) -> HybridViT:
    from jetvit.io import build_from_state_dict

    # Cast every tensor (official checkpoints may be bf16) and make it contiguous and owned: assign=True keeps
    # the tensors themselves, and converters may hand over views (split fused weights).
    sd = {k: v.to(dtype).contiguous().clone() if v.dtype != dtype else v.contiguous() for k, v in sd.items()}
    return build_from_state_dict(HybridViT, cfg, sd, source=source)


def describe_size(cfg: ViTConfig) -> str:
    """A released size name (`vitl16`, `vits14`...) for a config, or `custom`."""
    from jetvit.teachers import official_dinov2, official_dinov3

    name = None
    if cfg.patch_size == 16:
        name = official_dinov3.size_name(cfg)
    elif cfg.patch_size == 14:
        name = official_dinov2.size_name(cfg)
    return name or "custom"


__all__ = ["load_teacher", "describe_size", "builtin_teacher_dir", "source_path", "BUILTIN", "HF_MODEL_TYPES"]
