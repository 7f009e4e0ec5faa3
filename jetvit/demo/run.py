"""`make demo`: the main job end to end on the built-in teacher, through the real command line.

    python -m jetvit.demo.run [--out runs/demo] [--config configs/demo.yaml] [--set key=value ...]

1. data: keyshapes val samples as a labelled segmentation folder (for `jetvit eval`), under OUT/data (the search
   distills on generated keyshapes train scenes, `data.source: keyshapes`, which need no files);
2. `jetvit search --config demo` (jetvit/configs/demo.yaml): Step 1 (L/W) and Step 2 (F placement) supernets and
   beam searches, fine-tuning, report and plots in OUT/search;
3. `jetvit eval`: teacher and searched student with the teacher's linear head, side-by-side figures in OUT/eval;
4. `jetvit bench`: teacher against student at the native and at 4x the native side, in OUT/bench;
5. prints the teacher's score, the searched architecture, the student's score and the speedup, and writes
   OUT/REPORT.md linking everything.

Every step is resumable (the search continues an interrupted run; finished steps are not redone unless --fresh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jetvit.demo.teacher import ASSET_DIR, TEACHER_JSON
from jetvit.report import flops_comparison
from jetvit.tasks import synthetic

DEFAULT_CONFIG = "demo"  # jetvit/configs/demo.yaml, shipped in the package


def jetvit_cli(*args: str, log: Path) -> None:
    """Run `python -m jetvit ARGS`, echoing its output and keeping it in `log`; a failure raises with the log's tail."""
    cmd = [sys.executable, "-m", "jetvit", *args]
    print("$ jetvit " + " ".join(args), flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if "\r" not in line and "it/s" not in line and "s/it" not in line:  # progress bars only go to the log
                print("  " + line.rstrip(), flush=True)
        if proc.wait():
            raise RuntimeError(f"`jetvit {args[0]}` failed (exit {proc.returncode}); see {log}")


def write_data(root: Path, *, val: int, size: int) -> None:
    """Keyshapes val samples with their labels, written once (a finished folder is kept)."""
    for split, n in (("val", val),):
        done = root / split / ".complete"
        if done.is_file() and done.read_text().strip() == str(n):
            continue
        shutil.rmtree(root / split, ignore_errors=True)
        synthetic.write_folder(root / split, split=split, length=n, size=size)
        done.write_text(f"{n}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--teacher", default=str(ASSET_DIR), help="built-in teacher directory")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="search config: a file or a shipped name (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="search override")
    p.add_argument("--val-images", type=int, default=64, help="evaluation samples written to OUT/data/val")
    p.add_argument("--figures", type=int, default=4, help="side-by-side prediction images")
    p.add_argument("--fresh", action="store_true", help="delete OUT first")
    args = p.parse_args(argv)

    start = time.perf_counter()
    out, teacher = Path(args.out), Path(args.teacher)
    if not (teacher / TEACHER_JSON).is_file():
        raise SystemExit(f"no built-in teacher in {teacher}: build it with `make teacher`")
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    record = json.loads((teacher / TEACHER_JSON).read_text())
    native = record["val"]["resolution"]
    print(f"teacher {teacher}: {record['arch']}, keyshapes val mIoU {100 * record['val']['miou']:.2f} "
          f"({record['val']['samples']} samples at {native}x{native})", flush=True)  # fmt: skip
    if "control" in record:
        c = record["control"]
        gap = 100 * c["miou_gap"]
        print(f"  all-window control trained the same way: {100 * c['val']['miou']:.2f} (full attention {gap:+.2f})")

    timings = {}
    t = time.perf_counter()
    write_data(out / "data", val=args.val_images, size=native)
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    search_args = ["search", "--config", args.config, "--out", str(out / "search"), "--set", f"teacher={teacher}"]
    search_args += ["--set", f"score.options.head={teacher / 'seg_head'}"]
    for o in args.overrides:
        search_args += ["--set", o]
    jetvit_cli(*search_args, log=out / "search.log")
    timings["search"] = time.perf_counter() - t
    summary = json.loads((out / "search" / "summary.json").read_text())
    arch = summary["arch"]

    t = time.perf_counter()
    jetvit_cli(
        "eval", "--model", str(out / "search" / "model"), "--teacher", str(teacher), "--task", "seg",
        "--data", str(out / "data"), "--split", "val", "--num-classes", str(synthetic.NUM_CLASSES),
        "--head", str(teacher / "seg_head"), "--out", str(out / "eval"), "--figures", str(args.figures),
        "--no-progress", "--device", "cpu", log=out / "eval.log",
    )  # fmt: skip
    timings["eval"] = time.perf_counter() - t
    results = json.loads((out / "eval" / "results.json").read_text())["results"]

    t = time.perf_counter()
    big = 4 * native
    jetvit_cli(
        "bench", "--teacher", str(teacher), "--arch", arch, "--res", f"{native}x{native}", "--res", f"{big}x{big}",
        "--repeats", "5", "--no-memory", "--out", str(out / "bench"), log=out / "bench.log",
    )  # fmt: skip
    timings["bench"] = time.perf_counter() - t
    bench = json.loads((out / "bench" / "bench.json").read_text())
    speedups = bench_speedups(bench)

    total = time.perf_counter() - start
    lines = [
        f"teacher  {record['arch']}  mIoU {100 * results['teacher']['miou']:.2f}",
        f"student  {arch}  mIoU {100 * results['student']['miou']:.2f}  (Step 1: {summary['step1_arch']})",
    ]
    for res, s in speedups.items():
        lines.append(f"speedup at {res}: {s:.2f}x (latency, batch 1, CPU)")
    gap = 100 * (results["student"]["miou"] - results["teacher"]["miou"])
    lines.insert(2, f"student - teacher: {gap:+.2f} mIoU points on {args.val_images} val samples")
    lines.append(f"FLOPs at {'x'.join(map(str, summary['flops_resolution']))}: "
                 f"{flops_comparison(summary['teacher_flops'], summary['flops'])}")  # fmt: skip
    lines += front_lines(summary)
    lines.append(f"demo took {total / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    print("\n" + "\n".join(lines))
    write_report(out, record, summary, results, bench, speedups, timings, total)
    print(f"wrote {out / 'REPORT.md'}")
    return 0


def front_lines(summary: dict) -> list[str]:
    """The accuracy-latency front the search measured, one line a point (empty without one)."""
    rows = [r for r in summary.get("front") or [] if "score" in r]
    if not rows:
        return []
    paper = summary["picks"]["paper"]["arch"]
    res = "x".join(map(str, summary.get("flops_resolution", [])))
    out = [f"front ({summary['criterion']} criterion; each point distilled briefly, timed at {res} on this CPU):"]
    for r in rows:
        tags = [t for t, a in (("paper's pick", paper), ("the pick", summary["arch"])) if a == r["arch"]]
        out.append(
            f"  {r['arch']}  score {100 * r['score']:.2f} ({-100 * r['below_teacher']:+.2f} to the teacher)  "
            f"{r['speedup']:.2f}x the teacher" + (f"  <- {', '.join(tags)}" if tags else "")
        )
    c = summary.get("compute")
    if c:
        out.append(
            f"  against a paper-style search: {c['steps']} training steps for {c['paper_steps']}, "
            f"{c['seconds'] / 60:.1f} min for an estimated {c['paper_seconds'] / 60:.1f}"
        )
    return out


def bench_speedups(bench: dict) -> dict[str, float]:
    """{"HxW": measured speedup (median teacher latency / median student latency)} from a `jetvit bench` bench.json."""
    return {"x".join(map(str, row["res"])): float(row["speedup"]["measured"]) for row in bench["rows"]}


def write_report(out: Path, record, summary, results, bench, speedups, timings, total) -> None:
    from jetvit.io import atomic_write_text

    figs = sorted((out / "eval" / "figures").glob("*.png")) if (out / "eval" / "figures").is_dir() else []
    md = [
        "# jetvit demo: Post-Training Attention Search on the built-in teacher",
        "",
        "Teacher: `jetvit/assets/teacher`, a DINOv3-layout ViT (8 blocks, width 192, patch 8, 4 registers, RoPE,",
        "LayerScale) pretrained by `make teacher` on the synthetic `keyshapes` task (`jetvit/tasks/synthetic.py`).",
        "",
        "| model | architecture | keyshapes val mIoU (%) |",
        "|---|---|---|",
        f"| teacher | `{record['arch']}` | {100 * results['teacher']['miou']:.2f} |",
    ]
    if "control" in record:
        c = record["control"]
        md.append(f"| all-window control (pretrained the same way) | `{c['arch']}` | {100 * c['val']['miou']:.2f} "
                  f"(on {c['val']['samples']} samples) |")  # fmt: skip
    md += [
        f"| Step 1 (L/W) | `{summary['step1_arch']}` | search score {100 * summary['step1_score']:.2f} |",
        f"| searched student | `{summary['arch']}` | {100 * results['student']['miou']:.2f} |",
        "",
        "Speed (`jetvit bench`, CPU, batch 1): "
        + ", ".join(f"{s:.2f}x at {r}" for r, s in speedups.items())
        + f"; {flops_comparison(summary['teacher_flops'], summary['flops'])} at "
        + "x".join(map(str, summary["flops_resolution"]))
        + ".",
        "",
        f"Took {total / 60:.1f} min: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
        "",
        "- search report: [search/report.md](search/report.md); plots: [architecture](search/architecture.png), "
        "[beam scores](search/beam_scores.png), [losses](search/loss.png)"
        + (", [accuracy against latency](search/front.png)" if (out / "search" / "front.png").is_file() else ""),
        "- evaluation: [eval/results.json](eval/results.json); benchmark: [bench/bench.md](bench/bench.md)",
        "",
    ]
    front = front_lines(summary)
    if front:
        md += ["```", *front, "```", "", "![accuracy against latency](search/front.png)", ""]
    md += [
        "Predictions (image, ground truth, teacher, student):",
        "",
    ]
    md += [f"![{f.stem}](eval/figures/{f.name})" for f in figs]
    atomic_write_text(out / "REPORT.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    sys.exit(main())
