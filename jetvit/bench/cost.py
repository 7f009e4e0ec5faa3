"""A roofline cost model beside the FLOP count: bytes moved and kernels launched per block, counted from the real
op trace of the eager forward, and a predicted latency on named GPUs.

    report = predict(model, 1024, 2048, device="h100", dtype="bf16", mode="graphs")
    print(format_cost(report))          # per-block ms, bytes, FLOPs, launches; totals
    print(where_the_bytes_go(report))   # bytes by block kind and part (attention core, qkv/proj, MLP, norms, ...)

**Counting.** The model is rebuilt from its config with fake tensors (`FakeTensorMode`, no memory, no arithmetic) on a
fake CUDA device, so the forward takes the code paths and the autocast policy it takes on a GPU, and DINOv3-L/16 at
1024x2048 costs a fraction of a second to count here. A `TorchDispatchMode` records every aten op of the forward
under `torch.inference_mode`:

- FLOPs: `aten.linear`/`matmul` (2 per multiply-add of the product), convolutions, and
  `scaled_dot_product_attention` as 4 * B * heads * Nq * Nk * d with its actual query and key counts (a mask does
  not skip work: flash-style kernels compute masked tiles); the other ops `torch.utils.flop_counter` knows with its
  formulas; custom ops (a `torch.library` kernel) from `register_cost`. Elementwise ops and reductions count 0,
  as in `HybridViT.flops`.
- Bytes: each distinct input region read once, each output written once (an in-place op also reads what it
  overwrites, except pure writes such as `copy_`/`fill_`); a broadcast input counts its distinct elements.
- Launches: one per op that is not a view; an op whose outputs all alias its inputs (`view`, `transpose`, `reshape`
  or `to` that copy nothing) and allocation (`empty`) are free.

Each op is tagged with its block and the part of the block it belongs to: `attn` (the attention core: everything
between the `qkv` and `proj` projections), `qkv/proj`, `mlp`, `norm`, `residual` (LayerScale and the residual
adds); outside the blocks `embed` and `head`.

**Precision** (`dtype`): `bf16` casts the weights and the input to bf16 once (as `jetvit bench --dtype bf16` runs);
`autocast` keeps fp32 weights under CUDA bf16 autocast (weights re-cast every forward, fp32 residual stream and
norms); `fp32`.

**The compiled view** (`mode="compiled"`): what Inductor would launch, approximated without running it. The forward is
traced as under `torch.compile` (`torch.compiler.is_compiling()` true, so the model takes its compile paths), then
every maximal run of non-matmul ops (pointwise, reductions, copies) between two matmul / convolution / attention /
custom ops of the same block fuses into one kernel (blocks are compiled one by one, regional compilation, so a run
never crosses a block boundary). A fused kernel reads the regions its ops read that no earlier op of the run wrote,
and writes the tensors of the run that an op outside it reads later or the forward returns. This is an optimistic
bound: Inductor can split a run (reductions of different shapes, a layout change) but never merges across a matmul.

**Time.** Each kernel takes max(FLOPs / (peak * efficiency), bytes / (bandwidth * BANDWIDTH_EFF)) on the device plus
`KERNEL_GAP_S`; the peak is the bf16 tensor peak for bf16 matmuls and the fp32 peak otherwise (PyTorch's default
matmuls do not use TF32). The host issues one kernel every `host_launch_s` (eager: the device's `eager_launch_s`;
compiled: `COMPILED_LAUNCH_S`; CUDA graphs: nothing per kernel, `GRAPH_LAUNCH_S` once) and a kernel starts when it is
issued and the previous one has ended: the host runs ahead of a busy GPU, so launch cost adds only where kernels are
shorter than it. (Adding the launch to every kernel would charge the teacher's long kernels for host work the GPU
never waits for.) Latency is the time the last kernel ends; a block's time is how far it moves that clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from jetvit.model import HybridViT, ViTConfig

# ---------------------------------------------------------------------------------------------------------------
# Devices and constants


@dataclass(frozen=True)
class Device:
    """Spec-sheet figures of one GPU: dense peaks in FLOP/s, memory bandwidth in bytes/s, and the host's cost of
    launching one eager kernel in seconds."""

    name: str
    bf16_flops: float  # dense bf16 tensor-core peak with fp32 accumulation
    fp32_flops: float  # fp32 without tensor cores (CUDA cores)
    bandwidth: float
    eager_launch_s: float = 5e-6  # PyTorch eager dispatch + cudaLaunchKernel on a server CPU


DEVICES: dict[str, Device] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 tensor 1,979 TFLOPS with sparsity = 989.4 dense; FP32 67
    # TFLOPS; HBM3 3.35 TB/s.
    "h100": Device("NVIDIA H100 SXM5 80GB", 989.4e12, 66.9e12, 3.35e12),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): the H100's compute (BF16 1,979 TFLOPS sparse, FP32 67 TFLOPS),
    # HBM3e 4.8 TB/s.
    "h200": Device("NVIDIA H200 SXM 141GB", 989.4e12, 66.9e12, 4.8e12),
    # NVIDIA Ampere GA102 GPU Architecture whitepaper, GeForce RTX 3090: peak BF16 tensor TFLOPS with FP32
    # accumulate 71 (dense; 142 sparse), peak FP32 35.6 TFLOPS, GDDR6X 936 GB/s.
    "rtx3090": Device("NVIDIA GeForce RTX 3090", 71e12, 35.6e12, 936e9),
    # NVIDIA Jetson AGX Orin Series Technical Brief (64GB module): GPU up to 170 sparse INT8 TOPS = 85 dense, Ampere
    # tensor cores run FP16/BF16 at half the INT8 rate: 42.5 TFLOPS dense; 5.3 FP32 TFLOPS (2048 CUDA cores at
    # 1.3 GHz); LPDDR5 204.8 GB/s. Its Cortex-A78AE host dispatches eager ops about 3x slower than a server CPU
    # (our assumption, not a spec figure).
    "orin": Device("NVIDIA Jetson AGX Orin 64GB", 42.5e12, 5.3e12, 204.8e9, eager_launch_s=15e-6),
}

# Achievable fractions, chosen once from public measurements (never tuned per goal):
# cuBLAS bf16 GEMMs of transformer sizes reach about 70% of the H100's dense peak (650-750 TFLOP/s).
MATMUL_EFF = 0.70
# PyTorch's flash backend is FlashAttention-2, about 330-350 TFLOP/s forward on an H100 at head dim 64 (the
# FlashAttention-3 paper's baseline, Shah et al. 2024): 35% of peak. Custom (Triton) kernels get the same fraction.
ATTENTION_EFF = 0.35
# Streaming kernels reach about 80% of the memory bandwidth on the spec sheet.
BANDWIDTH_EFF = 0.80
# Device-side cost of every kernel: start-up and tail, even back to back in a CUDA graph.
KERNEL_GAP_S = 1e-6
# Inductor's wrapper launches its Triton kernels without the dispatcher's layers (autograd, autocast, dispatch).
COMPILED_LAUNCH_S = 3e-6
# One CUDA graph replay.
GRAPH_LAUNCH_S = 10e-6

MODES = ("eager", "graphs", "compiled")
PRECISIONS = ("bf16", "autocast", "fp32")
PARTS = ("attn", "qkv/proj", "mlp", "norm", "residual", "embed", "head")

# ---------------------------------------------------------------------------------------------------------------
# Custom kernels

_CUSTOM_FLOPS: dict[str, Callable[..., int]] = {}


def register_cost(op_name: str, flops: Callable[..., int]) -> None:
    """Say how many FLOPs one call of custom op `op_name` ("namespace::name", e.g. "jetvit::linear_attention")
    does: `flops(*args, **kwargs)` gets the op's arguments (fake tensors: shapes, no values). Its bytes are its
    inputs and outputs, its launches one; without a registered formula it counts 0 FLOPs."""
    if "::" not in op_name:
        raise ValueError(f"op_name must be 'namespace::name' as torch.library registers it, got {op_name!r}")
    _CUSTOM_FLOPS[op_name] = flops


def _linear_state_flops(k: Tensor, v: Tensor, q_prefix: Tensor, *rest: Any) -> int:
    """`jetvit::linear_state`: phi(K)^T V over all N keys, k and v (B, H, N, d), and the prefix queries' softmax
    attention over them, q_prefix (B, H, P, d), counted as SDPA is (QK^T and AV). The normaliser column, the pooled
    V, the keys' rotation and the softmax are elementwise or reductions: left out, as `LinearAttention.flops` does."""
    B, Hn, N, d = k.shape
    return 2 * B * Hn * N * d * v.shape[-1] + 2 * B * Hn * q_prefix.shape[2] * N * (d + v.shape[-1])


