"""One experiment, built once: everything a run of the method needs, derived from its config, with no files written.

`Experiment.build(cfg)` checks and loads what `jetvit search`, `jetvit distill` and the benchmarks (replication,
learning curves, ranking) share:

    teacher       the frozen teacher (`jetvit.load_teacher`), on the run's device
    student_cfg   the teacher's config with the run's W window and L-block options
                  (`jetvit.search.supernet.student_config`): the one source of every supernet, converted student and
                  FLOP count of the run (`jetvit plan` derives it the same way, from the teacher's shapes)
    data          the image source split into training images and the held-out images the scorer reads
    targets       the distilled blocks
    budget        the FLOP budget (`jetvit.search.budget`), counted on `student_cfg`
    scorer        the search's scorer (optional: the benchmarks score with their own), and the front's when
                  `front.score_options` sets other options for it

The latency table (`latency_table`) is not built here: it times the students on the device, which a run does once its
directory exists (and keeps there, so that a resumed run reads the same numbers).

and makes students from it: `student(arch)` (the teacher converted, weights inherited) and `supernet(base, choices)`;
`distill(model, ...)` is the one distillation of a fixed architecture (the search's fine-tuning, `jetvit distill`,
the benchmarks' rows). Everything that can refuse a run is checked here, so that the run directory
(`jetvit.pipeline`), written on top of an experiment, is only created once the run can start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jetvit.config import Config
from jetvit.model import HybridViT, LinearAttnConfig, ViTConfig, validate_arch
from jetvit.runtime import Runtime, setup_runtime
from jetvit.search.budget import FlopBudget
from jetvit.search.latency import LatencyBudget, LatencyTable
from jetvit.search.scorers import Scorer, build_scorer
from jetvit.search.supernet import PathSampler, build_supernet, student_config
from jetvit.train.config import StageConfig
from jetvit.train.data import ImageSet, Source, holdout_images, open_source, split_holdout
from jetvit.train.distill import DistillSetup, Phase, resolve_targets, train_phase
from jetvit.train.sharding import frozen_teacher

TRAINING_PHASES = ("step1", "step2", "finetune")


def load_teacher_model(src: str, device, options: dict[str, Any] | None = None) -> HybridViT:
    """The frozen teacher (anything `jetvit.load_teacher` accepts): eval mode, no gradients, on `device`."""
    from jetvit.teachers import load_teacher

    teacher = load_teacher(src, **(options or {}))
    teacher.to(device).eval().requires_grad_(False)
    return teacher


def runtime(cfg: Config) -> Runtime:
    """Where run `cfg` computes (`jetvit.runtime.setup_runtime` with `run.device`, `run.precision`, `run.seed`)."""
    return setup_runtime(device=cfg.run.device, precision=cfg.run.precision, seed=cfg.run.seed)


def stage_sizes(cfg: Config) -> dict[str, tuple[int, int]]:
    """Every (H, W) a run feeds its models, by config key: the training stages', the scorer's and the budget's."""
    sizes = {
        f"{n}.stages.{i}.resolution": st.size for n in TRAINING_PHASES for i, st in enumerate(getattr(cfg, n).stages)
    }
    for key, res in (("score.resolution", cfg.score.resolution), ("budget.resolution", cfg.budget.resolution)):
        sizes[key] = (res, res) if isinstance(res, int) else (res[0], res[1])
    return sizes


