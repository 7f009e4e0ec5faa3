"""Post-Training Attention Search, end to end (paper Sec. 3, supplementary A.2/A.3): the recipe.

    step1:    supernet with candidates {L, W} per block, inherited from the teacher; feature distillation
    search1:  beam search from all-L, one L -> W per proposal, until the score stops improving
    step2:    supernet with candidates {Step 1 kind, F} per block, inherited from the Step 1 path
    search2:  beam search from the Step 1 architecture, one block -> F per proposal, up to the F budget
              or until the score reaches the teacher's
    front:    the accuracy-latency front of Step 2's candidates (latency table), optionally distilled briefly
              and timed; the pick (`objective.criterion`: the paper's, or the fastest within a tolerance)
    finetune: the chosen architecture, distilled at the final resolution
    export:   jetvit.save, trajectory, plots, report

`run_search` runs all of it, `run_distill` only the last two steps for a given architecture. Each phase is
resumable: training phases through their checkpoints, searches through their score caches (saved after every scored
candidate), and `state.json` records which phases are done. Running the same command again after a kill continues
where the run stopped and ends with the same architecture. Only rank 0 writes files; the searches score their
candidates in shares across the processes (`jetvit.search.driver`), other scores are rank 0's.

Where things live: what the run is made of (teacher, students' config, data, targets, budget, scorer) in
`jetvit.experiment`, built once and shared with the benchmarks; this module writes the run directory on top of it
(`jetvit.rundir`). The process group in `jetvit.runtime`, training in `jetvit.train.distill`, the supernet, budgets and
beam search in `jetvit.search`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from jetvit import front as front_lib
from jetvit.config import Config
from jetvit.experiment import TRAINING_PHASES, Experiment, runtime
from jetvit.io import atomic_write_json, read_json, refuse_overwrite, remove_stale_temporaries, save
from jetvit.rundir import RunState, check_out_dir, hold_run_dir, resume_step, start_run_dir
from jetvit.runtime import Runtime, teardown_runtime
from jetvit.search.beam import switch_proposals, trade_proposals
from jetvit.search.budget import full_attention_budget
from jetvit.search.config import BeamConfig
from jetvit.search.driver import run_beam
from jetvit.search.latency import LatencyTable, all_of
from jetvit.search.scorers import Scorer
from jetvit.search.supernet import extract, step2_choices
from jetvit.train.config import StageConfig
from jetvit.train.data import describe
from jetvit.train.distill import Phase
from jetvit.train.metrics import MetricLogger

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """A run directory on top of an `Experiment`: the run's state (`state.json`), its metric logger, its checkpoints,
    and the phases that record their results there."""

    exp: Experiment
    out: Path
    state: RunState
    logger: MetricLogger

    @property
    def cfg(self) -> Config:
        return self.exp.cfg

    @property
    def rt(self) -> Runtime:
        return self.exp.rt

    def ckpt(self, phase: str) -> Path:
        return self.out / "ckpt" / f"{phase}.pt"

    def score(self, model: nn.Module, scorer: Scorer | None = None) -> float:
        """The run's scorer (or `scorer`) on `model`, rank 0's value on every process."""
        scorer = scorer or self.exp.scorer
        return finite(self.rt.broadcast_object(float(scorer(model))), f"the {scorer.name} score")

    def superseded(self, phase: str, after: str) -> bool:
        """Whether finished training phase `phase` need not be loaded: its checkpoint was removed
        (`run.keep_checkpoints`) and phase `after` has started or finished, so what follows comes from there."""
        return (
            self.state.done(phase) is not None
            and not self.ckpt(phase).is_file()
            and (self.ckpt(after).is_file() or self.state.done(after) is not None)
        )

    def train(self, phase: Phase, model: nn.Module, *, after: str | None) -> dict[str, Any]:
        """Training phase `phase` of a supernet, recorded in `state.json`, or its recorded result when it is
        `superseded` by phase `after`; a diverged loss is an error."""
        if after is not None and self.superseded(phase.name, after):
            return self.state.done(phase.name)["result"]
        run = self.exp.train
        result = timed(self.state, phase.name, run, phase, model, ckpt_path=self.ckpt(phase.name), logger=self.logger)
        finite(result["final_loss"], f"the final training loss of {phase.name}")
        return result

    def finetune(
        self, model: nn.Module, *, stages: list[StageConfig] | None = None, global_offset: int = 0
    ) -> dict[str, Any]:
        """The final fine-tuning of a fixed architecture (in place, `Experiment.distill`; `stages` default
        `finetune.stages`), with the learning curve the config asks for; recorded in `state.json`."""
        if self.finetune_done_from_export(model):
            return self.state.done("finetune")["result"]
        result = timed(
            self.state,
            "finetune",
            self.exp.distill,
            model,
            ckpt_path=self.ckpt("finetune"),
            stages=stages,
            evaluate=self.exp.scorer if self.cfg.run.eval_every else None,
            global_offset=global_offset,
            logger=self.logger,
        )
        finite(result["final_loss"], "the final training loss of finetune")
        return result

    def latency(self) -> LatencyTable | None:
        """The run's latency table (`Experiment.latency_table`), kept in `latency.json`: a resumed run reads the numbers
        its search was made with rather than timing again."""
        path = self.out / "latency.json"
        saved = read_json(path, expect=dict)
        if saved is not None:
            return LatencyTable.from_dict(saved)
        t0 = time.perf_counter()
        table = self.exp.latency_table()
        if table is not None:
            log.info("latency table: %s", table.describe())
            if self.rt.main:
                atomic_write_json(path, table.to_dict())
            self.state.finish("latency", seconds=round(time.perf_counter() - t0, 3))  # a cached table: about 0
        return table

    def drop_checkpoint(self, phase: str) -> None:
        """Remove a finished phase's checkpoint once the next phase's result is recorded (keep_checkpoints: last)."""
        if self.cfg.run.keep_checkpoints == "last" and self.rt.main:
            self.ckpt(phase).unlink(missing_ok=True)

    def finetune_done_from_export(self, model: nn.Module) -> bool:
        """A finished run whose checkpoints were removed (keep_checkpoints: none): `model` takes the exported
        weights. False when the fine-tuning checkpoint is there (the usual resume)."""
        if self.state.done("finetune") is None or self.ckpt("finetune").is_file():
            return False
        from jetvit.io import load

        if not (self.out / "model").is_dir():
            raise ValueError(
                f"{self.out} records a finished fine-tuning but holds neither ckpt/finetune.pt nor model/; "
                f"choose another --out to run again"
            )
        model.load_state_dict(load(self.out / "model").state_dict())
        return True


def finite(value: float, what: str) -> float:
    """`value`, or a ValueError when it is NaN or infinite (a diverged run must not end as a success)."""
    if not math.isfinite(value):
        raise ValueError(
            f"{what} is {value}: training diverged; lower the learning rate (stages' lr) or check the data, "
            f"and start again with another --out"
        )
    return value


def check_sources(cfg: Config, out: Path) -> None:
    """Refuse a run directory that is, holds or lies inside what the run reads (teacher, depth teacher, image
    folder): the run writes `model/`, `ckpt/` and pictures there, which would overwrite a teacher or become
    training images."""
    from jetvit.teachers import source_path

    sources = {"teacher": source_path(cfg.teacher)}
    if cfg.distill.depth_teacher is not None:
        sources["distill.depth_teacher"] = source_path(cfg.distill.depth_teacher)
    if Path(cfg.data.source).exists():
        sources["data.source folder"] = Path(cfg.data.source)
    refuse_overwrite(out, sources, nested=True)


def prepare(cfg: Config, out: Path, rt: Runtime, *, search: bool, arch: str | None = None) -> RunContext:
    """The experiment (`Experiment.build`), then the run directory on top of it: the resolved config, the run state
    and the metric logger.

    Everything that can refuse the run (the run directory, teacher, data, targets, resolutions, scorer, budget) is
    checked before the first file is written, so a run that fails at start-up leaves nothing behind and the
    corrected command starts cleanly."""
    check_out_dir(out, cfg)
    check_sources(cfg, out)
    exp = Experiment.build(cfg, rt=rt, arch=arch, search=search)
    # Everything loaded: from here on the run directory is written.
    start_run_dir(out, cfg, rt)
    state = RunState(out / "state.json", rt)
    stage_steps = {n: [s.steps for s in getattr(cfg, n).stages] for n in TRAINING_PHASES}
    stage_steps["finetune"] = [s.steps for s in front_lib.finetune_stages(cfg, state)]
    phases = [(n, sum(steps), steps) for n, steps in stage_steps.items()]
    done = [n for n in TRAINING_PHASES if state.done(n) is not None]
    logger = MetricLogger(out, enabled=rt.main, resume_step=resume_step(out, phases, done=done))
    if exp.skipped_holdout:
        logger.event("data", 0, skipped_holdout_images=exp.skipped_holdout)
    return RunContext(exp=exp, out=out, state=state, logger=logger)


def timed(state: RunState, phase: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, recording its result (searches: the best and why they stopped) and wall time in
    `state.json` the first time the phase completes.

    Phases always run: a finished one returns at once (a training phase loads its final checkpoint, a
    search replays its rounds from the score cache), which rebuilds the objects the next phase needs.
    """
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    if state.done(phase) is None:
        kept = _search_result(result) if "rounds" in result else result
        state.finish(phase, result=kept, seconds=round(time.perf_counter() - t0, 3))
    return result