def _linear_apply_flops(q: Tensor, state: Tensor, v: Tensor, weight: Tensor, *rest: Any) -> int:
    """`jetvit::linear_apply`: the patch queries against the state (B, H, d, d+1), and the depthwise convolution
    (weight (B, D, k, k), empty without one); counted as `LinearAttention.flops` counts them."""
    prefix, h, w = rest[:3]  # prefix (B, H, P, d), the patch grid (h, w), then eps
    B, Hn, _, d = q.shape
    flops = 2 * B * Hn * h * w * d * state.shape[-1]
    if weight.numel():
        flops += 2 * h * w * weight.numel()
    return flops


# The model's own kernels (`jetvit.kernels`): their formulas live here, with the other formulas of the bench, so
# that the kernels never import the bench. `register_cost` replaces them.
register_cost("jetvit::linear_state", _linear_state_flops)
register_cost("jetvit::linear_apply", _linear_apply_flops)


# ---------------------------------------------------------------------------------------------------------------
# The trace

# Ops that run on tensor cores (or cuDNN/cuBLAS): never fused by the compiled view, FLOPs at the matmul efficiency.
_MATMUL_OPS = {
    "linear", "matmul", "mm", "addmm", "bmm", "baddbmm", "addbmm", "einsum",
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "cudnn_convolution",
}  # fmt: skip
_ATTENTION_OPS = {
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward",
}  # fmt: skip
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
# In-place ops that overwrite without reading what was there.
_PURE_WRITES = {"copy_", "fill_", "zero_", "normal_", "uniform_"}

