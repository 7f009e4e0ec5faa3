"""The `jetvit` command line: one module per subcommand.

Each module in `COMMANDS` defines `add_arguments(parser)` and `run(args) -> int`. `build_parser` imports every one
of them to add its options; they are light (argparse only, plus `jetvit.cli.common`) and import torch and the rest
of jetvit inside `run`, so that `jetvit --help` and usage errors answer at once.

`main` is the one error boundary of the command line. A user's mistake (a bad path or option, a file jetvit cannot
read or write, a config or file in the wrong format, a missing optional package) ends in one line on stderr that
names the problem and what would be accepted, exit status 2; Ctrl-C in one line (runs keep their last checkpoint
and continue when the same command is started again), then, as the program, by SIGINT as Python ends on an
unhandled Ctrl-C (the shell reports status 130; `main(argv)` called from Python returns 130); a closed output pipe
(`jetvit info ... | head`) silently, status 141 as for a process killed by SIGPIPE. Anything else is a bug in
jetvit and keeps its traceback; `JETVIT_DEBUG=1` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import shutil
import signal
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("jetvit.cli.info", "describe a teacher or a saved hybrid: family, size, arch, parameters, FLOPs"),
    "convert": ("jetvit.cli.convert", "convert a teacher into a hybrid with a given architecture string"),
    "search": ("jetvit.cli.search", "Post-Training Attention Search: supernets, beam search, fine-tuning"),
    "distill": ("jetvit.cli.distill", "fine-tune a fixed architecture by feature distillation"),
    "probe": (
        "jetvit.cli.probe",
        "train a linear segmentation or classification (images, video clips) probe on a teacher's features",
    ),
    "eval": (
        "jetvit.cli.eval",
        "evaluate teacher and hybrid side by side: segmentation, depth, classification, video, detection",
    ),
    "bench": ("jetvit.cli.bench", "benchmark teacher against hybrid: latency, throughput, memory"),
    "export": ("jetvit.cli.export", "export a hybrid to ONNX and check it against PyTorch"),
    "plan": ("jetvit.cli.plan", "memory per GPU of each training phase of a run config, without weights"),
    "push": ("jetvit.cli.push", "upload a saved hybrid (weights, provenance, model card, modeling code) to the Hub"),
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


# Optional packages -> the extra of jetvit that installs them.
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "huggingface_hub": "hub",
    "tensorboard": "tensorboard",
    "skimage": "skimage",
    "pycocotools": "det",
}
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
RESUMABLE = ("search", "distill")


class _LogHandler(logging.StreamHandler):
    """Handler on the current `sys.stdout` (whatever replaced it since: tests capture it) that lets a closed pipe
    end the command (logging would print its own traceback and go on)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            raise sys.exc_info()[1]
        super().handleError(record)


def setup_logging() -> None:
    """The library reports through `logging.getLogger("jetvit...")`; the command line shows INFO and above on
    stdout, prefixed `[jetvit]`."""
    root = logging.getLogger("jetvit")
    if not root.handlers:
        handler = _LogHandler()
        handler.setFormatter(logging.Formatter("[jetvit] %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    command, name = "jetvit", None
    try:
        setup_logging()
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USER_ERROR
        command, name = f"jetvit {args.command}", args.command
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        again = " (run the same command again to continue from the last checkpoint)" if name in RESUMABLE else ""
        _say(f"{command}: interrupted{again}")
        if argv is None:  # the program itself (`jetvit`, `python -m jetvit`)
            _end_by_sigint()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("JETVIT_DEBUG"):
            raise
        _say(f"{command}: error: {message}")
        return EXIT_USER_ERROR


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, ModuleNotFoundError):
        name = (e.name or "").split(".")[0]
        if name not in EXTRAS:
            return None  # a module of jetvit or a required dependency: a broken install or a bug
        if "pip install" in str(e):  # raised by jetvit, saying what needs it
            return _one_line(str(e))
        return f"this needs the optional package {name}, which is not installed: pip install jetvit[{EXTRAS[name]}]"
    if isinstance(e, OSError):
        return _os_error(e)
    if isinstance(e, ValueError):  # jetvit's user errors, JSON and config errors (they name the file and key)
        return _one_line(str(e))
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(e, yaml.YAMLError):
        return "invalid YAML: " + _one_line(str(e))
    return None


def _os_error(e: OSError) -> str:
    if e.errno in FULL:
        return _full(e)
    if e.filename is None:  # raised by jetvit with its own message
        return _one_line(str(e))
    path = repr(str(e.filename))
    if isinstance(e, PermissionError):
        return f"permission denied: {path}; choose a path you may read and write, or change its permissions"
    if isinstance(e, FileExistsError):
        return f"{path} already exists as a file where a folder is needed; remove it or choose another path"
    if isinstance(e, IsADirectoryError):
        return f"{path} is a folder where a file is needed; give the path of a file"
    if isinstance(e, NotADirectoryError):
        return f"{path}: a part of this path is a file, not a folder; choose another path"
    if isinstance(e, FileNotFoundError):
        return f"no such file or folder: {path}"
    if e.errno == errno.EROFS:
        return f"{path} is on a read-only file system; choose a path you may write"
    return f"{e.strerror or type(e).__name__}: {path}"


# A write that found no room: the disk is full, the user's quota is spent, or a file size limit (`ulimit -f`) is hit.
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _full(e: OSError) -> str:
    """Which file could not be written, why, and how much room its device has now (the partial file removed)."""
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "your disk quota is used up"}.get(
        e.errno, "a file size limit was reached"
    )
    if e.filename is None:
        return f"{why} ({e.strerror}); free some space and run the same command again"
    free = ""
    folder = os.path.dirname(os.path.abspath(e.filename))
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    try:
        free = f", {_size(shutil.disk_usage(folder).free)} free there now"
    except OSError:
        pass
    return (
        f"{why} while writing {str(e.filename)!r}{free}; the files written before are intact: free some space "
        f"(run.keep_checkpoints: none keeps fewer checkpoints) and run the same command again, which continues a "
        f"search or distillation from its last checkpoint"
    )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _say(line: str) -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    print(line, file=sys.stderr, flush=True)


def _end_by_sigint() -> None:
    """End the process by SIGINT, after the message: what Python does on an unhandled Ctrl-C, and what shells and
    scripts that run jetvit in a loop read as "interrupted" (status 130). Python's own exit would sometimes do the
    same and sometimes exit with 130, depending on where the interrupt landed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
