"""Weight inheritance: a teacher (any `HybridViT`, usually all-`F`) -> a hybrid with another architecture.

`inherit_block` is the one rule, used by `convert` (a whole model) and by the supernet (each candidate of a block):
the new block takes every tensor of the source block that it has under the same name and shape, i.e. the attention
projections `qkv`/`proj`, the norms, LayerScales and MLP, and a kind's extras (the `L` block's convolution) only
when the source block is of the same kind. What is not inherited keeps its documented initialisation (zero
convolution kernels: a fresh `L` block is plain ReLU linear attention).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from jetvit.model import Block, HybridViT, LinearAttnConfig, validate_arch

INHERIT_MODES = ("all", "mlp")
# Parameters that `inherit="mlp"` re-initialises: the attention projections (the paper's ablation baseline).
ATTN_PROJECTIONS = ("attn.qkv.", "attn.proj.")
# Parameters a block may legitimately lack a source for: the kinds' extras.
KIND_EXTRAS = ("attn.conv",)


def inherit_block(src: nn.Module, dst: Block, *, inherit: str = "all") -> None:
    """Copy into `dst` (in place) every tensor of block `src` that `dst` has under the same name and shape; with
    `inherit="mlp"` the attention projections are left at `dst`'s own (seeded) initialisation. The copies are new
    tensors, never views of `src`'s."""
    if inherit not in INHERIT_MODES:
        raise ValueError(f"inherit must be one of {INHERIT_MODES}, got {inherit!r}")
    own = dst.state_dict()
    inherited = {
        n: t.detach().clone()
        for n, t in src.state_dict().items()
        if n in own and own[n].shape == t.shape and not (inherit == "mlp" and n.startswith(ATTN_PROJECTIONS))
    }
    missing = [n for n in own if n not in inherited]
    allowed = KIND_EXTRAS + (ATTN_PROJECTIONS if inherit == "mlp" else ())
    assert all(n.startswith(allowed) for n in missing), f"block tensors without a source: {missing}"
    dst.load_state_dict(inherited, strict=False)


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
    `mlp` copies everything but the attention projections `qkv`/`proj`, which are re-initialised (seeded by `seed`,
    as are the `L` blocks' new parameters). Returns a model in eval mode on the teacher's device and dtype, whose
    inherited tensors are copies, never views, of the teacher's.
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

    # Everything outside the blocks (embeddings, final norm, heads) is the same structure in every architecture.
    outside = {n: t.detach().clone() for n, t in model.state_dict().items() if not n.startswith("blocks.")}
    missing, unexpected = student.load_state_dict(outside, strict=False)
    if unexpected:
        raise ValueError(f"teacher tensors {unexpected} have no place in the converted model")
    assert all(n.startswith("blocks.") for n in missing), f"uninherited tensors outside the blocks: {missing}"
    for src, dst in zip(model.blocks, student.blocks):
        inherit_block(src, dst, inherit=inherit)
    return student.eval()
