"""`jetvit convert --teacher SRC --arch STR --out DIR`: a teacher -> a hybrid with the given architecture string.

Every weight the hybrid shares with the teacher is inherited (`--inherit all`), or all but the attention projections
(`--inherit mlp`, the ablation baseline); `L` blocks' convolutions start at zero. The result is written with
`jetvit.save` and loads with `jetvit.load`.
"""

from __future__ import annotations

import argparse
from typing import Any


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        required=True,
        metavar="SRC",
        help="HF model directory or Hub id, official checkpoint (.pth), or a jetvit directory",
    )
    parser.add_argument("--arch", required=True, help="one letter per block: F full, W window, L linear")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (jetvit.save format)")
    parser.add_argument("--inherit", choices=("all", "mlp"), default="all", help="what to copy from the teacher")
    parser.add_argument("--window-size", type=int, help="W blocks' window side in patches (default: the teacher's)")
    add_teacher_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from jetvit.conversion import convert
    from jetvit.io import save
    from jetvit.teachers import load_teacher

    teacher = load_teacher(args.teacher, **teacher_options(args))
    student = convert(teacher, args.arch, inherit=args.inherit, window_size=args.window_size)
    save(student, args.out)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    print(
        f"converted {teacher.cfg.family} teacher ({teacher.arch}, {n_teacher / 1e6:.2f} M parameters) -> "
        f"{student.arch} (window {student.cfg.window_size}, inherit {args.inherit}, {n_student / 1e6:.2f} M "
        f"parameters); wrote {args.out}"
    )
    return 0
