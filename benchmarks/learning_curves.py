"""Learning curves: how fast each kind of hybrid learns to match the built-in teacher (`make curves`).

    python benchmarks/learning_curves.py --out benchmarks/results                  # the built-in teacher
    python benchmarks/learning_curves.py --tiny --out /tmp/curves                   # a tiny teacher, for tests

For each row (pure L, pure W, the Step-1 mix, 1, 2 and 3 F) and seed: the teacher is converted to the row's
architecture and distilled by `jetvit.experiment.Experiment.distill` (the same function `jetvit distill` runs, with the
demo config's data, generated keyshapes scenes, and options), and the keyshapes val mIoU of the teacher's linear
head on the student's features is measured every `--every` steps. Writes OUT/learning_curves.{json,md,png}: mIoU
against images seen (mean and spread over seeds), and for each row the budget after which it stops improving (the
first evaluation within `--tol` mIoU points of the row's best). Work files go to --work (default runs/curves);
finished (row, seed) runs are reused, and the tables are rewritten after every run, so a stopped benchmark keeps
what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from jetvit.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
EVAL_OFFSET = 512  # val samples [512, 512 + n): disjoint from the demo's evaluation (0..) and search scoring (256..)

# Rows: the Step-1 mix and the F positions are the ones `make demo` searched on the built-in teacher.
ROWS = {
    "pure L": "LLLLLLLL",
    "pure W": "WWWWWWWW",
    "Step 1 (L/W)": "LWLWLLWL",
    "1 F": "LFLWLLWL",
    "2 F": "LFLWLFWL",
    "3 F": "LFLWLFWF",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from jetvit.demo.teacher import ASSET_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(ASSET_DIR), help="a teacher directory written by the pretraining script")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--work", default=None, help="per-run results and checkpoints (default: runs/curves)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run, of: {', '.join(ROWS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=150, help="evaluate every this many steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-samples", type=int, default=256)
    p.add_argument("--tol", type=float, default=0.5, help="mIoU points from a row's best that count as converged")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the demo config for every run (e.g. finetune.stages.0.lr=1e-3)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="a tiny teacher, 2 rows, a few steps (for tests)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tabulate the finished runs of --rows/--seeds in the work folder")  # fmt: skip
    args = p.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; accepted: {', '.join(ROWS)}")
    return args


class Curves:
    """The teacher, data, config and evaluator shared by every run."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from jetvit.config import load_config
        from jetvit.demo.scoring import keyshapes_miou
        from jetvit.demo.teacher import load_builtin

        self.args, self.work = args, work
        self.teacher_dir = Path(args.teacher)
        self.teacher, _, _, _ = load_builtin(self.teacher_dir)
        self.teacher.requires_grad_(False)
        native = self.teacher.cfg.img_size
        cfg = load_config("demo", [f"teacher={self.teacher_dir}", *args.overrides])
        stage = cfg.finetune.stages[0].for_steps(args.steps, resolution=native, batch_size=args.batch_size)
        self.cfg = dataclasses.replace(
            cfg,
            finetune=dataclasses.replace(cfg.finetune, stages=[stage]),
            run=dataclasses.replace(cfg.run, eval_every=args.every, checkpoint_every=args.every, log_every=10),
        )
        self.evaluate = keyshapes_miou(
            teacher=self.teacher,
            head=str(self.teacher_dir / "seg_head"),
            samples=args.eval_samples,
            offset=EVAL_OFFSET,
            size=native,
        )
        self.teacher_miou = self.evaluate(self.teacher)

    def out_dir(self, row: str, seed: int) -> Path:
        arch = ROWS[row] if not self.args.tiny else ROWS[row][: len(self.teacher.blocks)]
        return self.work / f"{arch}-seed{seed}"

    def finished(self, row: str, seed: int) -> bool:
        return (self.out_dir(row, seed) / "result.json").is_file()

    def run(self, row: str, seed: int) -> dict[str, Any]:
        """One (row, seed): distill with the curve recorded (`jetvit.experiment.Experiment.distill`, as `jetvit
        distill` does); cached in the work folder."""
        from jetvit.experiment import Experiment

        arch = ROWS[row] if not self.args.tiny else ROWS[row][: len(self.teacher.blocks)]
        out = self.out_dir(row, seed)
        done = out / "result.json"
        if done.is_file():
            return json.loads(done.read_text())
        cfg = dataclasses.replace(self.cfg, run=dataclasses.replace(self.cfg.run, seed=seed))
        exp = Experiment.build(cfg, scorer=False, teacher=self.teacher)  # seeds this row's run
        t0 = time.perf_counter()
        student = exp.student(arch)
        start = self.evaluate(student)  # inheritance alone, before training
        summary = exp.distill(student, ckpt_path=out / "ckpt.pt", evaluate=self.evaluate)
        bs = cfg.finetune.stages[0].batch_size
        result = {
            "row": row,
            "arch": arch,
            "seed": seed,
            "curve": [[0, 0, start]] + [[step, step * bs, score] for step, score in summary["curve"]],
            "train_seconds": summary["seconds"],
            "seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads(),
        }
        atomic_write_json(done, result)
        (out / "ckpt.pt").unlink(missing_ok=True)
        return result


def converged_at(points: list[tuple[int, float]], tol: float) -> int | None:
    """The first step whose mean score is within `tol` (mIoU points) of the row's best; None if no points."""
    if not points:
        return None
    best = max(s for _, s in points)
    return next(step for step, s in points if s >= best - tol / 100)


