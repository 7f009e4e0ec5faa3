"""Saving and loading hybrids (safetensors + JSON config), atomic file writes, and opening image files within a
size limit: the file handling used across the project."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL import Image

    from jetvit.model import ViTConfig

FORMAT = "jetvit"
FORMAT_VERSION = 2
# Model-config keys that format 2 added (YOLOS teachers), with the value every format-1 model has: a format-1 file
# is read as if it had them.
ADDED_IN_FORMAT_2 = {"pos_grid": None, "num_detection_tokens": 0, "block_pos_embed": False, "detection_head": None}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and move the result onto `path` in one step: readers see the old file or the
    complete new one, never a half-written file, even if the process is killed. The file gets the mode a plain
    `open` would give it (the user's umask), not the private mode of a temporary file.

    A write that fails for want of space or for another error of the file system (whatever the writer reports it as:
    safetensors' Rust errors included) is an `OSError` naming `path`, not the temporary file; `path` keeps its
    previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # a full disk may only say so here (delayed allocation, network file systems)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        error = _file_system_error(e, tmp)
        if error is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from e


def _file_system_error(e: BaseException, tmp: str) -> OSError | None:
    """The file-system error of a failed write to `tmp`, or None when `e` is something else (a bug, Ctrl-C, an
    error about another file): an `OSError` without a file name or naming `tmp`, or a library's error that carries
    one in its message (Rust's `(os error 28)`: safetensors)."""
    if isinstance(e, OSError):
        return e if e.filename in (None, tmp) and e.errno is not None else None
    if not isinstance(e, Exception):
        return None
    code = re.search(r"\(os error (\d+)\)", str(e))
    if code is None:
        return None
    return OSError(int(code.group(1)), os.strerror(int(code.group(1))))


def atomic_write_files(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`atomic_write` for a writer that may also put files beside `path` named after it (ONNX puts the weights of a
    model over 2 GB in `<name>.data`, which the graph file names): `write(tmp_path)` writes into a new temporary
    folder beside `path`, then each file it wrote is moved beside `path`, `path` itself last, so that the file under
    the final name is never cut short and never names weights that are not there yet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        target = folder / path.name
        write(str(target))
        written = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p == target)  # path last
        for p in written:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(p, 0o666 & ~_umask())
        for p in written:
            os.replace(p, path.parent / p.name)
    except BaseException as e:
        error = _file_system_error(e, str(target))
        if error is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from e
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through `atomic_write`. torch reports a failed write (a full disk) as a RuntimeError about
    stream positions; writing through a Python file keeps the `OSError` behind it, which is raised instead."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            sink = _KeepError(f)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None

    atomic_write(path, write)


class _KeepError:
    """A binary file's `write`, remembering the `OSError` a write raised (torch replaces it with its own error)."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def read_json(path: str | os.PathLike, default: Any = None, *, expect: type | None = None) -> Any:
    """The parsed JSON file at `path`, or `default` when there is no such file. A file that is not JSON (or, with
    `expect`, not a JSON value of that type) is a ValueError naming it."""
    p = Path(path)
    if not p.is_file():
        return default
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); delete or restore it") from None
    if expect is not None and not isinstance(value, expect):
        raise ValueError(f"{p} holds a JSON {type(value).__name__}, expected a JSON {_json_type(expect)}")
    return value


def _json_type(tp: type) -> str:
    return {dict: "object", list: "array", str: "string"}.get(tp, tp.__name__)


# atomic_write's temporary files: `.<name>.<8 random characters>.tmp` (tempfile.mkstemp's alphabet).
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(
    directory: str | os.PathLike, *, recursive: bool = True, name: str | None = None
) -> list[Path]:
    """Delete the temporary files (and `atomic_write_files`' folders) that writes killed mid-write (SIGKILL, power
    loss) left in `directory`, only those of final name `name` when given; returns them. Call it only where no other
    process is writing (the start or the end of a run)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    pattern = ".*.tmp" if name is None else f".{glob.escape(name)}.*.tmp"
    found = [p for p in (root.rglob(pattern) if recursive else root.glob(pattern)) if _TEMPORARY.match(p.name)]
    removed = []
    for p in found:
        try:
            if p.is_file():
                p.unlink()
                removed.append(p)
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed


# The most pixels jetvit decodes from one image file: about 89.5 million (9459 x 9459; 256 MiB as 8-bit RGB), PIL's
# own warning threshold. A larger file is refused before it is decoded: it is a decompression bomb (a small file that
# decodes to gigabytes) or a photo to downscale first. Raising it past PIL's error threshold (twice PIL's
# `Image.MAX_IMAGE_PIXELS`) needs that raised too.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def open_image(path: str | os.PathLike) -> Image.Image:
    """`PIL.Image.open(path)`: the file's header is read, its pixels when first used (close it, or use it in a
    `with`). An image of more than `MAX_IMAGE_PIXELS` pixels is a ValueError naming the file and its size."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_IMAGE_PIXELS decides, below
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {str(path)!r} is refused as a decompression bomb: {e}") from None
    if im.width * im.height > MAX_IMAGE_PIXELS:
        im.close()
        raise ValueError(
            f"image {str(path)!r} has {im.width} x {im.height} = {im.width * im.height} pixels, more than the "
            f"{MAX_IMAGE_PIXELS} jetvit decodes (jetvit.io.MAX_IMAGE_PIXELS): a decompression bomb, or an image to "
            f"downscale first"
        )
    return im


def refuse_overwrite(out: str | os.PathLike, sources: dict[str, str | os.PathLike | None], *, nested: bool) -> None:
    """ValueError when the output `out` would overwrite one of `sources` (option name -> path read): the same path,
    or with `nested` (outputs written below `out`, inputs read recursively) one inside the other."""
    o = Path(out).expanduser().resolve()
    for name, src in sources.items():
        if src is None:
            continue
        s = Path(src).expanduser().resolve()
        same = o == s or (o.exists() and s.exists() and os.path.samefile(o, s))
        if same or (nested and (o in s.parents or s in o.parents)):
            where = "is" if same else "contains" if o in s.parents else "is inside"
            raise ValueError(
                f"the output {str(out)!r} {where} the {name} {str(src)!r}: writing there would overwrite or mix with "
                f"what is read; choose an output outside it"
            )


def save(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    teacher: str | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (a `HybridViT`) to `directory`: `model.safetensors` and `config.json` (family, sizes, arch,
    options, and `provenance`: jetvit's version and commit, the `teacher` source with its weights' hash and licence),
    the modeling code and image-processor config that load it without jetvit (`jetvit.hub`), and with `card` (a run's
    summary, `jetvit.hub.model_card`) a README.md model card. Each file is written atomically, weights first, so an
    interrupted save leaves the previous config pointing at complete weights or no config at all."""
    from safetensors.torch import save_file

    from jetvit import hub

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory, recursive=False)  # of an earlier save that was killed
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "config": model.cfg.to_dict(),
        "provenance": hub.provenance(teacher),
        **hub.hf_config_fields(),
    }
    for name, text in hub.remote_code().items():
        atomic_write_text(directory / name, text)
    atomic_write_json(directory / hub.PREPROCESSOR_NAME, hub.preprocessor_config(model.cfg))
    if card is not None:
        atomic_write_text(directory / hub.CARD_NAME, hub.model_card(meta, card))
    atomic_write_json(directory / CONFIG_NAME, meta)  # last: a config names only files that are complete
    return directory


