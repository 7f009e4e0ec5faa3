"""The tests' tiny models, built one way everywhere: a test file says only what differs from these.

Each factory is a session-scoped fixture that returns a function, so module-scoped fixtures can build with it too.

- `tiny_cfg(**overrides)`: the tiny `ViTConfig`: width 32, 4 blocks of 2 heads (head dim 16), MLP 64, patch 8,
  1 register, 2x2-patch windows, 32 px native; `depth` follows `arch` when only `arch` is given.
- `tiny_model(arch, *, seed, random_weights, **overrides)`: a `HybridViT` of that config, in eval mode.
- `tiny_depth_model(*, head, **overrides)`: a tiny Depth-Anything-V2 hybrid (DINOv2 layout) with a DPT head.
- `tiny_yolos(**overrides)`: a tiny YOLOS hybrid: plain ViT blocks, a learned 4x6 position grid (32x48 px), 3
  detection tokens, mid-layer position embeddings and class/box heads (4 labels, 2 layers), random weights.
- `tiny_teacher_dir`: `tiny_model()` saved once with `jetvit.save`. Shared by the whole session: read it, never
  write into it.
- `hf_dinov3`, `hf_dinov2`, `hf_depth_anything`: tiny random Hugging Face `transformers` models, every tensor
  perturbed (the tests that use them are skipped where `transformers` is missing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import jetvit
from jetvit.model import HybridViT, ViTConfig

TINY: dict[str, Any] = dict(
    img_size=32, patch_size=8, dim=32, depth=4, num_heads=2, mlp_hidden=64, num_registers=1, window_size=2
)
# The DPT head of `tiny_depth_model`: it reads all four blocks.
TINY_DPT: dict[str, Any] = dict(in_dim=32, features=16, out_channels=[8, 8, 16, 16], layers=[0, 1, 2, 3])


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Latency tables cached in a folder of the session's own (`$JETVIT_CACHE`, inherited by the CLI subprocesses),
    never the user's ~/.cache/jetvit: a test measures, and reads only what it wrote."""
    import os

    os.environ["JETVIT_CACHE"] = str(tmp_path_factory.mktemp("jetvit-cache"))


def _tiny_cfg(**overrides: Any) -> ViTConfig:
    cfg = {**TINY, **overrides}
    if overrides.get("arch") and "depth" not in overrides:
        cfg["depth"] = len(overrides["arch"])
    return ViTConfig(**cfg)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter N(0, 0.2^2), LayerScale, norms, biases and the zero-initialised convolutions included, so
    that no path hides behind a zero or an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _tiny_model(arch: str = "", *, seed: int = 0, random_weights: bool = False, **overrides: Any) -> HybridViT:
    """The tiny hybrid in eval mode: the model's own initialisation after `torch.manual_seed(seed)` (a teacher as
    training starts from it), or with `random_weights` every parameter random (for comparisons with references)."""
    torch.manual_seed(seed)
    model = HybridViT(_tiny_cfg(arch=arch, **overrides))
    if random_weights:
        _randomise(model, seed)
    return model.eval()


def _tiny_depth_model(*, head: dict[str, Any] | None = None, seed: int = 0, **overrides: Any) -> HybridViT:
    """A Depth-Anything-V2 teacher in miniature: DINOv2 backbone (learned position embedding, no registers, a k bias,
    LayerNorm eps 1e-6), random weights, and a DPT head (`TINY_DPT` updated by `head`) whose relative ReLU output
    is kept positive."""
    cfg = dict(family="depth_anything_v2", num_registers=0, k_bias=True, norm_eps=1e-6, pos_embed="learned")
    model = _tiny_model(seed=seed, random_weights=True, depth_head={**TINY_DPT, **(head or {})}, **{**cfg, **overrides})
    with torch.no_grad():
        model.depth_head.scratch.output_conv2[2].bias.fill_(1.0)
    return model