def summarize(results: list[dict[str, Any]], tol: float) -> dict[str, dict[str, Any]]:
    """Per row: mean and sample standard deviation of the score at every evaluated step, over seeds."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        rows.setdefault(r["row"], {"arch": r["arch"], "runs": []})["runs"].append(r)
    for row in rows.values():
        steps = sorted({p[0] for r in row["runs"] for p in r["curve"]})
        points = []
        for step in steps:
            vals = [p[2] for r in row["runs"] for p in r["curve"] if p[0] == step]
            if len(vals) == len(row["runs"]):
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                points.append({"step": step, "mean": statistics.mean(vals), "sd": sd, "n": len(vals)})
        row["points"] = points
        row["converged_step"] = converged_at([(p["step"], p["mean"]) for p in points], tol)
        row["seeds"] = [r["seed"] for r in row["runs"]]
    return rows


def write_outputs(out: Path, res: dict[str, Any]) -> None:
    atomic_write_json(out / "learning_curves.json", res)
    bs, teacher = res["batch_size"], res["teacher_miou"]
    steps = sorted({p["step"] for row in res["rows"].values() for p in row["points"]})
    md = [
        "# Learning curves on the built-in teacher",
        "",
        f"Keyshapes val mIoU (%) of the teacher's linear head on the student's features ({res['eval_samples']} val "
        f"samples from {EVAL_OFFSET}), against optimizer steps at batch {bs} (images seen = steps x {bs}); mean ± "
        f"sample standard deviation over seeds. Teacher: **{100 * teacher:.2f}**. Each run: the teacher converted "
        "to the row's architecture, then `Experiment.distill` (as `jetvit distill`) with the demo config"
        + (f" and `{' '.join(res['overrides'])}`" if res["overrides"] else "")
        + ".",
        "",
        f"Command: `{res['command']}` on {res['machine']}; {res['seconds'] / 60:.1f} min for this invocation, "
        f"{res['run_seconds'] / 60:.1f} min of distillation and scoring in the runs it reports (runs finished by "
        "earlier invocations are reused from the work folder).",
        "",
        "| row | arch | seeds | " + " | ".join(str(s) for s in steps) + " | converged at (step) |",
        "|---|---|---|" + "---|" * len(steps) + "---|",
    ]
    for name, row in res["rows"].items():
        by_step = {p["step"]: p for p in row["points"]}
        cells = []
        for s in steps:
            p = by_step.get(s)
            spread = f" ± {100 * p['sd']:.2f}" if p is not None and p["n"] > 1 else ""
            cells.append("-" if p is None else f"{100 * p['mean']:.2f}{spread}")
        conv = row["converged_step"]
        md.append(f"| {name} | `{row['arch']}` | {len(row['seeds'])} | " + " | ".join(cells) + f" | {conv} |")
    md += [
        "",
        f"'Converged at': the first evaluated step whose mean is within {res['tol']} mIoU points of the row's best "
        "over the steps run (a row still improving at its last step has not converged).",
        "",
    ]
    atomic_write_text(out / "learning_curves.md", "\n".join(md))
    plot(res, out / "learning_curves.png")


def plot(res: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jetvit.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in res["rows"].items():
        xs = [p["step"] * res["batch_size"] for p in row["points"]]
        ys = [100 * p["mean"] for p in row["points"]]
        sd = [100 * p["sd"] for p in row["points"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{name} ({row['arch']})")
        ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.15)
    ax.axhline(100 * res["teacher_miou"], color="k", ls="--", lw=1, label="teacher")
    ax.axhline(100 * res["teacher_miou"] - 1, color="k", ls=":", lw=1, label="teacher - 1")
    ax.set_xlabel("distillation images seen")
    ax.set_ylabel("keyshapes val mIoU (%)")
    ax.set_title("Distillation learning curves, built-in teacher")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    work = Path(args.work) if args.work else (out / "curves-work" if args.tiny else ROOT / "runs" / "curves")
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from jetvit.demo.teacher import tiny_teacher

        args.teacher = str(tiny_teacher(work))
        args.rows, args.steps, args.every, args.eval_samples = ["pure L", "2 F"], 4, 2, 2
        args.batch_size, args.seeds = 2, args.seeds[:2]
    curves = Curves(args, work)
    results: list[dict[str, Any]] = []
    command = "python benchmarks/learning_curves.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for seed in args.seeds:
        for row in args.rows:
            if args.report_only and not curves.finished(row, seed):
                continue
            print(f"[curves {time.perf_counter() - start:6.0f}s] {row} seed {seed}", flush=True)
            results.append(curves.run(row, seed))
            res = {
                "teacher": args.teacher,
                "teacher_miou": curves.teacher_miou,
                "batch_size": args.batch_size,
                "eval_samples": args.eval_samples,
                "tol": args.tol,
                "overrides": args.overrides,
                "command": command,
                "machine": f"{platform.machine()}, runs with "
                + "/".join(str(t) for t in sorted({r.get("threads", torch.get_num_threads()) for r in results}))
                + " torch threads",
                "seconds": time.perf_counter() - start,
                "run_seconds": sum(r["seconds"] for r in results),
                "rows": summarize(results, args.tol),
            }
            write_outputs(out, res)
    if not results:
        raise SystemExit("no finished run to report (drop --report-only to train them)")
    print((out / "learning_curves.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
