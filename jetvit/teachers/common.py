"""Shared pieces of the teacher converters: key tables, reading weight files safely, the released-size tables.

A converter is a pure function `state dict -> state dict` driven by a `KeyTable`: for every jetvit tensor name, the
source tensors it is built from. Most entries are one source key (a rename); the fused `qkv` is the concatenation
of three; the fused SwiGLU `w12` of official DINOv2 giant is split by `Chunk`; an absent bias is filled by
`ZerosLike`. `apply_key_table` is strict: a source tensor that no entry uses (and that is not explicitly ignored) or
an entry whose source is absent raises a ValueError naming every such key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass(frozen=True)
class Chunk:
    """Part `index` of `n` equal parts of source tensor `key` along dim 0 (a fused gate+up projection)."""

    key: str
    index: int
    n: int


@dataclass(frozen=True)
class ZerosLike:
    """Zeros shaped like source tensor `key` (a bias the source model does not have, e.g. DINOv3's k bias)."""

    key: str


Part = str | Chunk | ZerosLike
KeyTable = dict[str, tuple[Part, ...]]  # jetvit key -> source parts, concatenated along dim 0


def apply_key_table(
    sd: dict[str, Tensor], table: KeyTable, *, ignore: Iterable[str] = (), source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Build the jetvit state dict from `sd` by `table`.

    ignore: source keys that are known and deliberately dropped (mask tokens, training-only norms); they may be
    present or absent. Raises ValueError naming every unknown source key and every missing one.
    """
    used: set[str] = set()
    for parts in table.values():
        for p in parts:
            if isinstance(p, str):
                used.add(p)
            elif isinstance(p, Chunk):
                used.add(p.key)
    ignored = set(ignore)
    missing = sorted(k for k in used if k not in sd)
    unknown = sorted(k for k in sd if k not in used and k not in ignored)
    if missing or unknown:
        parts_msg = [f"{source} does not match the expected key table"]
        if unknown:
            parts_msg.append(f"unexpected tensors: {unknown}")
        if missing:
            parts_msg.append(f"missing tensors: {missing}")
        raise ValueError("; ".join(parts_msg))

    out: dict[str, Tensor] = {}
    for dst, parts in table.items():
        tensors = []
        for p in parts:
            if isinstance(p, str):
                tensors.append(sd[p])
            elif isinstance(p, Chunk):
                t = sd[p.key]
                if t.shape[0] % p.n:
                    raise ValueError(f"{source}: {p.key} has {t.shape[0]} rows, not divisible into {p.n} parts")
                tensors.append(t.chunk(p.n, dim=0)[p.index])
            else:
                tensors.append(torch.zeros_like(sd[p.key]))
        out[dst] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
    return out


def zero_k_bias(sd: dict[str, Tensor], depth: int, dim: int) -> None:
    """Zero the k third of every fused `qkv.bias` in place: the model masks it anyway, and a converted file should
    not carry a bias the teacher never used (official DINOv3 stores one and masks it with `bias_mask`)."""
    for i in range(depth):
        key = f"blocks.{i}.attn.qkv.bias"
        if key in sd:
            b = sd[key].clone()
            b[dim : 2 * dim] = 0
            sd[key] = b


def block_indices(keys: Iterable[str], prefix: str) -> list[int]:
    """Sorted block indices N of keys `{prefix}N.*` (e.g. prefix `blocks.`); ValueError if they are not 0..L-1."""
    idx = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                idx.add(int(head))
    found = sorted(idx)
    if found != list(range(len(found))):
        raise ValueError(f"block indices under {prefix!r} are not contiguous from 0: {found}")
    return found


# -------------------------------------------------------------------------------------------------------------------
# Reading weight files (never executing code: safetensors, or torch.load(weights_only=True))


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"cannot read {path} as safetensors (truncated or corrupt?): {e}") from e


def read_torch_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A `.pth`/`.pt`/`.bin` state dict, loaded with `weights_only=True` (no code from the file runs). A dict that
    wraps the state dict under a single `model` or `state_dict` key is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's advice (weights_only=False) would run the file's code: not here
        raise ValueError(
            f"{path} holds Python objects that need code to load, and jetvit never runs code from a file: save "
            f"the weights alone (torch.save(model.state_dict(), ...) or safetensors) and give that file"
        ) from None
    except Exception as e:  # a truncated zip, an unknown format: not loadable
        raise ValueError(
            f"cannot read {path} as a PyTorch checkpoint (truncated or corrupt: {type(e).__name__}); "
            f"expected a state dict saved with torch.save, or a .safetensors file"
        ) from None
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("model", "state_dict"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ValueError(f"{path} does not hold a state dict (a dict of name -> tensor), got {type(obj).__name__}")
    return obj


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a weights file by its suffix: `.safetensors`, or `.pth`/`.pt`/`.bin`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        return read_torch_file(path)
    raise ValueError(f"unknown weights file format {path.suffix!r} ({path}); expected .safetensors, .pth, .pt or .bin")


def read_hf_weights(directory: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a Hugging Face model directory: `model.safetensors`, a sharded index, or `pytorch_model.bin`."""
    d = Path(directory)
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index: {e}") from e
        sd: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(read_safetensors(d / shard))
        return sd
    if (d / "pytorch_model.bin").is_file():
        return read_torch_file(d / "pytorch_model.bin")
    raise FileNotFoundError(
        f"{d} has a config.json but no weights: expected model.safetensors, model.safetensors.index.json "
        f"or pytorch_model.bin"
    )


def agreed_size(what: str, sizes: dict[str, int]) -> int:
    """The value of `what` (e.g. the width) that the tensors named in `sizes` (key -> the value its shape gives)
    agree on. A config read from one tensor whose shape is wrong would make every other tensor look wrong; when
    they disagree, the error names the ones that differ from the most common value."""
    counts: dict[int, int] = {}
    for v in sizes.values():
        counts[v] = counts.get(v, 0) + 1
    value = max(counts, key=lambda v: (counts[v], -list(sizes.values()).index(v)))
    odd = [f"{k} (gives {v})" for k, v in sizes.items() if v != value]
    if odd:
        raise ValueError(
            f"the tensors disagree on the {what}: {len(sizes) - len(odd)} give {value}, but "
            f"{', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''}; the file is damaged or not of one model"
        )
    return value


def ensure(cond: bool, msg: str) -> None:
    """Raise ValueError(msg) unless `cond`: for checks of a checkpoint's content, which is user input."""
    if not cond:
        raise ValueError(msg)


def resolve_heads(
    released: dict[str, tuple[int, int, int, str]],
    shape: tuple[int, int, str],
    *,
    family: str,
    size: str | None,
    num_heads: int | None,
    fallback: int | None = None,
) -> int:
    """The number of heads of an official checkpoint with (dim, depth, mlp) `shape`: from a released `size` name
    (checked against the shape), else `num_heads`, else `fallback` (read from the file), else the released size of
    that width. ValueError when none applies or the heads do not divide the width."""
    dim, depth, mlp = shape
    if size is not None:
        ensure(size in released, f"unknown {family} size {size!r}; released sizes: {sorted(released)}")
        r_dim, r_depth, heads, r_mlp = released[size]
        ensure(
            (r_dim, r_depth, r_mlp) == (dim, depth, mlp),
            f"size {size!r} is dim {r_dim}, depth {r_depth}, {r_mlp} MLP but the checkpoint has "
            f"dim {dim}, depth {depth}, {mlp} MLP",
        )
    elif num_heads is not None:
        heads = num_heads
    elif fallback is not None:
        heads = fallback
    else:
        by_dim = {d: h for d, _, h, _ in released.values()}
        ensure(
            dim in by_dim,
            f"cannot tell the number of heads of a dim-{dim} {family} checkpoint: pass size= or num_heads=",
        )
        heads = by_dim[dim]
    ensure(heads > 0 and dim % heads == 0, f"num_heads {heads} does not divide the width {dim}")
    return heads
