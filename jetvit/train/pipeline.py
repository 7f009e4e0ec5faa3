"""Post-Training Attention Search, end to end (paper Sec. 3, supplementary A.2/A.3).

    step1:  supernet with candidates {L, W} per block, inherited from the teacher; feature distillation
    search1: beam search from all-L, one L -> W per proposal, until the score stops improving
    step2:  supernet with candidates {Step 1 kind, F} per block, inherited from the Step 1 path
    search2: beam search from the Step 1 architecture, one block -> F per proposal, up to the F budget
            or until the score reaches the teacher's
    finetune: the chosen architecture, distilled at the final resolution
    export: jetvit.save, trajectory, plots, report

Each phase is resumable: training phases through their checkpoints, searches through their score caches
(saved after every scored candidate), and `state.json` records which phases are done. Running the same
command again after a kill continues where the run stopped and ends with the same architecture.
Only rank 0 writes files; every process computes the same scores and rank 0's are used.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jetvit.train.checkpoint import atomic_write_json, atomic_write_text, read_json
from jetvit.train.config import Config, dump_yaml, to_dict
from jetvit.train.data import ImageSet, describe, holdout_images, open_source, split_holdout
from jetvit.train.distill import Phase, Runtime, resolve_targets, train_phase
from jetvit.train.metrics import MetricLogger

CONFIG_NAME = "config.yaml"


# --- setup --------------------------------------------------------------------------------------------


def setup_runtime(cfg: Config) -> Runtime:
    """Join the torchrun process group when there is one (NCCL on GPUs, gloo on CPU); pick device and precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.run.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is 'cuda' but no CUDA device is available (use run.device=cpu or auto)")
    cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    precision = cfg.run.precision
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and cuda) else None
    torch.manual_seed(cfg.run.seed)
    return Runtime(device=device, rank=rank, world=world, autocast_dtype=dtype)


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def load_teacher_model(src: str, device: torch.device, options: dict[str, Any] | None = None) -> nn.Module:
    """The frozen teacher (anything `jetvit.load_teacher` accepts): eval mode, no gradients, on `device`."""
    from jetvit.teachers import load_teacher

    teacher = load_teacher(src, **(options or {}))
    teacher.to(device).eval().requires_grad_(False)
    return teacher


def prepare_out_dir(out: Path, cfg: Config, rt: Runtime) -> None:
    """Write the resolved config; refuse to continue a run directory that holds another config."""
    text = dump_yaml(cfg)
    existing = out / CONFIG_NAME
    if existing.is_file():
        import yaml

        old = yaml.safe_load(existing.read_text())
        new = to_dict(cfg)
        diff = sorted(_diff_keys(old, new))
        if diff:
            raise ValueError(
                f"{out} holds a run with another config (differs in: {', '.join(diff[:8])}); "
                f"rerun with the same config to resume it, or choose another --out"
            )
    if rt.main:
        atomic_write_text(existing, text)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class RunState:
    """`state.json`: which phases are done and what they found; written atomically by rank 0."""

    def __init__(self, path: Path, rt: Runtime) -> None:
        self.path, self.rt = path, rt
        self.data: dict[str, Any] = read_json(path, default={"phases": {}})

    def done(self, phase: str) -> dict[str, Any] | None:
        return self.data["phases"].get(phase)

    def finish(self, phase: str, **result: Any) -> None:
        self.data["phases"][phase] = result
        if self.rt.main:
            atomic_write_json(self.path, self.data)


# --- the search ---------------------------------------------------------------------------------------


class FlopBudget:
    """Feasibility of an architecture under the FLOP budget, from the model's own cost model (cached)."""

    def __init__(self, teacher: nn.Module, cfg: Config) -> None:
        b = cfg.budget
        self._cache: dict[str, float] = {}
        self.size = (b.resolution, b.resolution) if isinstance(b.resolution, int) else tuple(b.resolution)
        self.base_cfg = teacher.cfg
        self.teacher_flops = self.flops(teacher.arch)
        limits = []
        if b.max_gflops is not None:
            limits.append(b.max_gflops * 1e9)
        if b.max_flops_ratio is not None:
            limits.append(b.max_flops_ratio * self.teacher_flops)
        self.limit = min(limits) if limits else None

    def flops(self, arch: str) -> float:
        from jetvit.model import HybridViT

        if arch in self._cache:
            return self._cache[arch]
        with torch.device("meta"):  # shapes only: the cost model needs the structure, not the weights
            model = HybridViT(dataclasses.replace(self.base_cfg, arch=arch))
        self._cache[arch] = value = float(model.flops(*self.size)["total"])
        return value

    def reason(self, arch: str) -> str | None:
        if self.limit is None:
            return None
        f = self.flops(arch)
        return None if f <= self.limit else f"{f / 1e9:.3g} GFLOPs over the budget {self.limit / 1e9:.3g}"


