"""Regional compilation: each block of a `HybridViT` compiled in place, one graph per block kind.

Why regional. `torch.compile(model)` traces the whole model into one graph: for a 24-block model that is 24 blocks of
tracing, AOT autograd and Inductor code generation per input shape (about 40-90 s for ViT-L on a GPU), and again for
every new shape or architecture string. Compiling each block on its own (`nn.Module.compile`, in place) lets blocks
of the same kind share one compiled graph: Dynamo lifts a module's parameters and buffers to graph inputs, so the
guards of a cached graph check the block's structure (its classes, shapes, options), not which block it is. A
hybrid with kinds L, W and F compiles three graphs, whatever its depth and arrangement; a supernet's candidates of
one kind share theirs across blocks too. What is lost is fusion across block boundaries, which is one residual add:
nothing, next to the compile time saved.

The rest of the forward (patch embedding, prefix tokens, RoPE tables, final norm, heads) stays eager: it runs once
per forward against the blocks' depth, a few dozen small kernels, and `prepare_tokens` is a method, whose compiled
form would have to be stored on the instance (a function attribute that `copy.deepcopy` would share with a copy, which
would then run the original's weights).

Rules of use. Compile the module that runs, after any `copy.deepcopy` of it: `nn.Module` drops a compiled forward
from its copies (they run eager), so under FSDP it is the sharded copy that is compiled, after sharding. A compiled
block composes with activation checkpointing (`HybridViT.set_grad_checkpointing` calls the compiled block inside
`torch.utils.checkpoint`). `uncompile_regions` undoes it.

The backend is Inductor by default; `JETVIT_COMPILE_BACKEND` (e.g. `aot_eager`, which traces and runs the same
forward and backward graphs without code generation) overrides the default, which is how the CPU tests compile
quickly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from torch import nn

BACKEND_ENV = "JETVIT_COMPILE_BACKEND"

# Compiled graphs kept per code object before Dynamo gives up and runs eager. Every block kind shares one code object
# (the module call), and a run needs a graph per kind x {static, dynamic shapes} x {training, no_grad, inference}:
# a 3-kind supernet that is trained and scored needs up to 18, beyond Dynamo's default of 8.
RECOMPILE_LIMIT = 64


def default_backend() -> str:
    """The compile backend: `$JETVIT_COMPILE_BACKEND` when set (tests: `aot_eager`), else `inductor`."""
    return os.environ.get(BACKEND_ENV) or "inductor"


def regions(model: nn.Module) -> Iterator[nn.Module]:
    """The modules `compile_regions` compiles: each block of `model.blocks`, or for a supernet's `SwitchableBlock`
    each of its candidates (the switch itself stays eager: it only picks the active candidate)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"regional compilation needs a model with a `blocks` ModuleList, got {type(model).__name__}")
    for blk in blocks:
        candidates = getattr(blk, "candidates", None)
        yield from candidates.values() if isinstance(candidates, nn.ModuleDict) else (blk,)


def compile_regions(
    model: nn.Module,
    *,
    backend: str | Callable | None = None,
    mode: str | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = True,
) -> nn.Module:
    """Compile each block of `model` (a `HybridViT`, or a supernet) in place (`nn.Module.compile`) and return `model`.

    backend: `torch.compile`'s (default `default_backend()`: inductor); mode: e.g. "max-autotune-no-cudagraphs";
    dynamic: None lets Dynamo mark a dimension dynamic when a second size of it arrives (one recompile per kind, then
    no more), False specialises every shape; fullgraph: a graph break inside a block is an error, not a silent slow
    path. Idempotent: compiling again replaces the blocks' compiled forwards.
    """
    _raise_recompile_limit()
    options = dict(backend=backend or default_backend(), mode=mode, dynamic=dynamic, fullgraph=fullgraph)
    for region in regions(model):
        region.compile(**options)
    return model


def uncompile_regions(model: nn.Module) -> nn.Module:
    """Undo `compile_regions`: every block runs eager again. Returns `model`."""
    for region in regions(model):
        region._compiled_call_impl = None  # what nn.Module.compile sets; None is its "not compiled"
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether every region of `model` is compiled (`compile_regions`)."""
    return all(getattr(r, "_compiled_call_impl", None) is not None for r in regions(model))


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    # `recompile_limit` since torch 2.6; `cache_size_limit` (its alias since) before.
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