# (storage id, storage bytes, offset, shape, stride): one view of a tensor's memory
Region = tuple[int, int, int, tuple[int, ...], tuple[int, ...]]


@dataclass
class Op:
    """One kernel: an aten (or custom) op of the trace, or a fused run of them (the compiled view)."""

    name: str
    kind: str  # "matmul" | "attention" | "custom" | "memory"
    flops: int
    reads: dict[Region, int]  # distinct region -> bytes
    writes: dict[Region, int]
    block: int | None  # None outside the blocks
    part: str
    low_precision: bool  # bf16/fp16 operands: the tensor-core peak applies
    fused: int = 1  # how many traced ops this kernel stands for

    @property
    def read(self) -> int:
        return _capped(self.reads)

    @property
    def written(self) -> int:
        return _capped(self.writes)

    @property
    def bytes(self) -> int:
        return self.read + self.written


def _capped(regions: dict[Region, int]) -> int:
    """Bytes of distinct regions, at most each storage's size (overlapping views of one tensor)."""
    per: dict[tuple[int, int], int] = defaultdict(int)
    for (sid, size, *_), n in regions.items():
        per[sid, size] += n
    return sum(min(n, size) for (_, size), n in per.items())


@dataclass
class Trace:
    """The ops of one forward, in order, and what the forward returned."""

    ops: list[Op]
    outputs: set[int]  # storage ids of the forward's outputs
    arch: str
    keep: list[Tensor] = field(default_factory=list, repr=False)  # every tensor seen: no storage id is reused


def _touched(t: Tensor) -> int:
    """Bytes of the distinct elements a (possibly broadcast) view covers."""
    if t.numel() == 0:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        n *= size if stride else 1
    return n * t.element_size()


