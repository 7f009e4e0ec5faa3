"""Loading pretrained teachers into `HybridViT` (architecture all `F`: the teacher exactly).

`load_teacher(src)` dispatches on what `src` is:

| src | converter |
|---|---|
| `builtin` | the packaged built-in teacher (`BUILTIN_DIR`, trained by `jetvit.demo.teacher`) |
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

A Hub id resolves from the local cache when offline. `teacher_config(src)` gives a source's `ViTConfig` through the
same dispatch without building the model (for directories and Hub ids, from `config.json` alone).

Every converter is a pure state-dict -> state-dict function built from explicit key tables; unknown or missing
tensors raise a ValueError naming them and the model is loaded strictly. Files are read without running code:
safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from jetvit.model import HybridViT, ViTConfig
from jetvit.teachers import common

HF_MODEL_TYPES = ("dinov3_vit", "dinov2", "dinov2_with_registers", "depth_anything", "vit", "yolos")
# The name of the packaged built-in teacher; a folder of that name is `./builtin`.
BUILTIN = "builtin"
# Where the packaged built-in teacher lives (its pretraining, `jetvit.demo.teacher`, writes it there).
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "teacher"

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# `load_teacher`'s options besides the source and dtype: for official checkpoint files, and for Hub ids.
OFFICIAL_OPTIONS = ("size", "num_heads", "head_layers", "metric", "max_depth")
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only")
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
    options = {k: v for k, v in locals().items() if k in OFFICIAL_OPTIONS + HUB_OPTIONS}
    return _open(src, weights=True, **_split_options(options)).load(dtype)


def teacher_config(src: str | os.PathLike, **options: Any) -> ViTConfig:
    """The `ViTConfig` of what `load_teacher(src, ...)` loads (same sources, options and errors), without building the
    model: a directory's (or a Hub id's, of which only `config.json` is fetched) is read from its `config.json`; an
    official checkpoint file's from its tensors' shapes (the file is read, its tensors never converted or copied).
    A YOLOS directory's detection heads are then read from `architectures`/`id2label` (see `hf_yolos.config_from_hf`).
    """
    unknown = sorted(set(options) - set(OFFICIAL_OPTIONS + HUB_OPTIONS))
    if unknown:
        accepted = ", ".join(OFFICIAL_OPTIONS + HUB_OPTIONS)
        raise ValueError(f"unknown teacher options {unknown}; accepted: {accepted}")
    return _open(src, weights=False, **_split_options(options)).cfg


def _split_options(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`load_teacher`'s source options as `_open` takes them: those of official checkpoint files, and the Hub's."""
    official = {k: options.get(k) for k in OFFICIAL_OPTIONS}
    hub = {k: options.get(k) for k in HUB_OPTIONS}
    hub["local_files_only"] = bool(hub["local_files_only"])
    return {"official_opts": official, "hub_opts": hub}


class _Opened(NamedTuple):
    """A teacher source, dispatched: its config, and how to build the model from it."""

    cfg: ViTConfig
    load: Callable[[torch.dtype], HybridViT]  # dtype -> the model in eval mode on the CPU


def _open(src: str | os.PathLike, *, weights: bool, official_opts: dict[str, Any], hub_opts: dict[str, Any]) -> _Opened:
    """The one dispatch on what `src` is (the module docstring's table). `weights=False`: only what the config needs
    is read (config.json of a directory or Hub id); `load` is then not usable for directories and Hub ids."""
    path = builtin_teacher_dir() if str(src) == BUILTIN else Path(src)
    if path.is_dir():
        _reject_official_options(official_opts, path)
        return _open_dir(path, weights=weights)
    if path.is_file():
        return _open_file(path, **official_opts)
    if path.suffix in WEIGHT_SUFFIXES or not _HUB_ID.match(str(src)):
        raise FileNotFoundError(
            f"no such file or directory: {src} (expected a model directory, a checkpoint file {WEIGHT_SUFFIXES}, "
            f"a Hub id like 'facebook/dinov3-vits16-pretrain-lvd1689m', or {BUILTIN!r} for the built-in teacher)"
        )
    _reject_official_options(official_opts, path)
    return _open_dir(_hub_snapshot(str(src), weights=weights, **hub_opts), weights=weights)