def run_beam(
    name: str,
    supernet: nn.Module,
    *,
    start: str,
    propose,
    beam_cfg,
    scorer,
    rt: Runtime,
    out: Path,
    feasible=None,
    target: float | None = None,
) -> dict[str, Any]:
    """One beam search on a trained supernet, resumable from `DIR/search/<name>.json`."""
    from tqdm import tqdm

    from jetvit.search.beam import beam_search
    from jetvit.search.supernet import set_arch

    path = out / "search" / f"{name}.json"
    state = read_json(path)
    bar = None

    def score(arch: str) -> float:
        set_arch(supernet, arch)
        value = rt.broadcast_object(float(scorer(supernet)))
        if bar is not None:
            bar.set_postfix(arch=arch, score=f"{value:.5g}")
            bar.update(1)
        return value

    def on_round(r: int, n: int) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
        bar = tqdm(total=n, desc=f"{name} round {r}", disable=not rt.main, dynamic_ncols=True)

    def save(traj: dict[str, Any]) -> None:
        if rt.main:
            atomic_write_json(path, traj)

    traj = beam_search(
        start,
        propose=propose,
        score=score,
        width=beam_cfg.width,
        min_improvement=beam_cfg.min_improvement,
        max_rounds=beam_cfg.max_rounds,
        feasible=feasible,
        target=target,
        state=state,
        on_update=save,
        on_round=on_round,
    )
    if bar is not None:
        bar.close()
    set_arch(supernet, traj["best"]["arch"])
    return traj


