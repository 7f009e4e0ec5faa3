"""`jetvit bench`: teacher against hybrid, latency / throughput / peak memory, measured interleaved in one run.

    jetvit bench --preset dinov3-s --arch LLWLWFLLWLLF --res 1024x1024 --res 2048x2048 --out benchmarks/results/x
    jetvit bench --teacher facebook/dinov3-vitl16-pretrain-lvd1689m --arch ... --res 1024x2048 --device cuda \\
        --dtype bf16 --mode graphs
    jetvit bench --preset dinov3-s --latency-table --res 512 [--arch LLWL...]   # what the search reads
    jetvit bench --preset dinov3-l --latency-table --res 1024x2048 --predict h100 --dtype bf16

`--latency-table` shows the students' latency table at each --res (`jetvit.search.latency`: each block kind's time
and the fixed parts, measured on --device part by part with an end-to-end check, or predicted with --predict), the
numbers a latency-aware search (`objective.criterion: latency`, `budget.max_latency_ms`) reads; tables are cached in
$JETVIT_CACHE/latency (~/.cache/jetvit/latency) and reused (`--refresh` measures again).

Presets are the released architectures with random weights (speed does not depend on the values); see
`jetvit.bench.presets`. Writes bench.json, bench.md and bench.png into --out. How a forward runs (`--dtype bf16`:
weights cast to bf16 once, no autocast; `--mode`; the SDPA backend; the throughput batch): `jetvit.bench.harness`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", help="teacher source, anything jetvit.load_teacher accepts (checkpoint, dir, Hub id)")
    src.add_argument("--preset", help="a built-in architecture with random weights, e.g. dinov3-s, dav2-l, tiny")
    p.add_argument("--arch", help="the hybrid's per-block string of F/W/L letters (optional with --latency-table)")
    p.add_argument("--res", action="append", required=True, help="HxW resolution (repeatable), e.g. 1024x2048")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="throughput batch (default: on CUDA from the teacher's batch-1 peak memory, at most 32; 1 on CPU)",
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: weights and input cast to bf16 once (no autocast); linear attention still sums in fp32",
    )
    p.add_argument(
        "--mode",
        choices=["eager", "compiled", "graphs"],
        default=None,
        help="eager; compiled: each block kind compiled once (regional torch.compile); graphs: CUDA graphs (CUDA)",
    )
    p.add_argument("--compile", action="store_true", help="the same as --mode compiled")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed repeats per resolution")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model before timing")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--sdpa-backend",
        choices=["auto", "default", "flash", "cudnn", "efficient", "math"],
        default="auto",
        help="CUDA: auto = the teacher's fastest (tried at each resolution), default = PyTorch's order, or a backend "
        "put first in PyTorch's order (never forced: masked window calls fall through)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="CPU timing clock: wall time, or this process's CPU time (one thread; for shared machines)",
    )
    p.add_argument("--head", action="store_true", help="time backbone + depth head (models with a DPT head)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--out", default="bench-results", help="output directory for bench.json/.md/.png")
    p.add_argument(
        "--latency-table",
        action="store_true",
        help="show the latency table the search reads at each --res (cached), instead of teacher against hybrid",
    )
    p.add_argument("--refresh", action="store_true", help="--latency-table: measure again even when cached")
    p.add_argument(
        "--predict",
        choices=["h100", "h200", "rtx3090", "orin"],  # jetvit.bench.cost.DEVICES, not imported for --help
        help="also print the cost model's prediction on this GPU (jetvit.bench.cost); with --device cuda and no GPU, "
        "only the prediction",
    )


def run(args: argparse.Namespace) -> int:
    from jetvit.bench.harness import BenchOptions, build_pair, parse_res, run_benchmark
    from jetvit.bench.report import markdown_table, write_outputs
    from jetvit.model import validate_arch

    if args.latency_table:
        return _latency_tables(args)
    if args.arch is None:
        raise ValueError("--arch is needed (the hybrid to compare with the teacher), except with --latency-table")
    if args.predict and args.device == "cuda" and not _has_cuda():
        teacher = _teacher(args)  # no GPU to measure on: the prediction alone
        print(_predicted(args, teacher, validate_arch(args.arch, teacher.cfg.depth)))
        return 0
    opts = BenchOptions(
        resolutions=[parse_res(r) for r in args.res],
        batch=args.batch,
        dtype=args.dtype,
        mode=_mode(args),
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        head=args.head,
        sdpa_backend=args.sdpa_backend,
        threads=args.threads,
        clock=args.clock,
    )
    teacher = _teacher(args)
    arch = validate_arch(args.arch, teacher.cfg.depth)
    predicted = _predicted(args, teacher, arch) if args.predict else ""
    hybrid = build_pair(teacher, arch)
    command = "jetvit bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else _argv(args))
    result = run_benchmark(teacher, hybrid, opts, command=command, log=lambda m: print(m, flush=True))
    paths = write_outputs(result.to_dict(), args.out)
    print(markdown_table(result.to_dict()))
    if predicted:
        print("\n" + predicted)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _latency_tables(args: argparse.Namespace) -> int:
    """`--latency-table`: each --res's table printed (and written to --out as latency-HxW.json)."""
    from pathlib import Path

    from jetvit.bench.harness import parse_res
    from jetvit.bench.latency import table_for
    from jetvit.io import atomic_write_json
    from jetvit.model import validate_arch

    teacher = _teacher(args)
    depth = teacher.cfg.depth
    arch = validate_arch(args.arch, depth) if args.arch else None
    for text in args.res:
        H, W = parse_res(text)
        teacher.grid_size(H, W)  # a clear error for a size the model cannot take
        table, cached = table_for(
            teacher.cfg,
            source="predicted" if args.predict else "measured",
            device=args.predict or args.device,
            dtype=args.dtype,
            resolution=(H, W),
            batch=args.batch or 1,
            threads=args.threads,
            repeats=args.repeats,
            refresh=args.refresh,
        )
        print(table.markdown(depth))
        if arch is not None:
            teacher_arch = "F" * depth
            print(
                f"`{arch}`: {table.predict(arch):.3f} ms predicted, {table.speedup(arch, teacher_arch):.2f}x the "
                f"teacher's {table.predict(teacher_arch):.3f} ms\n"
            )
        path = Path(args.out) / f"latency-{H}x{W}.json"
        atomic_write_json(path, table.to_dict())
        print(f"{'from the cache' if cached else 'measured' if not args.predict else 'predicted'}; wrote {path}\n")
    return 0