def _search_result(traj: dict[str, Any]) -> dict[str, Any]:
    return {"best": traj["best"], "stop_reason": traj["stop_reason"], "scored": len(traj["scores"])}


# The latency-aware Step 2's last round: Step 2's best with each of its F blocks traded for the other efficient kind.
TRADE_ROUND = BeamConfig(width=1, min_improvement=None, max_rounds=1)


# --- the two commands ---------------------------------------------------------------------------------


def run_search(cfg: Config, out: str | Path) -> dict[str, Any]:
    """The whole Post-Training Attention Search; returns the summary also written to `DIR/summary.json`."""
    out = Path(out)
    with running(cfg, out) as rt:
        ctx = None
        try:
            ctx = prepare(cfg, out, rt, search=True)
            exp, state = ctx.exp, ctx.state
            teacher = exp.teacher
            depth = len(teacher.blocks)
            n1 = sum(s.steps for s in cfg.step1.stages)
            n2 = sum(s.steps for s in cfg.step2.stages)

            table = ctx.latency()
            latency_budget = exp.latency_budget(table)
            lat_reason = latency_budget.reason if latency_budget is not None else None
            latency_criterion = cfg.objective.criterion == "latency"
            tolerance = cfg.objective.tolerance

            # Step 1: linear vs window.
            choices1 = ["LW"] * depth
            supernet1 = exp.supernet(teacher, choices1)
            exp.hold_teachers()  # every later student derives from supernet1
            s1 = ctx.train(exp.supernet_phase("step1", choices1, cfg.step1.stages), supernet1, after="step2")
            traj1 = timed(
                state,
                "search1",
                run_beam,
                "step1",
                supernet1,
                start="L" * depth,
                propose=switch_proposals("L", "W"),
                beam_cfg=cfg.step1.beam,
                scorer=exp.scorer,
                rt=rt,
                path=out / "search" / "step1.json",
                feasible=all_of(exp.budget.reason, lat_reason),
            )
            arch1 = traj1["best"]["arch"]
            if latency_criterion:
                arch1 = front_lib.step1_pick(traj1, table, tolerance=tolerance)

            # Step 2: where full attention goes back (and, latency-aware, what an F can be traded for).
            trade = cfg.step2_trades
            base2 = extract(supernet1, arch1)
            choices2 = step2_choices(arch1, trade=trade)
            supernet2 = exp.supernet(base2, choices2, donor=supernet1 if trade else None)
            del supernet1
            phase2 = exp.supernet_phase("step2", choices2, cfg.step2.stages, global_offset=n1)
            s2 = ctx.train(phase2, supernet2, after="finetune")
            ctx.drop_checkpoint("step1")  # step2's checkpoint holds everything the run needs from here
            teacher_score = state.done("teacher_score")
            if teacher_score is None:
                teacher_score = {"score": ctx.score(teacher)}
                state.finish("teacher_score", **teacher_score)
            traj2 = timed(
                state,
                "search2",
                run_beam,
                "step2",
                supernet2,
                start=arch1,
                propose=switch_proposals("LW", "F"),
                beam_cfg=cfg.step2.beam,
                scorer=exp.scorer,
                rt=rt,
                path=out / "search" / "step2.json",
                feasible=all_of(full_attention_budget(cfg.step2.max_full, exp.budget), lat_reason),
                target=teacher_score["score"] if cfg.step2.stop_at_teacher else None,
            )
            scored2, traded = traj2, None
            if trade:
                traded = timed(
                    state,
                    "trade",
                    run_beam,
                    "trade",
                    supernet2,
                    start=traj2["best"]["arch"],
                    propose=trade_proposals(arch1),
                    beam_cfg=TRADE_ROUND,
                    scorer=exp.scorer,
                    rt=rt,
                    path=out / "search" / "trade.json",
                    feasible=all_of(exp.budget.reason, lat_reason),
                )
                # Step 2's trajectory with the trades' scores: what the picks and the front choose among.
                scored2 = dict(traj2, scores={**traded["scores"], **traj2["scores"]})
            arch2, why, front, chosen = traj2["best"]["arch"], "Step 2's best (the paper's criterion)", None, None
            if table is not None:
                chosen = front_lib.picks(scored2, table, teacher_score=teacher_score["score"], tolerance=tolerance)
                front = timed_front(ctx, supernet2, scored2, table, chosen, teacher_score=teacher_score["score"])
                objective = cfg.objective
                arch2, why = front_lib.final_pick(
                    front, chosen, criterion=objective.criterion, tolerance=tolerance, reference=objective.reference
                )
            log.info("the pick: %s (%s)", arch2, why)

            # Final fine-tuning of the chosen architecture.
            model = extract(supernet2, arch2)
            del supernet2
            stages = front_lib.warm_start(ctx, model, arch2, front)
            ft = ctx.finetune(model, stages=stages, global_offset=n1 + n2)
            ctx.drop_checkpoint("step2")
            front_lib.drop_points(ctx, front)
            summary = {
                "teacher": cfg.teacher,
                "teacher_arch": teacher.arch,
                "step1_arch": arch1,
                "step1_best": traj1["best"]["arch"],  # the paper's Step 1 pick (the latency criterion may differ)
                "arch": arch2,
                "scorer": exp.scorer.name,
                "teacher_score": teacher_score["score"],
                "step1_score": traj1["scores"][arch1],
                "step2_score": scored2["scores"][arch2],
                "criterion": cfg.objective.criterion,
                "pick_reason": why,
                "picks": chosen,
                **_latency_summary(table, teacher.arch, arch2),
                "front": front_lib.front_rows(front) if front is not None else None,
                "front_scorer": {k: front[k] for k in ("scorer", "teacher_score")} if front is not None else None,
                "compute": front_lib.compute(state.data["phases"], cfg) if front is not None else None,
                "final_score": ctx.score(model),
                **_cost_summary(ctx, arch2),
                "step1_flops": exp.flops(arch1),
                "phases": state.data["phases"],
                "finetune": ft,
                "skipped_training_images": s1["skipped_images"] + s2["skipped_images"] + ft["skipped_images"],
                "holdout_images": exp.holdout_names,
                "skipped_images": exp.skipped_holdout,
                "data": describe(exp.source),
                **_files_summary(ctx),
            }
            if rt.main:
                trajectories = {"step1": traj1, "step2": traj2, **({"trade": traded} if traded else {})}
                export(out, model, summary, trajectories, cfg, front=front, table=table)
            finish(ctx)
            return summary
        finally:
            close(ctx)


