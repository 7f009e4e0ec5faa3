"""The cost model's CPU goals (issue 20): predicted GPU latency, hybrid speedup and the `L` block's attention bytes.

    .venv/bin/python benchmarks/cost_model.py --out benchmarks/results        # writes cost_model.{md,json}

Everything is counted on fake tensors (`jetvit.bench.cost`): no weights, no GPU, a few seconds. Models are the
presets of `jetvit.bench.presets` (random-weight shapes of the released models) and their 2-F hybrids
(`presets.HYBRID_ARCHS`). Goals, with the constants of `jetvit.bench.cost` chosen once from public figures:

1. the predicted latency of the DINOv3-L/16 teacher at 1024x2048, bf16, batch 1 on the H100, eager, within 30% of
   the paper's measured 35.07 ms;
2. the predicted H100 speedup of its 2-F hybrid at least 90% of the FLOP-ideal speedup (teacher FLOPs / hybrid
   FLOPs), under CUDA graphs and compiled (eager shown for reference);
3. the bytes one `L` block's attention (between `qkv` and `proj`) moves: today's eager path (the plain PyTorch ops,
   `jetvit.kernels` off) against the compiled view of that path and against the fused kernels (`jetvit.kernels`,
   counted when the model runs them on CUDA): the best of them at most a quarter of today's.

A miss is reported as a miss.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch

from jetvit.bench import cost
from jetvit.bench.presets import HYBRID_ARCHS, PRESETS, preset_config
from jetvit.io import atomic_write_json, atomic_write_text
from jetvit.model import HybridViT

PAPER_TEACHER_MS = 35.07  # DINOv3-L/16 at 1024x2048 (2K), bf16, H100: the paper's main table
TEACHER_TOLERANCE = 0.30
IDEAL_FRACTION = 0.90
BYTES_FRACTION = 0.25
# "Today" for the bytes goal: the last commit before issue 20's work, whose L block the issue audited (fp32 copies of
# phi(K), V and phi(q), RoPE by concatenation, the grouped convolution).
BASELINE = "7097331"


def baseline_model(preset: str, arch: str) -> torch.nn.Module | None:
    """The model of commit `BASELINE` (its `model.py` and `ops.py`, read with `git show`) on the meta device, or None
    where the checkout does not have that commit."""
    try:
        src = {
            name: subprocess.run(
                ["git", "show", f"{BASELINE}:jetvit/{name}.py"], capture_output=True, text=True, check=True
            ).stdout
            for name in ("ops", "model")
        }
    except (OSError, subprocess.CalledProcessError):
        return None
    modules = {}
    for name in ("ops", "model"):
        mod = types.ModuleType(f"_jetvit_{BASELINE}_{name}")
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        if name == "model":
            mod.ops = modules["ops"]
        exec(compile(src[name], f"{BASELINE}:jetvit/{name}.py", "exec"), mod.__dict__)
        modules[name] = mod
    model = modules["model"]
    model.ops = modules["ops"]  # its `from jetvit import ops` bound today's ops: the commit's own instead
    with torch.device("meta"):
        return model.HybridViT(model.ViTConfig(**{**PRESETS[preset], "arch": arch}))


def ideal_speedup(preset: str, arch: str, res: tuple[int, int]) -> float:
    """Teacher FLOPs / hybrid FLOPs from the model's own count (`HybridViT.flops`)."""
    with torch.device("meta"):
        teacher, hybrid = HybridViT(preset_config(preset)), HybridViT(preset_config(preset, arch))
    return teacher.flops(*res)["total"] / hybrid.flops(*res)["total"]


def speedups(preset: str, res: tuple[int, int], device: str, dtype: str) -> list[dict[str, Any]]:
    arch = HYBRID_ARCHS[preset]
    ideal = ideal_speedup(preset, arch, res)
    rows = []
    for mode in cost.MODES:
        t = cost.predict(preset_config(preset), *res, device=device, dtype=dtype, mode=mode)
        h = cost.predict(preset_config(preset, arch), *res, device=device, dtype=dtype, mode=mode)
        rows.append(
            {
                "preset": preset,
                "arch": arch,
                "resolution": list(res),
                "mode": mode,
                "teacher_ms": t.ms,
                "hybrid_ms": h.ms,
                "speedup": t.ms / h.ms,
                "ideal": ideal,
                "fraction_of_ideal": t.ms / h.ms / ideal,
                "teacher_launches": t.launches,
                "hybrid_launches": h.launches,
            }
        )
    return rows


