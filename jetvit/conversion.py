"""Weight inheritance: a teacher (any `HybridViT`, usually all-`F`) -> a new hybrid with another architecture."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from jetvit.model import HybridViT, LinearAttnConfig, validate_arch

INHERIT_MODES = ("all", "mlp")
# Parameters that `inherit="mlp"` re-initialises: the attention projections (the paper's ablation baseline).
_ATTN_PROJECTIONS = (".attn.qkv.", ".attn.proj.")


def convert(
    model: HybridViT,
    arch: str,
    *,
    inherit: str = "all",
    window_size: int | None = None,
    linear: LinearAttnConfig | dict[str, Any] | None = None,
    seed: int = 0,
) -> HybridViT:
    """A new `HybridViT` with architecture `arch`, initialised from `model`; `model` is left untouched.

    inherit: `all` copies every tensor the teacher has (Q, K, V, O, MLP, norms, LayerScale, embeddings, heads);
    `mlp` copies everything but the attention projections `qkv`/`proj`, which are re-initialised (seeded).
    Parameters the teacher has no counterpart for (the `L` blocks' convolution) start from their documented
    initialisation (zero kernels: a fresh `L` block is plain ReLU linear attention). Returns a model in eval mode
    on the teacher's device and dtype, whose inherited tensors are copies, never views, of the teacher's.
    """
    if inherit not in INHERIT_MODES:
        raise ValueError(f"inherit must be one of {INHERIT_MODES}, got {inherit!r}")
    cfg = model.cfg
    changes: dict[str, Any] = {"arch": validate_arch(arch, cfg.depth)}
    if window_size is not None:
        changes["window_size"] = window_size
    if linear is not None:
        changes["linear"] = linear if isinstance(linear, LinearAttnConfig) else LinearAttnConfig(**linear)
    new_cfg = dataclasses.replace(cfg, **changes)
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = HybridViT(new_cfg)
    student.to(device=param.device, dtype=param.dtype)

    teacher_state = model.state_dict()
    student_state = student.state_dict()
    inherited = {}
    for name, tensor in teacher_state.items():
        if name not in student_state:
            raise ValueError(f"teacher tensor {name!r} has no place in the converted model")
        if inherit == "mlp" and any(p in name for p in _ATTN_PROJECTIONS):
            continue
        inherited[name] = tensor.detach().clone()
    missing, unexpected = student.load_state_dict(inherited, strict=False)
    assert not unexpected, unexpected
    new_params = [k for k in missing if not any(p in k for p in _ATTN_PROJECTIONS)]
    assert all(".attn.conv" in k for k in new_params), f"uninherited tensors outside the L-block conv: {new_params}"
    return student.eval()
