"""The accuracy-latency front of a search run, and the picks made on it.

After Step 2 every scored candidate has a supernet score and a latency predicted by the run's latency table
(`jetvit.search.latency`). The front is the Pareto-optimal ones among Step 2's candidates (Step 1's pick, with no F,
is Step 2's start and among them). Two picks are made on it:

    paper     the paper's criterion: Step 2's best within `step2.max_full` F blocks (or the first to reach the teacher)
    latency   the fastest candidate within `objective.tolerance` of the teacher's score (the best score when none is);
              on a measured front, of the reference `objective.reference` names

With `front.steps > 0`, up to `front.max_points` candidates of the front (both picks always among them, then the
points just faster than the latency pick: `jetvit.search.latency.points_to_measure`) are each
distilled `front.steps` steps from the supernet's weights (`Experiment.distill`), scored by the front's scorer (the
run's, with `front.score_options` over its options: more samples for a few points) against the teacher's score by the
same scorer, and timed against the teacher on the run's device at the latency table's resolution (interleaved,
`latency.repeats` pairs). The latency pick is then made again on those measurements, which the supernet's shared
weights cannot bias. Each measured point is written to `front.json` as soon as it is known; a resumed run measures
only what is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from jetvit.io import atomic_write_json, read_json
from jetvit.search.latency import LatencyTable, pareto_front, pick_fastest, points_to_measure
from jetvit.search.supernet import extract
from jetvit.train.config import StageConfig

log = logging.getLogger(__name__)


def candidates(traj: dict[str, Any], table: LatencyTable) -> list[tuple[str, float, float]]:
    """(arch, supernet score, predicted ms) of every architecture a search trajectory scored."""
    return [(a, float(s), table.predict(a)) for a, s in traj["scores"].items()]


def picks(
    traj2: dict[str, Any], table: LatencyTable, *, teacher_score: float, tolerance: float
) -> dict[str, dict[str, Any]]:
    """The paper's pick and the latency pick on Step 2's scores (module docstring), each with its supernet score and
    predicted ms."""
    points = candidates(traj2, table)
    fastest = pick_fastest(points, teacher_score, tolerance)
    best = traj2["best"]["arch"]
    out = {}
    for name, arch, why in (
        ("paper", best, "Step 2's best (the paper's criterion)"),
        (
            "latency",
            fastest or best,
            f"the fastest within {tolerance:g} of the teacher" if fastest else "none within the tolerance: the best",
        ),
    ):
        out[name] = {"arch": arch, "score": float(traj2["scores"][arch]), "ms": table.predict(arch), "why": why}
    return out


def step1_pick(traj1: dict[str, Any], table: LatencyTable, *, tolerance: float) -> str:
    """Step 1's pick under the latency criterion: the fastest L/W architecture within `tolerance` of Step 1's best
    score (Step 1 has no teacher-level score to compare with: its candidates have no full attention yet)."""
    return pick_fastest(candidates(traj1, table), float(traj1["best"]["score"]), tolerance) or traj1["best"]["arch"]


def measure_latency(
    teacher: nn.Module, model: nn.Module, size: tuple[int, int], *, device: torch.device, repeats: int, batch: int = 1
) -> dict[str, float]:
    """Milliseconds of one forward of the teacher and `model` at `size`, interleaved `repeats` times after a warm-up
    (medians), and the teacher-relative speedup."""
    from jetvit.bench.harness import forward_runner, summarize, time_interleaved

    torch.manual_seed(0)
    x = torch.randn(batch, 3, *size, device=device)
    was = {id(m): m.training for m in (teacher, model)}

    teacher.eval(), model.eval()
    try:
        runners = {"teacher": forward_runner(teacher), "model": forward_runner(model)}
        times = time_interleaved(runners, x, repeats=repeats, warmup=1, device=device.type)
    finally:
        for m in (teacher, model):
            m.train(was[id(m)])
    t, s = summarize(times["teacher"])["median"], summarize(times["model"])["median"]
    return {"teacher_ms": t, "ms": s, "speedup": t / s}


def measure_front(
    ctx: Any, supernet2: nn.Module, traj2: dict[str, Any], table: LatencyTable, chosen: dict, *, teacher_score: float
) -> dict:
    """The front of the run in `ctx` (a `jetvit.pipeline.RunContext`): its Pareto points, and with `front.steps` the
    chosen points distilled, scored and timed (module docstring). teacher_score: the teacher's by the search's scorer
    (the front's reference unless `front.score_options` makes it another scorer). Returns what `front.json` holds."""
    exp, cfg, rt = ctx.exp, ctx.cfg, ctx.rt
    scorer = exp.front_scorer if cfg.front.steps else None
    path = ctx.out / "front.json"
    points = candidates(traj2, table)
    front = pareto_front(points)
    saved = read_json(path, default={}, expect=dict)
    measured: dict[str, Any] = dict(saved.get("measured", {}))
    result: dict[str, Any] = {
        "table": table.to_dict(),
        "points": [{"arch": a, "score": s, "ms": t} for a, s, t in points],
        "pareto": [a for a, _, _ in front],
        "picks": chosen,
        "scorer": (scorer or exp.scorer).name,
        "teacher_score": teacher_score,
        "measured": measured,
    }
    if scorer is not None:  # the teacher again, by the front's scorer: once (a resumed run reads it back)
        known = saved.get("teacher_score")
        result["teacher_score"] = known if known is not None else ctx.score(exp.teacher, scorer)
        if rt.main:
            atomic_write_json(path, result)
    if cfg.front.steps == 0:
        if rt.main:
            atomic_write_json(path, result)
        return result
    stage = front_stage(cfg)
    picks = [chosen["paper"]["arch"], chosen["latency"]["arch"]]
    todo = points_to_measure(front, picks, chosen["latency"]["arch"], cfg.front.max_points)
    from tqdm import tqdm

    for arch in tqdm(todo, desc="front", disable=not rt.main, dynamic_ncols=True):
        if arch in measured:
            continue
        model = extract(supernet2, arch)
        ckpt = ctx.ckpt(point_phase(arch))
        exp.distill(model, ckpt_path=ckpt, stages=[stage], logger=None)
        score = ctx.score(model, scorer)
        timing = None
        if rt.main:
            timing = measure_latency(
                exp.teacher, model, exp.latency_size, device=rt.device, repeats=cfg.latency.repeats, batch=1
            )
        timing = rt.broadcast_object(timing)
        measured[arch] = {"score": score, **timing, "predicted_ms": table.predict(arch), "steps": cfg.front.steps}
        log.info("front %s: score %.5g, %.3g ms (%.2fx the teacher)", arch, score, timing["ms"], timing["speedup"])
        if rt.main:
            atomic_write_json(path, result)
            if not cfg.front.reuse:
                ckpt.unlink(missing_ok=True)  # the point's weights are not kept, only its numbers
        del model
    if rt.main:
        atomic_write_json(path, result)
    return result


def final_pick(
    front: dict[str, Any],
    chosen: dict[str, dict[str, Any]],
    *,
    criterion: str,
    tolerance: float,
    reference: str = "teacher",
) -> tuple[str, str]:
    """The architecture the run fine-tunes, and why. paper: the paper's pick. latency: on the measured front when
    there is one, the fastest measured within `tolerance` of the reference (`reference` "teacher": the teacher's score
    by the same scorer; "front": the best measured score where it is below the teacher's), else the best measured
    score; without one, the latency pick on the supernet's scores."""
    if criterion == "paper":
        return chosen["paper"]["arch"], chosen["paper"]["why"]
    measured = front.get("measured") or {}
    if not measured:
        return chosen["latency"]["arch"], chosen["latency"]["why"]
    pts = [(a, m["score"], m["ms"]) for a, m in measured.items()]
    best = max(pts, key=lambda p: (p[1], -p[2]))
    ref, of = front["teacher_score"], "the teacher"
    if reference == "front" and best[1] < ref:
        ref, of = best[1], f"the best measured point ({best[0]}, below the teacher)"
    fastest = pick_fastest(pts, ref, tolerance)
    if fastest is not None:
        return fastest, f"the fastest measured within {tolerance:g} of {of} after {_steps(measured)} steps"
    return best[0], f"no measured point within {tolerance:g} of the teacher: the best measured score"


def _steps(measured: dict[str, Any]) -> int:
    return next(iter(measured.values()))["steps"]


def point_phase(arch: str) -> str:
    """The name of a front point's distillation: its checkpoint is `ckpt/front-<arch>.pt` (`RunContext.ckpt`)."""
    return f"front-{arch}"


def front_stage(cfg: Any) -> StageConfig:
    """The one stage each front point is distilled for: the fine-tuning's first, run `front.steps` steps."""
    ft0 = cfg.finetune.stages[0]
    return ft0.for_steps(cfg.front.steps, batch_size=cfg.front.batch_size or ft0.batch_size)


def finetune_stages(cfg: Any, state: Any) -> list[StageConfig]:
    """The fine-tuning's stages in the run whose state is `state` (`jetvit.rundir.RunState`): `finetune.stages`, the
    first one `front.steps` shorter when the run records that its fine-tuning continues the pick's front point."""
    stages = list(cfg.finetune.stages)
    reused = state.done("front_reuse")
    if reused is not None:
        stages[0] = stages[0].for_steps(stages[0].steps - reused["steps"])
    return stages


def warm_start(ctx: Any, model: nn.Module, arch: str, front: dict[str, Any] | None) -> list[StageConfig]:
    """The stages the run fine-tunes `model` (architecture `arch`, the supernet's weights) for, and its starting
    weights: with `front.reuse`, when `arch` is a distilled front point and the fine-tuning's first stage is longer
    than `front.steps`, `model` takes the point's weights (its finished checkpoint) and the first stage is
    `front.steps` shorter. The choice is recorded in `state.json` (`front_reuse`), so a resumed run fine-tunes the
    same stages whatever checkpoints are left. A fine-tuning already started resumes from its own checkpoint."""
    cfg, state = ctx.cfg, ctx.state
    if state.done("front_reuse") is None:
        measured = (front or {}).get("measured") or {}
        reusable = (
            cfg.front.reuse
            and arch in measured
            and cfg.finetune.stages[0].steps > cfg.front.steps
            and ctx.ckpt(point_phase(arch)).is_file()
        )
        if not reusable:
            return list(cfg.finetune.stages)
        state.finish("front_reuse", arch=arch, steps=cfg.front.steps)
    if state.done("finetune") is None and not ctx.ckpt("finetune").is_file():
        # The point's checkpoint is marked done: this loads its weights and trains nothing (retrains it if removed).
        ctx.exp.distill(model, ckpt_path=ctx.ckpt(point_phase(arch)), stages=[front_stage(cfg)], logger=None)
        log.info("fine-tuning %s from its front distillation (%d steps)", arch, cfg.front.steps)
    return finetune_stages(cfg, state)


def drop_points(ctx: Any, front: dict[str, Any] | None) -> None:
    """Remove the front points' checkpoints once the fine-tuning has finished (`run.keep_checkpoints: last`)."""
    for arch in (front or {}).get("measured") or {}:
        ctx.drop_checkpoint(point_phase(arch))


def compute(phases: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """What the latency-aware search cost against a paper-style one on the same supernets (no latency table, no
    front, the fine-tuning's full stages), from the phases `state.json` records: training steps, exact, and wall
    seconds, the paper-style's estimated (its searches and supernets are this run's; its fine-tuning is this run's
    scaled to the full steps). With `step2.trade` a block-wise Step 2 trained three candidates a block where the
    paper's trains two: its paper-style seconds are this run's scaled by 2/3 (each candidate's share of a step)."""
    ft = phases["finetune"]
    full = sum(st.steps for st in cfg.finetune.stages)
    front_steps = phases["front"]["result"]["measured"] * cfg.front.steps
    shared = ("step1", "search1", "step2", "search2")
    shared_s = sum(phases[p]["seconds"] for p in shared if p in phases)
    supernet_steps = sum(phases[p]["result"]["steps"] for p in ("step1", "step2") if p in phases)
    seconds = {p: phases[p]["seconds"] for p in ("latency", "trade", "front") if p in phases}
    traded = "trade" in phases and "step2" in phases and cfg.supernet.sampling == "blockwise"
    third = phases["step2"]["seconds"] / 3 if traded else 0.0  # the third candidate's share of Step 2's supernet
    return {
        "steps": supernet_steps + front_steps + ft["result"]["steps"],
        "paper_steps": supernet_steps + full,
        "seconds": shared_s + sum(seconds.values()) + ft["seconds"],
        "paper_seconds": shared_s - third + ft["seconds"] * full / max(ft["result"]["steps"], 1),
        "latency_seconds": seconds.get("latency", 0.0),
        "trade_seconds": third + seconds.get("trade", 0.0),
        "front_seconds": seconds.get("front", 0.0),
        "front_steps": front_steps,
    }


def front_rows(front: dict[str, Any]) -> list[dict[str, Any]]:
    """The front as rows for the report: each Pareto point with its supernet score and predicted ms, and its measured
    score, ms and speedup when it was measured (below the teacher: by the front's scorer)."""
    teacher_score = front["teacher_score"]
    by_arch = {p["arch"]: p for p in front["points"]}
    rows = []
    archs = list(dict.fromkeys([*front["pareto"], *front["measured"]]))
    for a in archs:
        p = by_arch.get(a, {"score": float("nan"), "ms": float("nan")})
        m = front["measured"].get(a)
        row = {"arch": a, "pareto": a in front["pareto"], "supernet_score": p["score"], "predicted_ms": p["ms"]}
        if m is not None:
            row.update(score=m["score"], ms=m["ms"], speedup=m["speedup"], below_teacher=teacher_score - m["score"])
        rows.append(row)
    return sorted(rows, key=lambda r: r["predicted_ms"])