def _region(t: Tensor) -> Region:
    storage = t.untyped_storage()
    return (storage._cdata, storage.nbytes(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _tensors(x: Any) -> list[Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, Tensor)]


def _conv_flops(out: Tensor, w: Tensor) -> int:
    """2 * every output element * (C_in / groups) * kernel size: out (B, C_out, *spatial), w (C_out, C_in/g, *k)."""
    return 2 * out.numel() * math.prod(w.shape[1:])


def _attention_flops(q: Tensor, k: Tensor, v: Tensor) -> int:
    """QK^T and AV: q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv); masks skip no work."""
    batch = math.prod(q.shape[:-2])
    return 2 * batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _flops(func: Any, kind: str, args: tuple, kwargs: dict, out: Any) -> int:
    name = func._schema.name.split("::")[-1]
    if kind == "custom":
        formula = _CUSTOM_FLOPS.get(func._schema.name)
        return int(formula(*args, **kwargs)) if formula else 0
    if name == "scaled_dot_product_attention":
        return _attention_flops(args[0], args[1], args[2])
    if name == "linear":  # x (..., K), weight (N, K)
        return 2 * math.prod(args[0].shape[:-1]) * args[1].shape[0] * args[1].shape[1]
    if name == "matmul":  # (..., M, K) @ (..., K, N) -> (..., M, N)
        return 2 * out.numel() * args[0].shape[-1]
    if name in ("conv1d", "conv2d", "conv3d"):
        return _conv_flops(out, args[1])
    from torch.utils.flop_counter import flop_registry

    formula = flop_registry.get(func.overloadpacket)
    return int(formula(*args, **kwargs, out_val=out)) if formula else 0


class _Recorder(TorchDispatchMode):
    """Records every op that launches a kernel, tagged with the block and part set by the model's hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.keep: list[Tensor] = []
        self.block: int | None = None
        self.parts: list[str] = ["embed"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outs = _tensors(out)
        if not outs:
            return  # a size, a device: no kernel
        schema = func._schema
        namespace, name = schema.name.split("::") if "::" in schema.name else ("aten", schema.name)
        self.keep += _tensors((args, kwargs)) + outs
        if name in _ALLOCATIONS:
            return
        written = set()  # the arguments the op mutates (schema alias annotation with a write)
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                written.update(id(t) for t in _tensors(value))
        inputs = _tensors((args, kwargs))
        in_storages = {t.untyped_storage()._cdata for t in inputs}
        if not written and all(t.untyped_storage()._cdata in in_storages for t in outs):
            return  # a view (or a no-op `to`/`reshape`/`contiguous`): no kernel
        reads, writes = {}, {}
        for t in inputs:
            if id(t) in written:
                writes[_region(t)] = _touched(t)
                if name not in _PURE_WRITES:
                    reads[_region(t)] = _touched(t)
            else:
                reads[_region(t)] = _touched(t)
        for t in outs:
            if id(t) not in written and t.untyped_storage()._cdata not in in_storages:
                writes[_region(t)] = _touched(t)
        if namespace not in ("aten", "prims"):
            kind = "custom"
        elif name in _ATTENTION_OPS:
            kind = "attention"
        elif name in _MATMUL_OPS:
            kind = "matmul"
        else:
            kind = "memory"
        flops = _flops(func, kind, args, kwargs, out) if kind != "memory" else 0
        low = any(t.dtype in (torch.bfloat16, torch.float16) for t in inputs[:2])
        self.ops.append(Op(f"{namespace}.{name}", kind, flops, reads, writes, self.block, self.parts[-1], low))


@contextmanager
def record() -> Iterator[list[Op]]:
    """The kernels of the ops run inside, as the trace counts them (untagged: block None, part "embed"); on fake,
    meta or real tensors."""
    rec = _Recorder()
    with rec:
        yield rec.ops


def _basic_index(t: Tensor, index: Any) -> Tensor | None:
    """`t[index]` for ints, slices, None and Ellipsis as views (select / slice / unsqueeze); None for other indices.

    A fake CUDA tensor on a build without CUDA cannot go through Python indexing (it sets a CUDA device guard), but
    the same views through the dispatcher are fine."""
    index = index if isinstance(index, tuple) else (index,)
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    out, dim = t, 0
    for i in index:
        if i is None:
            out, dim = out.unsqueeze(dim), dim + 1
        elif i is Ellipsis:
            dim += t.dim() - consumed
        elif isinstance(i, int) and not isinstance(i, bool):
            out = out.select(dim, i)
        elif isinstance(i, slice):
            start, stop, step = i.indices(out.shape[dim])
            out, dim = torch.ops.aten.slice.Tensor(out, dim, start, max(start, stop), step), dim + 1
        else:
            return None
    return out


def _setitem(t: Tensor, index: Any, value: Any) -> None:
    view = _basic_index(t, index)
    if view is None:
        _TensorBase.__setitem__(t, index, value)
    elif isinstance(value, Tensor):
        torch.ops.aten.copy_.default(view, value)
    else:
        view.fill_(value)


def _getitem(t: Tensor, index: Any) -> Tensor:
    view = _basic_index(t, index)
    return _TensorBase.__getitem__(t, index) if view is None else view


def _copy(t: Tensor, src: Tensor, non_blocking: bool = False) -> Tensor:
    return torch.ops.aten.copy_.default(t, src, non_blocking)


def _contiguous(t: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    return torch.ops.aten.contiguous.default(t, memory_format=memory_format)


def _new_tensor(t: Tensor, data: Any, *, dtype: torch.dtype | None = None, **kwargs: Any) -> Tensor:
    return torch.tensor(data, dtype=dtype or t.dtype, device=kwargs.get("device", t.device))


_TensorBase = torch._C.TensorBase


@contextmanager
def _fake_cuda_indexing() -> Iterator[None]:
    """The tensor methods that set a CUDA device guard in their Python binding (indexing, `copy_`, `contiguous`,
    `new_tensor`) routed through the dispatcher for the time of a trace (see `_basic_index`): patched on the class,
    so that it also holds inside custom ops' fake implementations."""
    patches = (
        ("__getitem__", _getitem),
        ("__setitem__", _setitem),
        ("copy_", _copy),
        ("contiguous", _contiguous),
        ("new_tensor", _new_tensor),
    )
    with ExitStack() as stack:
        for name, fn in patches:
            stack.enter_context(mock.patch.object(Tensor, name, fn))
        yield


class _Tagger(TorchFunctionMode):
    """Tags the `qkv` and `proj` linears inside attention (called with the weight, not through the module)."""

    def __init__(self, recorder: _Recorder, projections: set[int]) -> None:
        super().__init__()
        self.recorder, self.projections = recorder, projections

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) > 1 and id(args[1]) in self.projections:
            self.recorder.parts.append("qkv/proj")
            try:
                return func(*args, **kwargs)
            finally:
                self.recorder.parts.pop()
        return func(*args, **kwargs)


