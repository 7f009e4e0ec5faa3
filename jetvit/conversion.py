"""Weight inheritance: a teacher (any `HybridViT`, usually all-`F`) -> a hybrid with another architecture.

`block_sources` is the one rule, used by `convert` (a whole model) and, through `inherit_block`, by the supernet
(each candidate of a block): the new block takes every tensor of the source block that it has under the same name
and shape, i.e. the attention projections `qkv`/`proj`, the norms, LayerScales and MLP, and a kind's extras (the `L`
block's convolution) only when the source block is of the same kind. What is not inherited keeps its documented
initialisation (zero convolution kernels: a fresh `L` block is plain ReLU linear attention).

`convert` holds one copy of the weights: the student is built on the meta device, materialised on the teacher's
device in its dtype, and every inherited tensor is copied in. The few tensors without a source get exactly the
values that `torch.manual_seed(seed); HybridViT(cfg)` gives them, without that full random model ever existing
(`_replay_init`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from jetvit.model import Block, HybridViT, LinearAttnConfig, ViTConfig, validate_arch

INHERIT_MODES = ("all", "mlp")
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
    a source (those, and the `L` blocks' new parameters) take the values of the model's own initialisation after
    `torch.manual_seed(seed)`. Returns a model in eval mode on the teacher's device and dtype, whose inherited
    tensors are copies, never views, of the teacher's. Memory: one copy of the student's weights (nothing else of
    its size is allocated).
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
    student, init_calls = _record_init(new_cfg)
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
        for name, t in sources.items():
            own[name].copy_(t)
        _replay_init(init_calls, {n: own[n] for n in fresh}, seed=seed)
    return student.eval()


# --- the seeded initialisation, replayed ------------------------------------------------------------------------
#
# Building the model on the meta device draws no random numbers. The construction's initialisation calls are
# recorded in order (each in-place call on a tensor: `nn.init.*`, `Tensor.uniform_`, `zero_`...), then replayed on
# the CPU after `torch.manual_seed(seed)`: every random call runs on a scratch tensor of its target's shape and dtype
# (so the generator advances exactly as in a real construction), and the calls on the wanted tensors run on their
# own scratch tensors, copied out after their last call. One scratch tensor at a time; the replay stops after the
# last call on a wanted tensor. This costs the random draws of the construction up to there, not its memory.

# In-place calls that draw random numbers (nn.init functions and Tensor methods).
_RANDOM_CALLS = frozenset(
    "uniform_ normal_ trunc_normal_ kaiming_uniform_ kaiming_normal_ xavier_uniform_ xavier_normal_ orthogonal_ "
    "sparse_ random_ bernoulli_ exponential_ cauchy_ log_normal_ geometric_".split()
)
# Calls that overwrite the whole tensor: the first call on a re-initialised tensor must be one of them.
_OVERWRITES = _RANDOM_CALLS | {"zero_", "zeros_", "fill_", "ones_", "constant_", "eye_", "dirac_"}
# Random tensor factories: their output cannot be tied to a parameter here; the model must not use them.
_RANDOM_FACTORIES = frozenset(
    "rand randn randint randperm normal bernoulli multinomial poisson rand_like randn_like randint_like".split()
)
# nn.init functions that return at once on a meta tensor, before drawing: recorded by wrapping them (in `nn.init`
# itself, for the few milliseconds of the recording).
_SKIPPED_ON_META = ("trunc_normal_", "orthogonal_", "sparse_", "dirac_")


@dataclasses.dataclass
class _InitCall:
    name: str  # e.g. "kaiming_uniform_"
    run: Callable[[Tensor], Any]  # the same call on another tensor
    target: Tensor | None  # while recording: the meta tensor it wrote (kept alive: its storage is never reused)
    tensor: str | None = None  # after: the model's tensor it initialised (its state-dict name), if any
    shape: torch.Size = torch.Size()
    dtype: torch.dtype = torch.float32

    @property
    def random(self) -> bool:
        return self.name in _RANDOM_CALLS


class _InitRecorder(TorchFunctionMode):
    """Records the in-place calls on tensors made while active (a model built on the meta device), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_InitCall] = []
        self._originals: dict[str, Callable] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        assert name not in _RANDOM_FACTORIES, f"the model's construction draws from torch.{name}: cannot replay it"
        if name.endswith("_") and not name.startswith("__"):
            if args and isinstance(args[0], Tensor):
                rest = args[1:]
                self.calls.append(_InitCall(name, lambda t, f=func, a=rest, k=kwargs: f(t, *a, **k), args[0]))
            elif isinstance(kwargs.get("tensor"), Tensor):  # an nn.init function that hands itself to the mode
                k = {key: v for key, v in kwargs.items() if key != "tensor"}
                self.calls.append(_InitCall(name, lambda t, f=func, k=k: f(t, **k), kwargs["tensor"]))
        return func(*args, **kwargs)

    def __enter__(self):
        for name in _SKIPPED_ON_META:
            original = self._originals[name] = getattr(nn.init, name)

            def record(tensor: Tensor, *args, _name=name, _f=original, **kwargs) -> Tensor:
                self.calls.append(_InitCall(_name, lambda t: _f(t, *args, **kwargs), tensor))
                return tensor

            setattr(nn.init, name, record)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for name, original in self._originals.items():
                setattr(nn.init, name, original)