def is_jetvit_dir(path: str | os.PathLike) -> bool:
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def load(
    directory: str | os.PathLike,
    *,
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
):
    """Load a model written by `save` (eval mode; tensors on `map_location`, cast to `dtype` when given). `directory`
    may be a Hub id `user/name` that is not a local path: its config and weights are fetched with `huggingface_hub`
    (`jetvit.hub.snapshot`; from the local cache when offline).

    Strict: a missing, unexpected or mis-shaped tensor raises ValueError; only safetensors weights are read. The model
    is built on the meta device and takes the file's tensors as they are, so loading costs one copy of the weights,
    not two."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from jetvit import hub
    from jetvit.model import HybridViT

    if not Path(directory).exists() and hub.HUB_ID.match(str(directory)):
        directory = hub.snapshot(str(directory))
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"no such model directory: {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory} (jetvit.load takes a directory written by jetvit.save)")
    cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory} is not a jetvit model directory: {CONFIG_NAME} is missing")
    meta = read_json(cfg_path, expect=dict)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not a jetvit config (format={meta.get('format')!r})")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} has a config but no weights: {WEIGHTS_NAME} is missing")
    cfg = read_model_config(meta, cfg_path)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"cannot read {weights_path} (truncated or corrupt?): {e}") from e
    return build_from_state_dict(HybridViT, cfg, state, source=str(weights_path), dtype=dtype)


def read_model_config(meta: dict[str, Any], path: Path) -> ViTConfig:
    """The `ViTConfig` of a parsed jetvit `config.json`: every key `save` writes must be there with its type (a
    default silently standing in for a missing key would build another model than the one saved)."""
    import dataclasses

    from jetvit._config import from_dict
    from jetvit.model import LinearAttnConfig, ViTConfig

    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version!r} is not one this jetvit reads (1..{FORMAT_VERSION}); "
            f"a newer jetvit wrote it, or the file was edited"
        )
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: missing or malformed key 'config' (the model's settings, as jetvit.save writes)")
    if version < 2:
        cfg = {**ADDED_IN_FORMAT_2, **cfg}
    missing = [f.name for f in dataclasses.fields(ViTConfig) if f.name not in cfg]
    if isinstance(cfg.get("linear"), dict):
        missing += [f"linear.{f.name}" for f in dataclasses.fields(LinearAttnConfig) if f.name not in cfg["linear"]]
    if missing:
        raise ValueError(f"{path}: missing key(s) config.{', config.'.join(missing)} (jetvit.save writes every one)")
    try:
        vit = from_dict(ViTConfig, cfg, "model config")
        if vit.depth_head is not None:
            from jetvit.heads import DPTConfig

            DPTConfig.from_dict(vit.depth_head)
        return vit
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def build_from_state_dict(
    model_cls: type[torch.nn.Module],
    cfg: Any,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """`model_cls(cfg)` built on the meta device (no random init, no memory), then given `state`'s tensors
    (cast to `dtype` when given) strictly. Returns the model in eval mode."""
    with torch.device("meta"):
        model = model_cls(cfg)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    load_state_dict_strict(model, state, source=source, assign=True)
    return model.eval()


def load_state_dict_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, assign: bool = False
) -> None:
    """`load_state_dict(strict=True)` with an error that names every missing, unexpected and mis-shaped tensor.
    `assign=True` makes the model's parameters the given tensors (for a model built on the meta device)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} in file, {tuple(own[k].shape)} in model"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"{source} does not match the model"]
        if missing:
            parts.append(f"missing tensors: {missing}")
        if unexpected:
            parts.append(f"unexpected tensors: {unexpected}")
        if shapes:
            parts.append(f"shape mismatches: {shapes}")
        raise ValueError("; ".join(parts))
    model.load_state_dict(state, strict=True, assign=assign)
