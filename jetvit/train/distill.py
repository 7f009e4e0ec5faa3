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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit.model import token_features
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
from jetvit.train.config import DataConfig, DistillConfig, OptimConfig, RunSettings, StageConfig
from jetvit.train.data import DistillBatches, ImageSet, SamplePlan, normalize
from jetvit.train.losses import depth_loss_fn
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
        feats = dict(zip(self.layers, self.model.block_features(x, self.layers)))
        out = token_features([feats[i] for i in self.targets])  # each (B, N, D)
        depth = None
        if self.with_depth:
            depth = self.model.depth_head([feats[i] for i in self.depth_layers], (x.shape[-2], x.shape[-1]))
        return out, depth


BLOCKWISE_INPUTS = ("teacher", "student")


class BlockwiseStudent(nn.Module):
    """What DDP wraps and FSDP shards for block-wise distillation of a supernet (`supernet.sampling: blockwise`, after
    DNA, CVPR 2020): every candidate of every block takes the teacher's tokens entering that block and learns to give
    the teacher's tokens leaving it, at every step; no path is sampled, so every candidate trains on every batch and
    none learns on the errors of the blocks before it.

    forward(teacher residual states [entry of block 0, output of block 0, ...] each (B, N, D), layout) -> the loss:
    the MSE of the final-norm features (as the feature loss compares them) of each candidate's output against its
    teacher block's, averaged over blocks and candidates.

    `inputs`: "teacher" (above), or "student": block i's candidates take the output of block i - 1's active candidate
    (the path the phase drew for the step; block 0 takes the embedded image as both do), detached, so that each
    candidate learns to give the teacher's output from what the student's blocks actually feed it."""

    def __init__(self, model: nn.Module, inputs: str = "teacher") -> None:
        super().__init__()
        if not all(hasattr(blk, "candidates") for blk in model.blocks):
            raise ValueError("block-wise distillation trains a supernet (blocks with candidates), not a fixed model")
        if inputs not in BLOCKWISE_INPUTS:
            raise ValueError(f"block-wise input {inputs!r} is not one of {', '.join(BLOCKWISE_INPUTS)}")
        self.model, self.inputs = model, inputs

    def forward(self, states: list[Tensor], layout: Any) -> Tensor:
        m = self.model
        losses = []
        x = states[0]
        for i, blk in enumerate(m.blocks):
            target = m.norm(states[i + 1]).float()
            for kind, cand in blk.candidates.items():
                out = m.run_block(i, cand, x, layout)
                losses.append(F.mse_loss(m.norm(out).float(), target))
                if kind == blk.active:
                    active = out
            x = states[i + 1] if self.inputs == "teacher" else active.detach()
        return torch.stack(losses).mean()


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
class DistillSetup:
    """What every training phase of a run shares: the frozen teacher (and depth teacher), the training images, the
    distilled blocks, the run's training sections, where this process runs, and the metric logger."""

    teacher: nn.Module
    images: ImageSet
    targets: list[int]
    data: DataConfig
    distill: DistillConfig
    optim: OptimConfig
    run: RunSettings
    rt: Runtime
    depth_teacher: nn.Module | None = None
    logger: Any = None  # jetvit.train.metrics.MetricLogger


@dataclass
class Phase:
    """One training phase of a run: a name (checkpoint and log key), stages, and for a supernet how to pick the
    path of each step.

    choose_path(model, phase_step) -> path: activates the single path trained at that optimizer step of the phase
    (a pure function of the step, so every process trains the same path and a resumed run the same sequence) and
    returns it; block-wise on the student's inputs, the path whose outputs feed each block's candidates; None for a
    fixed architecture and for block-wise on the teacher's inputs.
    evaluate(model) -> score: run every `run.eval_every` steps (and at the end) when given; the scores are
    logged and kept in the summary's `curve` as [phase step, score] pairs.
    """

    name: str
    stages: list[StageConfig]
    choose_path: Callable[[nn.Module, int], str] | None = None
    blockwise: bool = False  # a supernet trained block by block (`BlockwiseStudent`) instead of by sampled paths
    blockwise_input: str = "teacher"  # what its candidates take (`BlockwiseStudent`); "student" needs `choose_path`
    depth_weight: float = 0.0
    global_offset: int = 0  # optimizer steps of the run before this phase (for continuous curves)
    evaluate: Callable[[nn.Module], float] | None = field(default=None, repr=False)


