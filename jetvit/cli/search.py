"""`jetvit search --config FILE [--set key=value ...] --out DIR`: Post-Training Attention Search.

Runs the whole pipeline (Step 1 supernet and beam search, Step 2 supernet and beam search, final
fine-tuning, export). Run it again with the same arguments to continue an interrupted run. Under
`torchrun --nproc_per_node N` it trains with DistributedDataParallel, or with the student sharded by FSDP under
`--set run.strategy=fsdp` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse

from jetvit.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from jetvit.config import load_config
    from jetvit.pipeline import run_search
    from jetvit.report import flops_comparison

    cfg = load_config(args.config, args.overrides)
    if cfg.arch is not None:
        raise ValueError(f"arch={cfg.arch!r} is set: `jetvit search` finds the architecture; use `jetvit distill`")
    summary = run_search(cfg, args.out)
    print(
        f"architecture {summary['arch']} ({summary['scorer']} {summary['final_score']:.6g}, "
        f"teacher {summary['teacher_score']:.6g}); "
        f"{flops_comparison(summary['teacher_flops'], summary['flops'])} at "
        f"{'x'.join(map(str, summary['flops_resolution']))}; wrote {args.out}/report.md and {args.out}/model"
    )
    return 0