def _hook_parts(model: nn.Module, rec: _Recorder) -> None:
    """Module hooks that set the recorder's block and part while each module runs."""

    def enter(part: str, block: int | None = None) -> Callable:
        def pre(module: nn.Module, args: Any) -> None:
            if block is not None:
                rec.block = block
            rec.parts.append(part)

        return pre

    def leave(block: int | None = None) -> Callable:
        def post(module: nn.Module, args: Any, out: Any) -> None:
            rec.parts.pop()
            if block is not None:
                rec.block = None
                # Between blocks (YOLOS's block position embedding) counts as embedding; after the last, the head.
                rec.parts[-1] = "head" if block == len(model.blocks) - 1 else "embed"

        return post

    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(enter("residual", i))
        blk.register_forward_hook(leave(i))
        for name, part in (("norm1", "norm"), ("norm2", "norm"), ("attn", "attn"), ("mlp", "mlp")):
            getattr(blk, name).register_forward_pre_hook(enter(part))
            getattr(blk, name).register_forward_hook(leave())
    for head in (model.depth_head, model.detection_head):
        if head is not None:
            head.register_forward_pre_hook(enter("head"))
            head.register_forward_hook(leave())


def _meta_copy(model: nn.Module | ViTConfig) -> nn.Module:
    """The model's architecture rebuilt on the meta device (no weights): from a `ViTConfig`, or from a model's class
    and config (any `HybridViT`-like class: the benchmarks also count an earlier commit's model)."""
    if isinstance(model, ViTConfig):
        cls, cfg = HybridViT, model
    elif isinstance(model, nn.Module) and hasattr(model, "cfg") and hasattr(model, "blocks"):
        cls, cfg = type(model), dataclasses.replace(model.cfg, arch="".join(blk.kind for blk in model.blocks))
    else:
        raise ValueError(f"expected a HybridViT or a ViTConfig, got {type(model).__name__}")
    with torch.device("meta"):
        return cls(cfg)