def run_distill(cfg: Config, out: str | Path, *, arch: str) -> dict[str, Any]:
    """`jetvit distill`: convert the teacher to `arch` (weights inherited as `distill.inherit`) and distil it
    (`Experiment.distill`, as the search's fine-tuning and the benchmarks do)."""
    out = Path(out)
    with running(cfg, out) as rt:
        ctx = None
        try:
            ctx = prepare(cfg, out, rt, search=False, arch=arch)
            exp = ctx.exp
            model = exp.student(arch)
            exp.hold_teachers()
            start_score = ctx.score(model)  # what inheritance alone gives, before any training
            ft = ctx.finetune(model)
            summary = {
                "teacher": cfg.teacher,
                "arch": model.arch,
                "scorer": exp.scorer.name,
                "start_score": start_score,
                "final_score": ctx.score(model),
                **_cost_summary(ctx, model.arch),
                "finetune": ft,
                "skipped_training_images": ft["skipped_images"],
                "skipped_images": exp.skipped_holdout,
                "data": describe(exp.source),
                **_files_summary(ctx),
            }
            if rt.main:
                export(out, model, summary, None, cfg)
            finish(ctx)
            return summary
        finally:
            close(ctx)


def timed_front(
    ctx: RunContext, supernet2: nn.Module, traj2: dict, table: LatencyTable, chosen: dict, *, teacher_score: float
) -> dict:
    """`jetvit.front.measure_front`, its wall time recorded in `state.json` the first time it completes."""
    t0 = time.perf_counter()
    front = front_lib.measure_front(ctx, supernet2, traj2, table, chosen, teacher_score=teacher_score)
    if ctx.state.done("front") is None:
        result = {"pareto": len(front["pareto"]), "measured": len(front["measured"])}
        ctx.state.finish("front", result=result, seconds=round(time.perf_counter() - t0, 3))
    return front


