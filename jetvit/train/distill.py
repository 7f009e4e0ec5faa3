"""Feature distillation from a frozen teacher: targets, losses, and the resumable (DDP or FSDP) training loop.

The student (a supernet or a fixed hybrid) learns to reproduce the teacher's normed features of the blocks
the downstream head reads (supplementary A.1): the last block for a linear segmentation head, the four
DPT blocks for depth, or any list. The loss is the MSE over all tokens (prefix and patches) of those
blocks, averaged over blocks; optionally plus a scale-and-shift-invariant loss of the student's depth head
against pseudo-labels from a (larger) depth teacher (`distill.depth_loss`, in `jetvit.train.losses`).

`train_phase` runs a list of stages (resolution, steps, global batch, lr schedule). For a supernet it
samples one path per optimizer step (single-path sampling) from a generator seeded by the step, so every
process trains the same path and a resumed run the same sequence of paths. Periodic atomic checkpoints
hold the model, optimizer, position (stage, step) and RNG states; data positions are a pure function
of the step (`jetvit.train.data.SamplePlan`), so a run killed at any moment continues exactly. How the student is
held across processes (`run.strategy`: replicated under DDP, sharded under FSDP) is `jetvit.train.sharding`'s;
the checkpoint formats (full, or sharded with `torch.distributed.checkpoint`) are `jetvit.train.checkpoint`'s.

Notation: B batch, N = P + h*w tokens, D width.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.conversion import convert
from jetvit.model import HybridViT, LinearAttnConfig, token_features
from jetvit.runtime import Runtime, weights_digest
from jetvit.schedule import lr_factor
from jetvit.train.checkpoint import (
    load_checkpoint,
    load_full_optimizer,
    load_sharded_checkpoint,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from jetvit.config import Config
from jetvit.train.config import StageConfig
from jetvit.train.data import DistillBatches, ImageSet, SamplePlan
from jetvit.train.losses import depth_loss_fn, ssi_mse  # noqa: F401 (ssi_mse: where callers found it)
from jetvit.train.sharding import wrap_student

log = logging.getLogger(__name__)

# --- targets and losses -------------------------------------------------------------------------------


def resolve_targets(spec: str | list[int], model: nn.Module) -> list[int]:
    """Block indices (0-based) to distill: "last", "all" (every block), "dpt" (the DPT head's four blocks) or an
    explicit list."""
    depth = len(model.blocks)
    if spec == "last":
        return [depth - 1]
    if spec == "all":
        return list(range(depth))
    if spec == "dpt":
        head = model.cfg.depth_head
        if head is not None:
            return [int(i) for i in head["layers"]]
        # No head to ask: the DAv2 pattern for 12-block models (2, 5, 8, 11), scaled to the depth.
        return [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1]
    try:
        return model.block_indices(spec)
    except ValueError as e:
        raise ValueError(f"distill.targets: {e}") from None


def feature_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Mean over blocks of the MSE over tokens and channels; each (B, N, D)."""
    return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher)]).mean()


class DistillStudent(nn.Module):
    """What DDP wraps and FSDP shards: images (B, 3, H, W) -> (target block features, each (B, N, D); depth (B, H, W)
    or None)."""

    def __init__(self, model: nn.Module, targets: list[int], *, with_depth: bool) -> None:
        super().__init__()
        self.model = model
        self.targets = targets
        self.with_depth = with_depth
        self.depth_layers = list(model.depth_head.cfg.layers) if with_depth else []
        self.layers = sorted(set(targets) | set(self.depth_layers))

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        feats = dict(zip(self.layers, self.model.forward_intermediates(x, self.layers)))
        out = token_features([feats[i] for i in self.targets])  # each (B, N, D)
        depth = None
        if self.with_depth:
            depth = self.model.depth_head([feats[i] for i in self.depth_layers], (x.shape[-2], x.shape[-1]))
        return out, depth


# --- schedule -----------------------------------------------------------------------------------------


def lr_at(stage: StageConfig, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based) of a stage: linear warmup, then the stage's schedule."""
    return lr_factor(
        step,
        steps=stage.steps,
        warmup=stage.warmup_steps,
        schedule=stage.schedule,
        final_ratio=stage.final_lr_ratio,
        base=stage.lr,
    )


# --- the training loop --------------------------------------------------------------------------------


