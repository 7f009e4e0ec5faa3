"""Plots of a search run: the per-layer architecture, beam scores per round, loss curves (PNG, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from jetvit.io import atomic_write_bytes
from jetvit.model import KIND_NAMES

KIND_COLORS = {"L": "#4C9F70", "W": "#3B75AF", "F": "#D1495B"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_architectures(rows: list[tuple[str, str]], path: str | Path) -> None:
    """One row of coloured cells per (label, arch string), one column per block."""
    from matplotlib.patches import Patch

    plt = _figure()
    depth = max(len(a) for _, a in rows)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * depth + 2), 0.5 * len(rows) + 1.0))
    for r, (_, arch) in enumerate(rows):
        for i, k in enumerate(arch):
            ax.add_patch(plt.Rectangle((i, r), 0.95, 0.9, color=KIND_COLORS[k]))
            ax.text(i + 0.47, r + 0.45, k, ha="center", va="center", color="white", fontsize=8)
    ax.set_xlim(0, depth)
    ax.set_ylim(len(rows), 0)
    ax.set_yticks([r + 0.45 for r in range(len(rows))], [label for label, _ in rows])
    ax.set_xticks([i + 0.47 for i in range(depth)], [str(i) for i in range(depth)], fontsize=7)
    ax.set_xlabel("block")
    ax.legend(
        handles=[Patch(color=c, label=KIND_NAMES[k]) for k, c in KIND_COLORS.items()],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35),
        ncol=3,
        frameon=False,
    )
    ax.spines[:].set_visible(False)
    _save(fig, Path(path))


def plot_beam(trajectories: dict[str, dict[str, Any]], path: str | Path, *, score_name: str = "score") -> None:
    """Every candidate's score per round (dots), the beam (circles) and the best so far (line)."""
    from matplotlib.ticker import MaxNLocator

    plt = _figure()
    fig, axes = plt.subplots(
        1, len(trajectories), figsize=(5 * len(trajectories), 3.5), squeeze=False, layout="constrained"
    )
    for ax, (name, traj) in zip(axes[0], trajectories.items()):
        best, xs_best, ys_best = float("-inf"), [], []
        for rnd in traj["rounds"]:
            r = rnd["round"]
            ys = [c["score"] for c in rnd["candidates"]]
            ax.scatter([r] * len(ys), ys, s=10, color="0.6", zorder=2)
            beam_ys = [traj["scores"][a] for a in rnd["beam"]]
            ax.scatter([r] * len(beam_ys), beam_ys, s=30, facecolors="none", edgecolors="C0", zorder=3)
            if ys:
                best = max(best, max(ys))
                xs_best.append(r)
                ys_best.append(best)
        ax.plot(xs_best, ys_best, color="C3", label="best so far", zorder=4)
        ax.set_title(f"{name}: best {traj['best']['arch']}", fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(score_name)
        ax.legend(fontsize=8)
    _save(fig, Path(path))


def plot_losses(records: list[dict[str, Any]], path: str | Path) -> None:
    """Training loss against the run-wide step, one colour per phase."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    phases: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        if "loss" in rec and "phase" in rec:
            xs, ys = phases.setdefault(rec["phase"], ([], []))
            xs.append(rec["global_step"])
            ys.append(rec["loss"])
    for name, (xs, ys) in phases.items():
        ax.plot(xs, ys, label=name)
    ax.set_xlabel("optimizer step (all phases)")
    ax.set_ylabel("distillation loss")
    if any(y > 0 for _, ys in phases.values() for y in ys):
        ax.set_yscale("log")
    if phases:
        ax.legend(fontsize=8)
    _save(fig, Path(path))


def plot_front(
    front: dict[str, Any],
    path: str | Path,
    *,
    teacher_score: float,
    teacher_ms: float,
    pick: str,
    teacher_measured_ms: float | None = None,
    score_name: str = "score",
    step1: list[tuple[str, float, float]] | None = None,
) -> None:
    """Score against latency: every Step 2 candidate (supernet score, ms predicted by the latency table), the Pareto
    front (line), the measured points (distilled briefly, ms measured beside the teacher), the teacher (at its table
    latency, and as measured with the front), the paper's pick and the run's pick."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pts = front["points"]
    ax.scatter([p["ms"] for p in pts], [p["score"] for p in pts], s=14, color="#999999", label="Step 2 candidates")
    if step1:
        ax.scatter([t for _, _, t in step1], [s for _, s, _ in step1], s=10, marker="x", color="#BBBBBB",
                   label="Step 1 candidates (L/W supernet)")  # fmt: skip
    by_arch = {p["arch"]: p for p in pts}
    par = [by_arch[a] for a in front["pareto"] if a in by_arch]
    ax.plot([p["ms"] for p in par], [p["score"] for p in par], "-o", color="#3B75AF", ms=4, label="front (supernet)")
    measured = front.get("measured") or {}
    front_teacher = front.get("teacher_score", teacher_score)
    # `front.score_options`: the measured points and the teacher beside them are scored apart from the search
    by_front = " (front's scorer)" if front_teacher != teacher_score else ""
    if measured:
        ms = [m["ms"] for m in measured.values()]
        ax.scatter(ms, [m["score"] for m in measured.values()], s=40, color="#4C9F70", zorder=3,
                   label="front, distilled and measured" + by_front)  # fmt: skip
        for a, m in measured.items():
            ax.annotate(a, (m["ms"], m["score"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.scatter([teacher_ms], [teacher_score], marker="*", s=120, color="#D1495B", zorder=4, label="teacher (table)")
    if teacher_measured_ms is not None:  # scored by the front's scorer, as the measured points are
        ax.scatter([teacher_measured_ms], [front_teacher], marker="*", s=120, color="#4C9F70", zorder=4,
                   label="teacher (measured with the front)" + by_front)  # fmt: skip
    paper = front["picks"]["paper"]["arch"]
    for arch, label, color in ((paper, "paper's pick", "#E09F3E"), (pick, "this run's pick", "#000000")):
        p = measured.get(arch) or by_arch.get(arch)
        if p is not None:
            ax.scatter([p["ms"]], [p["score"]], s=110, facecolors="none", edgecolors=color, linewidths=1.5, zorder=5,
                       label=f"{label}: {arch}")  # fmt: skip
    ax.set_xlabel("latency per image (ms)")
    ax.set_ylabel(score_name)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, Path(path))
