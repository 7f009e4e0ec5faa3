"""`jetvit distill --config FILE --arch LLWF... --out DIR`: fine-tune a fixed architecture by distillation.

The teacher is converted to the architecture with every weight inherited, then trained through the
config's `finetune` stages. Resumable and distributed like `jetvit search`.
"""

from __future__ import annotations

import argparse

from jetvit.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--arch", help="architecture string, one of F/W/L per block (or the config's `arch`)")


def run(args: argparse.Namespace) -> int:
    from jetvit.config import load_config
    from jetvit.pipeline import run_distill

    overrides = list(args.overrides) + ([f"arch={args.arch}"] if args.arch else [])
    cfg = load_config(args.config, overrides)
    if cfg.arch is None:
        raise ValueError("no architecture given: pass --arch (e.g. --arch LLWLWWLFLLWF) or set `arch` in the config")
    summary = run_distill(cfg, args.out, arch=cfg.arch)
    print(
        f"architecture {summary['arch']}: {summary['scorer']} {summary['start_score']:.6g} -> "
        f"{summary['final_score']:.6g}; wrote {args.out}/report.md and {args.out}/model"
    )
    return 0
