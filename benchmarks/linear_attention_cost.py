"""Bytes and error of the `L` block's attention, plain path against the fused Triton kernels.

Bytes: one `L` attention (from the q, k, v views of the `qkv` output to the (B, N, D) input of `proj`) traced on the
meta device at DINOv3-L/16 1024x2048 bf16 (D 1024, 16 heads, 8192 patches + 5 prefix tokens, batch 1); each op
reads its tensor inputs and writes its outputs once (distinct elements: a broadcast table counts once; views are
free; `copy_` reads its source only). The kernels are one op each, counted by their inputs and outputs; the prefix
queries' SDPA as one flash kernel (reads q's prefix rows, K, V; writes its output).

Error: the patch tokens' linear attention plus the dynamic convolution with bf16 inputs on the CPU (2 heads of 64,
the same grid), against fp64; the kernels under Triton's interpreter (`TRITON_INTERPRET=1`).

    python benchmarks/linear_attention_cost.py [--no-error] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported: the CPU error check

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jetvit import io, kernels, ops
from jetvit.model import LinearAttention, TokenLayout, ViTConfig, rope_tables

MiB = 2**20


def tensor_bytes(t: torch.Tensor) -> int:
    """Distinct elements times their size: dimensions of stride 0 (broadcasts) count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        n *= size if stride else 1
    return n * t.element_size()


ALLOCATIONS = (
    torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default, torch.ops.aten.new_empty.default,
    torch.ops.aten.empty_strided.default,
)  # fmt: skip


class Bytes(TorchDispatchMode):
    """Bytes read and written, and ops run, below autograd and autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.read = self.written = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func in ALLOCATIONS or func is torch.ops.aten._unsafe_view.default:  # no copy
            return out
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        if func is torch.ops.aten.copy_.default:
            flat = flat[1:]  # the destination is written, not read
        self.read += sum(tensor_bytes(t) for t in flat)
        self.written += sum(tensor_bytes(t) for t in outs)
        self.ops += 1
        return out


def l_attention(grid: tuple[int, int], *, dim: int, heads: int, prefix: int, device: str, dtype: torch.dtype):
    cfg = ViTConfig(dim=dim, num_heads=heads, num_registers=prefix - 1, img_size=16 * grid[0], arch="L", depth=1)
    with torch.device(device):
        attn = LinearAttention(cfg).to(dtype)
    layout = TokenLayout(grid, prefix, rope_tables(grid, dim // heads, cfg.rope_base, torch.device(device)))
    return attn, layout


def count(fused: bool, grid=(64, 128), dim=1024, heads=16, prefix=5) -> dict[str, float]:
    attn, layout = l_attention(grid, dim=dim, heads=heads, prefix=prefix, device="meta", dtype=torch.bfloat16)
    B, N, d = 1, prefix + grid[0] * grid[1], dim // heads
    qkv = torch.empty(B, N, 3, heads, d, device="meta", dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d), as `Attention.project` makes them
    old = kernels.use_triton, ops.prefix_attention
    kernels.use_triton = lambda is_cuda, num_tokens: fused  # the kernels' meta path runs without a GPU
    mode = Bytes()

    def flash_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_prefix: int) -> torch.Tensor:
        # SDPA as the GPU runs it, one flash kernel (on the meta device it would decompose into the math path)
        mode.read += sum(tensor_bytes(t) for t in (q[:, :, :num_prefix], k, v))
        mode.written += tensor_bytes(q[:, :, :num_prefix])
        mode.ops += 1
        return torch.empty_like(q[:, :, :num_prefix])

    ops.prefix_attention = flash_prefix_attention
    try:
        with torch.no_grad(), mode:
            out = attn.attend(q, k, v, layout)
            out.transpose(1, 2).reshape(B, N, dim)  # the input of `proj`
    finally:
        kernels.use_triton, ops.prefix_attention = old
    total = (mode.read + mode.written) / MiB
    return {"read_MiB": mode.read / MiB, "written_MiB": mode.written / MiB, "total_MiB": total, "ops": mode.ops}


def errors(grid=(64, 128), heads=2, d=64, ks=5, prefix=5) -> dict[str, dict[str, float]]:
    """RMS and largest error against fp64, relative to those of the fp64 result rounded to bf16."""
    from jetvit import ops
    from jetvit.kernels import linear_attention as fk

    g = torch.Generator().manual_seed(0)
    B, Np = 1, grid[0] * grid[1]
    N = prefix + Np
    q, k, v = ((torch.randn(B, heads, N, d, generator=g) + s).bfloat16() for s in (0.3, 0.3, 0.0))
    weight = (torch.randn(B, heads * d, ks, ks, generator=g) * 0.05).bfloat16()

    def plain(q, k, v, w):
        out = ops.linear_attention(ops.feature_map(q[:, :, prefix:], "relu"), ops.feature_map(k, "relu"), v)
        x = v[:, :, prefix:].transpose(-1, -2).reshape(B, heads * d, *grid)
        conv = ops.depthwise_conv_per_image(x, w).reshape(B, heads, d, Np).transpose(-1, -2)
        return out + conv

    ref = plain(q.double(), k.double(), v.double(), weight.double())
    rounding = ref.bfloat16().double() - ref
    rms = lambda t: t.square().mean().sqrt().item()  # noqa: E731
    no_prefix = q.new_zeros(B, heads, prefix, d)  # the prefix rows are not compared
    results = {"plain": plain(q, k, v, weight)}
    # The interpreter truncates at a bf16 store where the GPU rounds to nearest: the kernels get the same bf16 values
    # typed fp32 and their fp32 output is rounded here, as the GPU's store does (the bf16 split of the state, exact
    # to about 16 bits, is not exercised by this CPU measurement).
    if fk.INTERPRET:
        q, k, v, weight = q.float(), k.float(), v.float(), weight.float()
    state, _ = fk.linear_state(k, v, num_prefix=prefix)
    fused = fk.linear_apply(q, state, v, weight, no_prefix, grid=grid, eps=1e-6).bfloat16()  # (B, N, D)
    results["fused"] = fused[:, prefix:].reshape(B, Np, heads, d).transpose(1, 2)
    base = {"rms": rms(rounding), "max": rounding.abs().max().item()}
    table = {"bf16 rounding": {"rms_x": 1.0, "max_x": 1.0, **base}}
    for name, out in results.items():
        err = out.double() - ref
        table[name] = {"rms_x": rms(err) / base["rms"], "max_x": err.abs().max().item() / base["max"]}
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-error", action="store_true", help="bytes only (no CPU compute)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    result = {"bytes": {"plain": count(False), "fused": count(True)}}
    print("L attention, DINOv3-L/16 1024x2048 bf16, batch 1 (meta-device trace)")
    print(f"{'path':8} {'read MiB':>9} {'written MiB':>12} {'total MiB':>10} {'ops':>5}")
    for name, r in result["bytes"].items():
        print(f"{name:8} {r['read_MiB']:9.1f} {r['written_MiB']:12.1f} {r['total_MiB']:10.1f} {r['ops']:5d}")
    if not args.no_error:
        result["error"] = errors()
        print("\nerror against fp64 (linear attention + dynamic conv, bf16 inputs, 2 heads, 64x128 grid)")
        for name, r in result["error"].items():
            print(f"{name:14} rms {r['rms_x']:.2f}x  max {r['max_x']:.2f}x of the bf16 rounding")
    if args.out:
        io.atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
