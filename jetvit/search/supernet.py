"""The supernet: a `HybridViT` whose blocks each hold several candidate kinds, one active at a time.

`build_supernet(base, choices)` copies `base` (a teacher, or the Step 1 result) and replaces block i by a
`SwitchableBlock` holding one candidate `Block` per kind in `choices[i]`, e.g. "LW" in Step 1 and
"<Step 1 kind>F" in Step 2. Every candidate inherits block i of `base`: the attention projections `qkv`,
`proj`, the norms, LayerScales and MLP (and a kind's extras, such as the `L` block's convolution, when
block i of `base` already is that kind; otherwise the extras start from their documented init).

`set_arch(supernet, "LWLL...")` picks each block's active candidate. The supernet stays a `HybridViT`, so
`forward`, `forward_intermediates` and the scorers work on it unchanged, and `supernet.arch` is the
active path. `extract(supernet, arch)` returns a plain `HybridViT` with that path's weights.

Weight sharing. `share=True`: the candidates of a block hold the same module objects for every inherited
tensor (qkv, proj, norms, LayerScales, MLP); only kind-specific extras are per candidate, so the supernet
has the teacher's size plus the extras and every sampled path trains the same projections.
`share=False` (the default): each candidate holds its own copy of the whole teacher block, which doubles
the block parameters (and their optimizer state) and gives each copy only the steps its kind was sampled.

Measured (scratch script, CPU, teacher dim 64 / depth 6 with peaky random attention, 64 px sample photos,
batch 8, lr 1e-3; 8 fixed L/W paths scored by held-out last-block MSE; Kendall tau of the supernet's
path ranking against the same paths each distilled alone for the same number of steps):

    steps, seed | mean path MSE shared / separate | tau shared / separate | tau of untrained inheritance
    120, 0      | 0.348 / 0.316                   | -0.36 / 0.14          | 0.79
    300, 1      | 0.222 / 0.232                   |  0.07 / 0.36          | 0.71
    300, 2      | 0.331 / 0.345                   | -0.64 / 0.00          | 0.64

Sharing gives a slightly lower loss per path after 300 steps, but the separate supernet ranked the paths
better in all three runs, and ranking is what the beam search consumes; the time per step was the same
within noise (105-109 ms). Hence separate by default; `supernet.share: true` halves the supernet's block
memory for teachers where two copies do not fit (7B scale). The evidence is a toy: redo the measurement
at scale before trusting the default there.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from jetvit.model import Block, HybridViT
from jetvit.search.beam import check_arch

# Submodules of a Block (and of its attention) that every candidate inherits, and shares when share=True.
SHARED_BLOCK_PARTS = ("norm1", "ls1", "norm2", "mlp", "ls2")
SHARED_ATTN_PARTS = ("qkv", "proj")


class SwitchableBlock(nn.Module):
    """One block of the supernet: candidate `Block`s by kind; `forward` runs the active one.

    Same signature as `Block`: tokens (B, N, D) and a `TokenLayout` -> (B, N, D).
    """

    def __init__(self, candidates: dict[str, nn.Module], active: str) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict(candidates)
        self.active = active

    @property
    def kind(self) -> str:
        return self.active

    @property
    def choices(self) -> str:
        return "".join(self.candidates.keys())

    def forward(self, x: torch.Tensor, layout) -> torch.Tensor:
        return self.candidates[self.active](x, layout)

    def extra_repr(self) -> str:
        return f"choices={self.choices}, active={self.active}"


def is_switchable(block: nn.Module) -> bool:
    return hasattr(block, "candidates") and hasattr(block, "active")


def build_supernet(
    base: HybridViT,
    choices: list[str],
    *,
    share: bool = False,
    window_size: int | None = None,
) -> HybridViT:
    """A supernet with candidate kinds `choices[i]` (e.g. "LW") at block i, initialised from `base`.

    `base` is left untouched. The returned model's `cfg.arch` is the first choice of every block (the
    config is only used for shapes and options; the active path lives in the blocks).
    """
    depth = len(base.blocks)
    if len(choices) != depth:
        raise ValueError(f"{len(choices)} candidate sets given for a {depth}-block model")
    for i, c in enumerate(choices):
        if not c or len(set(c)) != len(c) or set(c) - set("FWL"):
            raise ValueError(f"candidate set {c!r} of block {i} must be distinct letters from F, W, L")
    changes = {"arch": "".join(c[0] for c in choices)}
    if window_size is not None:
        changes["window_size"] = window_size
    cfg = dataclasses.replace(base.cfg, **changes)
    param = next(base.parameters())

    net = copy.deepcopy(base)
    net.cfg = cfg
    for i, kinds in enumerate(choices):
        src = base.blocks[i]
        candidates = {}
        for k in kinds:
            blk = Block(cfg, k).to(device=param.device, dtype=param.dtype)
            own = blk.state_dict()
            # Everything block i of `base` has that fits (the same kind also brings its extras).
            inherited = {n: t for n, t in src.state_dict().items() if n in own and own[n].shape == t.shape}
            missing = set(own) - set(inherited)
            assert all(".conv" in n for n in missing), f"block {i} kind {k}: not inherited {sorted(missing)}"
            blk.load_state_dict(inherited, strict=False)
            candidates[k] = blk
        if share:
            first = candidates[kinds[0]]
            for blk in list(candidates.values())[1:]:
                for part in SHARED_BLOCK_PARTS:
                    setattr(blk, part, getattr(first, part))
                for part in SHARED_ATTN_PARTS:
                    setattr(blk.attn, part, getattr(first.attn, part))
        net.blocks[i] = SwitchableBlock(candidates, kinds[0])
    return net.train(base.training)


def choices_of(supernet: HybridViT) -> list[str]:
    return [blk.choices for blk in supernet.blocks]


def set_arch(supernet: HybridViT, arch: str) -> None:
    """Make `arch` the active path; raises ValueError when a block does not hold that kind."""
    check_arch(arch, len(supernet.blocks))
    for i, (blk, k) in enumerate(zip(supernet.blocks, arch)):
        if k not in blk.candidates:
            raise ValueError(f"architecture {arch!r}: block {i} has candidates {blk.choices}, not {k!r}")
    for blk, k in zip(supernet.blocks, arch):
        blk.active = k


def sample_arch(choices: list[str], rng) -> str:
    """One uniformly random path (single-path sampling): each block's kind drawn independently."""
    return "".join(c[int(rng.integers(len(c)))] for c in choices)


def path_state_dict(supernet: HybridViT, arch: str) -> dict[str, torch.Tensor]:
    """The tensors of path `arch`, named as in a plain `HybridViT` with that architecture."""
    check_arch(arch, len(supernet.blocks))
    out = {}
    for name, t in supernet.state_dict().items():
        parts = name.split(".")
        if parts[0] == "blocks" and parts[2] == "candidates":
            i, k = int(parts[1]), parts[3]
            if arch[i] != k:
                continue
            name = ".".join(["blocks", parts[1], *parts[4:]])
        out[name] = t
    return out


def extract(supernet: HybridViT, arch: str) -> HybridViT:
    """A plain `HybridViT` with architecture `arch` and the supernet's weights for that path (copies)."""
    from jetvit.io import load_state_dict_strict

    cfg = dataclasses.replace(supernet.cfg, arch=check_arch(arch, len(supernet.blocks)))
    param = next(supernet.parameters())
    model = HybridViT(cfg).to(device=param.device, dtype=param.dtype)
    state = {k: v.detach().clone() for k, v in path_state_dict(supernet, arch).items()}
    load_state_dict_strict(model, state, source=f"supernet path {arch}")
    return model.train(supernet.training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared parameters are counted once