def _latency_summary(table: LatencyTable | None, teacher_arch: str, arch: str) -> dict[str, Any]:
    if table is None:
        return {"latency_table": None}
    return {
        "latency_table": table.describe(),
        "predicted_ms": table.predict(arch),
        "teacher_predicted_ms": table.predict(teacher_arch),
    }


def _files_summary(ctx: RunContext) -> dict[str, Any]:
    """What the run directory keeps besides the results, for the report to list only what is there."""
    return {"tensorboard": ctx.logger.tensorboard_note, "keep_checkpoints": ctx.cfg.run.keep_checkpoints}


def finish(ctx: RunContext) -> None:
    """After the export: checkpoints the run does not keep (`run.keep_checkpoints: none`) are removed."""
    ctx.rt.barrier()
    if ctx.rt.main and ctx.cfg.run.keep_checkpoints == "none":
        shutil.rmtree(ctx.out / "ckpt", ignore_errors=True)


@contextmanager
def running(cfg: Config, out: Path) -> Iterator[Runtime]:
    """For the length of a run: this process's runtime (`jetvit.experiment.runtime`) and the hold on the run directory
    (`jetvit.rundir.hold_run_dir`: a second run on `out` is refused); however the run ends, the process group is
    left."""
    rt = runtime(cfg)
    try:
        with hold_run_dir(out, main=rt.main):
            yield rt
    finally:
        teardown_runtime(rt)


