"""Weight inheritance: a teacher (any `HybridViT`, usually all-`F`) -> a hybrid with another architecture.

`block_sources` is the one rule, used by `convert` (a whole model) and, through `inherit_block`, by the supernet
(each candidate of a block): the new block takes every tensor of the source block that it has under the same name
and shape, i.e. the attention projections `qkv`/`proj`, the norms, LayerScales and MLP, and a kind's extras (the `L`
block's convolution) only when the source block is of the same kind. What is not inherited keeps its documented
initialisation (zero convolution kernels: a fresh `L` block is plain ReLU linear attention).

`convert` holds one copy of the weights: the student is built on the meta device (nothing drawn), materialised on the
teacher's device in its dtype, and every inherited tensor is copied in. The few tensors without a source get their
initialisation from the model's own `reset_projections` / `reset_extras` of the attention they belong to, after
`torch.manual_seed(seed)`, drawn on the teacher's device in its dtype (`_init_fresh`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from jetvit.model import Block, HybridViT, LinearAttnConfig, validate_arch

Inherit = Literal["all", "mlp"]  # which teacher weights a student inherits (below)
INHERIT_MODES: tuple[str, ...] = get_args(Inherit)
# Parameters that `inherit="mlp"` re-initialises: the attention projections (the paper's ablation baseline).
ATTN_PROJECTIONS = ("attn.qkv.", "attn.proj.")
# Parameters a block may legitimately lack a source for: the kinds' extras.
KIND_EXTRAS = ("attn.conv",)


def _check_inherit(inherit: str) -> None:
    if inherit not in INHERIT_MODES:
        raise ValueError(f"inherit must be one of {INHERIT_MODES}, got {inherit!r}")


def block_sources(src: dict[str, Tensor], dst: dict[str, Tensor], *, inherit: str = "all") -> dict[str, Tensor]:
    """The tensor of source block state `src` that each tensor of block state `dst` inherits: the one under the same
    name and shape, except the attention projections for `inherit="mlp"`. What is left without a source can only be
    a kind's extra (or, for "mlp", a projection)."""
    _check_inherit(inherit)
    inherited = {
        n: t
        for n, t in src.items()
        if n in dst and dst[n].shape == t.shape and not (inherit == "mlp" and n.startswith(ATTN_PROJECTIONS))
    }
    missing = [n for n in dst if n not in inherited]
    allowed = KIND_EXTRAS + (ATTN_PROJECTIONS if inherit == "mlp" else ())
    assert all(n.startswith(allowed) for n in missing), f"block tensors without a source: {missing}"
    return inherited


def inherit_block(src: nn.Module, dst: Block, *, inherit: str = "all") -> None:
    """Copy into `dst` (in place) every tensor of block `src` that `dst` has under the same name and shape; with
    `inherit="mlp"` the attention projections are left at `dst`'s own (seeded) initialisation. The copies are new
    tensors, never views of `src`'s."""
    inherited = block_sources(src.state_dict(), dst.state_dict(), inherit=inherit)
    dst.load_state_dict({n: t.detach().clone() for n, t in inherited.items()}, strict=False)


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
    `mlp` copies everything but the attention projections `qkv`/`proj`, which are re-initialised. The tensors without
    a source (those, and the `L` blocks' new parameters) take the model's own initialisation of their part of the
    attention (`Attention.reset_projections` / `reset_extras`), block by block after `torch.manual_seed(seed)`, drawn
    on the teacher's device in its dtype: the same seed gives the same values there (the process's random state is
    left as it was on the CPU and that device). Returns a model in eval mode on the teacher's device and dtype, whose
    inherited tensors are copies, never views, of the teacher's. Memory: one copy of the student's weights (nothing
    else of its size is allocated).
    """
    _check_inherit(inherit)
    cfg = model.cfg
    changes: dict[str, Any] = {"arch": validate_arch(arch, cfg.depth)}
    if window_size is not None:
        changes["window_size"] = window_size
    if linear is not None:
        changes["linear"] = linear if isinstance(linear, LinearAttnConfig) else LinearAttnConfig(**linear)
    new_cfg = dataclasses.replace(cfg, **changes)
    param = next(model.parameters())
    with torch.device("meta"):
        student = HybridViT(new_cfg)
    student.to(dtype=param.dtype).to_empty(device=param.device)
    own = student.state_dict()

    # Everything outside the blocks (embeddings, final norm, heads) is the same structure in every architecture.
    sources = {n: t for n, t in model.state_dict().items() if not n.startswith("blocks.")}
    unexpected = [n for n, t in sources.items() if n not in own or own[n].shape != t.shape]
    if unexpected:
        raise ValueError(f"teacher tensors {unexpected} have no place in the converted model")
    for i, (src, dst) in enumerate(zip(model.blocks, student.blocks)):
        inherited = block_sources(src.state_dict(), dst.state_dict(), inherit=inherit)
        sources.update({f"blocks.{i}.{n}": t for n, t in inherited.items()})
    fresh = [n for n in own if n not in sources]
    assert all(n.startswith("blocks.") for n in fresh), f"uninherited tensors outside the blocks: {fresh}"
    with torch.no_grad():
        _init_fresh(student, fresh, seed=seed)  # first: a part re-initialised whole may hold inherited tensors too
        for name, t in sources.items():
            own[name].copy_(t)
    return student.eval()


def _init_fresh(model: HybridViT, fresh: list[str], *, seed: int) -> None:
    """Initialise the parts of `model`'s blocks that hold the tensors `fresh` (state-dict names): per block, in order,
    the attention's projections and/or its kind's extras, after `torch.manual_seed(seed)` on the model's device."""
    parts: dict[int, set[str]] = {}
    for name in fresh:
        _, i, rest = name.split(".", 2)  # blocks.{i}.{rest}
        parts.setdefault(int(i), set()).add("projections" if rest.startswith(ATTN_PROJECTIONS) else "extras")
    if not parts:
        return
    device = next(model.parameters()).device
    # The process's random state is kept on the CPU and on the device drawn on (manual_seed reseeds every CUDA one).
    on_device = [] if device.type in ("cpu", "meta") else [device]
    with torch.random.fork_rng(devices=on_device, device_type=device.type if on_device else "cuda"):
        torch.manual_seed(seed)
        for i in sorted(parts):
            attn = model.blocks[i].attn
            if "projections" in parts[i]:
                attn.reset_projections()
            if "extras" in parts[i]:
                attn.reset_extras()
