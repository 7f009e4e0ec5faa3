"""Options and helpers that several subcommands share. Light like the subcommand modules: torch and the rest of
jetvit are imported inside the functions, when a command runs."""

from __future__ import annotations

import argparse
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, *, out: bool = True) -> None:
    """`--config`, `--set KEY=VALUE` and (with `out`) `--out` of the commands driven by a YAML run config (`search`,
    `distill`, `plan`)."""
    parser.add_argument(
        "--config",
        required=True,
        help="YAML run config, or the name of a shipped one (tiny, demo, dinov3, depth_anything_v2, dino-v1-cls, "
        "yolos-det)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set step1.beam.width=4 --set step1.stages.0.steps=100 (repeatable)",
    )
    if out:
        parser.add_argument("--out", required=True, help="run directory: outputs, checkpoints, resume state")


def add_teacher_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that only official checkpoint files need (their config is read from the tensors' shapes)."""
    g = parser.add_argument_group("official checkpoint files (.pth) only")
    g.add_argument(
        "--size", help="released size name, e.g. vitl16 (DINOv3) or vitl (DINOv2/DAv2); default: from shapes"
    )
    g.add_argument("--num-heads", type=int, help="number of heads of a non-released size")
    g.add_argument(
        "--head-layers", type=_int_list, metavar="I,J,K,L", help="the 4 blocks a DAv2 depth head reads (non-released)"
    )
    g.add_argument(
        "--metric",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="DAv2 head is metric (sigmoid * max depth) or relative; default: from the released file name",
    )
    g.add_argument("--max-depth", type=float, help="metric DAv2 max depth in metres (20 indoor, 80 outdoor)")


def teacher_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of `jetvit.load_teacher` that `add_teacher_source_arguments` added."""
    return {
        "size": args.size,
        "num_heads": args.num_heads,
        "head_layers": args.head_layers,
        "metric": args.metric,
        "max_depth": args.max_depth,
    }


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices like 4,11,17,23, got {text!r}") from e


def resolution(text: str) -> tuple[int, int]:
    """argparse type for an `HxW` or `S` option: `jetvit.bench.harness.parse_res`, its message as the usage error."""
    from jetvit.bench.harness import parse_res

    try:
        return parse_res(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_source(src: str, *, device: str | None) -> Any:
    """A teacher source (HF id/dir, official checkpoint) or a `jetvit.save` directory, in eval mode on `device`
    (None: CUDA when available, else the CPU)."""
    from jetvit.teachers import load_teacher

    return load_teacher(src).to(device or default_device()).eval()


def limit(dataset: Any, n: int | None, *, option: str) -> Any:
    """The first `n` samples of `dataset` (all when n is None); `option` names the flag in the error."""
    if n is None:
        return dataset
    if n < 1:
        raise ValueError(f"{option} must be >= 1, got {n}")
    from torch.utils.data import Subset

    return Subset(dataset, range(min(n, len(dataset))))


def class_spread_limit(dataset: Any, n: int | None, *, option: str) -> Any:
    """`n` samples of a class-sorted dataset drawn with a fixed seed, the same on every call (all when n is None):
    the first n of an image folder would hold only its first classes. `option` names the flag in the error."""
    if n is None:
        return dataset
    if n < 1:
        raise ValueError(f"{option} must be >= 1, got {n}")
    from jetvit.tasks.scorers import fixed_subset

    return fixed_subset(dataset, n, seed=0)