# The tiny YOLOS of `tiny_yolos`: what differs from `TINY`.
TINY_YOLOS: dict[str, Any] = dict(
    family="yolos", depth=2, num_registers=0, layerscale=False, k_bias=True, pos_embed="learned", pos_interp="yolos",
    pos_grid=(4, 6), num_detection_tokens=3, block_pos_embed=True, detection_head={"num_labels": 4, "num_layers": 2},
)  # fmt: skip


def _tiny_yolos(*, seed: int = 0, **overrides: Any) -> HybridViT:
    return _tiny_model(seed=seed, random_weights=True, **{**TINY_YOLOS, **overrides})


@pytest.fixture(scope="session")
def tiny_cfg() -> Callable[..., ViTConfig]:
    return _tiny_cfg


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., HybridViT]:
    return _tiny_model


@pytest.fixture(scope="session")
def tiny_depth_model() -> Callable[..., HybridViT]:
    return _tiny_depth_model


@pytest.fixture(scope="session")
def tiny_yolos() -> Callable[..., HybridViT]:
    return _tiny_yolos


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jetvit.save(_tiny_model(), tmp_path_factory.mktemp("teacher") / "tiny")


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face `transformers` models: width 32, 2 heads


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Random init leaves biases at zero and LayerScale at one; perturb every tensor so a wrong pairing cannot hide.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="session")
def hf_dinov3() -> Callable[..., torch.nn.Module]:
    """`hf_dinov3(**overrides)`: a 2-block `DINOv3ViTModel`, patch 16, 4 registers, LayerScale 0.5, q/v biases, GELU
    MLP 48 wide; `overrides` are `DINOv3ViTConfig` fields."""
    transformers = pytest.importorskip("transformers")

    def build(**overrides: Any) -> torch.nn.Module:
        cfg = dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_register_tokens=4,
            patch_size=16, layerscale_value=0.5,
        )  # fmt: skip
        torch.manual_seed(0)
        return _perturb(transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**{**cfg, **overrides})))

    return build


@pytest.fixture(scope="session")
def hf_dinov2() -> Callable[..., torch.nn.Module]:
    """`hf_dinov2(*, registers, swiglu)`: a 2-block `Dinov2Model` (or `Dinov2WithRegistersModel`, 4 registers),
    patch 14, 70 px native (a 5x5 position-embedding grid), MLP ratio 2."""
    transformers = pytest.importorskip("transformers")

    def build(*, registers: bool = False, swiglu: bool = False) -> torch.nn.Module:
        kw = dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=70, patch_size=14,
            use_swiglu_ffn=swiglu,
        )  # fmt: skip
        torch.manual_seed(0)
        if registers:
            cfg = transformers.Dinov2WithRegistersConfig(**kw, num_register_tokens=4)
            return _perturb(transformers.Dinov2WithRegistersModel(cfg))
        return _perturb(transformers.Dinov2Model(transformers.Dinov2Config(**kw)))

    return build


@pytest.fixture(scope="session")
def hf_depth_anything() -> Callable[..., torch.nn.Module]:
    """`hf_depth_anything(*, kind, max_depth, swiglu)`: `DepthAnythingForDepthEstimation` on a 4-block DINOv2
    backbone (patch 14, 70 px native, MLP ratio 2) whose four stages feed the head; neck [8, 12, 16, 20], fusion 16,
    head 8."""
    transformers = pytest.importorskip("transformers")

    def build(*, kind: str = "relative", max_depth: float = 1, swiglu: bool = False) -> torch.nn.Module:
        backbone = transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=70,
            out_indices=[1, 2, 3, 4], reshape_hidden_states=False, use_swiglu_ffn=swiglu,
        )  # fmt: skip
        cfg = transformers.DepthAnythingConfig(
            backbone_config=backbone, patch_size=14, reassemble_hidden_size=32, neck_hidden_sizes=[8, 12, 16, 20],
            fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type=kind, max_depth=max_depth,
        )  # fmt: skip
        torch.manual_seed(0)
        return _perturb(transformers.DepthAnythingForDepthEstimation(cfg))

    return build
