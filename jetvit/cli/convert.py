"""`jetvit convert --teacher SRC --arch STR --out DIR`: a teacher -> a hybrid with the given architecture string.

Every weight the hybrid shares with the teacher is inherited (`--inherit all`), or all but the attention projections
(`--inherit mlp`, the ablation baseline); `L` blocks' convolutions start at zero. The result is written with
`jetvit.save` and loads with `jetvit.load`.
"""

from __future__ import annotations

import argparse

from jetvit.cli.common import add_teacher_source_arguments, teacher_options


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
    from jetvit.io import refuse_overwrite, save
    from jetvit.model import validate_arch
    from jetvit.teachers import load_teacher, source_path

    # `--out` is written with jetvit.save (model.safetensors, config.json): never into the teacher's own files.
    refuse_overwrite(args.out, {"--teacher": source_path(args.teacher)}, nested=False)
    validate_arch(args.arch)  # letters first: a typo is refused before the teacher loads
    teacher = load_teacher(args.teacher, **teacher_options(args))
    student = convert(teacher, args.arch, inherit=args.inherit, window_size=args.window_size)
    save(student, args.out, teacher=args.teacher)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    print(
        f"converted {teacher.cfg.family} teacher ({teacher.arch}, {n_teacher / 1e6:.2f} M parameters) -> "
        f"{student.arch} (window {student.cfg.window_size}, inherit {args.inherit}, {n_student / 1e6:.2f} M "
        f"parameters); wrote {args.out}"
    )
    return 0
