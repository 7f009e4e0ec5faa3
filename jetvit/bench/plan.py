"""Memory plan of a run: what each training phase holds per process, from the models' own shapes, without weights.

`plan_run(cfg, gpus=N, gpu_memory=M)` builds every model a run trains (the Step 1 and Step 2 supernets, the front's
points when it measures them, the fine-tuned student) on the meta device from the teacher's config, the way the pipeline
builds them, and counts per process and per stage of each phase:

- parameters: every tensor of the model trained (fp32, as the run holds them; a supernet's shared tensors once);
- gradients: one fp32 tensor per trainable parameter; with more than one process, DDP's gradient buckets as much again;
- optimizer: AdamW's two fp32 states per trainable parameter;
- teacher: the frozen teacher's fp32 weights (and a separate depth teacher's, when the run has one);
- weight copies: under bf16 autocast, the bf16 copy of every trainable weight the active path multiplies with, which
  autocast keeps from the forward until the backward has used it;
- activations of one micro-batch at the stage's resolution, without and with activation checkpointing (below).

With `run.strategy: fsdp` on more than one process (`jetvit.train.sharding`), parameters, gradients and AdamW states
are each process's 1/N shard (fp32 master weights); there are no DDP buckets and no autocast weight copies; instead the
parameters FSDP gathers for compute are counted (`gathered`: the root group's, that is everything outside the blocks,
and two blocks', the one computing and the next one prefetched, in bf16 under autocast, else fp32; plus one block's
unsharded fp32 gradient before its reduce-scatter; a supernet block with all its candidates, which are gathered
together), and the teacher is held in bf16 under autocast.

A stage fits when the sum stays under the GPU memory less a `HEADROOM` share (CUDA context, allocator fragmentation,
kernel workspaces, which this does not count).

The activation estimate (`activation_bytes`) counts what autograd keeps for the backward pass, tensor by tensor as
the model's code saves them (`block_activation_bytes`, checked against the tensors PyTorch actually saves within 15%
in `tests/test_bench_plan.py`):

- per block: the residual stream at both norms (fp32) and their statistics; the inputs of `qkv`, `proj`, the MLP's
  linears and the two LayerScales; the `qkv` output; the MLP's hidden activations (2 for GELU, 4 for SwiGLU, of width
  `mlp_hidden`); and per kind: `F` the rotated q/k, the attention output and its log-sum-exp (flash attention: no
  N x N matrix); `W` the rotated q/k, the windowed q, k, v (keys and values with the global tokens, CLS, registers
  and detection tokens, in every window; padded grids padded) and output; `L` the kernel features phi(q), phi(k),
  the output with its normaliser column (no fp32 copies: `ops.linear_attention`), the rotated keys of the prefix
  queries and the convolution's input;
- the patch embedding's input, the student's normed target features and the teacher's (kept for the loss);
- the backward's working set: twice the gradient of a block's widest activation (the MLP's hidden layer, or the qkv
  output when that is wider);
- with activation checkpointing, every block keeps only its input (fp32), and the block being recomputed in the
  backward holds its activations, plus the working set.

A supernet trains one path per step: each block counts its most expensive candidate. Trained block by block
(`supernet.sampling: blockwise`), every candidate of every block runs at every step on the teacher's residual
states, which are held too: the candidates' activations add up (with checkpointing, one candidate's at a time).
The fine-tuning of a search (whose architecture the search decides) counts every block at its most expensive kind.
Not counted: the depth head under a depth loss, the data loader, and the teacher's own forward (its intermediate
tensors are freed before the student's forward starts). Under bf16 autocast, tensors produced by matrix products
take 2 bytes, the residual stream and norm inputs 4.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jetvit.model import ARCH_LETTERS, ATTN_KINDS, HybridViT, ViTConfig, validate_arch

if TYPE_CHECKING:
    from jetvit.config import Config

HEADROOM = 0.1  # share of the GPU memory left for what the plan does not count
GIB = 2**30

# --- the teacher's shapes, without its weights --------------------------------------------------------------------


def teacher_config(src: str, options: dict[str, Any] | None = None) -> ViTConfig:
    """The `ViTConfig` of teacher source `src`: a preset name (`jetvit.bench.presets`, e.g. `dinov3-7b`), or any
    source `jetvit.load_teacher` takes with its `options` (`jetvit.teachers.teacher_config`: no weights loaded)."""
    from jetvit.bench.presets import PRESETS, preset_config
    from jetvit.teachers import teacher_config as source_config

    if src in PRESETS and not Path(src).exists():
        return preset_config(src)
    return source_config(src, **(options or {}))


# --- activations ----------------------------------------------------------------------------------------------------


def block_activation_bytes(cfg: ViTConfig, kind: str, *, batch: int, grid: tuple[int, int], autocast: bool) -> int:
    """Bytes autograd keeps for the backward of one block of kind `kind` (the module docstring lists what), for a
    batch of `batch` images with patch grid `grid`; `autocast`: bf16 autocast (else fp32). The attention's own part
    is the kind's (`Attention.saved_bytes`)."""
    if kind not in ATTN_KINDS:
        raise ValueError(f"unknown block kind {kind!r}; expected one of {ARCH_LETTERS}")
    h, w = grid
    N, D, Hm = h * w + cfg.num_global_tokens, cfg.dim, cfg.mlp_hidden
    a, f = (2 if autocast else 4), 4  # bytes of a matmul-side activation, of an fp32 one
    # Every kind: residual stream at both norms (fp32) and their mean/rstd; the inputs of qkv, proj, the MLP and the
    # LayerScales; the qkv output (kept whole by the views q, k, v).
    n = f * (2 * N * D + 4 * N) + a * N * D * (3 + (2 if cfg.layerscale else 0)) + a * 3 * N * D
    if cfg.mlp == "swiglu":  # w1 and w2 outputs, silu(w1), the product; autocast casts the input once per linear
        n += a * 4 * N * Hm + (a * N * D if autocast else 0)
    else:  # fc1 output, GELU output
        n += a * 2 * N * Hm
    n += ATTN_KINDS[kind].saved_bytes(cfg, grid, autocast=autocast)
    return batch * n


