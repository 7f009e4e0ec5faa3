"""The `jetvit` command line: one module per subcommand.

Each module in `COMMANDS` defines `add_arguments(parser)` and `run(args) -> int`. `build_parser` imports every one
of them to add its options; they are light (argparse only, plus `jetvit.cli.common`) and import torch and the rest
of jetvit inside `run`, so that `jetvit --help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("jetvit.cli.info", "describe a teacher or a saved hybrid: family, size, arch, parameters, FLOPs"),
    "convert": ("jetvit.cli.convert", "convert a teacher into a hybrid with a given architecture string"),
    "search": ("jetvit.cli.search", "Post-Training Attention Search: supernets, beam search, fine-tuning"),
    "distill": ("jetvit.cli.distill", "fine-tune a fixed architecture by feature distillation"),
    "probe": ("jetvit.cli.probe", "train a linear segmentation probe on a teacher's features"),
    "eval": ("jetvit.cli.eval", "evaluate teacher and hybrid side by side on segmentation or depth"),
    "bench": ("jetvit.cli.bench", "benchmark teacher against hybrid: latency, throughput, memory"),
    "export": ("jetvit.cli.export", "export a hybrid to ONNX and check it against PyTorch"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetvit",
        description="Make pretrained vision foundation ViTs fast at high resolution: convert a full-attention "
        "teacher into a linear/window/full hybrid, search the per-block kinds, fine-tune, evaluate, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def setup_logging() -> None:
    """The library reports through `logging.getLogger("jetvit...")`; the command line shows INFO and above on
    stdout, prefixed `[jetvit]`."""
    root = logging.getLogger("jetvit")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[jetvit] %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        # User mistakes: one clear line, no traceback.
        print(f"jetvit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
