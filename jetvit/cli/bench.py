"""`jetvit bench`: teacher against hybrid, latency / throughput / peak memory, measured interleaved in one run.

    jetvit bench --preset dinov3-s --arch LLWLWFLLWLLF --res 1024x1024 --res 2048x2048 --out benchmarks/results/x
    jetvit bench --teacher facebook/dinov3-vitl16-pretrain-lvd1689m --arch ... --res 1024x2048 --device cuda \\
        --dtype bf16 --compile

Presets are the released architectures with random weights (speed does not depend on the values); see
`jetvit.bench.presets`. Writes bench.json, bench.md and bench.png into --out.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", help="teacher source, anything jetvit.load_teacher accepts (checkpoint, dir, Hub id)")
    src.add_argument("--preset", help="a built-in architecture with random weights, e.g. dinov3-s, dav2-l, tiny")
    p.add_argument("--arch", required=True, help="the hybrid's per-block string of F/W/L letters")
    p.add_argument("--res", action="append", required=True, help="HxW resolution (repeatable), e.g. 1024x2048")
    p.add_argument(
        "--batch", type=int, default=None, help="throughput batch (default: largest fitting on CUDA, 1 on CPU)"
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) both models")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed repeats per resolution")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model before timing")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--sdpa-backend",
        choices=["flash", "cudnn", "efficient", "math"],
        default=None,
        help="force one SDPA backend (CUDA); default lets PyTorch choose",
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


def run(args: argparse.Namespace) -> int:
    from jetvit.bench.harness import BenchOptions, build_pair, parse_res, run_benchmark
    from jetvit.bench.report import markdown_table, write_outputs
    from jetvit.model import HybridViT, validate_arch

    opts = BenchOptions(
        resolutions=[parse_res(r) for r in args.res],
        batch=args.batch,
        dtype=args.dtype,
        compile=args.compile,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        head=args.head,
        sdpa_backend=args.sdpa_backend,
        threads=args.threads,
        clock=args.clock,
    )
    if args.preset:
        from jetvit.bench.presets import preset_config

        teacher = HybridViT(preset_config(args.preset))
    else:
        from jetvit.teachers import load_teacher

        teacher = load_teacher(args.teacher)
    if args.head and teacher.depth_head is None:
        raise ValueError("--head needs a model with a depth head (a Depth-Anything-V2 teacher or dav2-* preset)")
    arch = validate_arch(args.arch, teacher.cfg.depth)
    hybrid = build_pair(teacher, arch)
    command = "jetvit bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else _argv(args))
    result = run_benchmark(teacher, hybrid, opts, command=command, log=lambda m: print(m, flush=True))
    paths = write_outputs(result.to_dict(), args.out)
    print(markdown_table(result.to_dict()))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The options as a command line, for runs started from Python (tests) rather than the shell."""
    out = ["--teacher", args.teacher] if args.teacher else ["--preset", args.preset]
    out += ["--arch", args.arch]
    for r in args.res:
        out += ["--res", r]
    for flag in ("batch", "dtype", "device", "repeats", "warmup", "threads", "sdpa_backend", "clock", "out"):
        v = getattr(args, flag)
        if v is not None:
            out += [f"--{flag.replace('_', '-')}", str(v)]
    out += [f"--{f.replace('_', '-')}" for f in ("compile", "head", "no_memory") if getattr(args, f)]
    return out