def _teacher(args: argparse.Namespace) -> Any:
    from jetvit.model import HybridViT

    if args.preset:
        from jetvit.bench.presets import preset_config

        teacher = HybridViT(preset_config(args.preset))
    else:
        from jetvit.teachers import load_teacher

        teacher = load_teacher(args.teacher)
    if args.head and teacher.depth_head is None:
        raise ValueError("--head needs a model with a depth head (a Depth-Anything-V2 teacher or dav2-* preset)")
    return teacher


def _predicted(args: argparse.Namespace, teacher: Any, arch: str) -> str:
    from jetvit.bench import cost
    from jetvit.bench.harness import parse_res

    resolutions = [parse_res(r) for r in args.res]
    return cost.compare(
        teacher, arch, resolutions, device=args.predict, dtype=args.dtype, mode=_mode(args), head=args.head
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _mode(args: argparse.Namespace) -> str:
    if args.compile and args.mode not in (None, "compiled"):
        raise ValueError(f"--compile means --mode compiled, but --mode {args.mode} was given")
    return "compiled" if args.compile else args.mode or "eager"


def _argv(args: argparse.Namespace) -> list[str]:
    """The options as a command line, for runs started from Python (tests) rather than the shell."""
    out = ["--teacher", args.teacher] if args.teacher else ["--preset", args.preset]
    out += ["--arch", args.arch] if args.arch else []
    for r in args.res:
        out += ["--res", r]
    for flag in (
        "batch", "dtype", "mode", "device", "repeats", "warmup", "threads", "sdpa_backend", "clock", "out", "predict",
    ):  # fmt: skip
        v = getattr(args, flag)
        if v is not None:
            out += [f"--{flag.replace('_', '-')}", str(v)]
    out += [f"--{f.replace('_', '-')}" for f in ("compile", "head", "no_memory") if getattr(args, f)]
    return out
