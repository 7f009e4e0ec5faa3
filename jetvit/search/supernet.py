"""The supernet: a `HybridViT` whose blocks each hold several candidate kinds, one active at a time.

`build_supernet(base, choices)` copies `base` (a teacher, or the Step 1 result) and replaces block i by a
`SwitchableBlock` holding one candidate `Block` per kind in `choices[i]`, e.g. "LW" in Step 1 and
"<Step 1 kind>F" in Step 2 (`step2_choices`; the latency-aware Step 2 also holds the other efficient kind, from
Step 1's supernet). Every candidate inherits block i of `base`: the attention projections `qkv`,
`proj`, the norms, LayerScales and MLP (and a kind's extras, such as the `L` block's convolution, when
block i of `base` already is that kind; otherwise the extras start from their documented init).

`set_arch(supernet, "LWLL...")` picks each block's active candidate. The supernet stays a `HybridViT`, so
`forward`, `block_features` and the scorers work on it unchanged, and `supernet.arch` is the
active path. `extract(supernet, arch)` returns a plain `HybridViT` with that path's weights.

Weight sharing. `share=True`: the candidates of a block hold the same module objects for every inherited
tensor (qkv, proj, norms, LayerScales, MLP); only kind-specific extras are per candidate, so the supernet
has the teacher's size plus the extras and every sampled path trains the same projections.
`share=False` (the default): each candidate holds its own copy of the whole teacher block, which doubles
the block parameters (and their optimizer state) and gives each copy only the steps its kind was sampled.

Why separate copies by default: in a small measurement the separate supernet ranked paths closer to paths
distilled alone (Kendall tau) than the shared one, at the same step time; `docs/DESIGN.md` records it. `share: true`
halves the supernet's block memory for teachers where two copies do not fit (7B scale).

Single-path sampling: `sample_path(choices, seed=..., phase=..., step=...)` is the path trained at a step, a pure
function of its arguments, so every process trains the same path and a resumed run the same sequence. `uniform`
draws each block's kind independently at every step; `balanced` gives each block its kinds in turns (a shuffled
order per turn), so that after every turn each kind of each block has had the same number of steps: uniform sampling
leaves the counts to chance, and a kind that learns slower (L) falls further behind where it drew fewer steps. The
third way to train a supernet, `blockwise` (every candidate learns from the teacher's own block input at every step),
samples no path: `jetvit.train.distill.BlockwiseStudent`.
"""

from __future__ import annotations

import copy
import dataclasses
import zlib

import numpy as np
import torch
from torch import nn

from jetvit.conversion import inherit_block
from jetvit.model import ARCH_LETTERS, Block, HybridViT, ViTConfig, validate_arch
from jetvit.search.beam import other_efficient
from jetvit.search.config import SupernetConfig

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


def student_config(teacher_cfg: ViTConfig, supernet: SupernetConfig) -> ViTConfig:
    """The config every student of a run derives from: the teacher's, with the run's W window
    (`supernet.window_size`, else the teacher's) and L-block options (`supernet.linear`).

    The one derivation of the run's hybrid options: the supernets, the converted students, the FLOP budget and the
    memory plan (`jetvit.bench.plan`) all take their config from here. The teacher's own config is not changed (an
    all-F teacher does not read these options)."""
    changes: dict = {"linear": supernet.linear}
    if supernet.window_size is not None:
        changes["window_size"] = supernet.window_size
    return dataclasses.replace(teacher_cfg, **changes)


def build_supernet(
    base: HybridViT,
    choices: list[str],
    *,
    share: bool = False,
    cfg: ViTConfig | None = None,
    donor: HybridViT | None = None,
) -> HybridViT:
    """A supernet with candidate kinds `choices[i]` (e.g. "LW") at block i, initialised from `base`.

    `cfg`: the students' config (`student_config`: the W window and L-block options of the run; its `arch` is
    replaced), default `base.cfg`. `donor`: an earlier supernet (Step 1's) whose block i initialises the candidate
    of a kind it holds and `base`'s block i is not, with that kind's own trained weights (the latency-aware Step 2's
    other efficient kind); every other candidate inherits `base`'s block i. `base` and `donor` are left untouched.
    The returned model's `cfg.arch` is the first choice of every block (the config is only used for shapes and
    options; the active path lives in the blocks).
    """
    depth = len(base.blocks)
    if len(choices) != depth:
        raise ValueError(f"{len(choices)} candidate sets given for a {depth}-block model")
    for i, c in enumerate(choices):
        if not c or len(set(c)) != len(c) or set(c) - set(ARCH_LETTERS):
            raise ValueError(
                f"candidate set {c!r} of block {i} must be distinct letters from {', '.join(ARCH_LETTERS)}"
            )
    cfg = dataclasses.replace(cfg or base.cfg, arch="".join(c[0] for c in choices))
    param = next(base.parameters())

    net = copy.deepcopy(base)
    net.cfg = cfg
    for i, kinds in enumerate(choices):
        src = base.blocks[i]
        given = getattr(donor.blocks[i], "candidates", {}) if donor is not None else {}
        candidates = {}
        for k in kinds:
            blk = Block(cfg, k).to(device=param.device, dtype=param.dtype)
            inherit_block(given[k] if k in given and k != src.kind else src, blk)
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