@contextmanager
def _plain_paths() -> Iterator[None]:
    """The model's plain PyTorch paths: `jetvit.kernels` switched off, where that package exists."""
    try:
        import jetvit.kernels as fused
    except ImportError:
        yield
        return
    with mock.patch.object(fused, "ENABLED", False):
        yield


@contextmanager
def _cuda_autocast(enabled: bool) -> Iterator[None]:
    """CUDA bf16 autocast without a GPU: `torch.autocast("cuda")` disables itself when CUDA is unavailable, but the
    CUDA autocast kernels are in every build and apply to fake CUDA tensors."""
    before = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", enabled)
    torch.set_autocast_dtype("cuda", torch.bfloat16)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", before[0])
        torch.set_autocast_dtype("cuda", before[1])


def trace(
    model: nn.Module | ViTConfig,
    height: int,
    width: int,
    *,
    dtype: str = "bf16",
    batch: int = 1,
    compiled: bool = False,
    head: bool = False,
    kernels: bool = True,
) -> Trace:
    """The ops of one inference forward of `model`'s architecture at `batch` x 3 x `height` x `width`, counted on
    fake CUDA tensors (no weights, no arithmetic; the model's own weights are not touched). `dtype`: see the module
    docstring. `compiled`: take the model's `torch.compile` code paths. `head`: the depth head's forward
    (`predict_depth`) instead of the backbone's. `kernels`: let the model run its custom kernels (`jetvit.kernels`)
    where it would on a GPU; False: the plain PyTorch paths."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if dtype not in PRECISIONS:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(PRECISIONS)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    net = _meta_copy(model)
    cfg = net.cfg
    net.grid_size(height, width)  # ValueError for a size that is not a patch multiple
    if head and net.depth_head is None:
        raise ValueError("head=True needs a model with a depth head (a Depth-Anything-V2 teacher or dav2-* preset)")
    net.eval()
    rec = _Recorder()
    _hook_parts(net, rec)
    weights = torch.bfloat16 if dtype == "bf16" else torch.float32
    with ExitStack() as stack:
        stack.enter_context(FakeTensorMode())
        # Parameters become fake CUDA tensors: to_empty would allocate real ones from the meta ones.
        net._apply(lambda t: torch.empty(t.shape, dtype=weights if t.is_floating_point() else t.dtype, device="cuda"))
        x = torch.empty(batch, cfg.in_chans, height, width, dtype=weights, device="cuda")
        projections = {id(blk.attn.qkv.weight) for blk in net.blocks} | {id(blk.attn.proj.weight) for blk in net.blocks}
        stack.enter_context(torch.inference_mode())
        stack.enter_context(_cuda_autocast(dtype == "autocast"))
        if compiled:
            stack.enter_context(mock.patch("torch.compiler.is_compiling", return_value=True))
        if not kernels:
            stack.enter_context(_plain_paths())
        stack.enter_context(_fake_cuda_indexing())
        stack.enter_context(_Tagger(rec, projections))
        stack.enter_context(rec)
        out = net.predict_depth(x) if head else net(x)
    outputs = {t.untyped_storage()._cdata for t in _tensors(out)}
    return Trace(rec.ops, outputs, cfg.arch, rec.keep + _tensors(out))


# ---------------------------------------------------------------------------------------------------------------
# The compiled view


def fuse(tr: Trace) -> list[Op]:
    """Inductor's kernels, approximated (module docstring): runs of non-matmul ops within a block fuse into one."""
    runs: list[list[Op]] = []
    for op in tr.ops:
        heavy = op.kind != "memory"
        if heavy or not runs or runs[-1][0].kind != "memory" or runs[-1][0].block != op.block:
            runs.append([op])
        else:
            runs[-1].append(op)
    # Who reads each storage, by the index of its run: a fused run's result is written out only if read elsewhere.
    readers: dict[int, set[int]] = defaultdict(set)
    for r, run in enumerate(runs):
        for op in run:
            for sid, *_ in op.reads:
                readers[sid].add(r)
    kernels = []
    for r, run in enumerate(runs):
        if len(run) == 1:
            kernels.append(run[0])
            continue
        reads, writes, produced = {}, {}, set()
        part_bytes: dict[str, int] = defaultdict(int)
        for op in run:
            for region, n in op.reads.items():
                if region[0] not in produced:
                    reads[region] = n
            for region, n in op.writes.items():
                produced.add(region[0])
                if region[0] in tr.outputs or readers[region[0]] - {r}:
                    writes[region] = n
            part_bytes[op.part] += op.bytes
        names = sorted({op.name.split(".")[-1] for op in run})
        part = max(part_bytes, key=part_bytes.get)
        low = any(op.low_precision for op in run)
        name = f"fused({len(run)}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        kernels.append(Op(name, "memory", 0, reads, writes, run[0].block, part, low, fused=len(run)))
    return kernels


