"""Where the hybrid's time goes on CPU: torch.profiler over one forward of teacher and hybrid (random weights).

    .venv/bin/python benchmarks/profile_cpu.py --preset dinov3-s --arch LLWLWFLLWLLF --res 1024 --threads 2 \
        --out benchmarks/results/profile-cpu-dinov3s-1024.md

Writes a markdown file: time per component (attention by kind, MLP, norms, the rest: embedding, RoPE tables, final
norm), measured with record_function ranges around each block's submodules, and the top aten kernels by self time.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from jetvit.bench.harness import machine_info, parse_res
from jetvit.bench.presets import preset_config
from jetvit.model import HybridViT


def label_components(model: HybridViT) -> None:
    """Wrap every block's attention, MLP and norms in a record_function range named after the component."""

    def wrap(module: torch.nn.Module, name: str) -> None:
        def pre(mod, args):
            mod._jetvit_range = record_function(name)
            mod._jetvit_range.__enter__()

        def post(mod, args, out):
            mod._jetvit_range.__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    for blk in model.blocks:
        wrap(blk.attn, f"attn.{blk.kind}")
        wrap(blk.mlp, "mlp")
        wrap(blk.norm1, "norm")
        wrap(blk.norm2, "norm")


def profile_model(model: HybridViT, res: tuple[int, int], repeats: int) -> tuple[dict[str, float], list, float]:
    x = torch.randn(1, 3, *res)
    label_components(model)
    with torch.inference_mode():
        model(x)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                with record_function("forward"):
                    model(x)
    comp: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in prof.events():
        if e.name == "forward":
            total += e.cpu_time_total
        elif (
            e.name.startswith(("attn.", "mlp", "norm")) and e.cpu_parent is not None and e.cpu_parent.name == "forward"
        ):
            comp[e.name] += e.cpu_time_total
    comp["other (embed, RoPE tables, final norm, residuals, LayerScale)"] = total - sum(comp.values())
    ops = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    self_total = sum(a.self_cpu_time_total for a in ops)
    top = [(a.key, a.self_cpu_time_total / self_total, a.count // repeats) for a in ops if a.key != "forward"][:15]
    return {k: v / repeats / 1e3 for k, v in comp.items()}, top, total / repeats / 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="dinov3-s")
    p.add_argument("--arch", required=True)
    p.add_argument("--res", default="1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = parse_res(args.res)
    lines = [
        f"# CPU profile: {args.preset} teacher vs hybrid `{args.arch}` at {res[0]}x{res[1]}, fp32, batch 1, "
        f"{args.threads} threads, eager",
        "",
        f"command: `python benchmarks/profile_cpu.py {shlex.join(sys.argv[1:])}`",
        f"machine: {machine_info('cpu')}",
        "",
        "Times are torch.profiler CPU time per forward (mean of the profiled repeats) on a shared machine: the",
        "shares are more trustworthy than the absolute milliseconds.",
        "",
    ]
    for name, arch in (("teacher", ""), ("hybrid", args.arch)):
        torch.manual_seed(0)
        model = HybridViT(preset_config(args.preset, arch)).eval()
        comp, top, total = profile_model(model, res, args.repeats)
        lines += [
            f"## {name} `{model.arch}`: {total:.0f} ms per forward",
            "",
            "| component | ms | share |",
            "|---|---|---|",
        ]
        for k, v in sorted(comp.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {v:.0f} | {v / total:.0%} |")
        lines += ["", "| aten kernel (self time) | share | calls per forward |", "|---|---|---|"]
        lines += [f"| {k} | {s:.1%} | {c} |" for k, s, c in top]
        lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