@dataclass
class Phase:
    """One training phase of a run: a name (checkpoint and log key), stages, and for a supernet how to pick the
    path of each step.

    choose_path(model, phase_step) -> path: activates the single path trained at that optimizer step of the phase
    (a pure function of the step, so every process trains the same path and a resumed run the same sequence) and
    returns it; None for a fixed architecture.
    evaluate(model) -> score: run every `cfg.run.eval_every` steps (and at the end) when given; the scores are
    logged and kept in the summary's `curve` as [phase step, score] pairs.
    """

    name: str
    stages: list[StageConfig]
    choose_path: Callable[[nn.Module, int], str] | None = None
    depth_weight: float = 0.0
    global_offset: int = 0  # optimizer steps of the run before this phase (for continuous curves)
    evaluate: Callable[[nn.Module], float] | None = field(default=None, repr=False)


def train_phase(
    phase: Phase,
    model: nn.Module,
    *,
    teacher: nn.Module,
    images: ImageSet,
    cfg: Config,
    rt: Runtime,
    ckpt_path: Path,
    targets: list[int],
    depth_teacher: nn.Module | None = None,
    logger=None,
) -> dict[str, Any]:
    """Train `model` (in place) through `phase.stages`, resuming from `ckpt_path` when it exists.

    The student is held across processes as `cfg.run.strategy` says (`jetvit.train.sharding`); whatever the strategy,
    `model` ends as a plain module holding the trained weights on every process. A checkpoint written under one
    strategy and number of processes resumes under any other.

    Returns a summary: final loss, steps, skipped images, seconds, and per-rank weight digests.
    A checkpoint marked done is loaded and returned at once.
    """
    from tqdm import tqdm

    ck = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if ck is not None and ck.get("done"):
        model.load_state_dict(ck["model"])
        return ck["summary"]
    if ck is not None and "model" in ck:  # a full checkpoint: the weights go in before any sharding
        model.load_state_dict(ck["model"])

    with_depth = phase.depth_weight > 0
    if with_depth and getattr(model, "depth_head", None) is None:
        raise ValueError("a depth loss (depth_weight > 0) needs a teacher with a depth head (Depth-Anything-V2)")
    depth_loss = depth_loss_fn(cfg.distill.depth_loss, gradient_weight=cfg.distill.gradient_weight)
    model.set_grad_checkpointing(cfg.run.activation_checkpointing)  # the student's blocks only, never the teacher's
    trainee = wrap_student(DistillStudent(model, targets, with_depth=with_depth), rt, cfg.run.strategy)
    betas, decay = tuple(cfg.optim.betas), cfg.optim.weight_decay
    opt = torch.optim.AdamW(trainee.parameters(), lr=0.0, betas=betas, weight_decay=decay)
    start_stage, start_step, skipped, history, elapsed = 0, 0, 0, {"curve": []}, 0.0
    if ck is not None:
        if "shards" in ck:
            load_sharded_checkpoint(ckpt_path, ck, trainee.model, opt)
        elif trainee.sharded:
            load_full_optimizer(trainee.model, opt, ck["optim"])
        else:
            opt.load_state_dict(ck["optim"])
        # A sharded checkpoint holds every process's random state, a full one rank 0's.
        rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]
        set_rng_state(rngs[rt.rank] if rt.rank < len(rngs) else rngs[0])
        start_stage, start_step, skipped = ck["stage"], ck["step"], ck["skipped"]
        history, elapsed = ck["history"], ck["elapsed"]
        history.setdefault("curve", [])
        if rt.main:
            log.info("resuming %s at stage %d, step %d", phase.name, start_stage + 1, start_step)

    mean, std = teacher.cfg.mean, teacher.cfg.std
    plan = SamplePlan(len(images), seed=cfg.run.seed, phase=phase.name)
    t0 = time.perf_counter()
    loss_value = float("nan")
    phase_step = sum(s.steps for s in phase.stages[:start_stage]) + start_step

    def save(stage_idx: int, next_step: int) -> None:
        state = {
            "phase": phase.name,
            "done": False,
            "stage": stage_idx,
            "step": next_step,
            "skipped": skipped,
            "history": history,
            "elapsed": elapsed + time.perf_counter() - t0,
        }
        if trainee.sharded:  # every process writes its shards
            rngs = rt.all_gather_object(rng_state())
            save_sharded_checkpoint(ckpt_path, {**state, "rng": rngs}, trainee.model, opt)
        elif rt.main:
            full = {"model": model.state_dict(), "optim": opt.state_dict(), "rng": rng_state()}
            save_checkpoint(ckpt_path, {**state, **full})

    trainee.model.train()
    with StepBoundaryInterrupt() as interrupt:
        for si, stage in enumerate(phase.stages):
            if si < start_stage:
                continue
            s0 = start_step if si == start_stage else 0
            if s0 >= stage.steps:
                continue
            micro = stage.micro_batch_size or max(1, stage.batch_size // rt.world)
            batches = DistillBatches(
                images,
                plan,
                stage_offset=sum(s.steps * s.batch_size for s in phase.stages[:si]),
                start_step=s0,
                steps=stage.steps,
                batch_size=stage.batch_size,
                micro_batch_size=micro,
                rank=rt.rank,
                world=rt.world,
                size=stage.size,
                mean=mean,
                std=std,
                scale=tuple(cfg.data.scale),
                ratio=tuple(cfg.data.ratio),
                hflip=cfg.data.hflip,
            )
            loader = iter(
                torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=cfg.data.workers)
            )
            H, W = stage.size
            bar = tqdm(
                total=stage.steps,
                initial=s0,
                desc=f"{phase.name} stage {si + 1}/{len(phase.stages)} {H}x{W}",
                disable=not rt.main,
                dynamic_ncols=True,
            )
            for step in range(s0, stage.steps):
                if phase.choose_path is not None:
                    path = phase.choose_path(trainee.model, phase_step)
                    if rt.distributed:  # internal invariant: the seeded path is the same everywhere
                        paths = rt.all_gather_object(path)
                        assert len(set(paths)) == 1, f"processes disagree on the path at step {phase_step}: {paths}"
                lr = lr_at(stage, step)
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss_sum, feat_sum = 0.0, 0.0
                for m in range(batches.accum):
                    batch = next(loader)
                    skipped += len(batch["skipped"])
                    x = batch["images"].to(rt.device, non_blocking=True)
                    with torch.no_grad(), rt.autocast():
                        t_feats = token_features(teacher.forward_intermediates(x, targets))
                        label = depth_teacher.predict_depth(x) if with_depth else None
                    with trainee.micro_batch(last=m == batches.accum - 1):
                        with rt.autocast():
                            s_feats, depth = trainee.module(x)
                        feat = feature_loss(s_feats, t_feats)
                        loss = feat + phase.depth_weight * depth_loss(depth, label) if with_depth else feat
                        (loss / batches.accum).backward()
                    loss_sum += loss.item()
                    feat_sum += feat.item()
                grad_norm = None
                if cfg.optim.grad_clip is not None:
                    grad_norm = trainee.clip_grad_norm(cfg.optim.grad_clip)
                opt.step()
                phase_step += 1
                if (step + 1) % cfg.run.log_every == 0 or step + 1 == stage.steps:
                    loss_value = rt.mean(loss_sum / batches.accum)
                    if logger is not None:
                        scalars = {"loss": loss_value, "feature_loss": rt.mean(feat_sum / batches.accum), "lr": lr}
                        if grad_norm is not None:
                            scalars["grad_norm"] = grad_norm
                        if phase.choose_path is not None:
                            scalars["path"] = path
                        logger.log(phase.name, phase.global_offset + phase_step, **scalars)
                    bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2e}")
                last = step + 1 == stage.steps and si == len(phase.stages) - 1
                every = cfg.run.eval_every
                if phase.evaluate is not None and ((every and phase_step % every == 0) or last):
                    score = rt.broadcast_object(float(trainee.evaluate(phase.evaluate)))
                    history["curve"].append([phase_step, score])
                    if logger is not None:
                        logger.log(phase.name, phase.global_offset + phase_step, score=score)
                    bar.set_postfix(loss=f"{loss_value:.4g}", score=f"{score:.4g}")
                if step + 1 == stage.steps:
                    history[f"stage{si + 1}"] = {"resolution": [H, W], "steps": stage.steps, "final_loss": loss_value}
                # Every process stops at the same step (a sharded checkpoint is written by all of them).
                stop = rt.mean(float(interrupt.requested)) > 0 if rt.distributed else interrupt.requested
                if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == stage.steps or stop:
                    save(si, step + 1)
                bar.update(1)
                if stop:
                    bar.close()
                    raise KeyboardInterrupt(f"{phase.name} interrupted; saved at stage {si + 1}, step {step + 1}")
            bar.close()
            del loader

    trainee.finish()
    # The DDP wrapper, or the shards with their AdamW states, sit in reference cycles (hooks): free them now, before
    # the next phase builds its model, not at some later collection.
    trainee = opt = None
    gc.collect()
    model.set_grad_checkpointing(False)
    skipped_total = int(round(rt.mean(float(skipped)) * rt.world))
    digests = rt.all_gather_object(weights_digest(model))
    summary = {
        "steps": sum(s.steps for s in phase.stages),
        "final_loss": loss_value,
        "skipped_images": skipped_total,
        "seconds": round(elapsed + time.perf_counter() - t0, 3),
        "rank_weight_digests": digests,
        "stages": {k: v for k, v in history.items() if k != "curve"},
        "curve": history["curve"],
    }
    if skipped_total and logger is not None:
        logger.event(phase.name, phase.global_offset + phase_step, skipped_images=skipped_total)
    if rt.main:
        save_checkpoint(ckpt_path, {"phase": phase.name, "done": True, "model": model.state_dict(), "summary": summary})
    rt.barrier()
    return summary