def l_attention_bytes(preset: str, res: tuple[int, int], device: str, dtype: str) -> list[dict[str, Any]]:
    """Bytes per `L` block in its attention part, for each way of running it."""
    arch = HYBRID_ARCHS[preset]
    cfg = preset_config(preset, arch)
    ways = [
        (f"eager at {BASELINE} (today: the issue's audit)", dict(mode="eager", kernels=False, baseline=True)),
        ("eager, plain PyTorch ops (this tree)", dict(mode="eager", kernels=False)),
        ("compiled view of the plain ops", dict(mode="compiled", kernels=False)),
        ("fused kernels (jetvit.kernels), eager", dict(mode="eager", kernels=True)),
        ("fused kernels, compiled view of the rest", dict(mode="compiled", kernels=True)),
    ]
    rows = []
    old = baseline_model(preset, arch)
    for name, kw in ways:
        model = old if kw.pop("baseline", False) else cfg
        if model is None:
            rows.append({"path": name, "available": False, "custom_ops": [], "bytes_per_block": None})
            continue
        report = cost.predict(model, *res, device=device, dtype=dtype, **kw)
        l_ops = [op for op in report.kernels if op.block is not None and arch[op.block] == "L" and op.part == "attn"]
        custom = sorted({op.name for op in l_ops if op.kind == "custom"})
        available = not kw["kernels"] or bool(custom)
        per_block = sum(op.bytes for op in l_ops) / arch.count("L")
        rows.append(
            {
                "path": name,
                "available": available,
                "custom_ops": custom,
                "bytes_per_block": per_block if available else None,
                "kernels_per_block": len(l_ops) / arch.count("L") if available else None,
            }
        )
    today = rows[0]["bytes_per_block"] or rows[1]["bytes_per_block"]  # this tree's plain path without the commit
    plain = rows[1]["bytes_per_block"]
    for r in rows:
        r["fraction_of_today"] = r["bytes_per_block"] / today if r["available"] else None
        r["fraction_of_plain"] = r["bytes_per_block"] / plain if r["available"] else None
    return rows


def where(preset: str, res: tuple[int, int], device: str, dtype: str) -> dict[str, str]:
    arch = HYBRID_ARCHS[preset]
    out = {}
    for name, kw in (
        ("eager, plain ops", dict(mode="eager", kernels=False)),
        ("compiled, fused", dict(mode="compiled")),
    ):
        out[name] = cost.where_the_bytes_go(
            cost.predict(preset_config(preset, arch), *res, device=device, dtype=dtype, **kw)
        )
    return out


