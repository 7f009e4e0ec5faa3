"""`jetvit info SRC [--res HxW] [--json]`: describe a teacher or a saved hybrid.

Prints the family, size, architecture, the tokens at one resolution (default: the native one; CLS, registers, YOLOS's
detection tokens and patches), parameter counts and the model's own FLOP count there, with a per-block table (kind,
parameters, FLOPs). With `--cost-device DEVICE` (h100, h200, rtx3090, orin) also the cost model's prediction there
(`jetvit.bench.cost`): per-block latency, bytes moved, FLOPs and kernels, and where the bytes go.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from jetvit.cli.common import add_teacher_source_arguments, resolution, teacher_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", metavar="SRC|DIR", help="teacher (HF dir or Hub id, official .pth) or a jetvit directory"
    )
    parser.add_argument(
        "--res", type=resolution, metavar="HxW", help="resolution for FLOPs (default: the model's native size)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument(
        "--cost-device",
        choices=["h100", "h200", "rtx3090", "orin"],  # jetvit.bench.cost.DEVICES, not imported for --help
        help="also predict the latency on this GPU with the roofline cost model",
    )
    parser.add_argument(
        "--cost-mode", choices=["eager", "graphs", "compiled"], default="eager", help="how the predicted forward runs"
    )
    parser.add_argument(
        "--cost-dtype", choices=["bf16", "autocast", "fp32"], default="bf16", help="precision of the predicted forward"
    )
    add_teacher_source_arguments(parser)


def describe(model: Any, res: tuple[int, int] | None = None) -> dict[str, Any]:
    """The facts `jetvit info` reports, as a JSON-able dict."""
    from jetvit.teachers import describe_size

    cfg = model.cfg
    H, W = res or (cfg.img_size, cfg.img_size * cfg.learned_grid[1] // cfg.learned_grid[0])
    flops = model.flops(H, W)  # raises ValueError for a size that is not a patch multiple
    h, w = model.grid_size(H, W)
    tokens = {"cls": 1, "registers": cfg.num_registers, "detection": cfg.num_detection_tokens, "patches": h * w}
    tokens["total"] = sum(tokens.values())
    heads = [m for m in (model.depth_head, model.detection_head) if m is not None]
    blocks = [
        {"index": i, "kind": blk.kind, "parameters": sum(p.numel() for p in blk.parameters()), "flops": f}
        for i, (blk, f) in enumerate(zip(model.blocks, flops["blocks"]))
    ]
    total = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for head in heads for p in head.parameters())
    return {
        "family": cfg.family,
        "size": describe_size(cfg),
        "arch": model.arch,
        "depth": cfg.depth,
        "dim": cfg.dim,
        "num_heads": cfg.num_heads,
        "patch_size": cfg.patch_size,
        "prefix_tokens": cfg.num_prefix_tokens,
        "tokens": tokens,
        "window_size": cfg.window_size,
        "depth_head": model.depth_head is not None,
        "detection_head": model.detection_head is not None,
        "parameters": {"total": total, "backbone": total - head_params, "head": head_params},
        "resolution": [H, W],
        "flops": {"total": flops["total"], "embed": flops["embed"], "head": flops["head"]},
        "blocks": blocks,
    }


def format_report(info: dict[str, Any], src: str) -> str:
    arch = info["arch"]
    counts = ", ".join(f"{arch.count(k)} {k}" for k in "FWL" if k in arch)
    p, f, t = info["parameters"], info["flops"], info["tokens"]
    H, W = info["resolution"]
    parts = ["1 CLS", f"{t['registers']} registers"] + ([f"{t['detection']} detection"] if t["detection"] else [])
    head = "detection heads" if info["detection_head"] else "depth head"
    lines = [
        f"source       {src}",
        f"family       {info['family']}",
        f"size         {info['size']} (dim {info['dim']}, depth {info['depth']}, heads {info['num_heads']}, "
        f"patch {info['patch_size']}, {info['prefix_tokens']} prefix tokens)",
        f"arch         {arch} ({counts}" + (f"; window {info['window_size']}" if "W" in arch else "") + ")",
        f"tokens       {t['total']} at {H}x{W} ({' + '.join(parts)} + {t['patches']} patches)",
        f"parameters   {p['total'] / 1e6:.3f} M (backbone {p['backbone'] / 1e6:.3f} M, {head} {p['head'] / 1e6:.3f} M)",
        f"FLOPs        {f['total'] / 1e9:.3f} G at {H}x{W} "
        f"(embed {f['embed'] / 1e9:.3f} G, head {f['head'] / 1e9:.3f} G)",
        "",
        f"{'block':>5}  {'kind':4}  {'params (M)':>10}  {'GFLOPs':>9}  {'share':>6}",
    ]
    for b in info["blocks"]:
        share = b["flops"] / f["total"] if f["total"] else 0.0
        lines.append(
            f"{b['index']:>5}  {b['kind']:4}  {b['parameters'] / 1e6:>10.3f}  {b['flops'] / 1e9:>9.3f}  {share:>6.1%}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from jetvit.teachers import load_teacher

    model = load_teacher(args.src, **teacher_options(args))
    info = describe(model, args.res)
    report = None
    if args.cost_device:
        from jetvit.bench import cost

        H, W = info["resolution"]
        report = cost.predict(model, H, W, device=args.cost_device, dtype=args.cost_dtype, mode=args.cost_mode)
        info["cost"] = report.to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_report(info, args.src))
        if report is not None:
            print("\n" + cost.format_cost(report) + "\n\n" + cost.where_the_bytes_go(report))
    return 0