@dataclass
class Experiment:
    """What a run is made of (module docstring); build it with `Experiment.build`."""

    cfg: Config
    rt: Runtime
    teacher: HybridViT
    student_cfg: ViTConfig
    depth_teacher: nn.Module | None
    targets: list[int]
    source: Source
    train_images: ImageSet
    holdout_names: list[str]
    skipped_holdout: list[str]  # held-out files that could not be read
    holdout: Tensor  # the held-out images, centre-cropped at score.resolution and normalised: (n, 3, H, W)
    budget: FlopBudget
    scorer: Scorer | None
    front_scorer: Scorer | None = None  # `front.score_options` set: the front's (else the search's scorer scores it)

    @classmethod
    def build(
        cls,
        cfg: Config,
        *,
        rt: Runtime | None = None,
        arch: str | None = None,
        search: bool = False,
        scorer: bool = True,
        teacher: HybridViT | None = None,
    ) -> Experiment:
        """Check and load the run described by `cfg` (nothing is written).

        rt: where the run computes (default `setup_runtime` from `cfg.run`); arch: the fixed architecture of
        `jetvit distill`, checked against the teacher's depth; search: the FLOP budget must admit the search's start
        (all-L); scorer: build the run's scorer (the benchmarks score with their own); teacher: an already loaded
        teacher for `cfg.teacher` (the benchmarks reuse one across seeds), frozen and moved to the device here.
        Raises ValueError / FileNotFoundError naming the config key of whatever refuses the run."""
        rt = rt or runtime(cfg)
        source = open_source(cfg.data.source)
        train_idx, held_idx = split_holdout(len(source), cfg.data.holdout)
        if teacher is None:
            teacher = load_teacher_model(cfg.teacher, rt.device, cfg.teacher_options)
        else:
            teacher.to(rt.device).eval().requires_grad_(False)
        student_cfg = student_config(teacher.cfg, cfg.supernet)
        depth_teacher = None
        if cfg.finetune_depth_weight > 0 or cfg.distill.depth_weight > 0:
            depth_teacher = (
                teacher
                if cfg.distill.depth_teacher is None
                else load_teacher_model(cfg.distill.depth_teacher, rt.device)
            )
        targets = resolve_targets(cfg.distill.targets, teacher)
        if arch is not None:
            validate_arch(arch, len(teacher.blocks))
        sizes = stage_sizes(cfg)
        for key, size in sizes.items():
            try:
                teacher.grid_size(*size)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        budget = FlopBudget.from_config(student_cfg, cfg.budget)
        if search:
            budget.check_start("L" * len(teacher.blocks), letters="LW")
        held = ImageSet(source, held_idx, role="held-out")
        images, skipped = holdout_images(held, sizes["score.resolution"], teacher.cfg.mean, teacher.cfg.std)
        run_scorer = front_scorer = None
        if scorer:
            kw = dict(teacher=teacher, images=images, targets=targets, batch_size=cfg.score.batch_size,
                      device=rt.device, autocast=rt.autocast)  # fmt: skip
            run_scorer = build_scorer(cfg.score.scorer, options=cfg.score.options, **kw)
            if cfg.front.score_options:
                options = {**cfg.score.options, **cfg.front.score_options}
                front_scorer = build_scorer(cfg.score.scorer, options=options, key="front.score_options", **kw)
        return cls(
            cfg=cfg,
            rt=rt,
            teacher=teacher,
            student_cfg=student_cfg,
            depth_teacher=depth_teacher,
            targets=targets,
            source=source,
            train_images=ImageSet(source, train_idx, role="training"),
            holdout_names=[source.name(i) for i in held_idx],
            skipped_holdout=skipped,
            holdout=images,
            budget=budget,
            scorer=run_scorer,
            front_scorer=front_scorer,
        )

    # --- students -------------------------------------------------------------------------------------------------

    def student(
        self,
        arch: str,
        *,
        inherit: str | None = None,
        linear: LinearAttnConfig | dict[str, Any] | None = None,
    ) -> HybridViT:
        """The teacher converted to `arch` with the run's student config, weights inherited as `inherit` (default
        `distill.inherit`), the new parameters seeded by `run.seed`, on the run's device. `linear`: other L-block
        options than the run's (the ablations of the replication)."""
        from jetvit.conversion import convert

        return convert(
            self.teacher,
            arch,
            inherit=inherit or self.cfg.distill.inherit,
            window_size=self.student_cfg.window_size,
            linear=self.student_cfg.linear if linear is None else linear,
            seed=self.cfg.run.seed,
        ).to(self.rt.device)

    def supernet(self, base: HybridViT, choices: list[str], *, donor: HybridViT | None = None) -> HybridViT:
        """A supernet with candidate kinds `choices[i]` at block i, inherited from `base` (the teacher, or Step 1's
        path; the kinds `donor`, Step 1's supernet, holds and `base` is not, from it), with the run's student config
        and `supernet.share`, on the run's device."""
        share, cfg = self.cfg.supernet.share, self.student_cfg
        return build_supernet(base, choices, share=share, cfg=cfg, donor=donor).to(self.rt.device)

    def supernet_phase(
        self, name: str, choices: list[str], stages: list[StageConfig], *, global_offset: int = 0
    ) -> Phase:
        """The training phase of a supernet with candidates `choices`, trained as `supernet.sampling` says: one
        sampled path per step (`PathSampler`: uniform or balanced), or every candidate block by block."""
        sampling, inputs = self.cfg.supernet.sampling, self.cfg.supernet.blockwise_input
        if sampling == "blockwise":
            # On the student's inputs, the path that feeds each block is drawn as a uniform single path would be.
            sampler = PathSampler(choices, seed=self.cfg.run.seed, phase=name) if inputs == "student" else None
            return Phase(
                name, stages, choose_path=sampler, blockwise=True, blockwise_input=inputs, global_offset=global_offset
            )
        sampler = PathSampler(choices, seed=self.cfg.run.seed, phase=name, sampling=sampling)
        return Phase(name, stages, choose_path=sampler, global_offset=global_offset)

    # --- speed ----------------------------------------------------------------------------------------------------

    @property
    def latency_size(self) -> tuple[int, int]:
        """The resolution of the latency table: `latency.resolution`, else `budget.resolution`."""
        res = self.cfg.latency.resolution if self.cfg.latency.resolution is not None else self.cfg.budget.resolution
        return (res, res) if isinstance(res, int) else (res[0], res[1])

    def latency_table(self) -> LatencyTable | None:
        """The students' latency table as `latency` says (None for `source: none`): measured on the run's device
        (rank 0 times, every process gets its numbers) or predicted by the cost model; cached unless `latency.cache`
        is false (`jetvit.bench.latency.table_for`)."""
        lat = self.cfg.latency
        if lat.source == "none":
            return None
        from jetvit.bench.latency import table_for

        data = None
        if self.rt.main:
            device = lat.device if lat.source == "predicted" else str(self.rt.device)
            with torch.random.fork_rng(devices=[]):  # timing draws inputs: the run's random stream stays its own
                table, _ = table_for(
                    dataclasses.replace(self.student_cfg, arch=self.teacher.arch),
                    source=lat.source,
                    device=device,
                    dtype=lat.dtype,
                    resolution=self.latency_size,
                    batch=lat.batch,
                    repeats=lat.repeats,
                    cache=lat.cache,
                )
            data = table.to_dict()
        return LatencyTable.from_dict(self.rt.broadcast_object(data))

    def latency_budget(self, table: LatencyTable | None) -> LatencyBudget | None:
        """The latency budget (`budget.max_latency_ms`, `budget.max_latency_ratio`) on `table`; None without a
        table. ValueError when no architecture of the search space meets it."""
        if table is None:
            return None
        b = self.cfg.budget
        budget = LatencyBudget(table, self.teacher.arch, max_ms=b.max_latency_ms, max_ratio=b.max_latency_ratio)
        budget.check_reachable("LW", len(self.teacher.blocks))
        return budget

    def hold_teachers(self) -> None:
        """Once every student has inherited its weights from the teacher: the frozen teacher(s) as the run's strategy
        holds them (`jetvit.train.sharding.frozen_teacher`: bf16 under a sharded bf16 run)."""
        for t in {id(t): t for t in (self.teacher, self.depth_teacher) if t is not None}.values():
            frozen_teacher(t, self.rt, self.cfg.run.strategy)

    # --- training -------------------------------------------------------------------------------------------------

    def distill_setup(self, logger: Any = None) -> DistillSetup:
        """What every training phase of this experiment shares (`jetvit.train.distill.DistillSetup`)."""
        cfg = self.cfg
        return DistillSetup(
            teacher=self.teacher,
            images=self.train_images,
            targets=self.targets,
            data=cfg.data,
            distill=cfg.distill,
            optim=cfg.optim,
            run=cfg.run,
            rt=self.rt,
            depth_teacher=self.depth_teacher,
            logger=logger,
        )

    def train(self, phase: Phase, model: nn.Module, *, ckpt_path: Path, logger: Any = None) -> dict[str, Any]:
        """Train `model` (in place) through `phase`, resumable from `ckpt_path` (`jetvit.train.distill.train_phase`)."""
        return train_phase(phase, model, self.distill_setup(logger), ckpt_path=ckpt_path)

    def distill(
        self,
        model: nn.Module,
        *,
        ckpt_path: Path,
        stages: list[StageConfig] | None = None,
        evaluate: Callable[[nn.Module], float] | None = None,
        global_offset: int = 0,
        logger: Any = None,
    ) -> dict[str, Any]:
        """The distillation of a fixed architecture (in place): the search's final fine-tuning, `jetvit distill` and
        every row of the benchmarks. `stages` default `finetune.stages`, with the fine-tuning's depth loss;
        `evaluate`: a learning curve (every `run.eval_every` steps). Resumable from `ckpt_path`; returns the phase's
        summary."""
        phase = Phase(
            "finetune",
            self.cfg.finetune.stages if stages is None else stages,
            depth_weight=self.cfg.finetune_depth_weight,
            global_offset=global_offset,
            evaluate=evaluate,
        )
        return self.train(phase, model, ckpt_path=ckpt_path, logger=logger)

    def flops(self, arch: str) -> float:
        """FLOPs of `arch` at `budget.resolution`, counted on the run's student config."""
        return self.budget.flops(arch)