def run_search(cfg: Config, out: str | Path) -> dict[str, Any]:
    """The whole Post-Training Attention Search; returns the summary also written to `DIR/summary.json`."""
    from jetvit.search.beam import switch_proposals
    from jetvit.search.supernet import build_supernet, extract, set_arch

    out = Path(out)
    rt = setup_runtime(cfg)
    try:
        prepare_out_dir(out, cfg, rt)
        ctx = _prepare(cfg, out, rt)
        teacher, state, logger = ctx["teacher"], ctx["state"], ctx["logger"]
        depth = len(teacher.blocks)
        share, window = cfg.supernet.share, cfg.supernet.window_size
        budget = FlopBudget(teacher, cfg)
        n1 = sum(s.steps for s in cfg.step1.stages)
        n2 = sum(s.steps for s in cfg.step2.stages)
        common = {
            "teacher": teacher,
            "images": ctx["train_images"],
            "cfg": cfg,
            "rt": rt,
            "targets": ctx["targets"],
            "logger": logger,
            "set_path": set_arch,
        }

        # Step 1: linear vs window.
        supernet1 = build_supernet(teacher, ["LW"] * depth, share=share, window_size=window).to(rt.device)
        phase1 = Phase("step1", cfg.step1.stages, choices=["LW"] * depth, global_offset=0)
        s1 = timed(state, "step1", train_phase, phase1, supernet1, ckpt_path=out / "ckpt" / "step1.pt", **common)
        scorer = ctx["scorer"]
        traj1 = timed(
            state,
            "search1",
            run_beam,
            "step1",
            supernet1,
            start="L" * depth,
            propose=switch_proposals("L", "W"),
            beam_cfg=cfg.step1.beam,
            scorer=scorer,
            rt=rt,
            out=out,
            feasible=budget.reason,
        )
        arch1 = traj1["best"]["arch"]

        # Step 2: where full attention goes back.
        base2 = extract(supernet1, arch1)
        del supernet1
        supernet2 = build_supernet(base2, [k + "F" for k in arch1], share=share).to(rt.device)
        phase2 = Phase("step2", cfg.step2.stages, choices=[k + "F" for k in arch1], global_offset=n1)
        s2 = timed(state, "step2", train_phase, phase2, supernet2, ckpt_path=out / "ckpt" / "step2.pt", **common)
        teacher_score = state.done("teacher_score")
        if teacher_score is None:
            teacher_score = {"score": rt.broadcast_object(float(scorer(teacher)))}
            state.finish("teacher_score", **teacher_score)
        max_full = cfg.step2.max_full

        def feasible2(arch: str) -> str | None:
            if arch.count("F") > max_full:
                return f"{arch.count('F')} full-attention blocks > step2.max_full={max_full}"
            return budget.reason(arch)

        traj2 = timed(
            state,
            "search2",
            run_beam,
            "step2",
            supernet2,
            start=arch1,
            propose=switch_proposals("LW", "F"),
            beam_cfg=cfg.step2.beam,
            scorer=scorer,
            rt=rt,
            out=out,
            feasible=feasible2,
            target=teacher_score["score"],
        )
        arch2 = traj2["best"]["arch"]

        # Final fine-tuning of the chosen architecture.
        model = extract(supernet2, arch2)
        del supernet2
        depth_weight = cfg.finetune.depth_weight if cfg.finetune.depth_weight is not None else cfg.distill.depth_weight
        phase3 = Phase("finetune", cfg.finetune.stages, depth_weight=depth_weight, global_offset=n1 + n2)
        ft = timed(
            state,
            "finetune",
            train_phase,
            phase3,
            model,
            ckpt_path=out / "ckpt" / "finetune.pt",
            depth_teacher=ctx["depth_teacher"],
            **common,
        )
        final_score = rt.broadcast_object(float(scorer(model)))

        summary = {
            "teacher": cfg.teacher,
            "teacher_arch": teacher.arch,
            "step1_arch": arch1,
            "arch": arch2,
            "scorer": scorer.name,
            "teacher_score": teacher_score["score"],
            "step1_score": traj1["best"]["score"],
            "step2_score": traj2["best"]["score"],
            "final_score": final_score,
            "flops_resolution": list(budget.size),
            "teacher_flops": budget.teacher_flops,
            "flops": budget.flops(arch2),
            "step1_flops": budget.flops(arch1),
            "flop_limit": budget.limit,
            "world_size": rt.world,
            "phases": state.data["phases"],
            "finetune": ft,
            "skipped_training_images": s1["skipped_images"] + s2["skipped_images"] + ft["skipped_images"],
            "holdout_images": ctx["holdout_names"],
            "skipped_images": ctx["skipped"],
            "data": describe(ctx["source"]),
        }
        if rt.main:
            _export(out, model, summary, {"step1": traj1, "step2": traj2}, cfg, logger)
        rt.barrier()
        logger.close()
        return summary
    finally:
        teardown_runtime(rt)


def run_distill(cfg: Config, out: str | Path, *, arch: str) -> dict[str, Any]:
    """`jetvit distill`: convert the teacher to `arch` (every weight inherited) and fine-tune it by distillation."""
    from jetvit.conversion import convert

    out = Path(out)
    rt = setup_runtime(cfg)
    try:
        prepare_out_dir(out, cfg, rt)
        ctx = _prepare(cfg, out, rt)
        teacher, state, logger = ctx["teacher"], ctx["state"], ctx["logger"]
        model = convert(teacher, arch, window_size=cfg.supernet.window_size).to(rt.device)
        depth_weight = cfg.finetune.depth_weight if cfg.finetune.depth_weight is not None else cfg.distill.depth_weight
        phase = Phase("finetune", cfg.finetune.stages, depth_weight=depth_weight)
        start_score = rt.broadcast_object(float(ctx["scorer"](model)))
        ft = timed(
            state,
            "finetune",
            train_phase,
            phase,
            model,
            teacher=teacher,
            images=ctx["train_images"],
            cfg=cfg,
            rt=rt,
            ckpt_path=out / "ckpt" / "finetune.pt",
            targets=ctx["targets"],
            depth_teacher=ctx["depth_teacher"],
            logger=logger,
        )
        budget = FlopBudget(teacher, cfg)
        summary = {
            "teacher": cfg.teacher,
            "arch": model.arch,
            "scorer": ctx["scorer"].name,
            "start_score": start_score,
            "final_score": rt.broadcast_object(float(ctx["scorer"](model))),
            "flops_resolution": list(budget.size),
            "teacher_flops": budget.teacher_flops,
            "flops": budget.flops(model.arch),
            "world_size": rt.world,
            "finetune": ft,
            "skipped_training_images": ft["skipped_images"],
            "skipped_images": ctx["skipped"],
            "data": describe(ctx["source"]),
        }
        if rt.main:
            _export(out, model, summary, None, cfg, logger)
        rt.barrier()
        logger.close()
        return summary
    finally:
        teardown_runtime(rt)


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