class StepBoundaryInterrupt:
    """Ctrl-C during training finishes the current optimizer step, so that the checkpoint then written is consistent
    (no half-applied optimizer step); a second Ctrl-C interrupts at once. Only in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: do not wait for the step
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self) -> StepBoundaryInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --- fixed architectures ------------------------------------------------------------------------------


def finetune(
    model: nn.Module,
    *,
    stages: list[StageConfig],
    teacher: nn.Module,
    images: ImageSet,
    cfg: Config,
    rt: Runtime,
    ckpt_path: Path,
    targets: list[int],
    depth_weight: float = 0.0,
    depth_teacher: nn.Module | None = None,
    logger=None,
    evaluate: Callable[[nn.Module], float] | None = None,
    global_offset: int = 0,
) -> dict[str, Any]:
    """Distil a fixed architecture (in place) through `stages`: the last phase of the search and `jetvit distill`."""
    phase = Phase("finetune", stages, depth_weight=depth_weight, global_offset=global_offset, evaluate=evaluate)
    return train_phase(
        phase,
        model,
        teacher=teacher,
        images=images,
        cfg=cfg,
        rt=rt,
        ckpt_path=ckpt_path,
        targets=targets,
        depth_teacher=depth_teacher,
        logger=logger,
    )


def student_for(
    teacher: HybridViT,
    arch: str,
    cfg: Config,
    *,
    inherit: str | None = None,
    linear: LinearAttnConfig | dict[str, Any] | None = None,
) -> HybridViT:
    """The student a run distils for `arch`: `teacher` converted with the run's window size, its L-block options
    (`linear`, default the teacher config's), weights inherited as `inherit` (default `cfg.distill.inherit`) and
    the new parameters seeded by `cfg.run.seed`."""
    return convert(
        teacher,
        arch,
        inherit=inherit or cfg.distill.inherit,
        window_size=cfg.supernet.window_size,
        linear=linear,
        seed=cfg.run.seed,
    )


def distill_arch(
    teacher: HybridViT,
    arch: str,
    *,
    images: ImageSet,
    cfg: Config,
    rt: Runtime,
    ckpt_path: Path,
    targets: list[int],
    stages: list[StageConfig] | None = None,
    inherit: str | None = None,
    linear: LinearAttnConfig | dict[str, Any] | None = None,
    depth_teacher: nn.Module | None = None,
    logger=None,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> tuple[HybridViT, dict[str, Any]]:
    """Convert `teacher` to `arch` (`student_for`) and distil it through `stages` (default `cfg.finetune.stages`):
    the distillation of a fixed architecture that `jetvit distill`, the replication benchmark and the learning
    curves share. Resumable from `ckpt_path`. Returns the trained model and the phase summary."""
    student = student_for(teacher, arch, cfg, inherit=inherit, linear=linear).to(rt.device)
    summary = finetune(
        student,
        stages=cfg.finetune.stages if stages is None else stages,
        teacher=teacher,
        images=images,
        cfg=cfg,
        rt=rt,
        ckpt_path=ckpt_path,
        targets=targets,
        depth_weight=cfg.finetune_depth_weight,
        depth_teacher=depth_teacher,
        logger=logger,
        evaluate=evaluate,
    )
    return student, summary