def close(ctx: RunContext | None) -> None:
    """However the run ends (finished, failed, interrupted), while the run directory is still held: metrics flushed
    and closed, temporary files of writes cut short removed."""
    if ctx is not None:
        ctx.logger.close()
        if ctx.rt.main:
            remove_stale_temporaries(ctx.out)


def _cost_summary(ctx: RunContext, arch: str) -> dict[str, Any]:
    budget = ctx.exp.budget
    return {
        "flops_resolution": list(budget.size),
        "teacher_flops": budget.teacher_flops,
        "flops": budget.flops(arch),
        "flop_limit": budget.limit,
        "world_size": ctx.rt.world,
    }


def export(
    out: Path,
    model: nn.Module,
    summary: dict,
    trajectories: dict | None,
    cfg: Config,
    *,
    front: dict | None = None,
    table: LatencyTable | None = None,
) -> None:
    """The run's deliverables: the model (`jetvit.save`, with provenance and a model card), summary, trajectory, plots
    (the accuracy-latency front with a latency table) and `report.md`."""
    from jetvit.hub import run_command
    from jetvit.report import write_report
    from jetvit.train import plots
    from jetvit.train.metrics import read_metrics

    card = {**summary, "holdout": cfg.data.holdout, "command": run_command()}
    save(model, out / "model", teacher=cfg.teacher, card=card)
    atomic_write_json(out / "summary.json", summary)
    rows = [("teacher", summary.get("teacher_arch", "F" * len(summary["arch"])))]
    if trajectories is not None:
        atomic_write_json(
            out / "trajectory.json",
            {"scorer": summary["scorer"], "teacher_score": summary["teacher_score"], **trajectories},
        )
        rows.append(("step 1 (L/W)", summary["step1_arch"]))
        plots.plot_beam(trajectories, out / "beam_scores.png", score_name=summary["scorer"])
    if front is not None and table is not None:
        measured = [m["teacher_ms"] for m in front["measured"].values()]
        plots.plot_front(
            front,
            out / "front.png",
            teacher_score=summary["teacher_score"],
            teacher_ms=summary["teacher_predicted_ms"],
            teacher_measured_ms=sum(measured) / len(measured) if measured else None,
            pick=summary["arch"],
            score_name=summary["scorer"],
            step1=front_lib.candidates(trajectories["step1"], table) if trajectories else None,
        )
    rows.append(("final", summary["arch"]))
    plots.plot_architectures(rows, out / "architecture.png")
    plots.plot_losses(read_metrics(out / "metrics.jsonl"), out / "loss.png")
    write_report(out, summary, trajectories, cfg)