def step2_choices(arch1: str, *, trade: bool = False) -> list[str]:
    """Step 2's candidate kinds per block on Step 1's path `arch1`: its kind and F (the paper's); with `trade`, also
    the efficient kind Step 1 did not choose there, which the trade round (`jetvit.search.beam.trade_proposals`)
    puts in an F's place. The first of each block is `arch1`'s kind."""
    return [k + (other_efficient(k) if trade else "") + "F" for k in arch1]


def set_arch(supernet: HybridViT, arch: str) -> None:
    """Make `arch` the active path; raises ValueError when a block does not hold that kind."""
    arch = validate_arch(arch, len(supernet.blocks))
    for i, (blk, k) in enumerate(zip(supernet.blocks, arch)):
        if k not in blk.candidates:
            raise ValueError(f"architecture {arch!r}: block {i} has candidates {blk.choices}, not {k!r}")
    for blk, k in zip(supernet.blocks, arch):
        blk.active = k


SAMPLINGS = ("uniform", "balanced")  # the single-path ways; `blockwise` trains without a path
# A block-wise step trains every candidate of every block: about two single-path steps' time (1.85x measured by
# benchmarks/ranking.py on the built-in teacher), so at equal compute a block-wise supernet gets half the steps.
BLOCKWISE_STEP_COST = 2


def equal_compute_steps(single_path_steps: int, sampling: str) -> int:
    """A supernet phase's steps under `sampling` at the compute of `single_path_steps` single-path steps."""
    return max(1, single_path_steps // BLOCKWISE_STEP_COST) if sampling == "blockwise" else single_path_steps


def sample_path(choices: list[str], *, seed: int, phase: str, step: int, sampling: str = "uniform") -> str:
    """The single path trained at optimizer step `step` of a phase (counted over its stages).

    uniform: each block's kind drawn uniformly and independently from `choices[i]`, by a generator seeded with
    (seed, phase, step). balanced: block i with m kinds takes them in turns of m steps, turn t = step // m in an
    order drawn by a generator seeded with (seed, phase, i, t), so every m steps each kind has had one."""
    if sampling == "uniform":
        rng = np.random.default_rng([seed, zlib.crc32(phase.encode()), 2 << 40, step])
        return "".join(c[int(rng.integers(len(c)))] for c in choices)
    if sampling == "balanced":
        path = []
        for i, c in enumerate(choices):
            turn, pos = divmod(step, len(c))
            order = np.random.default_rng([seed, zlib.crc32(phase.encode()), 3 << 40, i, turn]).permutation(len(c))
            path.append(c[int(order[pos])])
        return "".join(path)
    raise ValueError(f"sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")


class PathSampler:
    """`Phase.choose_path` of a supernet phase: at each optimizer step, activate `sample_path(...)` and return it."""

    def __init__(self, choices: list[str], *, seed: int, phase: str, sampling: str = "uniform") -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")
        self.choices, self.seed, self.phase, self.sampling = list(choices), seed, phase, sampling

    def __call__(self, supernet: HybridViT, step: int) -> str:
        path = sample_path(self.choices, seed=self.seed, phase=self.phase, step=step, sampling=self.sampling)
        set_arch(supernet, path)
        return path


def path_state_dict(supernet: HybridViT, arch: str) -> dict[str, torch.Tensor]:
    """The tensors of path `arch`, named as in a plain `HybridViT` with that architecture."""
    arch = validate_arch(arch, len(supernet.blocks))
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

    cfg = dataclasses.replace(supernet.cfg, arch=validate_arch(arch, len(supernet.blocks)))
    param = next(supernet.parameters())
    model = HybridViT(cfg).to(device=param.device, dtype=param.dtype)
    state = {k: v.detach().clone() for k, v in path_state_dict(supernet, arch).items()}
    load_state_dict_strict(model, state, source=f"supernet path {arch}")
    return model.train(supernet.training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared parameters are counted once
