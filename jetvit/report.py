"""`report.md`: what a search (or a distillation) run found, in words a user can read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jetvit.config import Config
from jetvit.io import atomic_write_text
from jetvit.model import KIND_NAMES


def _gflops(x: float) -> str:
    return f"{x / 1e9:,.4g}"


def _kinds(arch: str) -> str:
    return ", ".join(f"{arch.count(k)} {KIND_NAMES[k]}" for k in "LWF" if k in arch)


def flops_comparison(teacher_flops: float, flops: float) -> str:
    """How the hybrid's FLOPs compare: "2.31x fewer FLOPs than the teacher", "1.04x more ...", or the same (within
    0.5%)."""
    if abs(flops - teacher_flops) <= 0.005 * teacher_flops:
        return "the same FLOPs as the teacher"
    if flops < teacher_flops:
        return f"{teacher_flops / flops:.2f}x fewer FLOPs than the teacher"
    return f"{flops / teacher_flops:.2f}x more FLOPs than the teacher"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def write_report(out: Path, summary: dict[str, Any], trajectories: dict[str, dict] | None, cfg: Config) -> None:
    lines = [f"# jetvit {'search' if trajectories else 'distill'} report", ""]
    arch = summary["arch"]
    H, W = summary["flops_resolution"]
    lines += [
        f"- Teacher: `{summary['teacher']}` ({len(arch)} blocks)",
        f"- Data: {summary['data']}; distillation targets: `{cfg.distill.targets}`",
        f"- Processes: {summary['world_size']}",
        f"- **Architecture: `{arch}`** ({_kinds(arch)})",
        f"- FLOPs at {H}x{W}: {_gflops(summary['flops'])} G vs the teacher's {_gflops(summary['teacher_flops'])} G "
        f"({flops_comparison(summary['teacher_flops'], summary['flops'])})",
        f"- Score (`{summary['scorer']}`, higher is better, on {cfg.data.holdout} held-out images): "
        f"final model {summary['final_score']:.6g}"
        + (f"; teacher {summary['teacher_score']:.6g}" if "teacher_score" in summary else ""),
        "",
        'The final model is in `model/` (load it with `jetvit.load("model")`).',
        "",
    ]
    if trajectories:
        t1, t2, tt = trajectories["step1"], trajectories["step2"], trajectories.get("trade")
        lines += [
            "## Search",
            "",
            "| step | start | result | score | rounds | scored | stopped because |",
            "|---|---|---|---|---|---|---|",
        ]
        steps = [("1: linear vs window", t1), ("2: full attention back", t2)]
        steps += [("2, traded: an F for the other efficient kind", tt)] if tt else []
        for name, t in steps:
            lines.append(
                f"| {name} | `{t['start']}` | `{t['best']['arch']}` | {t['best']['score']:.6g} | "
                f"{len(t['rounds']) - 1} | {len(t['scores'])} | {t['stop_reason']} |"
            )
        lines += [
            "",
            f"Step 1 found `{summary['step1_arch']}` ({_kinds(summary['step1_arch'])}, "
            f"{_gflops(summary['step1_flops'])} GFLOPs); Step 2 put full attention back at blocks "
            f"{_full_blocks(t2['best']['arch'])} (budget: {cfg.step2.max_full})"
            + (f"; the pick `{arch}` has it at blocks {_full_blocks(arch)}." if arch != t2["best"]["arch"] else "."),
            "",
        ]
        best1 = summary.get("step1_best", summary["step1_arch"])
        if best1 != summary["step1_arch"]:
            lines += [
                f"Step 1's best score was `{best1}`; the latency criterion took the faster `{summary['step1_arch']}`, "
                f"within {cfg.objective.tolerance:g} of it.",
                "",
            ]
        if tt:
            lines += [
                f"The latency criterion traded each F block of `{tt['start']}` for the efficient kind Step 1 did not "
                "choose there (`step2.trade`): "
                + ", ".join(f"`{c['arch']}` {c['score']:.6g}" for r in tt["rounds"][1:] for c in r["candidates"])
                + ". The trades are on the front below.",
                "",
            ]
        for name, t in (("Step 1", t1), ("Step 2", t2)):
            lines += [
                f"### {name} rounds",
                "",
                "| round | candidates | best of round | score | beam |",
                "|---|---|---|---|---|",
            ]
            for r in t["rounds"]:
                best = r.get("best") or (r["candidates"][0] if r["candidates"] else None)
                lines.append(
                    f"| {r['round']} | {len(r['candidates'])} | "
                    + (f"`{best['arch']}` | {best['score']:.6g}" if best else "- | -")
                    + f" | {' '.join(f'`{a}`' for a in r['beam'])} |"
                )
            lines.append("")
        lines += ["![beam scores](beam_scores.png)", ""]
    if summary.get("front"):
        lines += _front_section(summary, cfg)
    lines += ["## Training", "", "| phase | steps | final loss | time |", "|---|---|---|---|"]
    phases = summary.get("phases", {})
    for name in ("step1", "step2", "finetune"):
        p = phases.get(name)
        if p is None and name == "finetune":
            p = {"result": summary["finetune"], "seconds": summary["finetune"]["seconds"]}
        if p is not None:
            r = p["result"]
            lines.append(f"| {name} | {r['steps']} | {r['final_loss']:.6g} | {_seconds(p['seconds'])} |")
    for name in ("search1", "search2", "trade"):
        if name in phases:
            lines.append(f"| {name} (beam search) | - | - | {_seconds(phases[name]['seconds'])} |")
    if "front" in phases:
        n = phases["front"]["result"]["measured"]
        lines.append(f"| front ({n} points distilled and timed) | {n * cfg.front.steps} | - | "
                     f"{_seconds(phases['front']['seconds'])} |")  # fmt: skip
    if "latency" in phases:
        lines.append(f"| latency table | - | - | {_seconds(phases['latency']['seconds'])} |")
    lines += [
        "",
        f"Unreadable images skipped during training: {summary['skipped_training_images']}"
        + (f"; among the held-out images: {', '.join(summary['skipped_images'])}" if summary["skipped_images"] else ""),
        "",
        "![architecture](architecture.png)",
        "",
        "![loss](loss.png)",
        "",
        "## Files",
        "",
        "- `model/`: the final hybrid (`jetvit.save` format)",
        "- `config.yaml`: the resolved config of this run",
        "- `summary.json`, `trajectory.json`: results and every candidate scored in every round"
        if trajectories
        else "- `summary.json`: results",
        _curves_line(summary.get("tensorboard")),
        "- `architecture.png`, `loss.png`"
        + (", `beam_scores.png`" if trajectories else "")
        + (
            ", `front.png`, `front.json`, `latency.json` (the accuracy-latency front and the latency table)"
            if summary.get("front")
            else ""
        ),  # fmt: skip
        _resume_line(summary.get("keep_checkpoints", "all"), searched=bool(trajectories)),
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))


def _front_section(summary: dict[str, Any], cfg: Config) -> list[str]:
    """The accuracy-latency front: the table of its points and the plot."""
    picks = summary["picks"]
    front_scorer = summary.get("front_scorer") or {k: summary[k] for k in ("scorer", "teacher_score")}
    lines = [
        "## Accuracy against latency",
        "",
        f"Latency table: {summary['latency_table']}. The teacher: {summary['teacher_predicted_ms']:.3g} ms predicted.",
        f"Criterion: **{summary['criterion']}** (objective.tolerance {cfg.objective.tolerance:g}, reference "
        f"{cfg.objective.reference}); the pick: "
        f"`{summary['arch']}`, {summary['pick_reason']}. The paper's criterion picks `{picks['paper']['arch']}`; "
        f"on the supernet's scores the latency criterion picks `{picks['latency']['arch']}` "
        f"({picks['latency']['why']}).",
        "",
        "| architecture | on the front | supernet score | predicted ms | distilled score | minus the teacher's "
        "| measured ms | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["front"]:
        tags = [n for n, p in (("paper", picks["paper"]["arch"]), ("pick", summary["arch"])) if p == r["arch"]]
        name = f"`{r['arch']}`" + (f" ({', '.join(tags)})" if tags else "")
        if "score" in r:
            measured = f"{r['score']:.4g} | {-r['below_teacher']:+.3g} | {r['ms']:.3g} | {r['speedup']:.2f}x"
        else:
            measured = "- | - | - | -"
        lines.append(
            f"| {name} | {'yes' if r['pareto'] else 'no'} | {r['supernet_score']:.4g} | {r['predicted_ms']:.3g} "
            f"| {measured} |"
        )
    steps, reused = cfg.front.steps, (summary.get("phases") or {}).get("front_reuse")
    note = "No point was distilled (front.steps: 0): the scores are the supernet's."
    if steps:
        note = (f"Distilled points: {steps} steps each from the supernet's weights, scored by "
                f"{front_scorer['scorer']}{_options(cfg.front.score_options)} against the teacher's "
                f"{front_scorer['teacher_score']:.4g} by the same, timed against the teacher.")  # fmt: skip
    if steps and reused:
        note += f" The pick's fine-tuning continued from its point ({reused['steps']} of its steps were done here)."
    lines += ["", note]
    if summary.get("compute"):
        c = summary["compute"]
        lines += [
            "",
            f"Compute against a paper-style search on the same supernets (no latency table nor front, the fine-tuning "
            f"in full): {c['steps']} training steps against {c['paper_steps']} "
            f"({100 * (c['steps'] / c['paper_steps'] - 1):+.0f}%: the front's {c['front_steps']}, less what the "
            f"fine-tuning continued), {_seconds(c['seconds'])} against an estimated {_seconds(c['paper_seconds'])} "
            f"({100 * (c['seconds'] / c['paper_seconds'] - 1):+.0f}%; latency table {_seconds(c['latency_seconds'])}, "
            + (f"trades {_seconds(c['trade_seconds'])} (estimated), " if c.get("trade_seconds") else "")
            + f"front {_seconds(c['front_seconds'])}).",
        ]
    lines += ["", "![accuracy against latency](front.png)", ""]
    return lines


def _full_blocks(arch: str) -> list[int] | str:
    return [i for i, k in enumerate(arch) if k == "F"] or "none"


def _options(options: dict[str, Any]) -> str:
    return f" (with `front.score_options` {options})" if options else ""


def _curves_line(tensorboard: str | None) -> str:
    if tensorboard == "written to tb/":
        return "- `metrics.jsonl`, `tb/`: training curves (JSON lines, TensorBoard)"
    return f"- `metrics.jsonl`: training curves (JSON lines; TensorBoard {tensorboard or 'not written'})"


def _resume_line(keep: str, *, searched: bool) -> str:
    state = "`search/`, `state.json`" if searched else "`state.json`"
    if keep == "none":
        return f"- {state}: what the run did (its checkpoints were removed at the end: run.keep_checkpoints: none)"
    which = "every phase's" if keep == "all" else "the last phase's"
    return f"- `ckpt/` ({which} checkpoint), {state}: resume state (rerun the same command to continue)"