def activation_bytes(
    cfg: ViTConfig,
    kinds: list[str],
    *,
    targets: list[int],
    batch: int,
    size: tuple[int, int],
    autocast: bool,
    checkpointing: bool,
    blockwise: bool = False,
) -> int:
    """Peak activation bytes of one training micro-batch of the student (forward and backward), for `kinds[i]` the
    candidate kinds of block i (the most expensive counts), the distilled blocks `targets`, `batch` images of `size`
    (H, W). The module docstring says what is counted. `blockwise`: a supernet trained block by block
    (`supernet.sampling: blockwise`), where every candidate of every block runs at once on the teacher's states."""
    H, W = size
    p = cfg.patch_size
    grid = (H // p, W // p)
    N = grid[0] * grid[1] + cfg.num_global_tokens
    a = 2 if autocast else 4
    run = kinds[: max(targets) + 1]  # the forward stops after the deepest target
    per_block = [
        max(block_activation_bytes(cfg, k, batch=batch, grid=grid, autocast=autocast) for k in ks) for ks in run
    ]
    stream = 4 * batch * N * cfg.dim  # one block's input or output (fp32)
    embed = a * batch * cfg.in_chans * H * W
    # The normed features of each target, the student's and the teacher's; the deepest block's output feeds the norm.
    outputs = 2 * len(targets) * stream + stream
    # The backward's working set: gradients of a block's widest activations, (B, N, mlp_hidden) or the qkv output.
    working = 2 * a * batch * N * max(cfg.mlp_hidden, 3 * cfg.dim)
    if blockwise:
        # Every block of the model runs, every candidate of it: the teacher's depth + 1 residual states (the inputs
        # and targets), each block's normed target, each candidate's output and its normed output (fp32).
        every = [block_activation_bytes(cfg, k, batch=batch, grid=grid, autocast=autocast) for ks in kinds for k in ks]
        held = (len(kinds) + 1) * stream + len(kinds) * stream + 2 * len(every) * stream
        return held + (max(every) if checkpointing else sum(every)) + working
    if checkpointing:  # the blocks' inputs, and the one block recomputed in the backward
        return embed + len(run) * stream + outputs + max(per_block) + working
    return embed + sum(per_block) + outputs + working


# --- the plan -------------------------------------------------------------------------------------------------------


@dataclass
class StagePlan:
    resolution: tuple[int, int]
    micro_batch: int
    activations: int
    activations_checkpointed: int


@dataclass
class PhasePlan:
    """Bytes per process of one training phase; `stages` hold the activations of one micro-batch per stage."""

    name: str
    model: str  # what is trained, in words
    parameters: int
    gradients: int
    optimizer: int
    ddp_buckets: int
    teacher: int
    weight_copies: int
    stages: list[StagePlan] = field(default_factory=list)
    gathered: int = 0  # fsdp: the parameters gathered for compute and one block's unsharded gradient

    @property
    def fixed(self) -> int:
        """Everything but the activations."""
        held = self.parameters + self.gradients + self.optimizer + self.ddp_buckets + self.gathered
        return held + self.teacher + self.weight_copies

    def peak(self, *, checkpointing: bool) -> int:
        if not self.stages:
            return self.fixed
        acts = [s.activations_checkpointed if checkpointing else s.activations for s in self.stages]
        return self.fixed + max(acts)


@dataclass
class RunPlan:
    teacher: str
    teacher_parameters: int
    # The run's cost model at `budget.resolution`, counted on the students' config as the run counts it: the
    # teacher's FLOPs, the fixed architecture's (`jetvit distill`; None for a search) and the budget's limit.
    flops_resolution: tuple[int, int]
    teacher_flops: float
    flops: float | None
    flop_limit: float | None
    gpus: int
    gpu_memory: int
    autocast: bool
    checkpointing: bool  # run.activation_checkpointing of the config
    phases: list[PhasePlan]
    strategy: str = "ddp"  # run.strategy of the config

    @property
    def usable(self) -> int:
        return int(self.gpu_memory * (1 - HEADROOM))

    def fits(self, phase: PhasePlan, *, checkpointing: bool) -> bool:
        return phase.peak(checkpointing=checkpointing) <= self.usable

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for p, phase in zip(d["phases"], self.phases):
            for ck in (False, True):
                key = "checkpointed" if ck else "plain"
                p[f"peak_{key}"] = phase.peak(checkpointing=ck)
                p[f"fits_{key}"] = self.fits(phase, checkpointing=ck)
        return d


def _count(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); shared tensors once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _gathered(model: HybridViT, *, autocast: bool) -> int:
    """Bytes FSDP holds unsharded at a time (the module docstring says what): the root group's parameters and two
    blocks', in the compute dtype, and one block's fp32 gradient."""
    total = _count(model)[0]
    blocks = [_count(blk) for blk in model.blocks]
    root = total - sum(n for n, _ in blocks)
    return (2 if autocast else 4) * (root + 2 * max(n for n, _ in blocks)) + 4 * max(t for _, t in blocks)


def _matmul_weights(model: HybridViT) -> int:
    """Trainable parameters of the linear and convolution layers of a plain (one-path) model: what autocast copies."""
    mods = (torch.nn.Linear, torch.nn.Conv2d)
    return sum(p.numel() for m in model.modules() if isinstance(m, mods) for p in m.parameters() if p.requires_grad)


def plan_run(
    cfg: Config,
    *,
    gpus: int = 1,
    gpu_memory: int = 80 * GIB,
    arch: str | None = None,
    teacher_cfg: ViTConfig | None = None,
) -> RunPlan:
    """The memory plan of run config `cfg` (`jetvit.config.Config`) on `gpus` processes of `gpu_memory` bytes
    each: `jetvit distill` when `arch` (or `cfg.arch`) is given, else `jetvit search`. `teacher_cfg`: the teacher's
    config when already known (default: read from `cfg.teacher`)."""
    from jetvit.search.budget import FlopBudget
    from jetvit.search.supernet import build_supernet, step2_choices, student_config
    from jetvit.train.distill import resolve_targets

    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    if gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be > 0, got {gpu_memory}")
    tcfg = teacher_cfg or teacher_config(cfg.teacher, cfg.teacher_options)
    budget = FlopBudget.from_config(student_config(tcfg, cfg.supernet), cfg.budget)  # as the run counts FLOPs
    tcfg = dataclasses.replace(student_config(tcfg, cfg.supernet), arch="")  # as the run derives its students
    depth = tcfg.depth
    arch = arch or cfg.arch
    autocast = cfg.run.precision != "fp32"  # on GPUs, `auto` is bf16 autocast
    sharded = cfg.run.strategy == "fsdp" and gpus > 1
    shard = gpus if sharded else 1
    with torch.device("meta"):
        teacher = HybridViT(tcfg).requires_grad_(False)
    targets = resolve_targets(cfg.distill.targets, teacher)
    held = 2 if sharded and autocast else 4  # bytes per teacher weight (jetvit.train.sharding.frozen_teacher)
    teacher_bytes = held * _count(teacher)[0]
    if cfg.distill.depth_teacher is not None and ((cfg.finetune.depth_weight or 0) > 0 or cfg.distill.depth_weight > 0):
        teacher_bytes += held * _count(_meta_model(teacher_config(cfg.distill.depth_teacher)))[0]

    def phase(
        name: str,
        what: str,
        model: HybridViT,
        path: HybridViT,
        options: list[list[str]],
        stages,
        blockwise: bool = False,
    ) -> PhasePlan:
        """`options`: the per-block kinds the phase may train, one list per possibility; the heaviest is planned."""
        total, trainable = _count(model)
        stage_plans = []
        for st in stages:
            micro = st.micro_batch_size or max(1, st.batch_size // gpus)
            kw = dict(targets=targets, batch=micro, size=st.size, autocast=autocast, blockwise=blockwise)
            stage_plans.append(
                StagePlan(
                    resolution=st.size,
                    micro_batch=micro,
                    activations=max(activation_bytes(tcfg, o, checkpointing=False, **kw) for o in options),
                    activations_checkpointed=max(activation_bytes(tcfg, o, checkpointing=True, **kw) for o in options),
                )
            )
        return PhasePlan(
            name=name,
            model=what,
            parameters=-(-4 * total // shard),
            gradients=-(-4 * trainable // shard),
            optimizer=-(-8 * trainable // shard),
            ddp_buckets=4 * trainable if gpus > 1 and not sharded else 0,
            teacher=teacher_bytes,
            weight_copies=2 * _matmul_weights(path) if autocast and not sharded else 0,
            stages=stage_plans,
            gathered=_gathered(model, autocast=autocast) if sharded else 0,
        )

    share = cfg.supernet.share
    phases = []
    if arch is None:
        # Step 2's kinds come from Step 1 and the final architecture from the search: the most expensive stand in.
        # The latency-aware Step 2 (`step2.trade`) holds all three kinds a block.
        trade = cfg.step2_trades
        with torch.device("meta"):
            step1 = build_supernet(teacher, ["LW"] * depth, share=share)
            base2 = HybridViT(dataclasses.replace(tcfg, arch="L" * depth))
            step2 = build_supernet(base2, step2_choices("L" * depth, trade=trade), share=share)
        how = "shared" if share else "separate"
        blockwise = cfg.supernet.sampling == "blockwise"
        if blockwise:
            how += ", block-wise: every candidate at every step"
        step1_what = f"supernet L/W per block ({how})"
        step2_what = f"supernet {'L/W/F' if trade else '(L|W)/F'} per block ({how})"
        searched = "the searched architecture (any kinds)"
        # Block-wise, a Step-2 block holds two candidates, Step 1's kind (L or W: the heavier is planned) and F, or
        # with trades all three; a single path runs one kind per block, any of the three.
        step2_options = [["LF"] * depth, ["WF"] * depth] if blockwise and not trade else [["LWF"] * depth]
        phases += [
            phase("step1", step1_what, step1, base2, [["LW"] * depth], cfg.step1.stages, blockwise),
            phase("step2", step2_what, step2, base2, step2_options, cfg.step2.stages, blockwise),
        ]
        if cfg.front.steps and cfg.latency.source != "none":  # each measured point of the front, distilled alone
            from jetvit.front import front_stage

            points = f"each front point (any kinds), {cfg.front.steps} steps"
            phases.append(phase("front", points, base2, base2, [["LWF"] * depth], [front_stage(cfg)]))
        phases.append(phase("finetune", searched, base2, base2, [["LWF"] * depth], cfg.finetune.stages))
    else:
        arch = validate_arch(arch, depth)
        student = _meta_model(dataclasses.replace(tcfg, arch=arch))
        phases.append(phase("finetune", f"architecture {arch}", student, student, [list(arch)], cfg.finetune.stages))
    return RunPlan(
        teacher=cfg.teacher,
        teacher_parameters=_count(teacher)[0],
        flops_resolution=budget.size,
        teacher_flops=budget.teacher_flops,
        flops=budget.flops(arch) if arch is not None else None,
        flop_limit=budget.limit,
        gpus=gpus,
        gpu_memory=gpu_memory,
        autocast=autocast,
        checkpointing=cfg.run.activation_checkpointing,
        phases=phases,
        strategy="fsdp" if sharded else "ddp",
    )


def _meta_model(cfg: ViTConfig) -> HybridViT:
    with torch.device("meta"):
        return HybridViT(cfg)


# --- reading and writing sizes --------------------------------------------------------------------------------------

_UNITS = {"": GIB, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": GIB, "gb": 10**9, "gib": GIB, "t": 2**40, "tb": 10**12, "tib": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes of a size such as `80GiB`, `80GB` (decimal), `141G` (binary), `81920MiB`; a bare number is GiB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size {text!r} is not understood; write e.g. 80GiB, 80GB, 141G or 81920MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_plan(plan: RunPlan) -> str:
    """The plan as the text `jetvit plan` prints: one table per phase, sizes per process in GiB (MiB for small
    runs)."""
    largest = max([ph.peak(checkpointing=False) for ph in plan.phases], default=0)
    unit, scale = ("GiB", GIB) if largest >= GIB else ("MiB", 2**20)

    def gib(n: int) -> str:
        return f"{n / scale:.2f}"

    H, W = plan.flops_resolution
    cost = f"FLOPs at {H}x{W}: teacher {plan.teacher_flops / 1e9:.4g} G"
    if plan.flops is not None:
        cost += f", architecture {plan.flops / 1e9:.4g} G ({plan.flops / plan.teacher_flops:.3f} of the teacher's)"
    if plan.flop_limit is not None:
        cost += f", budget limit {plan.flop_limit / 1e9:.4g} G"
    lines = [
        f"teacher {plan.teacher}: {plan.teacher_parameters / 1e6:.1f}M parameters; "
        f"{plan.gpus} process(es) with {plan.gpu_memory / GIB:.2f} GiB each, {plan.usable / GIB:.2f} GiB usable "
        f"({HEADROOM:.0%} kept back); precision {'bf16 autocast' if plan.autocast else 'fp32'}; "
        f"run.strategy: {plan.strategy}; run.activation_checkpointing: {str(plan.checkpointing).lower()}",
        cost,
        f"sizes in {unit} per process",
    ]
    for ph in plan.phases:
        lines += ["", f"{ph.name}: {ph.model}"]
        if plan.strategy == "fsdp":  # each process's shard
            part = f"1/{plan.gpus}"
            fixed = [(f"parameters (fp32, {part})", ph.parameters), (f"gradients (fp32, {part})", ph.gradients),
                     (f"optimizer (AdamW, 2 x fp32, {part})", ph.optimizer)]  # fmt: skip
        else:
            fixed = [("parameters (fp32)", ph.parameters), ("gradients (fp32)", ph.gradients),
                     ("optimizer (AdamW, 2 fp32 states)", ph.optimizer)]  # fmt: skip
        if ph.ddp_buckets:
            fixed.append(("DDP gradient buckets", ph.ddp_buckets))
        if ph.gathered:
            fixed.append(("FSDP gathered (root, 2 blocks)", ph.gathered))
        bf16_teacher = plan.strategy == "fsdp" and plan.autocast
        fixed.append((f"teacher ({'bf16' if bf16_teacher else 'fp32'}, frozen)", ph.teacher))
        if ph.weight_copies:
            fixed.append(("bf16 weight copies (autocast)", ph.weight_copies))
        for label, n in fixed:
            lines.append(f"  {label:<34}{gib(n):>10}")
        lines.append(f"  {'= before activations':<34}{gib(ph.fixed):>10}")
        if not ph.stages:
            lines.append("  (no stages)")
            continue
        lines.append(f"  {'stage':<6}{'resolution':>11}{'micro':>6}{'activations':>13}{'total':>9}{'fits':>6}"
                     f"{'ckpt act.':>11}{'total':>9}{'fits':>6}")  # fmt: skip
        for i, st in enumerate(ph.stages):
            plain, ck = ph.fixed + st.activations, ph.fixed + st.activations_checkpointed
            res = f"{st.resolution[0]}x{st.resolution[1]}"
            lines.append(
                f"  {i:<6}{res:>11}{st.micro_batch:>6}{gib(st.activations):>13}{gib(plain):>9}"
                f"{_yes(plain <= plan.usable):>6}{gib(st.activations_checkpointed):>11}{gib(ck):>9}"
                f"{_yes(ck <= plan.usable):>6}"
            )
    verdict = []
    for ck in (False, True):
        bad = [ph.name for ph in plan.phases if not plan.fits(ph, checkpointing=ck)]
        how = "with activation checkpointing" if ck else "without activation checkpointing"
        verdict.append(f"{how}: " + ("every phase fits" if not bad else f"does not fit: {', '.join(bad)}"))
    return "\n".join(lines + ["", *verdict])


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"