def train_phase(phase: Phase, model: nn.Module, setup: DistillSetup, *, ckpt_path: Path) -> dict[str, Any]:
    """Train `model` (in place) through `phase.stages`, resuming from `ckpt_path` when it exists (`Trainer`).

    Returns a summary: final loss, steps, skipped images, seconds, per-rank weight digests, the stages' losses and
    the evaluation curve. A checkpoint marked done is loaded and its summary returned at once.
    """
    return Trainer(phase, model, setup, ckpt_path=ckpt_path).run()


class Trainer:
    """One training phase, in the manner of torchtune's recipes: `__init__` resumes and sets up (wrapping, optimizer),
    `run` walks the stages, `train_step` is one optimizer step, `checkpoint` writes the resumable state and `finish`
    unwraps the student and writes the final checkpoint.

    The student is held across processes as `run.strategy` says (`jetvit.train.sharding`); whatever the strategy,
    `model` ends as a plain module holding the trained weights on every process. A checkpoint written under one
    strategy and number of processes resumes under any other.

    A GPU is kept fed: the loader's workers send uint8 images (a quarter of float32's bytes) in pinned memory, copied
    without blocking and normalised on the device; one loader serves all the stages of a phase, so its workers start
    once and the next stage's first batches are ready when it starts; AdamW is fused on CUDA. A step does not wait for
    the device: losses are summed there and read only when logged, and the processes of a distributed run agree on
    an interrupt (and check that they train the same path) only at those steps. `run.compile: blocks` compiles the
    student's and the teacher's blocks for the length of the phase (`jetvit.compile`).
    """

    def __init__(self, phase: Phase, model: nn.Module, setup: DistillSetup, *, ckpt_path: Path) -> None:
        self.phase, self.model, self.setup, self.ckpt_path = phase, model, setup, ckpt_path
        self.rt = rt = setup.rt
        self.result: dict[str, Any] | None = None
        ck = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
        if ck is not None and ck.get("done"):
            model.load_state_dict(ck["model"])
            self.result = ck["summary"]
            return
        if ck is not None and "model" in ck:  # a full checkpoint: the weights go in before any sharding
            model.load_state_dict(ck["model"])

        self.with_depth = phase.depth_weight > 0
        if self.with_depth and getattr(model, "depth_head", None) is None:
            raise ValueError("a depth loss (depth_weight > 0) needs a teacher with a depth head (Depth-Anything-V2)")
        if self.with_depth and phase.blockwise:
            raise ValueError(
                "block-wise supernet training has no depth loss: use supernet.sampling: uniform or balanced"
            )
        self.depth_loss = depth_loss_fn(setup.distill.depth_loss, gradient_weight=setup.distill.gradient_weight)
        model.set_grad_checkpointing(setup.run.activation_checkpointing)  # the student's blocks, never the teacher's
        if phase.blockwise:
            if phase.blockwise_input == "student" and phase.choose_path is None:
                raise ValueError("block-wise training on the student's inputs needs a path drawn per step")
            student = BlockwiseStudent(model, phase.blockwise_input)
        else:
            student = DistillStudent(model, setup.targets, with_depth=self.with_depth)
        self.trainee = wrap_student(student, rt, setup.run.strategy)
        self.compiled: list[nn.Module] = []
        if setup.run.compile == "blocks":
            self._compile()
        optim = setup.optim
        self.opt = torch.optim.AdamW(
            self.trainee.parameters(),
            lr=0.0,
            betas=tuple(optim.betas),
            weight_decay=optim.weight_decay,
            fused=True if rt.device.type == "cuda" else None,  # one kernel for all tensors; the CPU keeps for-each
        )
        # The teacher's normalisation, applied on the device to the loader's uint8 images.
        self.mean = torch.tensor(setup.teacher.cfg.mean, dtype=torch.float32, device=rt.device)
        self.std = torch.tensor(setup.teacher.cfg.std, dtype=torch.float32, device=rt.device)
        self.start_stage, self.start_step, self.skipped = 0, 0, 0
        self.history: dict[str, Any] = {"curve": []}
        self.elapsed = 0.0
        if ck is not None:
            self._resume(ck)
        self.plan = SamplePlan(len(setup.images), seed=setup.run.seed, phase=phase.name)
        self.phase_step = sum(s.steps for s in phase.stages[: self.start_stage]) + self.start_step
        self.loss_value = float("nan")
        self.t0 = time.perf_counter()

    def _compile(self) -> None:
        """Regional compilation of the trained model (under `fsdp` the sharded copy, after sharding: deep copies of a
        compiled module run eager) and of the frozen teachers, each block kind compiled once. The teachers are compiled
        too: their forward is a large share of a step (one forward of the teacher for one forward and backward of the
        student, more with a separate depth teacher), and under no_grad it compiles to a graph of its own. Undone by
        `_uncompile` when the phase ends: the teacher and the trained model outlive the phase (scorers, export, the
        next phase), and what runs them after it is not this setting's to compile, at shapes it would recompile for."""
        from jetvit.compile import compile_regions

        teachers = (self.setup.teacher, self.setup.depth_teacher if self.with_depth else None)
        models = [self.trainee.model, *{id(t): t for t in teachers if t is not None}.values()]
        for m in models:
            # A phase feeds a few shapes (a batch and resolution per stage, the scorer's): a graph specialised to each
            # traces and runs faster than one graph with symbolic sizes.
            compile_regions(m, dynamic=False)
        self.compiled = models

    def _uncompile(self) -> None:
        from jetvit.compile import uncompile_regions

        for m in self.compiled:
            uncompile_regions(m)
        self.compiled = []

    def _resume(self, ck: dict[str, Any]) -> None:
        if "shards" in ck:
            load_sharded_checkpoint(self.ckpt_path, ck, self.trainee.model, self.opt)
        elif self.trainee.sharded:
            load_full_optimizer(self.trainee.model, self.opt, ck["optim"])
        else:
            self.opt.load_state_dict(ck["optim"])
        # A sharded checkpoint holds every process's random state, a full one rank 0's.
        rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]
        set_rng_state(rngs[self.rt.rank] if self.rt.rank < len(rngs) else rngs[0])
        self.start_stage, self.start_step, self.skipped = ck["stage"], ck["step"], ck["skipped"]
        self.history, self.elapsed = ck["history"], ck["elapsed"]
        self.history.setdefault("curve", [])
        if self.rt.main:
            log.info("resuming %s at stage %d, step %d", self.phase.name, self.start_stage + 1, self.start_step)

    def run(self) -> dict[str, Any]:
        if self.result is not None:
            return self.result
        self.trainee.model.train()
        try:
            stages = []  # (index, stage, first step, its micro-batches) of the stages left to train
            for si, stage in enumerate(self.phase.stages[self.start_stage :], start=self.start_stage):
                s0 = self.start_step if si == self.start_stage else 0
                if s0 < stage.steps:
                    stages.append((si, stage, s0, self._batches(si, stage, s0)))
            loader = self._loader([b for *_, b in stages])
            with StepBoundaryInterrupt() as interrupt:
                for si, stage, s0, batches in stages:
                    self._train_stage(si, stage, s0, loader, batches.accum, interrupt)
            del loader  # its workers end here, before the phase's final checkpoint
        finally:
            self._uncompile()
        return self.finish()

    def _batches(self, si: int, stage: StageConfig, s0: int) -> DistillBatches:
        """The micro-batches of stage `si` from its step `s0` on."""
        setup, rt = self.setup, self.rt
        return DistillBatches(
            setup.images,
            self.plan,
            stage_offset=sum(s.steps * s.batch_size for s in self.phase.stages[:si]),
            start_step=s0,
            steps=stage.steps,
            batch_size=stage.batch_size,
            micro_batch_size=stage.micro_batch_size or max(1, stage.batch_size // rt.world),
            rank=rt.rank,
            world=rt.world,
            size=stage.size,
            scale=tuple(setup.data.scale),
            ratio=tuple(setup.data.ratio),
            hflip=setup.data.hflip,
        )

    def _loader(self, stages: list[DistillBatches]) -> Iterator[dict]:
        """One loader over the stages' micro-batches, in order: its workers start once per phase and render the next
        stage's first batches while the current one ends. On CUDA the batches come in pinned memory, so that the
        copy to the device does not block."""
        from torch.utils.data import ConcatDataset, DataLoader

        rt, data = self.rt, self.setup.data
        workers = data.resolved_workers(rt.device.type, processes_per_host=_processes_per_host(rt))
        dataset = ConcatDataset(stages) if stages else []
        cuda = rt.device.type == "cuda"
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=cuda)
        return iter(loader)

    def _train_stage(
        self, si: int, stage: StageConfig, s0: int, loader: Iterator[dict], accum: int, interrupt: StepBoundaryInterrupt
    ) -> None:
        from tqdm import tqdm

        phase, run, rt = self.phase, self.setup.run, self.rt
        H, W = stage.size
        bar = tqdm(
            total=stage.steps,
            initial=s0,
            desc=f"{phase.name} stage {si + 1}/{len(phase.stages)} {H}x{W}",
            disable=not rt.main,
            dynamic_ncols=True,
        )
        try:
            for step in range(s0, stage.steps):
                logged = (step + 1) % run.log_every == 0 or step + 1 == stage.steps
                path = self._choose_path(check=logged or step == s0)
                lr = lr_at(stage, step)
                loss, feat, grad_norm = self.train_step(loader, accum, lr)
                self.phase_step += 1
                if logged:
                    self._log(loss, feat, grad_norm, lr, path, bar)
                last = step + 1 == stage.steps and si == len(phase.stages) - 1
                every = run.eval_every
                if phase.evaluate is not None and ((every and self.phase_step % every == 0) or last):
                    self._evaluate(bar)
                if step + 1 == stage.steps:
                    final = {"resolution": [H, W], "steps": stage.steps, "final_loss": self.loss_value}
                    self.history[f"stage{si + 1}"] = final
                # Every process stops at the same step (a sharded checkpoint is written by all of them). Agreeing on it
                # is a collective that waits for the device, so a distributed run asks only at logged steps.
                stop = interrupt.requested
                if rt.distributed:
                    stop = logged and rt.mean(float(interrupt.requested)) > 0
                if (step + 1) % run.checkpoint_every == 0 or step + 1 == stage.steps or stop:
                    self.checkpoint(si, step + 1)
                bar.update(1)
                if stop:
                    raise KeyboardInterrupt(f"{phase.name} interrupted; saved at stage {si + 1}, step {step + 1}")
        finally:
            bar.close()

    def _choose_path(self, *, check: bool) -> str | None:
        """Activate this step's path (a supernet phase); `check`: assert that every process chose the same (a
        collective, so not at every step)."""
        if self.phase.choose_path is None:
            return None
        path = self.phase.choose_path(self.trainee.model, self.phase_step)
        if check and self.rt.distributed:  # internal invariant: the seeded path is the same everywhere
            paths = self.rt.all_gather_object(path)
            assert len(set(paths)) == 1, f"processes disagree on the path at step {self.phase_step}: {paths}"
        return path

    def train_step(self, loader: Iterator[dict], accum: int, lr: float) -> tuple[Tensor, Tensor, Tensor | None]:
        """One optimizer step over `accum` micro-batches at learning rate `lr`. Returns the mean loss and feature
        loss of the step and the gradient norm before clipping (None without clipping), as device tensors."""
        setup, rt, trainee = self.setup, self.rt, self.trainee
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=rt.device)
        feat_sum = torch.zeros((), device=rt.device)
        for m in range(accum):
            batch = next(loader)
            self.skipped += len(batch["skipped"])
            # uint8 from pinned memory: the copy runs behind the previous step's work, then normalised on the device
            x = normalize(batch["images"].to(rt.device, non_blocking=True), self.mean, self.std)
            if self.phase.blockwise:
                with torch.no_grad(), rt.autocast():
                    states, layout = setup.teacher.residual_states(x)
                with trainee.micro_batch(last=m == accum - 1):
                    with rt.autocast():
                        loss = trainee.module(states, layout)
                    (loss / accum).backward()
                loss_sum += loss.detach()
                feat_sum += loss.detach()
                continue
            with torch.no_grad(), rt.autocast():
                t_feats = token_features(setup.teacher.block_features(x, setup.targets))
                label = setup.depth_teacher.predict_depth(x) if self.with_depth else None
            with trainee.micro_batch(last=m == accum - 1):
                with rt.autocast():
                    s_feats, depth = trainee.module(x)
                feat = feature_loss(s_feats, t_feats)
                loss = feat + self.phase.depth_weight * self.depth_loss(depth, label) if self.with_depth else feat
                (loss / accum).backward()
            loss_sum += loss.detach()
            feat_sum += feat.detach()
        grad_norm = None
        if setup.optim.grad_clip is not None:
            grad_norm = trainee.clip_grad_norm(setup.optim.grad_clip)
        self.opt.step()
        return loss_sum / accum, feat_sum / accum, grad_norm

    def _log(self, loss: Tensor, feat: Tensor, grad_norm: Tensor | None, lr: float, path: str | None, bar) -> None:
        rt, logger = self.rt, self.setup.logger
        self.loss_value = rt.mean(float(loss))
        if logger is not None:
            scalars = {"loss": self.loss_value, "feature_loss": rt.mean(float(feat)), "lr": lr}
            if grad_norm is not None:
                scalars["grad_norm"] = float(grad_norm)
            if path is not None:
                scalars["path"] = path
            logger.log(self.phase.name, self.phase.global_offset + self.phase_step, **scalars)
        bar.set_postfix(loss=f"{self.loss_value:.4g}", lr=f"{lr:.2e}")

    def _evaluate(self, bar) -> None:
        score = self.rt.broadcast_object(float(self.trainee.evaluate(self.phase.evaluate)))
        self.history["curve"].append([self.phase_step, score])
        if self.setup.logger is not None:
            self.setup.logger.log(self.phase.name, self.phase.global_offset + self.phase_step, score=score)
        bar.set_postfix(loss=f"{self.loss_value:.4g}", score=f"{score:.4g}")

    def checkpoint(self, stage_idx: int, next_step: int) -> None:
        """The resumable state after optimizer step `next_step` of stage `stage_idx` (atomic; rank 0 writes a full
        checkpoint, or every process its shards)."""
        rt = self.rt
        state = {
            "phase": self.phase.name,
            "done": False,
            "stage": stage_idx,
            "step": next_step,
            "skipped": self.skipped,
            "history": self.history,
            "elapsed": self.elapsed + time.perf_counter() - self.t0,
        }
        if self.trainee.sharded:  # every process writes its shards
            rngs = rt.all_gather_object(rng_state())
            save_sharded_checkpoint(self.ckpt_path, {**state, "rng": rngs}, self.trainee.model, self.opt)
        elif rt.main:
            full = {"model": self.model.state_dict(), "optim": self.opt.state_dict(), "rng": rng_state()}
            save_checkpoint(self.ckpt_path, {**state, **full})

    def finish(self) -> dict[str, Any]:
        """Unwrap the student (a plain module with the trained weights on every process), write the final
        checkpoint and return the phase's summary."""
        rt, phase, logger = self.rt, self.phase, self.setup.logger
        self._uncompile()
        self.trainee.finish()
        # The DDP wrapper, or the shards with their AdamW states, sit in reference cycles (hooks): free them now,
        # before the next phase builds its model, not at some later collection.
        self.trainee = self.opt = None
        gc.collect()
        self.model.set_grad_checkpointing(False)
        skipped_total = int(round(rt.mean(float(self.skipped)) * rt.world))
        summary = {
            "steps": sum(s.steps for s in phase.stages),
            "final_loss": self.loss_value,
            "skipped_images": skipped_total,
            "seconds": round(self.elapsed + time.perf_counter() - self.t0, 3),
            "rank_weight_digests": rt.all_gather_object(weights_digest(self.model)),
            "stages": {k: v for k, v in self.history.items() if k != "curve"},
            "curve": self.history["curve"],
        }
        if skipped_total and logger is not None:
            logger.event(phase.name, phase.global_offset + self.phase_step, skipped_images=skipped_total)
        if rt.main:
            done = {"phase": phase.name, "done": True, "model": self.model.state_dict(), "summary": summary}
            save_checkpoint(self.ckpt_path, done)
        rt.barrier()
        self.result = summary
        return summary


def _processes_per_host(rt: Runtime) -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE), which share its cores for loader workers."""
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", rt.world if rt.distributed else 1))


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