# ---------------------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class BlockCost:
    """One row of a report: a block (`index`, `kind`), or the embedding / head outside the blocks."""

    label: str  # "embed", "0", "1", ..., "head"
    kind: str  # the block's letter, "" outside the blocks
    ms: float
    bytes: int
    flops: int
    launches: int
    parts: dict[str, int]  # part -> bytes


@dataclass
class CostReport:
    """The predicted latency of one forward, per block and in total, and the kernels it comes from."""

    device: str
    dtype: str
    mode: str
    batch: int
    resolution: tuple[int, int]
    arch: str
    rows: list[BlockCost]
    kernels: list[Op] = field(repr=False)

    @property
    def ms(self) -> float:
        return sum(r.ms for r in self.rows)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    @property
    def launches(self) -> int:
        return sum(r.launches for r in self.rows)

    def part_bytes(self, kind: str | None = None) -> dict[str, int]:
        """Bytes per part over the blocks of letter `kind` (all rows when None)."""
        out: dict[str, int] = defaultdict(int)
        for r in self.rows:
            if kind is None or r.kind == kind:
                for part, n in r.parts.items():
                    out[part] += n
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_name": DEVICES[self.device].name,
            "dtype": self.dtype,
            "mode": self.mode,
            "batch": self.batch,
            "resolution": list(self.resolution),
            "arch": self.arch,
            "total": {"ms": self.ms, "bytes": self.bytes, "flops": self.flops, "launches": self.launches},
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "constants": constants(),
        }


def constants() -> dict[str, float]:
    """The stated constants of the model, for reports."""
    return {
        "matmul_eff": MATMUL_EFF,
        "attention_eff": ATTENTION_EFF,
        "bandwidth_eff": BANDWIDTH_EFF,
        "kernel_gap_s": KERNEL_GAP_S,
        "compiled_launch_s": COMPILED_LAUNCH_S,
        "graph_launch_s": GRAPH_LAUNCH_S,
    }


def kernel_seconds(op: Op, dev: Device) -> float:
    """Roofline time of one kernel on the device, without the launch."""
    peak = dev.bf16_flops if op.low_precision else dev.fp32_flops
    eff = MATMUL_EFF if op.kind == "matmul" else ATTENTION_EFF
    compute = op.flops / (peak * eff) if op.flops else 0.0
    return max(compute, op.bytes / (dev.bandwidth * BANDWIDTH_EFF))


