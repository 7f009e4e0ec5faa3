"""`jetvit plan --config FILE [--set KEY=VALUE ...] [--arch ARCH] [--gpus N] [--gpu-memory 80GiB]`: the memory plan.

For each training phase of the run (`jetvit search`: Step 1 supernet, Step 2 supernet, the measured front's points,
fine-tuning; with `--arch` or the config's `arch`, the fine-tuning of `jetvit distill`): parameters, gradients,
optimizer states, teacher and activations per process, per stage, without and with activation checkpointing, and
whether it fits. Nothing is trained and no weights are needed: the models are built on the meta device from the
teacher's config, and the teacher may be a preset name (`--set teacher=dinov3-7b`). What is counted:
`jetvit.bench.plan`.
"""

from __future__ import annotations

import argparse
import json

from jetvit.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, out=False)
    parser.add_argument(
        "--arch", help="plan `jetvit distill` of this architecture (default: the config's, else a search)"
    )
    parser.add_argument("--gpus", type=int, default=1, help="processes (GPUs) the run is spread over (default 1)")
    parser.add_argument(
        "--gpu-memory", default="80GiB", metavar="SIZE", help="memory of one GPU, e.g. 80GiB, 141GB (default 80GiB)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object (bytes)")


def run(args: argparse.Namespace) -> int:
    from jetvit.bench.plan import format_plan, parse_size, plan_run
    from jetvit.config import load_config

    memory = parse_size(args.gpu_memory)
    cfg = load_config(args.config, args.overrides)
    plan = plan_run(cfg, gpus=args.gpus, gpu_memory=memory, arch=args.arch)
    print(json.dumps(plan.to_dict()) if args.json else format_plan(plan))
    return 0