def _record_init(cfg: ViTConfig) -> tuple[HybridViT, list[_InitCall]]:
    """`HybridViT(cfg)` on the meta device, and the initialisation calls its construction made, each tied to the
    model tensor it wrote (by storage: a parameter and the tensor it was made from are one)."""
    with torch.device("meta"), _InitRecorder() as recorder:
        model = HybridViT(cfg)
    owners = {_storage(t): (n, t) for n, t in model.state_dict(keep_vars=True).items()}
    for call in recorder.calls:
        name, t = owners.get(_storage(call.target), (None, None))
        if name is not None:
            whole = call.target.shape == t.shape and call.target.storage_offset() == 0
            assert whole, f"{call.name} on a part of {name}: cannot replay it"
        call.tensor, call.shape, call.dtype, call.target = name, call.target.shape, call.target.dtype, None
    return model, recorder.calls


def _storage(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def _replay_init(calls: list[_InitCall], wanted: dict[str, Tensor], *, seed: int) -> None:
    """Write into each destination of `wanted` (state-dict name -> tensor, any device and dtype) the value that the
    recorded construction gives that tensor after `torch.manual_seed(seed)`. The CPU generator's state is restored
    afterwards (`torch.manual_seed` also seeds the CUDA generators, as building the model after it always did)."""
    # A tensor's value is made by the calls from its last whole overwrite on; random calls before the last of
    # those only advance the generator, and nothing after it needs to run.
    mine = {name: [i for i, c in enumerate(calls) if c.tensor == name] for name in wanted}
    start = {}
    for name, idx in mine.items():
        overwrites = [i for i in idx if calls[i].name in _OVERWRITES]
        assert overwrites, f"no replayable initialisation of {name}"
        start[name] = overwrites[-1]
    making = {i: name for name, idx in mine.items() for i in idx if i >= start[name]}
    last_random = max((i for i in making if calls[i].random), default=-1)
    scratch: dict[str, Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(max(making, default=-1) + 1):
            call = calls[i]
            name = making.get(i)
            if name is not None:
                if i == start[name]:
                    scratch[name] = torch.empty(call.shape, dtype=call.dtype)
                call.run(scratch[name])
                if i == mine[name][-1]:
                    wanted[name].copy_(scratch.pop(name))
            elif call.random and i < last_random:  # only to advance the generator as the real construction did
                call.run(torch.empty(call.shape, dtype=call.dtype))