def predict(
    model: nn.Module | ViTConfig,
    height: int,
    width: int,
    *,
    device: str = "h100",
    dtype: str = "bf16",
    mode: str = "eager",
    batch: int = 1,
    head: bool = False,
    kernels: bool = True,
) -> CostReport:
    """Predicted latency of one inference forward on `device` (a key of `DEVICES`), per block and in total.

    `mode`: `eager` (each traced op a kernel, launched by PyTorch's dispatcher), `graphs` (the same kernels replayed
    from a CUDA graph), `compiled` (the fused kernels of the compiled view). See the module docstring."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    dev = DEVICES[device]
    tr = trace(model, height, width, dtype=dtype, batch=batch, compiled=mode == "compiled", head=head, kernels=kernels)
    kernels = fuse(tr) if mode == "compiled" else tr.ops
    host_launch = {"eager": dev.eager_launch_s, "compiled": COMPILED_LAUNCH_S, "graphs": 0.0}[mode]
    host, gpu = (GRAPH_LAUNCH_S if mode == "graphs" else 0.0), 0.0
    labels = ["embed"] + [str(i) for i in range(len(tr.arch))] + ["head"]
    rows = {
        lab: BlockCost(lab, "" if lab in ("embed", "head") else tr.arch[int(lab)], 0.0, 0, 0, 0, {}) for lab in labels
    }
    for op in kernels:
        host += host_launch
        start = max(host, gpu)
        end = start + kernel_seconds(op, dev) + KERNEL_GAP_S
        label = str(op.block) if op.block is not None else ("head" if op.part == "head" else "embed")
        row = rows[label]
        row.ms += (end - gpu) * 1e3  # how far this kernel moves the device clock, idle time waiting for it included
        row.bytes += op.bytes
        row.flops += op.flops
        row.launches += 1
        row.parts[op.part] = row.parts.get(op.part, 0) + op.bytes
        gpu = end
    res = (height, width)
    return CostReport(device, dtype, mode, batch, res, tr.arch, list(rows.values()), kernels)


# ---------------------------------------------------------------------------------------------------------------
# Reports


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def format_cost(report: CostReport) -> str:
    """The per-block table and totals as text."""
    H, W = report.resolution
    dev = DEVICES[report.device]
    lines = [
        f"predicted on {dev.name}: {report.arch} at {H}x{W}, batch {report.batch}, {report.dtype}, {report.mode}",
        f"total {report.ms:.2f} ms, {_mib(report.bytes)} MiB moved, {report.flops / 1e9:.1f} GFLOPs, "
        f"{report.launches} kernels",
        "",
        f"{'block':>5}  {'kind':4}  {'ms':>8}  {'MiB':>9}  {'GFLOPs':>9}  {'kernels':>7}",
    ]
    for r in report.rows:
        lines.append(
            f"{r.label:>5}  {r.kind:4}  {r.ms:>8.3f}  {_mib(r.bytes):>9}  {r.flops / 1e9:>9.2f}  {r.launches:>7}"
        )
    return "\n".join(lines)


def where_the_bytes_go(report: CostReport) -> str:
    """Bytes by block kind and part of the block (per block of that kind, and share of the total), as a table."""
    total = report.bytes or 1
    lines = [f"{'kind':4}  {'part':9}  {'MiB per block':>13}  {'share':>6}"]
    for kind in [k for k in "FWL" if k in report.arch] + [""]:
        count = report.arch.count(kind) if kind else 1
        for part, n in sorted(report.part_bytes(kind).items(), key=lambda kv: -kv[1]):
            if kind == "" and part not in ("embed", "head"):
                continue
            lines.append(f"{kind or '-':4}  {part:9}  {_mib(n / count):>13}  {n / total:>6.1%}")
    return "\n".join(lines)


def compare(
    teacher: nn.Module | ViTConfig,
    arch: str,
    resolutions: list[tuple[int, int]],
    *,
    device: str = "h100",
    dtype: str = "bf16",
    mode: str = "eager",
    head: bool = False,
) -> str:
    """Predicted teacher against hybrid (`arch`) at each resolution, with the FLOP-ideal speedup, as a markdown
    table (what `jetvit bench --predict` prints beside its measurements)."""
    base = _meta_copy(teacher)
    hybrid_cfg = dataclasses.replace(base.cfg, arch=arch)
    with torch.device("meta"):
        hybrid = type(base)(hybrid_cfg)
    lines = [
        f"predicted on {DEVICES[device].name} by the cost model ({dtype}, {mode}, batch 1): teacher "
        f"`{base.cfg.arch}` vs hybrid `{hybrid.cfg.arch}`",
        "",
        "| resolution | teacher ms | hybrid ms | speedup | ideal (FLOPs) | of ideal | kernels (teacher / hybrid) |",
        "|---|---|---|---|---|---|---|",
    ]
    for H, W in resolutions:
        t = predict(base, H, W, device=device, dtype=dtype, mode=mode, head=head)
        h = predict(hybrid, H, W, device=device, dtype=dtype, mode=mode, head=head)
        ideal = base.flops(H, W)["total"] / hybrid.flops(H, W)["total"]
        lines.append(
            f"| {H}x{W} | {t.ms:.2f} | {h.ms:.2f} | {t.ms / h.ms:.2f}x | {ideal:.2f}x | {t.ms / h.ms / ideal:.0%} | "
            f"{t.launches} / {h.launches} |"
        )
    return "\n".join(lines)