def builtin_teacher_dir() -> Path:
    """Where the packaged built-in teacher lives (`load_teacher("builtin")` loads it): `BUILTIN_DIR`."""
    return BUILTIN_DIR


def source_path(src: str | os.PathLike) -> Path | None:
    """The local file or folder a teacher source reads (`builtin` resolved), or None for a Hub id."""
    path = builtin_teacher_dir() if str(src) == BUILTIN else Path(src)
    return path if path.exists() or not _HUB_ID.match(str(src)) else None


def _reject_official_options(opts: dict[str, Any], src: Path) -> None:
    given = sorted(k for k, v in opts.items() if v is not None)
    if given:
        raise ValueError(f"options {given} apply to official checkpoint files only; {src} carries its own config")


def _hub_snapshot(repo_id: str, *, weights: bool, revision: str | None, cache_dir: Any, local_files_only: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # optional dependency
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and resolving it as a Hub id needs huggingface_hub "
            f"(pip install jetvit[hub])"
        ) from e
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"] if weights else ["config.json"]
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


def _open_dir(path: Path, *, weights: bool) -> _Opened:
    from jetvit import io

    cfg_path = path / "config.json"
    if io.is_jetvit_dir(path):
        cfg = io.read_model_config(io.read_json(cfg_path, expect=dict), cfg_path)
        return _Opened(cfg, lambda dtype: io.load(path, dtype=dtype))
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
    sd = common.read_hf_weights(path) if weights else None
    cfg, convert = _hf_converter(hf_config, sd)

    def load(dtype: torch.dtype) -> HybridViT:
        assert sd is not None, "opened for its config only"
        return _build(cfg, convert(sd, cfg, source=str(path)), source=str(path), dtype=dtype)

    return _Opened(cfg, load)


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


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """The converters' checks of a file's content raise ValueError: say which file."""
    try:
        yield
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: {e}") from None


def _open_file(path: Path, **opts: Any) -> _Opened:
    # An official checkpoint tells its format and shapes only by its tensors: they are read either way.
    with _naming(path):
        sd = common.read_weights(path)
        cfg, convert = _official_converter(path, sd, **opts)

    def load(dtype: torch.dtype) -> HybridViT:
        with _naming(path):
            return _build(cfg, convert(sd, cfg, source=str(path)), source=str(path), dtype=dtype)

    return _Opened(cfg, load)


def _official_converter(path: Path, sd: dict[str, torch.Tensor], **opts: Any):
    """(ViTConfig, convert(sd, cfg, source=...)) for an official checkpoint's tensors `sd` (read from `path`)."""
    from jetvit.teachers import official_dino, official_dinov2, official_dinov3

    # DINOv3, then DINO v1 (before DINOv2: the same layout less LayerScale, registers and mask token): sized by
    # `size`/`num_heads` only, the other options being Depth-Anything-V2's.
    for matches, module, family in (
        (official_dinov3.is_official_dinov3, official_dinov3, "DINOv3"),
        (official_dino.is_official_dino, official_dino, "DINO v1"),
    ):
        if matches(sd):
            others = sorted(k for k, v in opts.items() if v is not None and k not in ("size", "num_heads"))
            if others:
                raise ValueError(f"options {others} apply to Depth-Anything-V2 checkpoints, not {family} ({path})")
            cfg = module.config_from_state_dict(sd, size=opts["size"], num_heads=opts["num_heads"])
            return cfg, module.convert_state_dict
    if official_dinov2.is_official_dav2(sd) or official_dinov2.is_official_dinov2(sd):
        return official_dinov2.config_from_state_dict(sd, path=path, **opts), official_dinov2.convert_state_dict
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


__all__ = [
    "load_teacher",
    "teacher_config",
    "describe_size",
    "builtin_teacher_dir",
    "source_path",
    "BUILTIN",
    "BUILTIN_DIR",
    "HF_MODEL_TYPES",
]
