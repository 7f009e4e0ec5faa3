"""A run directory: the resolved config, `state.json` (which phases are done and what they found), and the step the
checkpoints on disk resume from. Only rank 0 writes; every write is atomic; one run at a time holds the directory
(`hold_run_dir`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jetvit._config import build
from jetvit.config import Config, dump_yaml, load_yaml, to_dict, yaml_problem
from jetvit.io import atomic_write_json, atomic_write_text, read_json, remove_stale_temporaries
from jetvit.runtime import Runtime
from jetvit.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
STATE_NAME = "state.json"
# The file a running run holds locked (`hold_run_dir`); it says which process holds it, and goes when the run ends.
LOCK_NAME = ".lock"
# Settings that change how a run computes, not what it computes: a run may resume with another value (e.g. activation
# checkpointing turned on or the student sharded after the run ran out of memory, fewer checkpoints kept after the
# disk filled up).
HOW_NOT_WHAT = ("run.activation_checkpointing", "run.keep_checkpoints", "run.strategy", "run.compile", "data.workers")


def check_out_dir(out: Path, cfg: Config) -> None:
    """Read-only checks of the run directory before anything is loaded or written: it is a folder (or can be
    created) that this user can write, and it holds no run with another config."""
    _check_folder(out)
    existing = out / CONFIG_NAME
    if existing.is_file():
        old = _with_defaults(read_yaml(existing))
        diff = sorted(k for k in _diff_keys(old, to_dict(cfg)) if k not in HOW_NOT_WHAT)
        if diff:
            raise ValueError(
                f"{out} holds a run with another config (differs in: {', '.join(diff[:8])}); "
                f"rerun with the same config to resume it, or choose another --out"
            )
    check_writable(out, option="--out")


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; the run directory must be a folder (new or of this run)")


@contextmanager
def hold_run_dir(out: Path, *, main: bool) -> Iterator[None]:
    """Hold run directory `out` for the length of the `with` block, so that a second run started on it at the same
    time is refused (a ValueError naming the folder and the process that holds it) instead of mixing its
    checkpoints with the first one's. Rank 0 holds it for all processes of a run (`main`); on the others this does
    nothing.

    The hold is an exclusive `flock` on `out/.lock`, which also says which process holds it (pid, host, start); the
    operating system releases it when the process ends however it ends, so a killed run leaves no stale hold (a
    lock file left behind is taken over). Folders created here are removed again when the block ends with nothing
    written in them: a run that fails at start-up leaves nothing behind."""
    if not main:
        yield
        return
    _check_folder(out)
    check_writable(out, option="--out")
    created = _missing_folders(out)
    fd = _lock(out)
    try:
        yield
    finally:
        if fd is not None:
            # Removed while still held, so that a run starting now locks a new file, never one about to vanish.
            (out / LOCK_NAME).unlink(missing_ok=True)
            os.close(fd)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote there (or another process did)
                break


def _missing_folders(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _lock(out: Path) -> int | None:
    """The open, exclusively locked `out/.lock` (writing who holds it), creating `out` as needed; None where the
    file system cannot lock (a warning says the directory is not protected)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        log.warning("cannot lock %s on this system: make sure no other run uses it at the same time", out)
        return None
    path = out / LOCK_NAME
    while True:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ValueError(
                f"--out {str(out)!r} is in use by another run ({holder}); wait for it to end or stop it, "
                f"or choose another --out"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("cannot lock %s on its file system: make sure no other run uses it at the same time", out)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the run that held it removed the file as we opened it: lock the new one
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock whose file is open as `fd`, as its holder wrote it."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # not written yet
        return "which is starting"


def check_writable(path: Path, *, option: str) -> None:
    """PermissionError / ValueError naming `option` when folder `path` cannot be created or written by this user."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is a file, so the folder cannot be created there")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "folder" if parent == path else f"folder {str(parent)!r} that would hold it"
        raise PermissionError(f"{option} {str(path)!r} is not writable (the {what} is not writable by you)")


def start_run_dir(out: Path, cfg: Config, rt: Runtime) -> None:
    """Once everything the run needs has loaded: create the run directory, write the resolved config, and remove
    the temporary files of writes that an earlier, killed run left behind (rank 0 only)."""
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        atomic_write_text(out / CONFIG_NAME, dump_yaml(cfg))


def read_yaml(path: Path) -> Any:
    """A YAML file of the run directory; a file that is not YAML is a ValueError naming it."""
    import yaml

    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML ({yaml_problem(e)}); restore it, or choose another --out") from None


def _with_defaults(old: Any) -> Any:
    """A saved config with the keys added to jetvit since it was written filled in with their defaults, so that a
    run started by an older version resumes; as saved when it no longer builds (its differences are then listed)."""
    try:
        return to_dict(build(Config, old))
    except (ValueError, TypeError):
        return old


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class RunState:
    """`state.json`: which phases are done and what they found; written atomically by rank 0."""

    def __init__(self, path: Path, rt: Runtime) -> None:
        self.path, self.rt = path, rt
        self.data: dict[str, Any] = read_json(path, default={"phases": {}}, expect=dict)
        if not isinstance(self.data.get("phases"), dict):
            raise ValueError(f"{path} has no 'phases' object; restore it, or choose another --out")

    def done(self, phase: str) -> dict[str, Any] | None:
        return self.data["phases"].get(phase)

    def finish(self, phase: str, **result: Any) -> None:
        self.data["phases"][phase] = result
        if self.rt.main:
            atomic_write_json(self.path, self.data)


def resume_step(out: Path, phases: list[tuple[str, int, list[int]]], *, done: Any = ()) -> int:
    """The run-wide step the checkpoints on disk resume from (metrics logged after it are dropped).

    phases: (name, total steps, steps per stage) of the run's training phases in order; `out/ckpt/<name>.pt`.
    done: the phases `state.json` records as finished (their checkpoints may have been removed,
    `run.keep_checkpoints`).
    """
    offset = 0
    for name, total, stage_steps in phases:
        if name in done:
            offset += total
            continue
        path = out / "ckpt" / f"{name}.pt"
        if not path.is_file():
            return offset
        ck = load_checkpoint(path)
        if not ck.get("done"):
            return offset + sum(stage_steps[: ck["stage"]]) + ck["step"]
        offset += total
    return offset
