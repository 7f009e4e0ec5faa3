"""CPU deployment benchmark: teacher against hybrid in onnxruntime and OpenVINO, from the dynamic-shape graphs.

Both models are a benchmark preset with random weights (speed does not depend on the values): the teacher all `F`,
the hybrid `--arch` with every weight inherited (`jetvit.convert`). Each is exported once with `jetvit.export_onnx`
(any batch and resolution, fp32 by default) and run at every `--res` from that one graph. Teacher and hybrid are
timed in the same process, alternating within every repeat (order flipped each repeat), after warm-up; the speedup
is the ratio of the median latencies, its spread over the per-repeat pairs. The FLOP-ideal speedup is
`teacher.flops(H, W)["total"] / hybrid.flops(H, W)["total"]` (`HybridViT.flops`, the model's own cost model).

Goals (issue 22): measured / ideal >= 90% at 1024x1024 and >= 95% at 2048x2048, in both runtimes.

    python benchmarks/deploy_cpu.py                        # DINOv3-S/16 vs LLWLWFLLWLLF at 1024 and 2048, 2 threads
    python benchmarks/deploy_cpu.py --dry-run              # the tiny preset at 64 and 96 px, 1 repeat: a smoke run

Writes benchmarks/results/deploy_cpu.{md,json} (`--out` changes the stem; a dry run writes nothing unless given
`--out`) and prints the table last.

How the runtimes run (each choice applies to teacher and hybrid alike):
- The hybrid's graph holds the `L` blocks' per-image convolution as one grouped `Conv` (`--conv grouped`,
  `export_onnx(conv="grouped")`), the fast form in both runtimes; `--conv shifted` measures the portable default.
- OpenVINO runs at fp32 (`INFERENCE_PRECISION_HINT=f32`; its default on CPUs with bf16 units is bf16). A grouped graph
  is compiled for the one input shape of each size (`runtime_session`: OpenVINO's CPU plugin runs a grouped
  convolution whose kernel is computed in the graph only at a fixed shape); with `--conv shifted` the graph's dynamic
  shapes are kept unless `--openvino-shapes static`.
- From 2048x2048 on, onnxruntime's two sessions share one memory arena (`--ort-memory`, default `auto`: `shared`
  from 2048 on, each session's `own` below; `runtime_session(memory=)`). Each with its own arena, they kept 24 GB
  between them and the run was killed for memory (a full-attention block's scores alone are 6 GiB); one shared
  arena holds one largest run's memory, 19 GB. The earlier way, `shrink` (the arena given back after every run),
  fits too but allocates and faults the scores again in every run: a fixed cost of about 3 s per run that a served
  model does not pay, and that weighs on the 3.6x faster hybrid far more than on the teacher (at 2048x2048: teacher
  40.1 s, hybrid 14.8 s, 74% of the FLOP-ideal speedup; shared, 39.9 s and 11.5 s, 95%).
- glibc's malloc asks for transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; the script restarts
  itself with it on Linux unless `--no-hugepages`): faulting a full-attention block's 6 GiB of scores in 4 KiB pages
  cost seconds. With huge pages and `shrink`, at 2048x2048 in onnxruntime, the hybrid's run went from 21.4 s to
  15.4 s and the teacher's from 50 s to 41 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jetvit import io
from jetvit.bench.harness import machine_info, parse_res, summarize
from jetvit.bench.presets import preset_config
from jetvit.conversion import convert
from jetvit.export import ORT_MEMORY, RUNTIMES, export_onnx, runtime_session
from jetvit.model import HybridViT

GOALS = {1024: 0.90, 2048: 0.95}  # short side -> the least measured/ideal accepted
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dinov3-s", help="benchmark preset (jetvit.bench.presets)")
    p.add_argument("--arch", default="LLWLWFLLWLLF", help="the hybrid's architecture string")
    p.add_argument("--res", nargs="+", default=["1024x1024", "2048x2048"], help="resolutions HxW")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), help="onnxruntime and/or openvino")
    p.add_argument("--dtype", default="fp32", help="graph precision: fp32, fp16 or bf16")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each runtime")
    p.add_argument("--repeats", type=int, nargs="+", default=[7, 3], help="timed pairs per --res (last one repeats)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each model first (the first runs are slower)")
    p.add_argument("--openvino-shapes", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--conv", default="grouped", help="the L blocks' per-image convolution in the graph (export_onnx)")
    p.add_argument(
        "--no-hugepages", action="store_true", help="do not restart with glibc.malloc.hugetlb=1 (module docstring)"
    )
    p.add_argument(
        "--ort-memory",
        choices=["auto", *ORT_MEMORY],
        default="auto",
        help="onnxruntime's memory (runtime_session(memory=)); auto: shared from 2048 a side on, own below",
    )
    p.add_argument("--batch", type=int, default=1, help="images per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--graphs",
        help="keep the exported graphs in this folder (teacher.onnx, hybrid-CONV.onnx) and reuse the ones already "
        "there (delete them after changing the model code); default: a temporary folder",
    )
    p.add_argument("--out", help="output stem (default benchmarks/results/deploy_cpu)")
    p.add_argument("--dry-run", action="store_true", help="tiny preset, 64x64 and 96x96, 1 repeat, no warm-up")
    args = p.parse_args(argv)
    if args.dry_run:
        args.preset, args.arch, args.res, args.repeats, args.warmup = "tiny", "LWF", ["64x64", "96x96"], [1], 0
    for r in args.runtimes:
        if r not in RUNTIMES:
            p.error(f"--runtimes: {r!r} is not one of {', '.join(RUNTIMES)}")
    return args


def build_models(preset: str, arch: str, seed: int) -> tuple[HybridViT, HybridViT]:
    """The preset's teacher with random weights (the model's own initialisation) and its hybrid `arch`."""
    torch.manual_seed(seed)
    teacher = HybridViT(preset_config(preset)).eval()
    return teacher, convert(teacher, arch).eval()


def ort_memory(choice: str, shape: tuple[int, ...]) -> str:
    """onnxruntime's `runtime_session(memory=)` at `shape`: `choice`, or for "auto" `shared` from 2048 a side on
    (where two sessions' own arenas exceed this machine's 24 GB) and `own` below."""
    if choice != "auto":
        return choice
    return "shared" if min(shape[-2:]) >= 2048 else "own"


def load(path: Path, runtime: str, threads: int, shape: tuple[int, ...], static: bool, memory: str):
    """The graph in `runtime`; for OpenVINO with `static`, reshaped to the one input `shape` first (a `grouped`
    graph is, in any case: `runtime_session`); for onnxruntime with `memory` (`runtime_session(memory=)`)."""
    if runtime == "openvino":
        return runtime_session(path, runtime, threads=threads, shape=shape if static else None)
    return runtime_session(path, runtime, threads=threads, memory=memory)


def time_pairs(runs: dict[str, Any], x: np.ndarray, *, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each run on x, alternating within each repeat, the order flipped every repeat."""
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name](x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            runs[name](x)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def duration(ms: float) -> str:
    return f"{ms / 1e3:.3g} s" if ms >= 1e3 else f"{ms:.3g} ms"


def goal(res: tuple[int, int]) -> float | None:
    return GOALS.get(min(res))


def openvino_shapes(result: dict[str, Any]) -> str:
    """How OpenVINO was given the graph: a grouped graph is compiled per input shape whatever was asked."""
    if result.get("conv") == "grouped":
        return "static (compiled per size)"
    return result["openvino_shapes"]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Teacher ({result['preset']}, all F) against hybrid `{result['arch']}`, {result['dtype']}, "
        f"batch {result.get('batch', 1)}, {result['threads']} threads, dynamic-shape ONNX graphs (per-image "
        f"convolution: {result.get('conv', 'shifted')}; OpenVINO shapes: {openvino_shapes(result)}); malloc huge "
        f"pages: {'yes' if result.get('malloc_hugetlb') else 'no'}; "
        f"median of {', '.join(str(r) for r in result['repeats'])} interleaved pairs.",
        "",
        "| runtime | resolution | memory | teacher | hybrid | speedup (pairs) | ideal | measured/ideal | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        g = row["goal"]
        verdict = "-" if g is None else (f">= {g:.0%}: " + ("met" if row["fraction_of_ideal"] >= g else "NOT met"))
        lines.append(
            f"| {row['runtime']} | {row['res'][0]}x{row['res'][1]} | {row.get('ort_memory') or '-'} "
            f"| {duration(row['teacher_ms']['median'])} "
            f"| {duration(row['hybrid_ms']['median'])} | {row['speedup']:.2f}x ({row['speedup_min']:.2f}-"
            f"{row['speedup_max']:.2f}) | {row['ideal']:.2f}x | {row['fraction_of_ideal']:.0%} | {verdict} |"
        )
    lines += ["", f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} CPUs.", ""]
    lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"


HUGEPAGES = "glibc.malloc.hugetlb=1"


def hugepages() -> dict[str, Any]:
    """Whether glibc's malloc asks for transparent huge pages in this process, and the kernel's THP mode."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        mode = None
    return {"malloc_hugetlb": HUGEPAGES in os.environ.get("GLIBC_TUNABLES", ""), "thp": mode}


def restart_with_hugepages() -> None:
    """Run this script again with `GLIBC_TUNABLES` asking malloc for transparent huge pages (glibc reads tunables at
    start only); nothing on other systems or where it is already set."""
    if not sys.platform.startswith("linux") or hugepages()["malloc_hugetlb"]:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), HUGEPAGES) if t)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [parse_res(r) for r in args.res]
    repeats = [args.repeats[min(i, len(args.repeats) - 1)] for i in range(len(sizes))]
    teacher, hybrid = build_models(args.preset, args.arch, args.seed)
    for res in sizes:
        teacher.grid_size(*res)  # a clear error before the exports
    versions: dict[str, str] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy_cpu.") as tmp:
        graphs = {}
        folder = Path(args.graphs) if args.graphs else Path(tmp)
        for name, model in (("teacher", teacher), ("hybrid", hybrid)):
            graphs[name] = folder / (f"{name}.onnx" if name == "teacher" else f"{name}-{args.conv}.onnx")
            if args.graphs and graphs[name].is_file():
                print(f"reusing {graphs[name]} ({model.arch})", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            export_onnx(model, graphs[name], dtype=args.dtype, conv=args.conv)
            print(f"exported the {name} ({model.arch}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for runtime in args.runtimes:
            module = __import__(runtime)
            versions[runtime] = getattr(module, "__version__", None) or module.get_version()
            static = runtime == "openvino" and args.openvino_shapes == "static"
            for res, reps in zip(sizes, repeats):
                # loaded anew for each size: the previous size's sessions and their memory arenas are released
                shape = (args.batch, 3, *res)
                memory = ort_memory(args.ort_memory, shape) if runtime == "onnxruntime" else None
                runs = {n: load(p, runtime, args.threads, shape, static, memory) for n, p in graphs.items()}
                x = np.random.default_rng(args.seed).standard_normal(shape, dtype=np.float32)
                times = time_pairs(runs, x, repeats=reps, warmup=args.warmup)
                pairs = [t / h for t, h in zip(times["teacher"], times["hybrid"])]
                teacher_ms, hybrid_ms = summarize(times["teacher"]), summarize(times["hybrid"])
                speedup = teacher_ms["median"] / hybrid_ms["median"]
                ideal = teacher.flops(*res)["total"] / hybrid.flops(*res)["total"]
                row = dict(runtime=runtime, res=list(res), teacher_ms=teacher_ms, hybrid_ms=hybrid_ms,
                           speedup=speedup, speedup_min=min(pairs), speedup_max=max(pairs),
                           speedup_median_of_pairs=statistics.median(pairs), ideal=ideal,
                           fraction_of_ideal=speedup / ideal, goal=goal(res), ort_memory=memory)  # fmt: skip
                rows.append(row)
                print(f"{runtime} {res[0]}x{res[1]}: {speedup:.2f}x of {ideal:.2f}x", file=sys.stderr)
    result = dict(
        preset=args.preset, arch=args.arch, dtype=args.dtype, threads=args.threads, repeats=repeats,
        warmup=args.warmup, openvino_shapes=args.openvino_shapes, conv=args.conv, batch=args.batch,
        ort_memory=args.ort_memory, rows=rows,
        versions=versions,
        machine=machine_info("cpu"), command="python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"), **hugepages(),
    )  # fmt: skip
    table = markdown(result)
    stem = Path(args.out) if args.out else (None if args.dry_run else RESULTS / "deploy_cpu")
    if stem is not None:
        io.atomic_write_text(stem.with_suffix(".md"), table)
        io.atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
        print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}", file=sys.stderr)
    print(table)
    return 0


if __name__ == "__main__":
    if "--no-hugepages" not in sys.argv[1:]:
        restart_with_hugepages()
    sys.exit(main())