def _prepare(cfg: Config, out: Path, rt: Runtime) -> dict[str, Any]:
    """Teacher, data, distillation targets, scorer, logger and run state shared by both commands."""
    from jetvit.search.scorers import build_scorer

    source = open_source(cfg.data.source)
    train_idx, held_idx = split_holdout(len(source), cfg.data.holdout)
    teacher = load_teacher_model(cfg.teacher, rt.device, cfg.teacher_options)
    # The hybrids' L-block options come from the run's config: every supernet and student is derived from the
    # teacher's config (an all-F teacher does not read them).
    teacher.cfg = dataclasses.replace(teacher.cfg, linear=cfg.supernet.linear)
    depth_teacher = None
    wants_depth = (cfg.finetune.depth_weight or 0) > 0 or cfg.distill.depth_weight > 0
    if wants_depth:
        depth_teacher = (
            teacher if cfg.distill.depth_teacher is None else load_teacher_model(cfg.distill.depth_teacher, rt.device)
        )
    targets = resolve_targets(cfg.distill.targets, teacher)
    sizes = {
        f"{n}.stages.{i}.resolution": st.size
        for n in ("step1", "step2", "finetune")
        for i, st in enumerate(getattr(cfg, n).stages)
    }
    for key, res in (("score.resolution", cfg.score.resolution), ("budget.resolution", cfg.budget.resolution)):
        sizes[key] = (res, res) if isinstance(res, int) else tuple(res)
    for key, size in sizes.items():
        try:
            teacher.grid_size(*size)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    held = ImageSet(source, held_idx)
    images, skipped = holdout_images(held, sizes["score.resolution"], teacher.cfg.mean, teacher.cfg.std)
    scorer = build_scorer(
        cfg.score.scorer,
        teacher=teacher,
        images=images,
        targets=targets,
        batch_size=cfg.score.batch_size,
        device=rt.device,
        autocast=rt.autocast,
        options=cfg.score.options,
    )
    state = RunState(out / "state.json", rt)
    resume_step = _resume_step(cfg, out)
    logger = MetricLogger(out, enabled=rt.main, resume_step=resume_step)
    if skipped:
        logger.event("data", 0, skipped_holdout_images=skipped)
    return {
        "source": source,
        "teacher": teacher,
        "depth_teacher": depth_teacher,
        "targets": targets,
        "train_images": ImageSet(source, train_idx),
        "holdout_names": [source.name(i) for i in held_idx],
        "skipped": skipped,
        "scorer": scorer,
        "state": state,
        "logger": logger,
    }


def _resume_step(cfg: Config, out: Path) -> int:
    """The run-wide step the checkpoints on disk resume from (metrics logged after it are dropped)."""
    from jetvit.train.checkpoint import load_checkpoint

    offset = 0
    for name in ("step1", "step2", "finetune"):
        stages = getattr(cfg, name).stages
        total = sum(s.steps for s in stages)
        path = out / "ckpt" / f"{name}.pt"
        if not path.is_file():
            return offset
        ck = load_checkpoint(path)
        if not ck.get("done"):
            return offset + sum(s.steps for s in stages[: ck["stage"]]) + ck["step"]
        offset += total
    return offset


def _export(out: Path, model: nn.Module, summary: dict, trajectories: dict | None, cfg: Config, logger) -> None:
    import jetvit
    from jetvit.train import plots
    from jetvit.train.metrics import read_metrics
    from jetvit.train.report import write_report

    jetvit.save(model, out / "model")
    atomic_write_json(out / "summary.json", summary)
    rows = [("teacher", summary.get("teacher_arch", "F" * len(summary["arch"])))]
    if trajectories is not None:
        atomic_write_json(
            out / "trajectory.json",
            {"scorer": summary["scorer"], "teacher_score": summary["teacher_score"], **trajectories},
        )
        rows.append(("step 1 (L/W)", summary["step1_arch"]))
        plots.plot_beam(trajectories, out / "beam_scores.png", score_name=summary["scorer"])
    rows.append(("final", summary["arch"]))
    plots.plot_architectures(rows, out / "architecture.png")
    plots.plot_losses(read_metrics(out / "metrics.jsonl"), out / "loss.png")
    write_report(out, summary, trajectories, cfg)
