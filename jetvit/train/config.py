"""Training's configuration sections: stages, data, distillation targets and losses, optimizer, run settings.

The run's config (`jetvit.config.Config`) holds them; the trainer (`jetvit.train.distill`) reads them typed.
Batch sizes are global (summed over processes); a stage whose global batch is larger than
`micro_batch_size x world_size` is reached by gradient accumulation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from jetvit.conversion import Inherit
from jetvit.runtime import Device, Precision
from jetvit.schedule import Schedule
from jetvit.train.losses import DepthLoss
from jetvit.train.sharding import Strategy

TargetPreset = Literal["last", "all", "dpt"]
KeepCheckpoints = Literal["last", "all", "none"]
CompileMode = Literal["none", "blocks"]


@dataclass
class StageConfig:
    """One stage of a training phase: a resolution held for `steps` optimizer steps."""

    resolution: int | list[int]  # square side, or [H, W]
    steps: int
    batch_size: int  # global batch per optimizer step (all processes, all accumulation steps)
    micro_batch_size: int | None = None  # per process per forward; None: batch_size / world_size
    lr: float = 1e-4
    schedule: Schedule = "cosine"  # from lr down to lr * final_lr_ratio
    warmup_steps: int = 0
    final_lr_ratio: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of this stage's crops."""
        r = self.resolution
        return (r, r) if isinstance(r, int) else (r[0], r[1])

    def for_steps(self, steps: int, **changes: Any) -> StageConfig:
        """This stage run for `steps` instead, with `changes` (resolution, batch_size, lr, ...): the warm-up is kept,
        but at most a tenth of the steps (at least 1), so that a shortened stage is not all warm-up."""
        warmup = min(self.warmup_steps, max(1, steps // 10))
        return dataclasses.replace(self, steps=steps, warmup_steps=warmup, **changes)


@dataclass
class DataConfig:
    # An image folder (recursive), "keyshapes[:N]" (generated scenes of the built-in task: no files, no extra
    # package) or "skimage" (scikit-image's sample photos, needs scikit-image).
    source: str = "keyshapes"
    holdout: int = 2  # images of the source kept out of training and used by the search scorer
    scale: list[float] = field(default_factory=lambda: [0.25, 1.0])  # random resized crop: area fraction
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # random resized crop: aspect ratio
    hflip: bool = True
    # DataLoader worker processes per training process, which decode, crop and resize the images; null: auto, none on
    # the CPU (the workers would take cores from the model) and `auto_workers()` on CUDA (a few per process).
    workers: int | None = None

    def resolved_workers(self, device_type: str, processes_per_host: int = 1) -> int:
        """`workers`, or when null its automatic value for a run on `device_type` ("cpu", "cuda", ...)."""
        if self.workers is not None:
            return self.workers
        return auto_workers(processes_per_host) if device_type == "cuda" else 0


def auto_workers(processes_per_host: int = 1) -> int:
    """Loader workers per training process on a GPU: up to 4, sharing this machine's cores with the other training
    processes of the host (one core each kept for the training process itself)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores // max(1, processes_per_host) - 1))


@dataclass
class DistillConfig:
    # "last": the final block's normed output (a linear segmentation head reads it); "all": every block's (each
    # block learns to match its own teacher block: a denser signal); "dpt": the four blocks a DPT depth head
    # reads; or a list of block indices. The loss is the mean over these blocks of the MSE of normed tokens.
    targets: TargetPreset | list[int] = "last"
    depth_weight: float = 0.0  # weight of a loss on the depth head's output against pseudo-labels
    depth_teacher: str | None = None  # where the pseudo-labels come from (a larger teacher); None: the teacher
    # The depth loss (jetvit.train.losses): "ssi_mse", least-squares scale-and-shift-aligned MSE; "ssi_gm", Depth
    # Anything's median/MAD affine-invariant L1 plus `gradient_weight` x MiDaS's multi-scale gradient matching.
    depth_loss: DepthLoss = "ssi_mse"
    gradient_weight: float = 2.0  # ssi_gm: weight of the gradient-matching term (Depth Anything V2: 2)
    # `jetvit distill`: which teacher weights the converted student inherits: "all", or "mlp" (attention
    # projections re-initialised: the paper's ablation).
    inherit: Inherit = "all"


@dataclass
class OptimConfig:
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0


@dataclass
class RunSettings:
    seed: int = 0
    device: Device = "auto"  # auto: CUDA when there is one
    precision: Precision = "auto"  # auto: bf16 autocast on a GPU, fp32 on the CPU
    checkpoint_every: int = 100  # optimizer steps between checkpoints
    log_every: int = 10
    # Score the model being fine-tuned with the run's scorer every this many optimizer steps (a learning curve in
    # metrics.jsonl and summary.json); null: only once, after training.
    eval_every: int | None = None
    # Training checkpoints (`ckpt/`) kept on disk. "last": what a resume needs (a finished phase's checkpoint is
    # removed once the next phase's result is recorded in state.json); "all": every phase's; "none": ckpt/ is
    # removed when the run has finished (a finished run started again then reloads `model/`).
    keep_checkpoints: KeepCheckpoints = "last"
    # Activation checkpointing of the student's blocks in training (never the frozen teacher's): each block keeps
    # only its input and recomputes the rest in the backward pass. Activation memory drops to about one block's
    # plus the blocks' inputs, for about one more student forward per step (`jetvit plan` shows both).
    activation_checkpointing: bool = False
    # How the student is held across torchrun processes (jetvit.train.sharding): "ddp", a full copy per process
    # (DistributedDataParallel); "fsdp", parameters, gradients and AdamW states sharded per block (FSDP2) with sharded
    # checkpoints (torch.distributed.checkpoint), for students too large to replicate. One process: the same run.
    strategy: Strategy = "ddp"
    # "blocks": regional compilation (`jetvit.compile`) of the student's blocks, and of the frozen teacher's, for the
    # length of each training phase: one compiled graph per block kind, reused by every block of that kind; the first
    # steps of a phase (and of each new resolution) wait for it. Composes with activation checkpointing, DDP and FSDP.
    # "none": eager. The backend is Inductor (`JETVIT_COMPILE_BACKEND` overrides it).
    compile: CompileMode = "none"