def markdown(res: dict[str, Any]) -> str:
    g = res["goals"]
    dev = cost.DEVICES[res["device"]].name
    lines = [
        f"# Cost model: predictions for {dev} ({res['dtype']}, batch 1), counted on the CPU",
        "",
        f"Command: `{res['command']}`. Constants (`jetvit.bench.cost`): "
        + ", ".join(f"{k} {v:g}" for k, v in res["constants"].items())
        + ". Hybrids: "
        + ", ".join(f"{p} `{a}`" for p, a in HYBRID_ARCHS.items())
        + " (F at 0-based blocks 14 and 22 for DINOv3-L, 13 and 17 for DAv2-L).",
        "",
        "## Teacher latency, DINOv3-L/16 at 1024x2048",
        "",
        "| mode | predicted ms | kernels | paper ms | predicted / paper |",
        "|---|---|---|---|---|",
    ]
    for t in res["teacher"]:
        lines.append(
            f"| {t['mode']} ({t['dtype']}) | {t['ms']:.2f} | {t['launches']} | {PAPER_TEACHER_MS} | "
            f"{t['ms'] / PAPER_TEACHER_MS:.2f} |"
        )
    lines += [
        "",
        "## Hybrid speedups",
        "",
        "| model | resolution | mode | teacher ms | hybrid ms | speedup | FLOP-ideal | of ideal | kernels (T / H) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res["speedups"]:
        H, W = s["resolution"]
        lines.append(
            f"| {s['preset']} | {H}x{W} | {s['mode']} | {s['teacher_ms']:.2f} | {s['hybrid_ms']:.2f} | "
            f"{s['speedup']:.2f}x | {s['ideal']:.2f}x | {s['fraction_of_ideal']:.1%} | "
            f"{s['teacher_launches']} / {s['hybrid_launches']} |"
        )
    lines += [
        "",
        "## Bytes of one `L` block's attention, DINOv3-L/16 at 1024x2048 (between `qkv` and `proj`)",
        "",
        "| path | MiB per block | kernels per block | of today | of this tree's plain ops | custom ops |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["l_attention"]:
        if r["available"]:
            lines.append(
                f"| {r['path']} | {r['bytes_per_block'] / 2**20:.1f} | {r['kernels_per_block']:.0f} | "
                f"{r['fraction_of_today']:.1%} | {r['fraction_of_plain']:.1%} | {', '.join(r['custom_ops']) or '-'} |"
            )
        else:
            why = (
                "the model ran no custom op in its L blocks" if "fused" in r["path"] else "commit not in this checkout"
            )
            lines.append(f"| {r['path']} | not available: {why} | - | - | - | - |")
    lines += ["", "## Where the bytes go, DINOv3-L/16 hybrid at 1024x2048", ""]
    for name, table in res["where"].items():
        lines += [f"{name}:", "", "```", table, "```", ""]
    lines += [
        "## Goals",
        "",
        "| goal | value | target | met |",
        "|---|---|---|---|",
    ]
    for goal in g:
        lines.append(f"| {goal['goal']} | {goal['value']} | {goal['target']} | {'yes' if goal['met'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="h100", choices=list(cost.DEVICES))
    p.add_argument("--dtype", default="bf16", choices=list(cost.PRECISIONS))
    p.add_argument("--out", default="benchmarks/results", help="directory for cost_model.{md,json}")
    args = p.parse_args(argv)
    res2k = (1024, 2048)
    teacher = []
    for dtype in dict.fromkeys((args.dtype, "autocast")):
        for mode in cost.MODES:
            r = cost.predict(preset_config("dinov3-l"), *res2k, device=args.device, dtype=dtype, mode=mode)
            teacher.append({"mode": mode, "dtype": dtype, "ms": r.ms, "launches": r.launches, "bytes": r.bytes})
    rows = speedups("dinov3-l", res2k, args.device, args.dtype)
    rows += speedups("dinov3-b", res2k, args.device, args.dtype)
    rows += speedups("dav2-l", (1022, 2044), args.device, args.dtype)  # multiples of the patch, 14
    l_rows = l_attention_bytes("dinov3-l", res2k, args.device, args.dtype)

    eager_teacher = next(t for t in teacher if t["mode"] == "eager" and t["dtype"] == args.dtype)
    ratio = eager_teacher["ms"] / PAPER_TEACHER_MS
    goals = [
        {
            "goal": f"DINOv3-L teacher, eager {args.dtype}: predicted / paper's 35.07 ms",
            "value": f"{ratio:.2f} ({eager_teacher['ms']:.2f} ms)",
            "target": f"{1 - TEACHER_TOLERANCE:.2f}-{1 + TEACHER_TOLERANCE:.2f}",
            "met": abs(ratio - 1) <= TEACHER_TOLERANCE,
        }
    ]
    for s in rows:
        if s["preset"] == "dinov3-l" and s["mode"] in ("graphs", "compiled"):
            goals.append(
                {
                    "goal": f"DINOv3-L 2-F hybrid, {s['mode']}: predicted speedup / FLOP-ideal",
                    "value": f"{s['fraction_of_ideal']:.1%} ({s['speedup']:.2f}x of {s['ideal']:.2f}x)",
                    "target": f">= {IDEAL_FRACTION:.0%}",
                    "met": s["fraction_of_ideal"] >= IDEAL_FRACTION,
                }
            )
    best = min((r for r in l_rows[2:] if r["available"]), key=lambda r: r["bytes_per_block"])
    goals.append(
        {
            "goal": "L block attention bytes: best path / today's eager",
            "value": f"{best['fraction_of_today']:.1%} ({best['path']})",
            "target": f"<= {BYTES_FRACTION:.0%}",
            "met": best["fraction_of_today"] <= BYTES_FRACTION,
        }
    )
    res = {
        "command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "dtype": args.dtype,
        "constants": cost.constants(),
        "hybrids": HYBRID_ARCHS,
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "teacher": teacher,
        "speedups": rows,
        "l_attention": l_rows,
        "where": where("dinov3-l", res2k, args.device, args.dtype),
        "goals": goals,
    }
    out = Path(args.out)
    text = markdown(res)
    atomic_write_json(out / "cost_model.json", res)
    atomic_write_text(out / "cost_model.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
